"""The Lora card page (the "Lora" tab beside "Generation" in a generation tab), and the routes its browser code uses.

Layout of the work:
* `create_html(tabname)` returns a small, escaped shell (toolbar: search, sort, folder view, card size, "hide other SD
  versions"; empty tree and grid). The cards are not in that HTML: `javascript/lora_cards.js` fetches them once as one
  JSON array (`GET /lora-ui/cards`, gzip, ETag) and renders only the visible rows (a virtual grid), so 10,000 LoRAs
  cost one request and a few dozen DOM nodes. The card text reaches the DOM through `textContent` only.
* The card array is built from the registry (whose scan and metadata are cached in cache.json) with one directory
  listing per folder for previews and `.txt` descriptions, and is cached until the registry is rescanned, a sidecar
  changes (ours or the API's `save_user_metadata`, noticed by the identity of `entry.user_metadata`) or a hash is
  computed.
* Each card carries the name that reaches its own file (`NetworkRegistry.prompt_name`: `sub/stem` when two files
  share the stem), its model-page data (Civitai / modelspec: trigger words, model, version, base model, link) and
  its file size (sort by size).
* Routes (outside `/sdapi/`, like A1111's `/sd_extra_networks/*`): `cards`, `state` (scan version and loaded model
  family, polled by the page so the "other SD versions" filter follows checkpoint changes), `card` (one card),
  `thumb` (preview file or embedded cover image of a registered entry only; with `size`, a cached PNG thumbnail at
  that size, `web.thumbnails`), `metadata` (popup HTML), `blocks`
  (per-block strength chart), `editor` (dialog data), `save` (sidecar via `save_user_metadata`), `replace-preview`
  (the gallery image the user selected, sent by the page, becomes `<stem>.png`).
  Entries are addressed by their full filename, looked up in the registry's own list: no path from a request is
  ever opened. As in the API (`web.api`) and the registry, a preview is served, a sidecar written and a `.txt`
  description read only when `library.companion.companion_allowed` allows it: its real path (symlinks resolved) lies
  inside the Lora folders or directly in the LoRA file's real folder (403 / no description otherwise).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import html
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from modules import safe_json
from modules.regular_files import open_regular

from ..library.companion import CompanionRefused, CompanionUnreadable, companion_allowed, open_companion
from ..library.registry import PREVIEW_EXTENSIONS, NetworkOnDisk, NetworkRegistry
from ..library.sidecars import SidecarNotAllowed, UserMetadataError, save_user_metadata
from . import block_chart, card_metadata
from .thumbnails import CARD_THUMB_SIZE, ThumbnailCache

if TYPE_CHECKING:
    from modules.host import WebUI
    from modules.sd_model_types import LoadedModel

    from ..engine.engine import LoraEngine

log = logging.getLogger(__name__)

ROUTE_PREFIX = "/lora-ui"
DESCRIPTION_LIMIT = 2000
CARD_TAGS = 5
SEARCH_TAGS = 24
SORT_FIELDS = (("default", "Path"), ("name", "Name"), ("created", "Date created"), ("modified", "Date modified"),
               ("size", "Size"))
THUMB_SIZES = (128, 192, 256, 384, 512, 768)  # card thumbnails are made at the first of these >= the asked size
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif"}


def _cover_image(entry: NetworkOnDisk) -> tuple[bytes, str] | None:
    """The first `ssmd_cover_images` image (bytes, media type), or None."""
    raw = entry.metadata.get("ssmd_cover_images")
    try:
        images = safe_json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            return None
        text = images[0].split(",", 1)[1] if images[0].startswith("data:") else images[0]
        data = base64.b64decode(text, validate=False)
    except (ValueError, binascii.Error):
        return None
    if data.startswith(b"\x89PNG"):
        return data, "image/png"
    if data.startswith(b"\xff\xd8"):
        return data, "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    if data[:3] == b"GIF":
        return data, "image/gif"
    return None


class DirListing:
    """Previews and `.txt` descriptions per folder, from one directory listing each (no stat per candidate name).

    With `roots`, a description file is read only when `companion_allowed` allows it (a `.txt` symlinked to a file
    elsewhere would otherwise show that file's text on the card)."""

    def __init__(self, roots: list[Any] | None = None) -> None:
        self._folders: dict[str, tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]]] = {}
        self._roots = roots

    def _folder(self, folder: str) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]]:
        found = self._folders.get(folder)
        if found is not None:
            return found
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        previews: dict[str, tuple[int, str]] = {}
        texts: dict[str, tuple[int, str]] = {}

        def offer(table: dict[str, tuple[int, str]], stem: str, rank: int, name: str) -> None:
            if stem not in table or rank < table[stem][0]:
                table[stem] = (rank, name)

        for name in names:
            base, ext = os.path.splitext(name)
            if ext in PREVIEW_EXTENSIONS:
                rank = PREVIEW_EXTENSIONS.index(ext)
                offer(previews, base, rank, name)  # <stem>.<ext> first, in PREVIEW_EXTENSIONS order
                if base.endswith(".preview"):
                    offer(previews, base[:-len(".preview")], len(PREVIEW_EXTENSIONS) + rank, name)
            elif ext == ".txt":
                offer(texts, base, 0, name)
                if base.endswith(".description"):
                    offer(texts, base[:-len(".description")], 1, name)
        self._folders[folder] = (previews, texts)
        return previews, texts

    def preview(self, entry: NetworkOnDisk) -> str | None:
        """Same order as `NetworkOnDisk.preview_path`: `<stem>.png|jpg|jpeg|webp|gif`, then `<stem>.preview.*`."""
        folder, fname = os.path.split(entry.filename)
        return self.preview_in(folder, os.path.splitext(fname)[0], entry.filename)

    def preview_in(self, folder: str, stem: str, lora_filename: str) -> str | None:
        """The preview file of the LoRA `lora_filename` (`<folder>/<stem>.*`), if any and allowed (see `_companion`);
        a refused preview gives the card no thumbnail rather than a broken one."""
        return self._companion(0, folder, stem, lora_filename, "preview")

    def text_in(self, folder: str, stem: str, lora_filename: str) -> str | None:
        """The `<stem>.txt` / `<stem>.description.txt` file of the LoRA `lora_filename` (`<folder>/<stem>.*`), if
        any and allowed (see `_companion`)."""
        return self._companion(1, folder, stem, lora_filename, "description")

    def _companion(self, kind: int, folder: str, stem: str, lora_filename: str, what: str) -> str | None:
        """The listed companion file (0: preview, 1: description) of a LoRA; when the listing has roots, only one
        that `companion_allowed` accepts."""
        found = self._folder(folder)[kind].get(stem)
        if not found:
            return None
        path = os.path.join(folder, found[1])
        if self._roots is not None and not companion_allowed(path, lora_filename, self._roots):
            log.warning("Lora %s %s ignored: it lies outside the Lora folders and not beside the LoRA file", what, path)
            return None
        return path

    def description(self, entry: NetworkOnDisk) -> str:
        """Sidecar `description` when the key exists (even empty), else `<stem>.txt` / `<stem>.description.txt`."""
        if "description" in entry.user_metadata:
            return str(entry.user_metadata.get("description") or "")
        folder, fname = os.path.split(entry.filename)
        return read_description(self.text_in(folder, os.path.splitext(fname)[0], entry.filename))


