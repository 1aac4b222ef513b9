"""Bundled embeddings (`bundle_emb.NAME.*` in a LoRA file) become textual-inversion words while their LoRA is in the
prompt, as in A1111 (PR #13568).

Layouts: `bundle_emb.NAME.string_to_param.*` (SD1/SD2 textual inversion, one (tokens, width) tensor for the only text
encoder) and `bundle_emb.NAME.clip_l` / `.clip_g` (SDXL: CLIP-L for encoder 0, OpenCLIP bigG for encoder 1).
An embedding whose width does not fit the loaded model's text encoder, or whose name is taken by an embedding from
somewhere else, is skipped with a message.
"""

from __future__ import annotations

from typing import Any

import torch

from modules.textual_inversion import Embedding, EmbeddingDatabase

from ..errors import FormatError


class BundledEmbeddingError(FormatError):
    """A `bundle_emb.*` embedding in a LoRA file that does not fit the loaded model's text encoders."""


SOURCE_PREFIX = "lora:"
SDXL_PARTS = {"clip_l": 0, "clip_g": 1}


def _encoder_width(encoder: Any) -> int:
    return int(encoder.get_input_embeddings().weight.shape[1])


def build_embedding(name: str, parts: dict[str, torch.Tensor], text_encoders: list[Any], source: str) -> Embedding:
    """An `Embedding` from a bundle's tensors for the loaded model's encoders; raises BundledEmbeddingError when it cannot fit."""
    vectors: list[torch.Tensor | None] = [None] * len(text_encoders)
    for rest, tensor in parts.items():
        if rest.startswith("string_to_param"):
            index = 0
        elif rest in SDXL_PARTS:
            index = SDXL_PARTS[rest]
        else:
            raise BundledEmbeddingError(f"bundled embedding {name}: unknown part {rest!r}")
        if index >= len(text_encoders):
            raise BundledEmbeddingError(f"bundled embedding {name}: part {rest!r} needs a text encoder the model does not have")
        rows = tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(1, -1)
        width = _encoder_width(text_encoders[index])
        if rows.shape[1] != width:
            raise BundledEmbeddingError(f"bundled embedding {name} has width {rows.shape[1]}, the text encoder expects {width}")
        if not torch.isfinite(rows).all():
            raise BundledEmbeddingError(f"bundled embedding {name} has NaN or Inf values")
        vectors[index] = rows.float()
    if all(v is None for v in vectors):
        raise BundledEmbeddingError(f"bundled embedding {name} holds no vectors")
    return Embedding(name=name, vectors=vectors, source=source)


def sync_bundled_embeddings(database: EmbeddingDatabase, active: list[Any], text_encoders: list[Any]) -> list[str]:
    """Make `database` hold exactly the bundled embeddings of the `active` networks; returns messages to show."""
    messages: list[str] = []
    wanted: dict[str, Embedding] = {}
    for item in active:
        network = item.network
        for name, parts in network.bundle_embeddings.items():
            try:
                wanted[name] = build_embedding(name, parts, text_encoders, SOURCE_PREFIX + network.name)
            except BundledEmbeddingError as exc:
                messages.append(str(exc))
    for name, embedding in database.snapshot().items():
        if embedding.source.startswith(SOURCE_PREFIX) and name not in wanted:
            database.unregister(name)
    for name, embedding in wanted.items():
        existing = database.get(name)
        if existing is not None and not existing.source.startswith(SOURCE_PREFIX):
            messages.append(f"bundled embedding {name} skipped: an embedding of that name is already loaded")
            continue
        database.register(embedding)
    return messages
