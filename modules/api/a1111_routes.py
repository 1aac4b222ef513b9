"""The smaller A1111 routes clients probe, with A1111's response shapes: VAE files, prompt styles, hypernetworks and
face restorers (none here: empty lists), skip, memory, SD modules, embeddings, extensions, interrogate, and Gradio
3's `GET /queue/status` (A1111 serves it; painting-program plugins probe it to see whether the server is up).

`register(app, webui)` adds them; `Api.register` calls it.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from modules.api import models
from modules.api.api import API_PREFIX, ApiError, decode_base64_image

log = logging.getLogger(__name__)

INTERROGATE_MODELS = ("clip", "deepdanbooru")


class VaeItem(BaseModel):
    """One entry of `GET /sdapi/v1/sd-vae` (and `/sd-modules`)."""

    model_name: str
    filename: str


class PromptStyleItem(BaseModel):
    """One entry of `GET /sdapi/v1/prompt-styles`."""

    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class FaceRestorerItem(BaseModel):
    """One entry of `GET /sdapi/v1/face-restorers`."""

    name: str
    cmd_dir: str | None = None


class HypernetworkItem(BaseModel):
    """One entry of `GET /sdapi/v1/hypernetworks`."""

    name: str
    path: str | None = None


class ExtensionItem(BaseModel):
    """One entry of `GET /sdapi/v1/extensions` (A1111's shape)."""

    name: str
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    version: str = ""
    commit_date: int | str = ""
    enabled: bool = True


class MemoryResponse(BaseModel):
    """`GET /sdapi/v1/memory`: `ram` {free, used, total} in bytes and `cuda` (A1111's fields, or {"error": ...})."""

    ram: dict[str, Any] = Field(description="free, used and total system memory in bytes")
    cuda: dict[str, Any] = Field(description="system, active, allocated, reserved, inactive, events; or error")


class InterrogateRequest(models.ApiModel):
    """Body of `POST /sdapi/v1/interrogate`."""

    image: str = Field("", description="base64 image, or a data: URL")
    model: str = Field("clip", description="clip or deepdanbooru")


class QueueStatus(BaseModel):
    """Gradio 3's `GET /queue/status` estimation message."""

    msg: str = "estimation"
    rank: int | None = None
    queue_size: int = 0
    avg_event_process_time: float | None = None
    avg_event_concurrent_process_time: float | None = None
    rank_eta: float | None = None
    queue_eta: float = 0


def memory_payload(device: Any = None) -> MemoryResponse:
    """System memory (psutil) and, when CUDA is available, torch's CUDA allocator statistics as A1111 reports them."""
    try:
        import psutil  # noqa: PLC0415

        memory = psutil.virtual_memory()
        ram: dict[str, Any] = {"free": memory.available, "used": memory.total - memory.available,
                               "total": memory.total}
    except Exception as exc:  # psutil missing or the platform refuses
        ram = {"error": str(exc)}
    try:
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            return MemoryResponse(ram=ram, cuda={"error": "unavailable"})
        free, total = torch.cuda.mem_get_info()
        stats = dict(torch.cuda.memory_stats(device if device is not None and str(device).startswith("cuda")
                                             else None))

        def pair(name: str) -> dict[str, int]:
            return {"current": int(stats.get(f"{name}.all.current", 0)), "peak": int(stats.get(f"{name}.all.peak", 0))}

        cuda = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
        }
    except Exception as exc:  # a broken driver: report, never fail the request
        cuda = {"error": str(exc)}
    return MemoryResponse(ram=ram, cuda=cuda)


def _git(folder: Path, *args: str) -> str:
    """Output of a git command in `folder`, or "" (not a repository, no git)."""
    if not (folder / ".git").exists():
        return ""
    try:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def extension_items(webui: Any) -> list[ExtensionItem]:
    """The loaded extensions (built-in ones included) in A1111's shape; git facts where the folder is a clone."""
    items = []
    for ext in webui.extensions:
        folder = Path(ext.path)
        commit = _git(folder, "rev-parse", "HEAD")
        date = _git(folder, "show", "-s", "--format=%ct", "HEAD")
        items.append(ExtensionItem(
            name=ext.name, remote=_git(folder, "config", "--get", "remote.origin.url"),
            branch=_git(folder, "rev-parse", "--abbrev-ref", "HEAD"), commit_hash=commit, version=commit[:8],
            commit_date=int(date) if date.isdigit() else "", enabled=ext.error is None))
    return items


def embedding_items(webui: Any) -> models.EmbeddingsResponse:
    """`GET /sdapi/v1/embeddings`: the embeddings prompt encoding knows now, in A1111's per-embedding shape."""
    loaded = {}
    for name, embedding in webui.embeddings.snapshot().items():
        vectors = [v for v in embedding.vectors if v is not None]
        loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                        "shape": int(vectors[0].shape[-1]) if vectors else None, "vectors": embedding.tokens}
    return models.EmbeddingsResponse(loaded=loaded, skipped={})