def read_description(path: str | None) -> str:
    """The text of a description file ('' when there is none or it cannot be read)."""
    if not path:
        return ""
    try:
        with open_regular(path) as handle:  # a FIFO named `x.txt` is refused, never waited on
            return handle.read(DESCRIPTION_LIMIT * 4).decode("utf-8", "replace")
    except OSError:
        return ""


def _mtime_ns(path: os.PathLike[str] | str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _mtime(path: str | None) -> int:
    if not path:
        return 0
    try:
        return int(os.path.getmtime(path))
    except OSError:
        return 0


class LoraPage:
    """The "Lora" extra-networks page: shell HTML, card data (cached), and what the routes need."""

    title = "Lora"
    name = "lora"

    def __init__(self, webui: WebUI, engine: LoraEngine) -> None:
        self.webui = webui
        self.engine = engine
        self._lock = threading.RLock()
        self._scan_serial = 0
        self._seen_available: Any = None
        self._entries: list[NetworkOnDisk] = []
        self._by_key: dict[str, NetworkOnDisk] = {}
        self._cards: dict[str, tuple[tuple, dict[str, Any], str]] = {}
        self._static: dict[str, tuple[tuple, dict[str, Any]]] = {}
        self._payload: tuple[str, bytes, bytes] | None = None  # (version, json, gzip)
        self._blocks: OrderedDict[tuple, str] = OrderedDict()
        self.thumbnails = ThumbnailCache()  # card pictures, made on the server (see `web.thumbnails`)

    # ------------------------------------------------------------------------------------------- state
    @property
    def registry(self) -> NetworkRegistry:
        """The engine's `NetworkRegistry`."""
        return self.engine.registry

    def model_changed(self, model: LoadedModel | None = None) -> None:
        """`model_loaded` callback: block charts were computed on the previous model."""
        with self._lock:
            self._blocks.clear()

    def model_family(self) -> str | None:
        """"SD1"/"SD2"/"SDXL" of the loaded checkpoint, None before one is loaded."""
        model = self.engine.model
        return model.family if model is not None else None

    def _sync(self) -> None:
        """Notice a rescan (by the page, the API or anyone): new entry list, card cache dropped."""
        available = self.registry.available
        if available is self._seen_available:
            return
        self._seen_available = available
        self._scan_serial += 1
        unique: dict[int, NetworkOnDisk] = {}
        for entry in available.values():  # insertion order = scan order (natural path order), each file once
            unique.setdefault(id(entry), entry)
        self._entries = list(unique.values())
        self._by_key = {entry.filename: entry for entry in self._entries}
        self._static = {key: value for key, value in self._static.items() if key in self._by_key}
        self._cards = {key: value for key, value in self._cards.items() if key in self._by_key}
        self._payload = None

    def version(self) -> str:
        """Changes whenever the card data would: rescan, sidecar edits, newly computed hashes, alias option."""
        with self._lock:
            self._sync()
            digest = hashlib.blake2b(digest_size=8)
            digest.update(str(self.webui.options.get("lora_preferred_name")).encode())
            for entry in self._entries:
                digest.update(f"{id(entry.user_metadata)}:{entry.hash};".encode())
            return f"{self._scan_serial}-{digest.hexdigest()}"

    def refresh(self) -> None:
        """Rescan the Lora folders (the Refresh button)."""
        self.registry.refresh()
        with self._lock:
            self._sync()

    def entry(self, key: str) -> NetworkOnDisk | None:
        """A registered entry by its full filename (the card key)."""
        with self._lock:
            self._sync()
            return self._by_key.get(key)

    def forget_card(self, entry: NetworkOnDisk) -> None:
        """Drop one card from the cache (after its sidecar or preview changed)."""
        with self._lock:
            self._cards.pop(entry.filename, None)
            self._payload = None

    # ------------------------------------------------------------------------------------------- cards
    def _file_facts(self, entry: NetworkOnDisk) -> dict[str, Any]:
        """What depends only on the file (path, tags, creation date); cached across rescans by (mtime, size)."""
        signature = (entry.mtime, entry.size, entry.root)
        cached = self._static.get(entry.filename)
        if cached is not None and cached[0] == signature:
            return cached[1]
        root = entry.root.rstrip(os.sep)
        root_parent = os.path.dirname(root) or root
        if entry.filename.startswith(root_parent + os.sep):
            path = entry.filename[len(root_parent) + 1:].replace(os.sep, "/")
        else:
            path = os.path.relpath(entry.filename, root_parent).replace(os.sep, "/")
        try:
            stat = os.stat(entry.filename)
            created = min(stat.st_ctime, stat.st_mtime)
        except OSError:
            created = entry.mtime
        tags = [tag for tag, _ in card_metadata.training_tags(entry.metadata)[:SEARCH_TAGS]]
        folder, fname = os.path.split(entry.filename)
        facts = {"path": path, "dir": path.rpartition("/")[0], "created": int(created), "tags": tags,
                 "has_metadata": bool(entry.metadata), "folder": folder, "stem": os.path.splitext(fname)[0]}
        self._static[entry.filename] = (signature, facts)
        return facts

    def _sources(self, entry: NetworkOnDisk, listing: DirListing) -> tuple[str | None, str | None]:
        facts = self._file_facts(entry)
        preview = listing.preview_in(facts["folder"], facts["stem"], entry.filename)
        text = None
        if "description" not in entry.user_metadata:
            text = listing.text_in(facts["folder"], facts["stem"], entry.filename)
        return preview, text

    def _signature(self, entry: NetworkOnDisk, alias: str, preview: str | None, text: str | None) -> tuple:
        """Everything a card shows; equal signatures give equal cards (so a rescan reuses unchanged cards)."""
        return (entry.mtime, entry.size, entry.hash, alias, entry.sd_version, entry.algorithm,
                dict(entry.user_metadata), preview, _mtime(preview), text, _mtime(text),
                "ssmd_cover_images" in entry.metadata, entry.civitai, bool(self.registry.candidates(entry.name)))

    @staticmethod
    def plain_card(entry: NetworkOnDisk, alias: str) -> dict[str, Any]:
        """A card from the file's names alone (for an entry whose metadata or sidecar breaks `build_card`)."""
        return {"key": entry.filename, "name": entry.name, "alias": alias, "path": entry.relative_name,
                "dir": entry.relative_name.rpartition("/")[0], "description": "", "activation": "", "negative": "",
                "weight": 0.0, "sd": entry.sd_version, "algorithm": entry.algorithm, "created": int(entry.mtime),
                "modified": int(entry.mtime), "hash": entry.hash, "preview": "", "tags": [], "search_tags": [],
                "has_metadata": False}

    def build_card(self, entry: NetworkOnDisk, listing: DirListing | None = None, alias: str | None = None,
                   sources: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
        """One card's data (plain JSON values; the browser escapes nothing because it only uses textContent)."""
        listing = listing or DirListing(self.registry.roots)
        facts = self._file_facts(entry)
        preview, text = sources or self._sources(entry, listing)
        if alias is None:
            alias = self.registry.prompt_name(entry, self.webui.options.get("lora_preferred_name"))
        user = entry.user_metadata
        try:
            weight = float(user.get("preferred weight") or 0)
        except (TypeError, ValueError, OverflowError):
            weight = 0.0
        weight = weight if math.isfinite(weight) else 0.0
        preview_url = ""
        if preview is not None:
            preview_url = f"{ROUTE_PREFIX}/thumb?key={quote(entry.filename)}&v={_mtime(preview)}"
        elif "ssmd_cover_images" in entry.metadata:
            preview_url = f"{ROUTE_PREFIX}/thumb?key={quote(entry.filename)}&v=cover{int(entry.mtime)}"
        if "description" in user:
            description = str(user.get("description") or "")
        else:
            description = read_description(text)
        info = entry.model_info
        if not description and info is not None:
            description = card_metadata.html_to_text(info.description_html)
        if len(description) > DESCRIPTION_LIMIT:
            description = description[:DESCRIPTION_LIMIT] + "..."
        return {
            "key": entry.filename,
            "name": entry.name,
            "alias": alias,
            "path": facts["path"],
            "dir": facts["dir"],
            "description": description,
            "activation": entry.activation_text,
            "triggers": list(info.trigger_words) if info is not None else [],
            "model": info.model_name if info is not None else "",
            "version_name": info.version_name if info is not None else "",
            "base_model": info.base_model if info is not None else "",
            "author": info.author if info is not None else "",
            "url": info.url if info is not None else "",
            "size": entry.size,
            "ambiguous": bool(self.registry.candidates(entry.name)),
            "negative": str(user.get("negative text") or ""),
            "weight": weight,
            "sd": entry.effective_sd_version,
            "algorithm": entry.algorithm,
            "created": facts["created"],
            "modified": int(entry.mtime),
            "hash": entry.hash,
            "preview": preview_url,
            "tags": facts["tags"][:CARD_TAGS],
            "search_tags": facts["tags"],
            "has_metadata": facts["has_metadata"] or info is not None,
        }

    def _card_entry(self, entry: NetworkOnDisk, listing: DirListing, prefer_filename: bool) -> tuple[dict, str]:
        """(card, its JSON text), reused while the card's signature is unchanged (also across rescans)."""
        alias = self.registry.prompt_name(entry, "Filename" if prefer_filename else "Alias from file")
        sources = self._sources(entry, listing)
        signature = self._signature(entry, alias, *sources)
        cached = self._cards.get(entry.filename)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        try:
            card = safe_json.sendable(self.build_card(entry, listing, alias, sources))
        except Exception:  # one odd file never breaks the card list: it gets a plain card, the log the traceback
            log.exception("Lora card of %s could not be built from its metadata", entry.filename)
            card = safe_json.sendable(self.plain_card(entry, alias))
        text = json.dumps(card, ensure_ascii=False, separators=(",", ":"))
        self._cards[entry.filename] = (signature, card, text)
        return card, text

    def card(self, entry: NetworkOnDisk, listing: DirListing | None = None) -> dict[str, Any]:
        """The card of an entry (cached)."""
        prefer_filename = self.webui.options.get("lora_preferred_name") == "Filename"
        return self._card_entry(entry, listing or DirListing(self.registry.roots), prefer_filename)[0]

    def cards_payload(self) -> tuple[str, bytes, bytes]:
        """(version, JSON bytes, gzip bytes) of every card, cached until the version changes."""
        version = self.version()
        with self._lock:
            if self._payload is not None and self._payload[0] == version:
                return self._payload
            listing = DirListing(self.registry.roots)
            prefer_filename = self.webui.options.get("lora_preferred_name") == "Filename"
            cards = ",".join(self._card_entry(entry, listing, prefer_filename)[1] for entry in self._entries)
            errors = safe_json.sendable([{"file": f, "reason": r} for f, r in sorted(self.registry.errors.items())][:200])
            body = ('{"version":' + json.dumps(version) + ',"cards":[' + cards + '],"errors":'
                    + json.dumps(errors, ensure_ascii=False) + "}").encode("utf-8")
            self._payload = (version, body, gzip.compress(body, compresslevel=5))
            return self._payload

    def state(self) -> dict[str, Any]:
        """What the page polls: data version, loaded model family, the options cards depend on at click time."""
        options = self.webui.options
        return {
            "version": self.version(),
            "model_family": self.model_family(),
            "show_all": bool(options.get("lora_show_all")),
            "hide_unknown_for": list(options.get("lora_hide_unknown_for_versions") or []),
            "default_multiplier": float(options.get("extra_networks_default_multiplier")),
        }

    # ------------------------------------------------------------------------------------------- html
    def create_html(self, tabname: str) -> str:
        """The page shell (toolbar, empty tree and grid); `lora_cards.js` fills it. All text escaped."""
        version = self.version()
        tab = html.escape(tabname, quote=True)
        count = len(self._entries)
        sort_options = "".join(f"<option value='{key}'>{html.escape(label)}</option>" for key, label in SORT_FIELDS)
        return (
            f"<div class='lora-page' id='{tab}_lora_page' data-tabname='{tab}' "
            f"data-version='{html.escape(version, quote=True)}' data-count='{count}'>"
            "<div class='lora-toolbar'>"
            f"<input type='search' id='{tab}_lora_extra_search' class='lora-search' autocomplete='off' "
            "placeholder='Search name, alias, path, description, trigger words, tags, hash' "
            "aria-label='Search LoRAs'>"
            f"<label class='lora-field'>Sort <select id='{tab}_lora_extra_sort' class='lora-sort'>{sort_options}"
            "</select></label>"
            f"<button type='button' id='{tab}_lora_extra_sort_dir' class='lora-sort-dir' data-dir='asc' "
            "title='Sort direction'>Ascending</button>"
            f"<label class='lora-field'>Folders <select id='{tab}_lora_extra_view' class='lora-view'>"
            "<option value='tree'>Tree</option><option value='dirs'>Dirs</option><option value='none'>Off</option>"
            "</select></label>"
            "<label class='lora-field'>Card size <input type='range' class='lora-card-size' min='110' max='340' "
            "step='10' value='160'></label>"
            f"<label class='lora-field'><input type='checkbox' id='{tab}_lora_hide_incompatible' "
            "class='lora-hide-incompatible'> Hide other SD versions</label>"
            f"<span class='lora-count' aria-live='polite'>{count} LoRAs</span>"
            "</div>"
            "<div class='lora-dirs' hidden></div>"
            "<div class='lora-body'>"
            "<nav class='lora-tree' aria-label='Lora folders'></nav>"
            "<div class='lora-scroll' tabindex='0'><div class='lora-grid' role='list'>"
            "<p class='lora-muted lora-loading'>Loading...</p></div></div>"
            "</div>"
            "<div class='lora-errors' hidden></div>"
            "</div>"
        )

    # ------------------------------------------------------------------------------------------- dialogs
    def block_strength_html(self, entry: NetworkOnDisk) -> str:
        """The per-block bar chart for `entry` on the loaded model (cached per file version and model)."""
        engine = self.engine
        index = engine.snapshot().index
        if index is None:
            return "<p class='lora-muted'>Load a checkpoint to see where this LoRA acts.</p>"
        key = (entry.version, id(index))
        with self._lock:
            cached = self._blocks.get(key)
            if cached is not None:
                self._blocks.move_to_end(key)
                return cached
        try:
            network = engine.network(entry)
            result = block_chart.compute_block_strength(engine, network)
            body = block_chart.render_block_strength(result)
        except Exception as exc:  # any load problem is shown in the popup, the page keeps working
            log.info("block strength of %s not available: %s", entry.name, exc)
            return f"<p class='lora-muted'>Not available for the loaded model: {html.escape(str(exc))}</p>"
        with self._lock:
            self._blocks[key] = body
            while len(self._blocks) > 64:
                self._blocks.popitem(last=False)
        return body

    def editor(self, entry: NetworkOnDisk) -> dict[str, Any]:
        """The edit dialog's data."""
        description = DirListing(self.registry.roots).description(entry)
        with self._lock:
            preview = self.card(entry)["preview"]
        return card_metadata.editor_payload(entry, description, preview)

    def save(self, entry: NetworkOnDisk, fields: dict[str, Any]) -> dict[str, Any]:
        """Write the sidecar (validated, unknown keys kept, atomic; SidecarNotAllowed when the companion rule refuses
        it) and return the refreshed card."""
        save_user_metadata(entry, fields, self.registry.roots)
        self.forget_card(entry)
        with self._lock:
            return self.card(entry)

    def replace_preview(self, entry: NetworkOnDisk, image: bytes) -> dict[str, Any]:
        """Use `image` (the gallery image the user selected) as the preview; returns the refreshed card."""
        _guard(self, entry.sidecar_path().with_suffix(".png"), entry, "preview")
        card_metadata.replace_preview(entry, image)
        self.forget_card(entry)
        with self._lock:
            return self.card(entry)


def _key_entry(page: LoraPage, key: str) -> NetworkOnDisk:
    entry = page.entry(key)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"no Lora file {key!r}; press Refresh")
    return entry


def _guard(page: LoraPage, path: os.PathLike[str], entry: NetworkOnDisk, what: str) -> None:
    """403 unless `companion_allowed` allows the companion file `path` of `entry` (the API's and registry's rule)."""
    if not companion_allowed(path, entry.filename, page.registry.roots):
        log.warning("Lora page refused %s %s: outside the Lora folders and not beside the LoRA file", what, path)
        raise HTTPException(status_code=403, detail=f"the {what} lies outside the Lora folders and not beside the "
                                                    "LoRA file")


def _contained(entry: NetworkOnDisk, what: str, make: Callable[[], Any]) -> Any:
    """`make()`, or a 422 naming the file when its metadata or sidecar makes it fail (logged with the traceback):
    one odd file gives one clear error, never a 500."""
    try:
        return make()
    except HTTPException:
        raise
    except Exception as exc:
        log.exception("Lora %s of %s could not be made", what, entry.filename)
        raise HTTPException(status_code=422, detail=f"the {what} of {entry.name} cannot be shown: "
                                                    f"{type(exc).__name__}: {str(exc)[:200]}") from None


def mount_routes(app: FastAPI, page: LoraPage) -> None:
    """Add the page's routes (see the module docstring) to the FastAPI app."""
    def cards(request: Request) -> Response:
        version, body, zipped = page.cards_payload()
        etag = f'"{version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(zipped, media_type="application/json", headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    def state() -> dict[str, Any]:
        return page.state()

    def card(key: str = Query(...)) -> dict[str, Any]:
        entry = _key_entry(page, key)
        with page._lock:
            return {"card": page.card(entry)}

    def thumb(key: str = Query(...), size: int | None = Query(None, ge=16, le=4096)) -> Response:
        """The preview (or embedded cover image) as a PNG thumbnail at the first of THUMB_SIZES that is at least
        `size` (default CARD_THUMB_SIZE; cached), so a card gets an image at its own size, never the full-size file."""
        entry = _key_entry(page, key)
        preview = entry.preview_path()
        headers = {"Cache-Control": "public, max-age=604800"}  # the URL carries the file's mtime
        if preview is not None:  # opened by the API's companion-file service: checked, then no link followed
            try:
                opened = open_companion(preview, entry.filename, page.registry.roots, "preview")
            except CompanionRefused as exc:
                log.warning("Lora page refused preview %s: outside the Lora folders and not beside the LoRA file",
                            preview)
                raise HTTPException(status_code=403, detail=str(exc)) from exc
            except CompanionUnreadable as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            cache_key: tuple = (opened.real_path, opened.stat.st_mtime_ns, opened.stat.st_size)
            data = opened.read()  # closes the descriptor
            read = lambda: data  # noqa: E731
        else:
            cover = _cover_image(entry)
            if cover is None:
                raise HTTPException(status_code=404, detail=f"{entry.name} has no preview")
            cache_key = (entry.filename, entry.mtime, entry.size, "cover")
            read = lambda: cover[0]  # noqa: E731
        # always downscaled here, with a pixel cap: the browser never gets a full-size preview as a thumbnail
        wanted = size if size is not None else CARD_THUMB_SIZE
        bucket = next((s for s in THUMB_SIZES if s >= wanted), THUMB_SIZES[-1])
        try:
            png = page.thumbnails.get_or_make((*cache_key, bucket), read, bucket)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"{entry.name}: {exc}") from exc
        return Response(png, media_type="image/png", headers=headers)

    def metadata(key: str = Query(...)) -> dict[str, str]:
        entry = _key_entry(page, key)
        return {"html": _contained(entry, "metadata", lambda: card_metadata.metadata_popup_html(entry))}

    def blocks(key: str = Query(...)) -> dict[str, str]:
        entry = _key_entry(page, key)
        return {"html": _contained(entry, "block chart", lambda: page.block_strength_html(entry))}

    def editor(key: str = Query(...)) -> dict[str, Any]:
        entry = _key_entry(page, key)
        return safe_json.sendable(_contained(entry, "editor data", lambda: page.editor(entry)))

    def save(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
        entry = _key_entry(page, str(payload.get("key", "")))
        fields = payload.get("fields")
        if not isinstance(fields, dict):
            raise HTTPException(status_code=422, detail="fields must be an object")
        _guard(page, entry.sidecar_path(), entry, "sidecar")  # save_user_metadata checks again when it writes
        try:
            return {"card": page.save(entry, fields)}
        except SidecarNotAllowed as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from exc
        except UserMetadataError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except OSError as exc:
            raise HTTPException(status_code=500, detail=f"cannot write {entry.sidecar_path()}: {exc}") from exc

    def replace_preview(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
        entry = _key_entry(page, str(payload.get("key", "")))
        image = payload.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(status_code=422, detail="select an image in the gallery first (image: a base64 "
                                                        "PNG/JPEG/WebP, optionally a data: URL)")
        try:
            data = base64.b64decode(image.split(",", 1)[1] if image.startswith("data:") else image, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise HTTPException(status_code=422, detail=f"image is not base64: {exc}") from exc
        try:
            return {"card": page.replace_preview(entry, data)}
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except OSError as exc:
            raise HTTPException(status_code=500, detail=f"cannot write the preview: {exc}") from exc

    routes = (("cards", cards, "GET"), ("state", state, "GET"), ("card", card, "GET"), ("thumb", thumb, "GET"),
              ("metadata", metadata, "GET"), ("blocks", blocks, "GET"), ("editor", editor, "GET"),
              ("save", save, "POST"), ("replace-preview", replace_preview, "POST"))
    for path, endpoint, method in routes:
        app.add_api_route(f"{ROUTE_PREFIX}/{path}", endpoint, methods=[method], include_in_schema=False)


def register_page(webui: WebUI, engine: LoraEngine) -> None:
    """Add the Lora page to the WebUI's extra-network pages and its routes to the app when it starts."""
    page = LoraPage(webui, engine)
    webui.extra_network_pages.append(page)
    webui.services.publish("lora_page", page)
    webui.callbacks.add("app_started", lambda webui_, app: mount_routes(app, page))
    webui.callbacks.add("model_loaded", page.model_changed)
