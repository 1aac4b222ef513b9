// Lora card browser (the "Lora" extra-networks page, in the tab beside "Generation").
//
// The server sends a small shell (.lora-page, see lorakit/web/cards.py); this file fetches every card once as
// JSON (GET /lora-ui/cards) and renders only the rows that are scrolled into view (a virtual grid), so 10,000 LoRAs
// stay fast. Card text reaches the DOM through textContent / dataset only; every listener is delegated (no inline
// handlers). Features: search (name, alias, path, description, trigger words, tags, hash; all words must match),
// sort (path, name, date created, date modified, size; both directions), folder tree (any depth, resizable panel)
// / dirs view, card size (thumbnails fetched at that size), hiding
// cards for other SD versions than the loaded checkpoint (polled from /lora-ui/state), click to toggle
// `<lora:ALIAS:WEIGHT> activation` in the prompt and the negative text in the negative prompt (added once, removed
// when no card in the prompt still needs it), drag onto a prompt, copy path, metadata popup (with the per-block
// strength chart) and the edit dialog (sidecar JSON; "Replace preview" takes the gallery image the user selected).
// ALIAS is the server's name for the file that never names another file (`sub/stem` for a stem in two folders).

"use strict";

(() => {
    const ROUTE = "/lora-ui";
    const POLL_MS = 3000;
    const GAP = 8;
    const TEXT_HEIGHT = 92;  // px below the portrait (3:4) preview: name, trigger words, description
    const THUMB_STEPS = [128, 192, 256, 384, 512, 768];
    const SD_VERSIONS = ["SD1", "SD2", "SDXL", "Unknown"];
    const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});

    function el(tag, className, text) {
        const node = document.createElement(tag);
        if (className) {
            node.className = className;
        }
        if (text !== undefined && text !== null) {
            node.textContent = String(text);
        }
        return node;
    }

    // The card data is requested as soon as this script runs, while Gradio is still building the page; the first
    // page controller takes it (later loads fetch again).
    let prefetched = fetchJson(`${ROUTE}/cards`, {cache: "no-cache"}).catch(() => null);

    // The last card data received, so a page element that Gradio re-rendered with the same version starts at once.
    let lastCards = null;

    function takePrefetch(version) {
        if (lastCards && lastCards.version === version) {
            return Promise.resolve(lastCards);
        }
        const pending = prefetched;
        prefetched = null;
        return pending || Promise.resolve(null);
    }

    function rememberCards(data) {
        lastCards = data;
        return data;
    }

    // Button icons: constant SVG paths (no text from files).
    const ICONS = {
        copy: "M8 3h9a2 2 0 0 1 2 2v11h-2V5H8zM5 7h9a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V9a2 2 0 0 1 2-2z",
        meta: "M11 10h2v7h-2zM11 6h2v2h-2zM12 2a10 10 0 1 0 0 20a10 10 0 0 0 0-20zm0 2a8 8 0 1 1 0 16a8 8 0 0 1 0-16z",
        edit: "M4 17.2V20h2.8l8.3-8.3l-2.8-2.8zM19.7 7.1a1 1 0 0 0 0-1.4l-1.4-1.4a1 1 0 0 0-1.4 0l-1.3 1.3l2.8 2.8z",
    };

    function icon(name) {
        const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        svg.setAttribute("viewBox", "0 0 24 24");
        svg.setAttribute("aria-hidden", "true");
        const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
        path.setAttribute("d", ICONS[name]);
        path.setAttribute("fill", "currentColor");
        svg.append(path);
        return svg;
    }

    function escapeRegExp(text) {
        return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    }

    function formatWeight(value) {
        const number = Number(value);
        return Number.isFinite(number) ? String(Math.round(number * 1000) / 1000) : "1";
    }

    async function fetchJson(url, options) {
        const response = await fetch(url, options);
        let data = null;
        try {
            data = await response.json();
        } catch (e) {
            data = null;
        }
        if (!response.ok) {
            const detail = data && (data.detail || data.error);
            throw new Error(typeof detail === "string" ? detail : `${response.status} ${response.statusText}`);
        }
        return data;
    }

    function setTextarea(box, value) {
        box.value = value;
        updateInput(box);
    }

    // ------------------------------------------------------------------------------------------ prompt editing

    // The text a card adds to the prompt, and its removal rule: every `<lora:ALIAS...>` tag (whatever weight or
    // extra arguments were typed by hand) is removed, with the activation text right after it and the one
    // separator before it.
    function loraTagPattern(alias) {
        return new RegExp(`<lora:${escapeRegExp(alias)}(?::[^<>]*)?>`, "g");
    }

    function removeLoraTags(text, alias, activation) {
        const matches = [...text.matchAll(loraTagPattern(alias))];
        for (let i = matches.length - 1; i >= 0; i--) {
            let start = matches[i].index;
            let end = start + matches[i][0].length;
            if (activation) {
                if (text.startsWith(" " + activation, end)) {
                    end += 1 + activation.length;
                } else if (text.startsWith(", " + activation, end)) {
                    end += 2 + activation.length;
                }
            }
            if (start > 0 && text[start - 1] === " ") {
                start -= 1;
            } else if (start === 0) {
                end += /^[\s,]*/.exec(text.slice(end))[0].length;
            }
            text = text.slice(0, start) + text.slice(end);
        }
        return text;
    }

    // A comma-separated list with `word` added at the end, or removed when it is there.
    function toggleWord(text, word) {
        const words = text.split(",").map((w) => w.trim()).filter(Boolean);
        const at = words.indexOf(word);
        if (at >= 0) {
            words.splice(at, 1);
        } else {
            words.push(word);
        }
        return words.join(", ");
    }

    function appendText(text, addition, separator) {
        if (!text) {
            return addition;
        }
        if (/\s$/.test(text)) {
            return text + addition;
        }
        return text + (separator === ", " && text.endsWith(",") ? " " : separator) + addition;
    }

    function removeNegative(text, negative) {
        const at = text.lastIndexOf(negative);
        if (at < 0) {
            return text;
        }
        let start = at;
        let end = at + negative.length;
        if (text.slice(Math.max(0, start - 2), start) === ", ") {
            start -= 2;
        } else if (start > 0 && /[\s,]/.test(text[start - 1])) {
            start -= 1;
        } else if (start === 0 && text.startsWith(", ", end)) {
            end += 2;
        }
        return text.slice(0, start) + text.slice(end);
    }

    // ------------------------------------------------------------------------------------------ the page

    class LoraCardsPage {
        constructor(root, previous) {
            this.root = root;
            this.tab = root.dataset.tabname;
            this.search = root.querySelector(".lora-search");
            this.sortSelect = root.querySelector(".lora-sort");
            this.sortDirButton = root.querySelector(".lora-sort-dir");
            this.viewSelect = root.querySelector(".lora-view");
            this.sizeInput = root.querySelector(".lora-card-size");
            this.hideBox = root.querySelector(".lora-hide-incompatible");
            this.countLabel = root.querySelector(".lora-count");
            this.dirsBox = root.querySelector(".lora-dirs");
            this.tree = root.querySelector(".lora-tree");
            this.scroller = root.querySelector(".lora-scroll");
            this.grid = root.querySelector(".lora-grid");
            this.errorsBox = root.querySelector(".lora-errors");
            this.cards = [];
            this.searchText = [];
            this.sorted = {};
            this.visible = [];
            this.nodes = new Map();
            this.folder = "";
            this.expanded = null;  // folders open in the tree (null: the top level, on first render)
            this.version = null;
            this.server = {model_family: null, show_all: false, hide_unknown_for: [], default_multiplier: 1};
            this.hideTouched = false;
            this.renderQueued = false;
            this.abort = new AbortController();
            this.dead = false;
            this.restoreSettings();
            if (previous) {
                this.folder = previous.folder;
                this.expanded = previous.expanded;
                this.hideTouched = previous.hideTouched;
                this.server = previous.server;
                if (this.hideTouched) {
                    this.hideBox.checked = previous.hideChecked;
                }
            }
            this.bind();
            this.load();
            this.poll();
        }

        // ---------------------------------------------------------------- settings kept in localStorage
        restoreSettings() {
            let saved = {};
            try {
                saved = JSON.parse(localStorage.getItem("lora-cards-settings") || "{}") || {};
            } catch (e) {
                saved = {};
            }
            if (saved.sort && [...this.sortSelect.options].some((o) => o.value === saved.sort)) {
                this.sortSelect.value = saved.sort;
            }
            this.setSortDir(saved.dir === "desc" ? "desc" : "asc");
            if (saved.view) {
                this.viewSelect.value = saved.view;
            }
            if (saved.size) {
                this.sizeInput.value = saved.size;
            }
        }

        saveSettings() {
            try {
                localStorage.setItem("lora-cards-settings", JSON.stringify({
                    sort: this.sortSelect.value, dir: this.sortDirButton.dataset.dir,
                    view: this.viewSelect.value, size: this.sizeInput.value,
                }));
            } catch (e) {
                console.debug("lora cards: settings not saved", e);
            }
        }

        setSortDir(dir) {
            this.sortDirButton.dataset.dir = dir;
            this.sortDirButton.textContent = dir === "desc" ? "Descending" : "Ascending";
        }

        // ---------------------------------------------------------------- events (all delegated)
        bind() {
            const signal = this.abort.signal;
            this.search.addEventListener("input", () => this.update(), {signal});
            this.sortSelect.addEventListener("change", () => {
                this.saveSettings();
                this.update();
            }, {signal});
            this.sortDirButton.addEventListener("click", () => {
                this.setSortDir(this.sortDirButton.dataset.dir === "asc" ? "desc" : "asc");
                this.saveSettings();
                this.update();
            }, {signal});
            this.viewSelect.addEventListener("change", () => {
                this.saveSettings();
                this.renderFolders();
            }, {signal});
            this.sizeInput.addEventListener("input", () => {
                this.saveSettings();
                this.nodes.clear();
                this.grid.replaceChildren();
                this.layout();
            }, {signal});
            this.hideBox.addEventListener("change", () => {
                this.hideTouched = true;
                this.update();
            }, {signal});
            this.scroller.addEventListener("scroll", () => this.queueRender(), {passive: true, signal});
            this.resizeObserver = new ResizeObserver(() => this.layout());
            this.resizeObserver.observe(this.scroller);
            this.grid.addEventListener("click", (event) => this.onCardClick(event), {signal});
            this.grid.addEventListener("keydown", (event) => {
                if ((event.key === "Enter" || event.key === " ") && event.target.classList.contains("lora-card")) {
                    event.preventDefault();
                    this.toggleCard(this.cardOf(event.target));
                }
            }, {signal});
            this.grid.addEventListener("dragstart", (event) => {
                const node = event.target.closest && event.target.closest(".lora-card");
                const card = node && this.cardOf(node);
                if (!card) {
                    return;
                }
                event.dataTransfer.setData("text/plain", this.promptText(card));
                event.dataTransfer.effectAllowed = "copy";
            }, {signal});
            this.tree.addEventListener("click", (event) => this.onFolderClick(event), {signal});
            this.dirsBox.addEventListener("click", (event) => this.onFolderClick(event), {signal});
            const prompt = this.promptBox(false);
            if (prompt) {
                prompt.addEventListener("input", () => this.markActive(), {signal});
            }
        }

        destroy() {
            this.hideChecked = this.hideBox.checked;
            this.dead = true;
            this.abort.abort();
            if (this.resizeObserver) {
                this.resizeObserver.disconnect();
            }
        }

        promptBox(negative) {
            return gradioApp().querySelector(`#${this.tab}_${negative ? "neg_prompt" : "prompt"} textarea`);
        }

        cardOf(node) {
            const index = Number(node.dataset.idx);
            return Number.isInteger(index) ? this.cards[index] : undefined;
        }

        // ---------------------------------------------------------------- data
        async load() {
            if (this.dead) {
                return;
            }
            const state = this.refreshState();
            try {
                const data = rememberCards((await takePrefetch(this.root.dataset.version)) ||
                    await fetchJson(`${ROUTE}/cards?tabname=${encodeURIComponent(this.tab)}`, {cache: "no-cache"}));
                this.setCards(data.cards || []);
                this.version = data.version;
                this.showErrors(data.errors || []);
            } catch (e) {
                this.grid.replaceChildren(el("p", "lora-error", `Could not load the Lora cards: ${e.message}`));
                return;
            }
            await state;
            this.update();
            this.root.dataset.loaded = "true";
        }

        setCards(cards) {
            if (this.dead) {
                return;
            }
            this.cards = cards;
            this.searchText = cards.map((card) => this.searchTextOf(card));
            this.sorted = {};
            this.nodes.clear();
            this.grid.replaceChildren();
            this.renderFolders();
        }

        searchTextOf(card) {
            return [card.name, card.alias, card.path, card.description, card.activation, card.negative,
                (card.search_tags || []).join(" "), (card.triggers || []).join(" "), card.model, card.version_name,
                card.base_model, card.author, card.hash, card.sd, card.algorithm].join("\n").toLowerCase();
        }

        replaceCard(card) {
            const index = this.cards.findIndex((c) => c.key === card.key);
            if (index < 0) {
                return;
            }
            this.cards[index] = card;
            this.searchText[index] = this.searchTextOf(card);
            this.sorted = {};
            const node = this.nodes.get(index);
            if (node) {
                node.remove();
                this.nodes.delete(index);
            }
            this.update(false);
        }

        async refreshState() {
            try {
                const state = await fetchJson(`${ROUTE}/state`, {cache: "no-store"});
                const familyChanged = state.model_family !== this.server.model_family;
                this.server = state;
                if (!this.hideTouched) {
                    this.hideBox.checked = !state.show_all;
                }
                return {familyChanged, stale: this.version !== null && state.version !== this.version};
            } catch (e) {
                return {familyChanged: false, stale: false};
            }
        }

        poll() {
            setTimeout(async () => {
                if (this.dead || !this.root.isConnected) {
                    return;
                }
                if (document.visibilityState === "visible" && this.version !== null) {
                    const {familyChanged, stale} = await this.refreshState();
                    if (stale) {
                        await this.reload();
                    } else if (familyChanged) {
                        this.update();
                    }
                }
                this.poll();
            }, POLL_MS);
        }

        async reload() {
            try {
                const data = rememberCards(await fetchJson(`${ROUTE}/cards?tabname=${encodeURIComponent(this.tab)}`,
                    {cache: "no-cache"}));
                this.setCards(data.cards || []);
                this.version = data.version;
                this.showErrors(data.errors || []);
                this.update();
            } catch (e) {
                console.warn("lora cards: reload failed", e);
            }
        }

        showErrors(errors) {
            this.errorsBox.replaceChildren();
            this.errorsBox.hidden = errors.length === 0;
            if (!errors.length) {
                return;
            }
            const details = el("details");
            details.append(el("summary", "", `${errors.length} file(s) could not be read`));
            const list = el("ul");
            for (const item of errors) {
                list.append(el("li", "", `${item.file}: ${item.reason}`));
            }
            details.append(list);
            this.errorsBox.append(details);
        }

        // ---------------------------------------------------------------- filter and sort
        compatible(card) {
            const family = this.server.model_family;
            if (!family) {
                return true;
            }
            if (card.sd === "Unknown") {
                return !(this.server.hide_unknown_for || []).includes(family);
            }
            return card.sd === family;
        }

        order(key) {
            if (!this.sorted[key]) {
                const indices = this.cards.map((_, i) => i);
                if (key === "name") {
                    indices.sort((a, b) => collator.compare(this.cards[a].name, this.cards[b].name) || a - b);
                } else if (key === "created" || key === "modified" || key === "size") {
                    indices.sort((a, b) => (this.cards[a][key] - this.cards[b][key]) || a - b);
                }
                this.sorted[key] = indices;
            }
            return this.sorted[key];
        }

        update(resetScroll = true) {
            if (this.dead) {
                return;
            }
            const words = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
            const hide = this.hideBox.checked;
            const folder = this.folder;
            const base = this.order(this.sortSelect.value);
            const ordered = this.sortDirButton.dataset.dir === "desc" ? [...base].reverse() : base;
            const visible = [];
            for (const index of ordered) {
                const card = this.cards[index];
                if (hide && !this.compatible(card)) {
                    continue;
                }
                if (folder && card.dir !== folder && !card.dir.startsWith(folder + "/")) {
                    continue;
                }
                const text = this.searchText[index];
                if (words.every((word) => text.includes(word))) {
                    visible.push(index);
                }
            }
            this.visible = visible;
            this.countLabel.textContent = visible.length === this.cards.length ?
                `${this.cards.length} LoRAs` : `${visible.length} of ${this.cards.length} LoRAs`;
            if (resetScroll) {
                this.scroller.scrollTop = 0;
            }
            this.layout();
        }

        // ---------------------------------------------------------------- virtual grid
        metrics() {
            const width = Number(this.sizeInput.value) || 160;
            const height = Math.round(width * 4 / 3) + TEXT_HEIGHT;
            const available = this.scroller.clientWidth || 800;
            const columns = Math.max(1, Math.floor((available + GAP) / (width + GAP)));
            return {width, height, columns};
        }

        layout() {
            const {height, columns} = this.metrics();
            const rows = Math.ceil(this.visible.length / columns);
            this.grid.style.height = `${Math.max(rows * (height + GAP) - GAP, 0)}px`;
            this.root.style.setProperty("--lora-card-width", `${this.metrics().width}px`);
            this.root.style.setProperty("--lora-card-height", `${height}px`);
            this.root.style.setProperty("--lora-preview-height", `${height - TEXT_HEIGHT}px`);
            this.render();
        }

        queueRender() {
            if (!this.renderQueued) {
                this.renderQueued = true;
                requestAnimationFrame(() => {
                    this.renderQueued = false;
                    this.render();
                });
            }
        }

        render() {
            if (this.dead) {
                return;
            }
            const loading = this.grid.querySelector(".lora-loading, .lora-empty");
            if (loading) {
                loading.remove();
            }
            if (!this.visible.length) {
                if (this.version !== null) {
                    this.grid.replaceChildren(el("p", "lora-muted lora-empty",
                        this.cards.length ? "No LoRA matches." : "No LoRA files found. Put them into the Lora folder " +
                            "and press Refresh."));
                    this.nodes.clear();
                }
                return;
            }
            const {width, height, columns} = this.metrics();
            const rowHeight = height + GAP;
            const viewport = this.scroller.clientHeight || 600;
            const firstRow = Math.max(0, Math.floor(this.scroller.scrollTop / rowHeight) - 1);
            const lastRow = Math.floor((this.scroller.scrollTop + viewport) / rowHeight) + 1;
            const wanted = new Set();
            const prompt = this.promptBox(false);
            const promptText = prompt ? prompt.value : "";
            for (let pos = firstRow * columns; pos < Math.min((lastRow + 1) * columns, this.visible.length); pos++) {
                const index = this.visible[pos];
                wanted.add(index);
                let node = this.nodes.get(index);
                if (!node) {
                    node = this.createCard(index);
                    this.nodes.set(index, node);
                }
                const row = Math.floor(pos / columns);
                const column = pos % columns;
                node.style.transform = `translate(${column * (width + GAP)}px, ${row * rowHeight}px)`;
                node.classList.toggle("lora-card-active", this.isActive(this.cards[index], promptText));
                if (node.parentNode !== this.grid) {
                    this.grid.append(node);
                }
            }
            for (const [index, node] of this.nodes) {
                if (!wanted.has(index)) {
                    node.remove();
                    this.nodes.delete(index);
                }
            }
        }

        isActive(card, text) {
            return text.includes(`<lora:${card.alias}`) && loraTagPattern(card.alias).test(text);
        }

        markActive() {
            const prompt = this.promptBox(false);
            const text = prompt ? prompt.value : "";
            for (const [index, node] of this.nodes) {
                node.classList.toggle("lora-card-active", this.isActive(this.cards[index], text));
            }
        }

        createCard(index) {
            const card = this.cards[index];
            const node = el("div", "lora-card");
            node.dataset.idx = String(index);
            node.dataset.name = card.name;
            node.setAttribute("role", "listitem");
            node.tabIndex = 0;
            node.draggable = true;
            node.title = `${card.path}\nClick: add/remove in the prompt. Drag onto a prompt to insert there.`;
            const preview = el("div", "lora-card-preview");
            if (card.preview) {
                const img = el("img");
                img.loading = "lazy";
                img.decoding = "async";
                img.alt = "";
                img.draggable = false;
                img.src = `${card.preview}&size=${this.thumbSize()}`;
                img.addEventListener("load", () => {  // landscape previews are shown whole, not cropped
                    img.classList.toggle("lora-card-wide", img.naturalWidth > img.naturalHeight * 1.05);
                }, {once: true});
                preview.append(img);
            } else {
                preview.append(el("span", "lora-card-nopreview", "No preview"));
            }
            const badges = el("div", "lora-card-badges");
            badges.append(el("span", `lora-badge lora-badge-sd lora-sd-${card.sd.toLowerCase()}`, card.sd));
            badges.append(el("span", "lora-badge lora-badge-algo", card.algorithm));
            const inPrompt = el("span", "lora-card-in-prompt", "\u2713 in prompt");
            inPrompt.setAttribute("aria-hidden", "true");
            const buttons = el("div", "lora-card-buttons");
            const actions = [["copy", "Copy path"], ["meta", "Show metadata"], ["edit", "Edit metadata"]];
            for (const [action, label] of actions) {
                if (action === "meta" && !card.has_metadata) {
                    continue;
                }
                const button = el("button", `lora-card-button lora-card-${action}`);
                button.append(icon(action));
                button.type = "button";
                button.dataset.action = action;
                button.title = label;
                button.setAttribute("aria-label", label);
                buttons.append(button);
            }
            const text = el("div", "lora-card-text");
            text.append(el("div", "lora-card-name", card.name));
            if (card.ambiguous) {  // two files share this name: say which folder this card is
                const where = el("div", "lora-card-path", card.alias);
                where.title = `Several files are called ${card.name}; this card inserts ${card.alias}`;
                text.append(where);
            }
            const triggers = card.activation || (card.tags || []).join(", ");
            if (triggers) {
                const line = el("div", "lora-card-triggers", triggers);
                line.title = card.activation ? "Activation text (added with the LoRA)" : "Top training tags";
                text.append(line);
            }
            if (card.description) {
                text.append(el("div", "lora-card-desc", card.description));
            }
            if (card.model) {
                node.title += `\n${card.model}${card.version_name ? " / " + card.version_name : ""}` +
                    (card.base_model ? ` (${card.base_model})` : "");
            }
            node.append(preview, badges, inPrompt, buttons, text);
            return node;
        }

        thumbSize() {
            const wanted = Math.ceil((Number(this.sizeInput.value) || 160) * 4 / 3 * (window.devicePixelRatio || 1));
            return THUMB_STEPS.find((step) => step >= wanted) || THUMB_STEPS[THUMB_STEPS.length - 1];
        }

        // ---------------------------------------------------------------- folders
        renderFolders() {
            const view = this.viewSelect.value;
            const counts = new Map();
            for (const card of this.cards) {
                const parts = card.dir ? card.dir.split("/") : [];
                for (let i = 1; i <= parts.length; i++) {
                    const path = parts.slice(0, i).join("/");
                    counts.set(path, (counts.get(path) || 0) + 1);
                }
            }
            const folders = [...counts.keys()].sort(collator.compare);
            this.tree.replaceChildren();
            this.dirsBox.replaceChildren();
            this.tree.hidden = view !== "tree";
            this.dirsBox.hidden = view !== "dirs";
            this.root.classList.toggle("lora-with-tree", view === "tree");
            if (view === "dirs") {
                this.dirsBox.append(this.folderButton("", `all (${this.cards.length})`));
                for (const folder of folders) {
                    this.dirsBox.append(this.folderButton(folder, `${folder}/ (${counts.get(folder)})`));
                }
            } else if (view === "tree") {
                // One row per folder at any depth: [toggle][name (count)], indented by depth; children hidden until
                // the toggle opens them (top-level folders and the selected folder's ancestors start open).
                const top = el("ul", "lora-tree-list");
                top.setAttribute("role", "tree");
                const allItem = el("li", "lora-tree-node");
                const allRow = el("div", "lora-tree-row");
                allRow.append(el("span", "lora-tree-spacer"), this.folderButton("", `All (${this.cards.length})`));
                allItem.append(allRow);
                top.append(allItem);
                const lists = new Map([["", top]]);
                const hasChildren = new Set(folders.map((f) => f.slice(0, Math.max(0, f.lastIndexOf("/")))));
                if (!this.expanded) {
                    this.expanded = new Set(folders.filter((f) => !f.includes("/")));
                }
                for (const folder of folders) {
                    const cut = folder.lastIndexOf("/");
                    const parent = cut < 0 ? "" : folder.slice(0, cut);
                    const name = cut < 0 ? folder : folder.slice(cut + 1);
                    const item = el("li", "lora-tree-node");
                    item.dataset.folder = folder;
                    const row = el("div", "lora-tree-row");
                    row.style.paddingLeft = `${(folder.split("/").length - 1) * 14}px`;
                    if (hasChildren.has(folder)) {
                        const open = this.expanded.has(folder) || (this.folder && this.folder.startsWith(folder + "/"));
                        const toggle = el("button", "lora-tree-toggle", open ? "\u25be" : "\u25b8");
                        toggle.type = "button";
                        toggle.dataset.toggle = folder;
                        toggle.setAttribute("aria-expanded", String(Boolean(open)));
                        toggle.setAttribute("aria-label", `${open ? "Collapse" : "Expand"} ${name}`);
                        row.append(toggle);
                        item.classList.toggle("lora-tree-open", Boolean(open));
                    } else {
                        row.append(el("span", "lora-tree-spacer"));
                    }
                    const button = this.folderButton(folder, `${name} (${counts.get(folder)})`);
                    button.title = folder;
                    row.append(button);
                    const children = el("ul", "lora-tree-list");
                    item.append(row, children);
                    (lists.get(parent) || top).append(item);
                    lists.set(folder, children);
                }
                this.tree.append(top);
            }
            this.markFolder();
        }

        folderButton(folder, label) {
            const button = el("button", "lora-folder", label);
            button.type = "button";
            button.dataset.folder = folder;
            return button;
        }

        markFolder() {
            for (const button of this.root.querySelectorAll(".lora-folder")) {
                button.classList.toggle("lora-folder-selected", button.dataset.folder === this.folder);
            }
        }

        onFolderClick(event) {
            const toggle = event.target.closest(".lora-tree-toggle");
            if (toggle) {
                const folder = toggle.dataset.toggle;
                const item = toggle.closest(".lora-tree-node");
                const open = !item.classList.contains("lora-tree-open");
                item.classList.toggle("lora-tree-open", open);
                toggle.textContent = open ? "\u25be" : "\u25b8";
                toggle.setAttribute("aria-expanded", String(open));
                if (open) {
                    this.expanded.add(folder);
                } else {
                    this.expanded.delete(folder);
                }
                return;
            }
            const button = event.target.closest(".lora-folder");
            if (!button) {
                return;
            }
            this.folder = button.dataset.folder === this.folder ? "" : button.dataset.folder;
            this.markFolder();
            this.update();
        }

        // ---------------------------------------------------------------- card actions
        promptText(card) {
            const weight = card.weight ? card.weight : this.server.default_multiplier;
            const tag = `<lora:${card.alias}:${formatWeight(weight)}>`;
            return card.activation ? `${tag} ${card.activation}` : tag;
        }

        toggleCard(card) {
            if (!card) {
                return;
            }
            const box = this.promptBox(false);
            if (!box) {
                return;
            }
            const negativeBox = this.promptBox(true);
            if (loraTagPattern(card.alias).test(box.value)) {
                setTextarea(box, removeLoraTags(box.value, card.alias, card.activation));
                const stillNeeded = this.cards.some((other) => other !== card && other.negative === card.negative &&
                    this.isActive(other, box.value));
                if (card.negative && negativeBox && !stillNeeded) {
                    setTextarea(negativeBox, removeNegative(negativeBox.value, card.negative));
                }
            } else {
                setTextarea(box, appendText(box.value, this.promptText(card), " "));
                if (card.negative && negativeBox && !negativeBox.value.includes(card.negative)) {
                    setTextarea(negativeBox, appendText(negativeBox.value, card.negative, ", "));
                }
            }
            this.markActive();
        }

        onCardClick(event) {
            const node = event.target.closest(".lora-card");
            const card = node && this.cardOf(node);
            if (!card) {
                return;
            }
            const button = event.target.closest("[data-action]");
            if (!button) {
                this.toggleCard(card);
                return;
            }
            event.stopPropagation();
            if (button.dataset.action === "copy") {
                this.copyPath(card);
            } else if (button.dataset.action === "meta") {
                this.showMetadata(card);
            } else if (button.dataset.action === "edit") {
                this.showEditor(card);
            }
        }

        async copyPath(card) {
            try {
                await navigator.clipboard.writeText(card.key);
            } catch (e) {
                const area = el("textarea");
                area.value = card.key;
                document.body.append(area);
                area.select();
                document.execCommand("copy");
                area.remove();
            }
            this.toast(`Copied: ${card.key}`);
        }

        toast(message) {
            const note = el("div", "lora-toast", message);
            document.body.append(note);
            setTimeout(() => note.remove(), 2500);
        }

        openModal(title, kind) {
            const overlay = el("div", `lora-modal-overlay lora-${kind}-overlay`);
            const modal = el("div", `lora-modal lora-${kind}`);
            modal.setAttribute("role", "dialog");
            modal.setAttribute("aria-modal", "true");
            modal.setAttribute("aria-label", title);
            const head = el("div", "lora-modal-head");
            head.append(el("h2", "lora-modal-title", title));
            const close = el("button", "lora-modal-close", "\u00d7");
            close.type = "button";
            close.title = "Close";
            head.append(close);
            const body = el("div", "lora-modal-body");
            modal.append(head, body);
            overlay.append(modal);
            const dismiss = () => {
                overlay.remove();
                document.removeEventListener("keydown", onKey);
            };
            const onKey = (event) => {
                if (event.key === "Escape") {
                    dismiss();
                }
            };
            overlay.addEventListener("click", (event) => {
                if (event.target === overlay || event.target === close) {
                    dismiss();
                }
            });
            document.addEventListener("keydown", onKey);
            document.body.append(overlay);
            return {overlay, body, dismiss};
        }

        async showMetadata(card) {
            const {body} = this.openModal(`${card.name}: metadata`, "metadata");
            body.append(el("p", "lora-muted", "Loading..."));
            const key = encodeURIComponent(card.key);
            try {
                const data = await fetchJson(`${ROUTE}/metadata?key=${key}`);
                body.innerHTML = data.html;  // built and escaped by the server (lorakit/web/card_metadata.py)
            } catch (e) {
                body.replaceChildren(el("p", "lora-error", e.message));
                return;
            }
            const slot = body.querySelector(".lora-blocks-slot");
            if (slot) {
                try {
                    const data = await fetchJson(`${ROUTE}/blocks?key=${key}`);
                    slot.innerHTML = data.html;  // escaped server-side (lora_block_strength.py)
                } catch (e) {
                    slot.replaceChildren(el("p", "lora-error", e.message));
                }
            }
        }

        async showEditor(card) {
            const {body, dismiss} = this.openModal(`${card.name}: edit`, "edit");
            let data;
            try {
                data = await fetchJson(`${ROUTE}/editor?key=${encodeURIComponent(card.key)}`);
            } catch (e) {
                body.append(el("p", "lora-error", e.message));
                return;
            }
            const fields = data.fields;
            const form = el("form", "lora-edit-form");
            const row = (label, input) => {
                const wrap = el("label", "lora-edit-row");
                wrap.append(el("span", "lora-edit-label", label), input);
                form.append(wrap);
                return input;
            };
            const area = (name, value, rows) => {
                const input = el("textarea");
                input.name = name;
                input.rows = rows;
                input.value = value;
                return input;
            };
            const description = row("Description", area("description", fields.description, 3));
            if (!fields.description && card.description) {
                description.placeholder = `Empty: the card shows "${card.description.slice(0, 80)}"`;
            }
            const version = el("select");
            version.name = "sd version";
            for (const name of SD_VERSIONS) {
                const option = el("option", "", name);
                option.value = name;
                version.append(option);
            }
            version.value = SD_VERSIONS.includes(fields["sd version"]) ? fields["sd version"] : "Unknown";
            row("Stable Diffusion version", version);
            const activation = row("Activation text (added to the prompt with the LoRA)",
                area("activation text", fields["activation text"], 2));
            if (data.tags && data.tags.length) {
                const tags = el("div", "lora-tags lora-edit-tags");
                tags.title = "Click a training tag to add it to (or remove it from) the activation text";
                for (const [tag, count] of data.tags) {
                    const chip = el("button", "lora-tag", tag);
                    chip.type = "button";
                    chip.dataset.tag = tag;
                    chip.append(el("span", "lora-tag-count", count));
                    tags.append(chip);
                }
                tags.addEventListener("click", (event) => {
                    const chip = event.target.closest(".lora-tag");
                    if (!chip) {
                        return;
                    }
                    activation.value = toggleWord(activation.value, chip.dataset.tag);
                });
                const wrap = el("div", "lora-edit-row");
                wrap.append(el("span", "lora-edit-label", "Training tags"), tags);
                form.append(wrap);
            }
            const weightWrap = el("div", "lora-edit-weight");
            const slider = el("input");
            slider.type = "range";
            slider.min = "0";
            slider.max = "2";
            slider.step = "0.01";
            const weight = el("input");
            weight.type = "number";
            weight.name = "preferred weight";
            weight.min = "0";
            weight.max = "2";
            weight.step = "0.01";
            weight.value = String(fields["preferred weight"] || 0);
            slider.value = weight.value;
            slider.addEventListener("input", () => {
                weight.value = slider.value;
            });
            weight.addEventListener("input", () => {
                slider.value = weight.value;
            });
            weightWrap.append(slider, weight);
            row("Preferred weight (0 = use the default multiplier)", weightWrap);
            const negative = row("Negative text (added to the negative prompt)",
                area("negative text", fields["negative text"], 2));
            const notes = row("Notes", area("notes", fields.notes, 3));
            const info = el("div", "lora-edit-info");
            const previewBox = el("div", "lora-edit-preview");
            const showPreview = (url) => {
                previewBox.replaceChildren();
                if (url) {
                    const img = el("img");
                    img.alt = `Preview of ${card.name}`;
                    img.src = `${url}&size=384`;
                    previewBox.append(img);
                } else {
                    previewBox.append(el("span", "lora-muted", "No preview"));
                }
            };
            showPreview(data.preview);
            const table = el("div", "lora-edit-table");
            table.innerHTML = data.info_html;  // escaped server-side (card_metadata.table_html)
            info.append(previewBox, table);
            if (data.read_only) {
                form.prepend(el("p", "lora-warning", "This LoRA's .json file holds Civitai's data and is kept " +
                    "read-only: rename it to .civitai.info to save your own fields."));
            }
            if (data.trigger_words && data.trigger_words.length) {
                const words = el("div", "lora-tags lora-edit-triggers");
                words.title = "Trigger words from the model page: click to add to (or remove from) the activation text";
                for (const word of data.trigger_words) {
                    const chip = el("button", "lora-tag lora-trigger", word);
                    chip.type = "button";
                    chip.dataset.tag = word;
                    words.append(chip);
                }
                words.addEventListener("click", (event) => {
                    const chip = event.target.closest(".lora-tag");
                    if (chip) {
                        activation.value = toggleWord(activation.value, chip.dataset.tag);
                    }
                });
                const wrap = el("div", "lora-edit-row");
                wrap.append(el("span", "lora-edit-label", "Trigger words (model page)"), words);
                activation.closest(".lora-edit-row").after(wrap);
                if (!fields["activation text"]) {
                    activation.placeholder = `Empty: the trigger words are used (${data.trigger_words.join(", ")})`;
                }
            }
            const status = el("div", "lora-edit-status");
            status.setAttribute("aria-live", "polite");
            const buttons = el("div", "lora-edit-buttons");
            const cancel = el("button", "lora-edit-cancel", "Cancel");
            cancel.type = "button";
            const replace = el("button", "lora-edit-replace-preview", "Replace preview");
            replace.type = "button";
            const selected = webuiSelectedGalleryImage(this.tab);
            replace.disabled = !selected;
            replace.title = selected ? "Use the image selected in the gallery as this LoRA's preview" :
                "Generate an image (and select it in the gallery) first";
            const save = el("button", "lora-edit-save", "Save");
            save.type = "submit";
            buttons.append(cancel, replace, save);
            form.append(buttons, status);
            body.append(info, form);
            cancel.addEventListener("click", dismiss);
            replace.addEventListener("click", async () => {
                status.textContent = "Replacing preview...";
                try {
                    const image = webuiSelectedGalleryImage(this.tab);
                    if (!image) {
                        throw new Error("no image is selected in the gallery");
                    }
                    const blob = await (await fetch(image.src)).blob();
                    const dataUrl = await new Promise((resolve, reject) => {
                        const reader = new FileReader();
                        reader.onload = () => resolve(reader.result);
                        reader.onerror = () => reject(reader.error);
                        reader.readAsDataURL(blob);
                    });
                    const result = await fetchJson(`${ROUTE}/replace-preview`, {
                        method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({key: card.key, image: dataUrl}),
                    });
                    this.replaceCard(result.card);
                    showPreview(result.card.preview);
                    status.textContent = "Preview replaced.";
                } catch (e) {
                    status.textContent = `Preview not replaced: ${e.message}`;
                }
            });
            form.addEventListener("submit", async (event) => {
                event.preventDefault();
                status.textContent = "Saving...";
                const changes = {
                    "description": description.value, "sd version": version.value,
                    "activation text": activation.value, "preferred weight": Number(weight.value) || 0,
                    "negative text": negative.value, "notes": notes.value,
                };
                try {
                    const result = await fetchJson(`${ROUTE}/save`, {
                        method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({key: card.key, fields: changes}),
                    });
                    this.replaceCard(result.card);
                    status.textContent = "Saved.";
                    this.root.dataset.lastSaved = card.name;
                    dismiss();
                    this.toast(`Saved ${card.name}`);
                } catch (e) {
                    status.textContent = `Not saved: ${e.message}`;
                }
            });
        }
    }

    // Gradio may patch the page element in place when the Refresh button returns new HTML (our marker attribute
    // disappears): the old controller is stopped and a new one starts on the same element.
    const controllers = new WeakMap();

    function initPages() {
        for (const root of gradioApp().querySelectorAll(".lora-page:not([data-lora-ready])")) {
            root.dataset.loraReady = "true";
            const previous = controllers.get(root);
            if (previous) {
                previous.destroy();
            }
            try {
                controllers.set(root, new LoraCardsPage(root, previous));
            } catch (e) {
                console.error("lora cards: page failed to start", e);
            }
        }
    }

    onUiLoaded(initPages);
    onUiUpdate(initPages);
})();