def register(app: FastAPI, webui: Any) -> None:
    """Add the routes of this module to `app`."""
    errors = models.ERROR_RESPONSES
    route = app.add_api_route

    def sd_vae() -> list[VaeItem]:
        return [VaeItem(model_name=f.name, filename=str(f.path)) for f in webui.vae.files()]

    def refresh_vae() -> None:
        webui.vae.refresh()

    def prompt_styles() -> list[PromptStyleItem]:
        webui.styles.reload_if_changed()
        return [PromptStyleItem(**item) for item in webui.styles.as_api_items()]

    def hypernetworks() -> list[HypernetworkItem]:
        return []  # hypernetworks are not supported (LoRA covers their use)

    def face_restorers() -> list[FaceRestorerItem]:
        return []  # no face restoration model ships with this WebUI

    def sd_modules() -> list[VaeItem]:
        return []  # separate UNet modules (A1111's sd_unet) are not supported

    def skip() -> None:
        webui.state.skip()

    def memory() -> MemoryResponse:
        return memory_payload(getattr(webui.models, "device", None))

    def refresh_embeddings() -> None:
        return None  # embeddings come from extensions (LoRA bundles) and follow the prompt: nothing to rescan

    def embeddings() -> models.EmbeddingsResponse:
        return embedding_items(webui)

    def extensions() -> list[ExtensionItem]:
        return extension_items(webui)

    def interrogate(req: InterrogateRequest) -> None:
        if not req.image:
            raise ApiError(422, "InvalidImage", "image: a base64-encoded image is required")
        decode_base64_image(req.image)
        if req.model not in INTERROGATE_MODELS:
            raise ApiError(404, "ModelNotFound", f"interrogate model {req.model!r} not found; A1111's models are "
                                                 + " and ".join(INTERROGATE_MODELS))
        needs = ("a CLIP interrogator (a BLIP captioning model plus CLIP)" if req.model == "clip"
                 else "a DeepDanbooru tagger model")
        raise ApiError(501, "InterrogatorUnavailable",
                       f"interrogate with {req.model!r} needs {needs}, and none is installed in this WebUI")

    def queue_status() -> QueueStatus:
        return QueueStatus(queue_size=1 if webui.state.active else 0)

    route(f"{API_PREFIX}/sd-vae", sd_vae, methods=["GET"], response_model=list[VaeItem], responses=errors,
          summary="VAE files (models/VAE, *.vae.* beside checkpoints)")
    route(f"{API_PREFIX}/refresh-vae", refresh_vae, methods=["POST"], response_model=None, responses=errors,
          summary="Rescan the VAE folders")
    route(f"{API_PREFIX}/prompt-styles", prompt_styles, methods=["GET"], response_model=list[PromptStyleItem],
          responses=errors, summary="Prompt styles of styles.csv")
    route(f"{API_PREFIX}/hypernetworks", hypernetworks, methods=["GET"], response_model=list[HypernetworkItem],
          responses=errors, summary="Hypernetworks (not supported: always empty)")
    route(f"{API_PREFIX}/face-restorers", face_restorers, methods=["GET"], response_model=list[FaceRestorerItem],
          responses=errors, summary="Face restoration models (none: always empty)")
    route(f"{API_PREFIX}/sd-modules", sd_modules, methods=["GET"], response_model=list[VaeItem], responses=errors,
          summary="Separate UNet modules (not supported: always empty)")
    route(f"{API_PREFIX}/skip", skip, methods=["POST"], response_model=None, responses=errors,
          summary="End the current batch's sampling early; the next batch of the request runs")
    route(f"{API_PREFIX}/memory", memory, methods=["GET"], response_model=MemoryResponse, responses=errors,
          summary="System and CUDA memory")
    route(f"{API_PREFIX}/refresh-embeddings", refresh_embeddings, methods=["POST"], response_model=None,
          responses=errors, summary="Rescan embeddings (they follow the prompt here: nothing to do)")
    route(f"{API_PREFIX}/embeddings", embeddings, methods=["GET"], response_model=models.EmbeddingsResponse,
          responses=errors, summary="Textual inversion embeddings known now")
    route(f"{API_PREFIX}/extensions", extensions, methods=["GET"], response_model=list[ExtensionItem],
          responses=errors, summary="Loaded extensions (built-in ones included)")
    route(f"{API_PREFIX}/interrogate", interrogate, methods=["POST"], response_model=None,
          responses={**errors, 501: {"model": models.ErrorResponse, "description": "no captioning model installed"}},
          summary="Caption an image (needs a captioning model; none is installed)")
    route("/queue/status", queue_status, methods=["GET"], response_model=QueueStatus,
          summary="Gradio 3's queue estimation (A1111 serves it; clients probe it)")

