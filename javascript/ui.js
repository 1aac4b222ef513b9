// Host browser code: helpers extensions use (A1111 names), the progress bar with ETA and the live preview.
//
// gradioApp()                      the document (Gradio 6 renders without a shadow root)
// onUiLoaded(fn) / onUiUpdate(fn)   run fn once the UI is in the page / after every DOM change of the UI
// onAfterUiUpdate(fn)               run fn once DOM changes have settled (debounced, 200 ms)
// updateInput(el)                   tell Gradio a textbox/input changed after a script set its value
// webuiInsertPrompt(tab, text)      append text to `${tab}_prompt` (used by extra-network cards)
// webuiStartProgress(tab) / webuiStopProgress(tab)  poll /internal/progress while a generation runs: the bar
//                                  (percent, step x/y, ETA) and the live preview stay visible until it ends
// webuiSelectedGalleryImage(tab)   the <img> of the image the user selected in `${tab}_gallery` (or its only image)

"use strict";

function gradioApp() {
    const app = document.getElementsByTagName("gradio-app");
    const root = app.length ? (app[0].shadowRoot || app[0]) : document;
    return root.querySelector ? root : document;
}

const webuiUiLoadedCallbacks = [];
const webuiUiUpdateCallbacks = [];
const webuiAfterUiUpdateCallbacks = [];
let webuiUiLoaded = false;
let webuiAfterUpdateTimer = null;

function onUiLoaded(callback) {
    if (webuiUiLoaded) {
        callback();
    } else {
        webuiUiLoadedCallbacks.push(callback);
    }
}

function onUiUpdate(callback) {
    webuiUiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    webuiAfterUiUpdateCallbacks.push(callback);
}

function webuiRunCallbacks(list, arg) {
    for (const callback of list) {
        try {
            callback(arg);
        } catch (e) {
            console.error("webui callback failed", e);
        }
    }
}

const webuiObserver = new MutationObserver((mutations) => {
    if (!webuiUiLoaded && gradioApp().querySelector("#txt2img_prompt")) {
        webuiUiLoaded = true;
        webuiRunCallbacks(webuiUiLoadedCallbacks);
    }
    if (webuiUiLoaded) {
        webuiRunCallbacks(webuiUiUpdateCallbacks, mutations);
        clearTimeout(webuiAfterUpdateTimer);
        webuiAfterUpdateTimer = setTimeout(() => webuiRunCallbacks(webuiAfterUiUpdateCallbacks), 200);
    }
});
webuiObserver.observe(document.documentElement, {childList: true, subtree: true});

function updateInput(target) {
    target.dispatchEvent(new Event("input", {bubbles: true}));
}

function webuiInsertPrompt(tab, text) {
    const box = gradioApp().querySelector(`#${tab}_prompt textarea`);
    if (!box) {
        return;
    }
    const sep = box.value && !/\s$/.test(box.value) ? " " : "";
    box.value = box.value + sep + text;
    updateInput(box);
}

function webuiFormatSeconds(seconds) {
    if (!isFinite(seconds) || seconds <= 0) {
        return "";
    }
    if (seconds < 60) {
        return `${Math.round(seconds)}s`;
    }
    const minutes = Math.floor(seconds / 60);
    return `${minutes}m ${Math.round(seconds - minutes * 60)}s`;
}

const webuiProgressTimers = {};

function webuiProgressContainer(tab) {
    return gradioApp().querySelector(`#${tab}_progress .webui-progress`);
}

function webuiRenderProgress(tab, data) {
    const box = webuiProgressContainer(tab);
    if (!box) {
        return;
    }
    if (!box.querySelector(".webui-progress-bar")) {
        box.innerHTML = "<div class='webui-progress-bar'><div class='webui-progress-fill'></div>" +
            "<span class='webui-progress-text'></span></div><img class='webui-live-preview' alt=''>";
    }
    const percent = Math.round((data.progress || 0) * 100);
    box.querySelector(".webui-progress-fill").style.width = `${percent}%`;
    const eta = webuiFormatSeconds(data.eta_relative);
    const step = data.state && data.state.sampling_steps ?
        ` step ${data.state.sampling_step}/${data.state.sampling_steps}` : "";
    const text = data.active ? `${percent}%${step}${eta ? " ETA " + eta : ""}` : "Waiting...";
    box.querySelector(".webui-progress-text").textContent = data.textinfo ? `${text} ${data.textinfo}` : text;
    const preview = box.querySelector(".webui-live-preview");
    if (data.current_image) {
        preview.src = `data:image/png;base64,${data.current_image}`;
        preview.style.display = "";
    }
    box.style.display = "block";  // "" would fall back to the stylesheet's display: none
    box.classList.add("webui-progress-active");
}

function webuiStartProgress(tab) {
    webuiStopProgress(tab);
    const box = webuiProgressContainer(tab);
    if (box) {
        box.innerHTML = "";
        webuiRenderProgress(tab, {progress: 0, active: false});
    }
    const poll = async () => {
        try {
            const response = await fetch("/internal/progress?skip_current_image=false", {cache: "no-store"});
            if (response.ok) {
                webuiRenderProgress(tab, await response.json());
            }
        } catch (e) {
            console.debug("progress poll failed", e);
        }
        if (webuiProgressTimers[tab] !== undefined) {
            webuiProgressTimers[tab] = setTimeout(poll, 500);
        }
    };
    webuiProgressTimers[tab] = setTimeout(poll, 200);
}

function webuiStopProgress(tab) {
    if (webuiProgressTimers[tab] !== undefined) {
        clearTimeout(webuiProgressTimers[tab]);
        delete webuiProgressTimers[tab];
    }
    const box = webuiProgressContainer(tab);
    if (box) {
        box.innerHTML = "";
        box.style.display = "none";
        box.classList.remove("webui-progress-active");
    }
}

function webuiSelectedGalleryImage(tab) {
    const gallery = gradioApp().querySelector(`#${tab}_gallery`);
    if (!gallery) {
        return null;
    }
    const selected = gallery.querySelector(".thumbnail-item.selected img, .thumbnail-item[aria-selected=true] img") ||
        gallery.querySelector(".preview img, img.preview, button.media-button img, .image-frame img");
    if (selected) {
        return selected;
    }
    const all = gallery.querySelectorAll(".thumbnail-item img, .grid-container img");
    return all.length === 1 ? all[0] : null;
}
