"""Textual-inversion embeddings known to prompt encoding: a word in the prompt that equals an embedding's name is
replaced by that embedding's vectors (one row per token it stands for) in the text encoder's token embeddings.

Embeddings come from extensions (the Lora extension registers a LoRA's bundled embeddings, `bundle_emb.*`, while
that LoRA is in the prompt). Vectors are stored per text encoder: `vectors[i]` is a (tokens, width) tensor for text
encoder `i`, or None when the embedding has nothing for it (an SD1 embedding on SDXL's second encoder).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class Embedding:
    """One embedding: `name` as typed in prompts, `vectors` per text encoder, `source` (who registered it)."""

    name: str
    vectors: list[torch.Tensor | None]
    source: str = ""

    @property
    def tokens(self) -> int:
        return max((v.shape[0] for v in self.vectors if v is not None), default=0)


class EmbeddingDatabase:
    """The embeddings usable right now, by name (thread-safe)."""

    def __init__(self) -> None:
        self._items: dict[str, Embedding] = {}
        self._lock = threading.Lock()

    def register(self, embedding: Embedding) -> None:
        with self._lock:
            self._items[embedding.name] = embedding

    def unregister(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

    def get(self, name: str) -> Embedding | None:
        with self._lock:
            return self._items.get(name)

    def snapshot(self) -> dict[str, Embedding]:
        """A copy of the current embeddings (what one generation encodes with)."""
        with self._lock:
            return dict(self._items)
