"""HTTP API of the Lora extension: A1111's routes with A1111's shapes, plus details, metadata editing and previews.

A1111-compatible (existing clients work unchanged):

* `GET /sdapi/v1/loras` -> `[{name, alias, path, metadata}]` (name = file stem, or `sub/stem` when several files
  share the stem, so every name is unique and reaches its own file; alias = `ss_output_name` or stem,
  path = full file path, metadata = the decoded safetensors metadata), one entry per file in scan order.
* `POST /sdapi/v1/refresh-loras` -> `null`; rescans the Lora folders (safe while a generation runs).
* `GET /sdapi/v1/lora/unreadable` -> `[{file, reason}]`: files the last scan skipped and sidecars it ignored (one bad
  file never hides the others: it is listed here, and in the Lora tab, with its reason).

Beyond A1111 (SD.Next's names where it has them):

* `GET /sdapi/v1/loaded-loras` -> the networks merged into the model now, with their multipliers.
* `GET /sdapi/v1/lora?name=` (SD.Next's `?lora=` works too) -> algorithm, rank, alpha, layers matched/unmatched on
  the loaded model, hash, SD version, safetensors and sidecar metadata, preview and thumbnail URLs.
* `POST /sdapi/v1/lora/metadata` -> edits the sidecar `<lora>.json` exactly as the card editor does
  (`user_metadata.save_user_metadata`), validated; 422 with a message on bad values.
* `GET /sdapi/v1/lora/preview?name=` -> the preview image file; `GET /sdapi/v1/lora/thumb?name=&size=` -> a small PNG
  made from it (cached in memory per app, keyed by file, mtime, size and thumbnail size).

Names from requests are LoRA names, never paths: absolute paths and `..` components are refused (400), unknown names
answer 404, and a preview or sidecar is read or written only when `library.companion.companion_allowed` allows it: its
real path (symlinks resolved) lies inside the real path of one of the Lora roots, or directly in the LoRA file's real
folder (a symlinked Lora folder keeps its previews and sidecars); 403 otherwise. Every route sits under `/sdapi/`, so
the host's `--api-auth` covers it.
All state (thumbnail and layer-report caches, write lock) lives on the `LoraApi` object that `mount` stores on
`app.state.lora_api`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from modules import safe_json
from modules.api.api import ApiError
from modules.api.models import ErrorResponse

from ..errors import LoraError
from ..formats.family import SdVersion
from ..library import sidecars as user_metadata
from ..library.companion import (
    CompanionRefused,
    CompanionUnreadable,
    OpenedCompanion,
    companion_allowed,
    open_companion,
)
from ..library.registry import NetworkOnDisk
from .thumbnails import ThumbnailCache, make_thumbnail  # noqa: F401 - make_thumbnail: the API module's old name

if TYPE_CHECKING:
    from modules.host import WebUI

    from ..engine.engine import LoraEngine

log = logging.getLogger(__name__)

API = "/sdapi/v1"
MAX_NAME = 1024
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 128, 16, 512
THUMB_CACHE_BYTES = 32 * 1024 * 1024
PREVIEW_IN_MEMORY = 8 * 1024 * 1024
MAX_EXAMPLES = 10
MAX_REPORTS = 1024
PREVIEW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".gif": "image/gif"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {400: "the name is a path, not a LoRA name", 401: "missing or wrong credentials (with --api-auth)",
             403: "the file lies outside the Lora folders", 404: "no LoRA (or no preview) by that name",
             413: "request body too large", 422: "invalid input; `detail` says what is wrong",
             503: "the Lora engine failed to start for the loaded model; `detail` says why"}
    return {code: {"model": ErrorResponse, "description": texts[code]} for code in (401, 413, 422, *codes)}


# ------------------------------------------------------------------------------------------------ models


class LoraItem(BaseModel):
    """One entry of `GET /sdapi/v1/loras` (A1111's shape)."""

    name: str = Field(description="file stem (`sub/stem` when several files share the stem): unique")
    alias: str = Field(description="ss_output_name from the metadata, else the stem")
    path: str = Field(description="full path of the file")
    metadata: dict[str, Any] = Field(description="safetensors metadata (JSON-object values decoded)")


class LoadedLora(BaseModel):
    """One network merged into the model now (`GET /sdapi/v1/loaded-loras`)."""

    name: str = Field(description="the name used in the prompt")
    alias: str
    path: str
    hash: str = Field(description="short hash (12 hex digits) as written to `Lora hashes`; '' with hashing off")
    te_multiplier: float
    unet_multiplier: float
    dyn_dim: int | None = None
    block_weights: bool = Field(description="per-block multipliers are in use")
    layers: int = Field(description="layers of the model this network changes")
    method: str = Field("native", description="how it is applied: `native` (merged into the weights) or `diffusers` "
                        "(a diffusers/PEFT adapter in the forward pass)")


class LayerReport(BaseModel):
    """How a LoRA file maps onto the loaded model."""

    matched: int = Field(description="layers of the model the file applies to")
    unmatched: int = Field(description="key groups that match no layer of the loaded model")
    unsupported: int = Field(description="key groups no strategy understands")
    shape_errors: int = Field(description="key groups with shapes for another model")
    unmatched_examples: list[str]
    algorithms: dict[str, int] = Field(description="layers per algorithm")


class LoraDetails(BaseModel):
    """`GET /sdapi/v1/lora?name=`: everything known about one LoRA file."""

    name: str
    alias: str
    path: str
    relative_name: str = Field(description="path relative to its Lora folder, without extension")
    size: int
    mtime: float
    algorithm: str
    rank: int | None = Field(description="most common rank of its layers (kohya's ss_network_dim without a model)")
    alpha: float | None = Field(description="most common alpha of its layers (ss_network_alpha without a model)")
    sd_version: str = Field(description="detected from the file")
    effective_sd_version: str = Field(description="the sidecar's `sd version` when set, else the detected one")
    hash: str = Field(description="SHA-256 of the safetensors payload ('' with hashing off)")
    shorthash: str
    metadata: dict[str, Any]
    user_metadata: dict[str, Any] = Field(description="content of the sidecar <name>.json")
    preview_url: str | None
    thumb_url: str | None
    loaded: bool = Field(description="merged into the model now")
    model: str | None = Field(description="the loaded model the layer report is for")
    layers: LayerReport | None
    load_error: str | None = Field(description="why the file does not apply to the loaded model")
    problems: list[str]


class LoraMetadataRequest(BaseModel):
    """`POST /sdapi/v1/lora/metadata`: the sidecar fields to change (A1111's key names; `_` spellings accepted).

    Fields left out (or null) keep their value; `changes` may hold the same keys as a dict. Other keys already in the
    sidecar are kept.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=MAX_NAME, description="LoRA name (stem, sub/stem or alias)")
    description: str | None = Field(None, max_length=user_metadata.MAX_TEXT)
    sd_version: SdVersion | None = Field(None, alias="sd version")
    activation_text: str | None = Field(None, alias="activation text", max_length=user_metadata.MAX_TEXT)
    preferred_weight: float | None = Field(None, alias="preferred weight", allow_inf_nan=False,
                                           description="0 means: use the default multiplier")
    negative_text: str | None = Field(None, alias="negative text", max_length=user_metadata.MAX_TEXT)
    notes: str | None = Field(None, max_length=user_metadata.MAX_TEXT)
    changes: dict[str, Any] | None = Field(None, description="the same fields as a dict, keyed by A1111's names")


class LoraMetadataResponse(BaseModel):
    """The sidecar after the edit."""

    name: str
    path: str = Field(description="the sidecar file")
    user_metadata: dict[str, Any]


# ----------------------------------------------------------------------------------------------- helpers


def json_safe(value: Any) -> Any:
    """`value` as any JSON response can carry it (`modules.safe_json.sendable`: non-finite floats as text, lone
    surrogates replaced, depth bounded)."""
    return safe_json.sendable(value)


class UnreadableFile(BaseModel):
    """A file the last scan skipped (or a sidecar it ignored), with the reason."""

    file: str
    reason: str


def check_name(name: str) -> str:
    """A LoRA name from a request; ApiError 400 when it is a path (absolute, drive letter, `..`, NUL)."""
    if not name or len(name) > MAX_NAME:
        raise ApiError(422, "InvalidName", f"a LoRA name has 1 to {MAX_NAME} characters")
    text = name.replace("\\", "/")
    drive = len(text) >= 2 and text[0].isascii() and text[0].isalpha() and text[1] == ":" and text[2:3] in ("", "/")
    if "\x00" in name or text.startswith("/") or drive or ".." in text.split("/"):
        raise ApiError(400, "InvalidName",
                       f"{name!r} is a path; use a LoRA name from GET {API}/loras (stem, sub/stem or alias)")
    return name


def most_common(values: list[Any]) -> Any:
    """The most frequent non-None value, or None."""
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def _number(text: Any, kind: type) -> Any:
    try:
        value = kind(float(text))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(float(value)) else None


# ------------------------------------------------------------------------------------------------- the API


class LoraApi:
    """The Lora routes for one app: the engine, the WebUI, this app's thumbnail and layer-report caches."""

    def __init__(self, webui: WebUI, engine: LoraEngine) -> None:
        self.webui = webui
        self.engine = engine
        self.registry = engine.registry
        self.write_lock = threading.Lock()
        self.thumbs = ThumbnailCache(THUMB_CACHE_BYTES)
        self.report_lock = threading.Lock()
        self.reports: OrderedDict[tuple, tuple] = OrderedDict()

    # ---------------------------------------------------------------- lookups
    def find(self, name: str) -> NetworkOnDisk:
        """The registry entry for a request's name; 400 for paths, 404 for unknown names."""
        entry = self.registry.find(check_name(name))
        if entry is None:
            raise ApiError(404, "LoraNotFound", f"Lora {name!r} not found; see GET {API}/loras")
        return entry

    def guarded(self, path: str | os.PathLike[str], entry: NetworkOnDisk, what: str) -> str:
        """The real path of the companion file `path` of `entry`; ApiError 403 when `companion_allowed` refuses it."""
        if not companion_allowed(path, entry.filename, self.registry.roots):
            log.warning("Lora API refused %s %s: outside the Lora folders and not beside the LoRA file", what, path)
            raise ApiError(403, "OutsideLoraFolders",
                           f"the {what} lies outside the Lora folders and not beside the LoRA file")
        return os.path.realpath(path)

    def open_preview(self, entry: NetworkOnDisk) -> OpenedCompanion:
        """The entry's preview, opened by the companion-file service (`library.companion.open_companion`); 404
        without one or when it cannot be read, 403 when the companion rule refuses it."""
        preview = entry.preview_path()
        if preview is None:
            raise ApiError(404, "NoPreview", f"Lora {entry.name!r} has no preview image")
        try:
            return open_companion(preview, entry.filename, self.registry.roots, "preview")
        except CompanionRefused as exc:
            log.warning("Lora API refused preview %s: outside the Lora folders and not beside the LoRA file", preview)
            raise ApiError(403, "OutsideLoraFolders", str(exc)) from exc
        except CompanionUnreadable as exc:
            raise ApiError(404, "NoPreview", str(exc)) from exc

    def urls(self, entry: NetworkOnDisk) -> tuple[str | None, str | None]:
        """(preview URL, thumbnail URL) when the entry has a preview the companion rule allows."""
        preview = entry.preview_path()
        if preview is None or not companion_allowed(preview, entry.filename, self.registry.roots):
            return None, None
        query = urllib.parse.urlencode({"name": entry.relative_name})
        return f"{API}/lora/preview?{query}", f"{API}/lora/thumb?{query}"

    # ---------------------------------------------------------------- routes
    def list_loras(self) -> list[LoraItem]:
        """A1111's `GET /sdapi/v1/loras`."""
        return [LoraItem(name=self.registry.prompt_name(e, "Filename"), alias=e.alias, path=e.filename,
                         metadata=json_safe(e.metadata)) for e in self.registry.entries()]

    def unreadable(self) -> list[UnreadableFile]:
        """`GET /sdapi/v1/lora/unreadable`: every file the last scan skipped, and every sidecar it ignored, with why
        (the same list the Lora tab shows under "file(s) could not be read")."""
        return [UnreadableFile(file=safe_json.clean_surrogates(name), reason=safe_json.clean_surrogates(reason))
                for name, reason in sorted(dict(self.registry.errors).items())]

    def refresh(self) -> None:
        """A1111's `POST /sdapi/v1/refresh-loras`: rescan (does not wait for a running generation)."""
        self.registry.refresh()
        self.thumbs.clear()
        with self.report_lock:
            self.reports.clear()

    def loaded(self) -> list[LoadedLora]:
        """The networks merged into the model now, in prompt order; 503 naming the cause when the engine failed to
        start for the loaded model."""
        if self.engine.failure is not None:
            raise ApiError(503, "LoraEngineFailed", f"the Lora engine failed to start: {self.engine.failure}")
        items = []
        for active in list(self.engine.active):
            req, net = active.request, active.network
            items.append(LoadedLora(
                name=req.name, alias=net.on_disk.alias, path=net.on_disk.filename, hash=net.on_disk.shorthash,
                te_multiplier=req.te_multiplier, unet_multiplier=req.unet_multiplier, dyn_dim=req.dyn_dim,
                block_weights=req.layer_factor is not None, method=active.method,
                layers=len(active.adapter.layers) if active.adapter is not None else len(net.modules),
            ))
        return items

    def layer_report(self, entry: NetworkOnDisk) -> tuple[LayerReport | None, int | None, float | None, list[str], str | None]:
        """(layers, rank, alpha, problems, load error) of `entry` on the loaded model; (None, ...) without one.

        Uses the engine's loaded network when it has one, else loads the file against the model; the result (no
        tensors) is cached per file version and model, so repeated detail calls do not read the file again.
        """
        model, index = self.engine.model, self.engine.index
        if model is None or index is None:
            return None, None, None, [], None
        try:
            version = self.engine.file_version(entry)
        except OSError as exc:
            return None, None, None, [], f"cannot read {entry.name}: {exc.strerror or exc}"
        key = (version, id(model), id(index))
        with self.report_lock:
            cached = self.reports.get(key)
        if cached is not None:
            return cached
        result: tuple[LayerReport | None, int | None, float | None, list[str], str | None]
        try:
            network = self.engine.network(entry)
        except (LoraError, OSError) as exc:
            result = (None, None, None, [], str(exc))
        else:
            modules = list(network.modules.values())
            layers = LayerReport(
                matched=len(network.modules), unmatched=len(network.unmatched_keys),
                unsupported=len(network.unsupported), shape_errors=len(network.shape_errors),
                unmatched_examples=network.unmatched_keys[:MAX_EXAMPLES],
                algorithms=dict(Counter(str(m.algorithm) for m in modules)),
            )
            result = (layers, most_common([_number(m.rank, int) for m in modules]),
                      most_common([_number(m.alpha, float) for m in modules]),
                      network.problems(), None)
        with self.report_lock:
            self.reports[key] = result
            while len(self.reports) > MAX_REPORTS:
                self.reports.popitem(last=False)
        return result

    def details(self, name: str) -> LoraDetails:
        """`GET /sdapi/v1/lora`: the file, its metadata, and how it maps onto the loaded model."""
        entry = self.find(name)
        problems: list[str] = []
        try:
            full_hash = self.registry.read_hash(entry)
        except (OSError, ValueError) as exc:
            full_hash = ""
            problems.append(f"hash not computed: {exc}")
        sidecar: dict[str, Any] = {}
        try:
            sidecar = user_metadata.read_user_metadata(entry, self.registry.roots)
        except user_metadata.SidecarNotAllowed:
            problems.append("sidecar ignored: it lies outside the Lora folders and not beside the LoRA file")
        except user_metadata.UserMetadataError as exc:
            problems.append(f"sidecar not readable: {exc}")
        except OSError as exc:
            problems.append(f"sidecar not readable: {exc.strerror or exc}")
        layers, rank, alpha, layer_problems, load_error = self.layer_report(entry)
        problems.extend(layer_problems)
        if layers is None:
            rank = _number(entry.metadata.get("ss_network_dim"), int)
            alpha = _number(entry.metadata.get("ss_network_alpha"), float)
        preview_url, thumb_url = self.urls(entry)
        model = self.engine.model
        model_name = (model.checkpoint.name or None) if model is not None and model.checkpoint is not None else None
        return LoraDetails(
            name=entry.name, alias=entry.alias, path=entry.filename, relative_name=entry.relative_name,
            size=entry.size, mtime=entry.mtime, algorithm=entry.algorithm, rank=rank, alpha=alpha,
            sd_version=entry.sd_version, effective_sd_version=entry.effective_sd_version,
            hash=full_hash, shorthash=entry.shorthash, metadata=json_safe(entry.metadata),
            user_metadata=json_safe(sidecar), preview_url=preview_url, thumb_url=thumb_url,
            loaded=any(a.network.on_disk.filename == entry.filename for a in list(self.engine.active)),
            model=model_name if self.engine.model is not None else None,
            layers=layers, load_error=load_error, problems=problems,
        )

    def edit_metadata(self, req: LoraMetadataRequest) -> LoraMetadataResponse:
        """`POST /sdapi/v1/lora/metadata`: validate and write the sidecar like the card editor."""
        entry = self.find(req.name)
        changes = req.model_dump(by_alias=True, exclude_none=True, exclude={"name", "changes"})
        changes.update(req.changes or {})
        sidecar = entry.sidecar_path()
        self.guarded(sidecar, entry, "sidecar")  # user_metadata checks again, at the moment it reads and writes
        roots = self.registry.roots
        with self.write_lock:
            try:
                data = user_metadata.save_user_metadata(entry, changes, roots) if changes else \
                    user_metadata.read_user_metadata(entry, roots)
            except user_metadata.SidecarNotAllowed as exc:
                raise ApiError(403, "OutsideLoraFolders", str(exc)) from exc
            except user_metadata.UserMetadataError as exc:
                raise ApiError(422, "InvalidMetadata", str(exc)) from exc
            except OSError as exc:
                raise ApiError(422, "MetadataNotWritten", f"{sidecar.name}: {exc.strerror or exc}") from exc
        if changes:
            log.info("Lora %s: sidecar updated (%s)", entry.name, ", ".join(sorted(changes)))
        return LoraMetadataResponse(name=entry.name, path=str(sidecar), user_metadata=json_safe(data))

    def preview(self, name: str, if_none_match: str | None = None) -> Response:
        """`GET /sdapi/v1/lora/preview`: the preview file itself."""
        opened = self.open_preview(self.find(name))
        fd, st, real = opened.fd, opened.stat, opened.real_path
        media_type = PREVIEW_TYPES.get(os.path.splitext(real)[1].lower(), "application/octet-stream")
        headers = {"Cache-Control": "no-cache", "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"'}
        if if_none_match == headers["ETag"]:
            os.close(fd)
            return Response(status_code=304, headers=headers)
        if st.st_size <= PREVIEW_IN_MEMORY:
            with os.fdopen(fd, "rb") as handle:
                return Response(handle.read(), media_type=media_type, headers=headers)
        handle = os.fdopen(fd, "rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(1024 * 1024):
                    yield block

        return StreamingResponse(chunks(), media_type=media_type, headers=headers)

    def thumb(self, name: str, size: int, if_none_match: str | None = None) -> Response:
        """`GET /sdapi/v1/lora/thumb`: a PNG thumbnail of the preview, cached per file version and size."""
        opened = self.open_preview(self.find(name))
        fd, st, real = opened.fd, opened.stat, opened.real_path
        key = (real, st.st_mtime_ns, st.st_size, size)
        headers = {"Cache-Control": "no-cache", "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}-{size}"'}
        if if_none_match == headers["ETag"]:
            os.close(fd)
            return Response(status_code=304, headers=headers)
        with os.fdopen(fd, "rb") as handle:  # closed here whether or not the cache needed to read it
            try:
                png = self.thumbs.get_or_make(key, handle.read, size)
            except ValueError as exc:
                raise ApiError(422, "InvalidPreview", str(exc)) from exc
        return Response(png, media_type="image/png", headers=headers)

    # ---------------------------------------------------------------- wiring
    def register(self, app: FastAPI) -> None:
        """Add the routes to `app`."""
        name_doc = "LoRA name: stem, sub/stem or alias (as in GET /sdapi/v1/loras)"
        sdnext_doc = "SD.Next's name for `name`"

        def details(name: str | None = Query(None, min_length=1, max_length=MAX_NAME, description=name_doc),
                    lora: str | None = Query(None, min_length=1, max_length=MAX_NAME, description=sdnext_doc),
                    ) -> LoraDetails:
            wanted = name if name is not None else lora
            if wanted is None:
                raise ApiError(422, "MissingName", "give the LoRA as ?name=")
            return self.details(wanted)

        def preview(request: Request,
                    name: str = Query(..., min_length=1, max_length=MAX_NAME, description=name_doc)) -> Response:
            return self.preview(name, request.headers.get("if-none-match"))

        def thumb(request: Request, name: str = Query(..., min_length=1, max_length=MAX_NAME, description=name_doc),
                  size: int = Query(THUMB_DEFAULT, ge=THUMB_MIN, le=THUMB_MAX, description="longer side, pixels"),
                  ) -> Response:
            return self.thumb(name, size, request.headers.get("if-none-match"))

        images = {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                              for t in sorted(set(PREVIEW_TYPES.values()))}, "description": "the preview image"}
        png = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
               "description": "PNG thumbnail"}
        not_modified = {304: {"description": "unchanged since the ETag sent in If-None-Match"}}
        route = app.add_api_route
        tags = ["lora"]
        route(f"{API}/loras", self.list_loras, methods=["GET"], response_model=list[LoraItem], tags=tags,
              responses=_errors(), summary="LoRA files found (A1111 shape)")
        route(f"{API}/lora/unreadable", self.unreadable, methods=["GET"], response_model=list[UnreadableFile],
              tags=tags, responses=_errors(), summary="Files the last scan skipped, with the reason")
        route(f"{API}/refresh-loras", self.refresh, methods=["POST"], response_model=None, tags=tags,
              responses=_errors(), summary="Rescan the Lora folders")
        route(f"{API}/loaded-loras", self.loaded, methods=["GET"], response_model=list[LoadedLora], tags=tags,
              responses=_errors(503), summary="Networks merged into the model now")
        route(f"{API}/lora", details, methods=["GET"], response_model=LoraDetails, tags=tags,
              responses=_errors(400, 404), summary="Details of one LoRA")
        route(f"{API}/lora/metadata", self.edit_metadata, methods=["POST"], response_model=LoraMetadataResponse,
              tags=tags, responses=_errors(400, 403, 404), summary="Edit a LoRA's sidecar JSON (user metadata)")
        route(f"{API}/lora/preview", preview, methods=["GET"], response_class=Response, tags=tags,
              responses={200: images, **not_modified, **_errors(400, 403, 404)}, summary="The preview image of a LoRA")
        route(f"{API}/lora/thumb", thumb, methods=["GET"], response_class=Response, tags=tags,
              responses={200: png, **not_modified, **_errors(400, 403, 404)}, summary="A small PNG of a LoRA's preview")


def mount(app: FastAPI, webui: WebUI, engine: LoraEngine) -> None:
    """Add the Lora routes to the FastAPI `app` (called from the `app_started` callback)."""
    api = LoraApi(webui, engine)
    api.register(app)
    app.state.lora_api = api
