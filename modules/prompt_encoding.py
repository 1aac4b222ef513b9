"""Prompt text -> text-encoder conditioning, with A1111's prompt syntax.

* Emphasis: `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.3)`, escapes `\\(` `\\)` `\\[` `\\]` `\\\\`;
  unbalanced brackets are closed at the end (A1111's parser).
* `BREAK` (upper case, a word on its own) ends the current 75-token chunk.
* Long prompts: tokens go into chunks of 75 (+ start and end token = 77); when a chunk fills up, the tokens
  after the last comma within the last `comma_padding_backtrack` tokens move to the next chunk. The chunks are
  encoded separately and concatenated along the token axis.
* Emphasis "Original": hidden states are multiplied by the token weights, then rescaled so the mean of the
  chunk's hidden states is what it was before weighting. The mean is taken per prompt (A1111 takes it over the
  whole batch, so there an image depends on the other prompts of its batch; with equal prompts both agree).
  "No norm": weights without the rescale. "None": the whole prompt is plain text, brackets and BREAK included
  (as in A1111).
* Clip skip (SD1/SD2): `hidden_states[-clip_skip]` through the final layer norm. SD2 single files hold all 24
  OpenCLIP layers and SD2 was trained on the penultimate one (A1111's "penultimate" layer), so for them clip skip
  counts from that layer (clip skip 1 = `hidden_states[-2]` + final norm); SD2 diffusers folders already have
  the last layer removed and use the rule as is. SDXL (as A1111 does by default):
  the penultimate layer of both encoders without final norm, concatenated on the feature axis, clip skip ignored;
  the pooled embedding is encoder 2's projected output for the first chunk.

Padding follows the tokenizer: SD1/CLIP-L pad with the end token, OpenCLIP (SD2, SDXL encoder 2) pads with
token 0 after the first end token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

CHUNK_LENGTH = 75
EMPHASIS_MODES = ("Original", "No norm", "None")

RE_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|      # escapes and a lone backslash
    \(|\[|                           # openers
    :\s*([+-]?[.\d]+)\s*\)|          # (text:weight) closer
    \)|]|                            # closers
    [^\\()\[\]:]+|                   # plain text
    :                                # a colon that closes nothing
    """,
    re.X,
)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs the way A1111 does; `("BREAK", -1)` marks a BREAK.

    >>> parse_prompt_attention("a (b:1.5) [c]")
    [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 0.9090909090909091)]
    """
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for item in res[start:]:
            item[1] *= multiplier

    for match in RE_ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(RE_BREAK.split(piece)):
                if index > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]
    merged: list[list[Any]] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(text_part, float(weight)) for text_part, weight in merged]


@dataclass
class PromptChunk:
    """77 token ids (start, 75 tokens or padding, end) and one weight per token.

    `fixes`: textual-inversion vectors to put into the token embeddings, as (position among the 75 prompt tokens,
    (tokens, width) tensor); the ids at those positions are placeholders.
    """

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)


# Embeddings usable by one tokenizer: first token id -> [(token ids of the name, vectors)], longest names first.
EmbeddingTable = dict[int, list[tuple[list[int], torch.Tensor]]]


def embedding_table(spec: TokenizerSpec, embeddings: Mapping[str, Any], encoder_index: int) -> EmbeddingTable:
    """Index the embeddings that have vectors for text encoder `encoder_index` by their names' token ids."""
    table: EmbeddingTable = {}
    for name, embedding in embeddings.items():
        vectors = embedding.vectors[encoder_index] if encoder_index < len(embedding.vectors) else None
        ids = spec.tokenize([name])[0] if vectors is not None else []
        if ids:
            table.setdefault(ids[0], []).append((ids, vectors))
    for candidates in table.values():
        candidates.sort(key=lambda item: -len(item[0]))
    return table


def _match_embedding(table: EmbeddingTable, tokens: list[int], start: int) -> tuple[list[int], torch.Tensor] | None:
    for ids, vectors in table.get(tokens[start], ()):
        if tokens[start:start + len(ids)] == ids:
            return ids, vectors
    return None


@dataclass
class TokenizerSpec:
    """The special ids of one tokenizer, as A1111 uses them."""

    tokenizer: Any
    id_start: int
    id_end: int
    id_pad: int
    comma_token: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenizerSpec:
        """Read BOS/EOS/pad and the id of `,</w>` from a transformers CLIPTokenizer."""
        id_start = tokenizer.bos_token_id
        id_end = tokenizer.eos_token_id
        if id_start is None or id_end is None:
            raise ValueError("the tokenizer has no start or end token; a CLIP tokenizer is required")
        id_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else id_end
        return cls(tokenizer, id_start, id_end, id_pad, tokenizer.get_vocab().get(",</w>"))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without truncation."""
        if not texts:
            return []
        return list(self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"])


def tokenize_line(
    spec: TokenizerSpec, line: str, emphasis: str = "Original", comma_padding_backtrack: int = 20,
    embeddings: EmbeddingTable | None = None,
) -> tuple[list[PromptChunk], int]:
    """Cut one prompt into 77-token chunks with per-token weights; also return the prompt's token count.

    Words naming an embedding of `embeddings` become as many placeholder tokens as the embedding has vectors (kept
    within one chunk, as A1111 does), recorded in the chunk's `fixes`.
    """
    parsed = parse_prompt_attention(line) if emphasis != "None" else [(line, 1.0)]
    tokenized = spec.tokenize([text for text, _ in parsed])
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        to_add = CHUNK_LENGTH - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [spec.id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [spec.id_start] + chunk.tokens + [spec.id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        if spec.id_pad != spec.id_end:  # OpenCLIP: everything after the first end token is padding
            first_end = chunk.tokens.index(spec.id_end)
            chunk.tokens[first_end + 1:] = [spec.id_pad] * (len(chunk.tokens) - first_end - 1)
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            found = _match_embedding(embeddings, tokens, position) if embeddings else None
            if found is not None:
                ids, vectors = found
                count = min(int(vectors.shape[0]), CHUNK_LENGTH)
                if len(chunk.tokens) + count > CHUNK_LENGTH:
                    next_chunk()
                chunk.fixes.append((len(chunk.tokens), vectors[:count]))
                chunk.tokens += [ids[0]] * count
                chunk.multipliers += [weight] * count
                position += len(ids)
                continue
            position += 1
            if token == spec.comma_token:
                last_comma = len(chunk.tokens)
            elif (
                comma_padding_backtrack != 0
                and len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= comma_padding_backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                moved_fixes = [(pos - cut, vec) for pos, vec in chunk.fixes if pos >= cut]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                chunk.fixes = [(pos, vec) for pos, vec in chunk.fixes if pos < cut]
                next_chunk()
                chunk.tokens, chunk.multipliers, chunk.fixes = moved_tokens, moved_mults, moved_fixes
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


@dataclass
class Conditioning:
    """Encoded prompts: `hidden` (batch, 77 * chunks, features); `pooled` (batch, features) for SDXL."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.hidden.shape[1] // (CHUNK_LENGTH + 2)


def _transformer(encoder: Any) -> Any:
    """The module that owns `final_layer_norm` (transformers 5 CLIPTextModel has it directly or via text_model)."""
    return getattr(encoder, "text_model", encoder)


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """Weight hidden states `z` (batch, tokens, features) by `multipliers` (batch, tokens) per A1111's modes."""
    if mode == "None":
        return z
    weighted = z * multipliers.to(z.dtype).unsqueeze(-1)
    if mode == "No norm":
        return weighted
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    new_mean = weighted.mean(dim=(1, 2), keepdim=True)
    return weighted * (original_mean / new_mean)


class PromptEncoder:
    """Encodes prompts for one `LoadedModel` with fixed clip skip and emphasis settings."""

    def __init__(self, model: Any, clip_skip: int = 1, emphasis: str = "Original", comma_padding_backtrack: int = 20,
                 embeddings: Any = None):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"unknown emphasis mode {emphasis!r}; choose one of {', '.join(EMPHASIS_MODES)}")
        if clip_skip < 1:
            raise ValueError(f"clip skip must be 1 or more, got {clip_skip}")
        self.model = model
        self.clip_skip = clip_skip
        self.emphasis = emphasis
        self.comma_padding_backtrack = comma_padding_backtrack
        self.embeddings = embeddings  # modules.textual_inversion.EmbeddingDatabase, read at every encode
        self.specs = [TokenizerSpec.from_tokenizer(tok) for tok in model.tokenizers]
        if len(self.specs) != len(model.text_encoders):
            raise ValueError("the model has a different number of tokenizers and text encoders")
        full_open_clip = model.family == "SD2" and model.checkpoint.format == "single-file"
        self.layer_index = clip_skip + (1 if full_open_clip else 0)  # hidden_states[-layer_index]
        if not model.is_sdxl:
            layers = int(model.text_encoders[0].config.num_hidden_layers)
            if self.layer_index > layers:
                raise ValueError(f"clip skip {clip_skip} is larger than the text encoder's {layers} layers")

    def token_count(self, prompt: str) -> int:
        """Number of prompt tokens (without start/end/padding) as counted for the UI's token counter."""
        return tokenize_line(self.specs[0], prompt, self.emphasis, self.comma_padding_backtrack)[1]

    @torch.no_grad()
    def encode(self, prompts: list[str], is_negative: bool = False) -> Conditioning:
        """Encode a batch of prompts; shorter prompts are padded with empty chunks to the longest one.

        SDXL negative prompts that are all empty give zero embeddings (hidden and pooled), as A1111 and the
        SDXL reference code do (`force_zero_embeddings`).
        """
        if is_negative and self.model.is_sdxl and all(prompt == "" for prompt in prompts):
            encoded = self.encode(prompts)
            assert encoded.pooled is not None
            return Conditioning(torch.zeros_like(encoded.hidden), torch.zeros_like(encoded.pooled))
        known = self.embeddings.snapshot() if self.embeddings is not None else {}
        tables = [embedding_table(spec, known, index) if known else None for index, spec in enumerate(self.specs)]
        per_encoder = [
            [tokenize_line(spec, prompt, self.emphasis, self.comma_padding_backtrack, table)[0] for prompt in prompts]
            for spec, table in zip(self.specs, tables, strict=True)
        ]
        chunk_count = max(len(chunks) for enc in per_encoder for chunks in enc)
        hidden_parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for index in range(chunk_count):
            features = []
            for enc_index, (spec, encoder) in enumerate(zip(self.specs, self.model.text_encoders, strict=True)):
                batch = [chunks[index] if index < len(chunks) else self._empty_chunk(spec)
                         for chunks in per_encoder[enc_index]]
                z, pool = self._encode_chunk(encoder, batch, enc_index)
                features.append(z)
                if index == 0 and pool is not None and enc_index == len(self.specs) - 1:
                    pooled = pool
            hidden_parts.append(torch.cat(features, dim=-1) if len(features) > 1 else features[0])
        hidden = torch.cat(hidden_parts, dim=1)
        return Conditioning(hidden=hidden, pooled=pooled if self.model.is_sdxl else None)

    @staticmethod
    def _run_encoder(encoder: Any, ids: torch.Tensor, batch: list[PromptChunk]) -> Any:
        """Run the text encoder; textual-inversion vectors replace the token embeddings at their positions through
        a forward hook on this encoder's own embedding module (removed right after)."""
        if not any(chunk.fixes for chunk in batch):
            return encoder(input_ids=ids, output_hidden_states=True)

        def put_vectors(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for row, chunk in enumerate(batch):
                for position, vectors in chunk.fixes:
                    start = position + 1  # after the start token
                    output[row, start:start + vectors.shape[0]] = vectors.to(output.device, output.dtype)
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(put_vectors)
        try:
            return encoder(input_ids=ids, output_hidden_states=True)
        finally:
            handle.remove()

    def _empty_chunk(self, spec: TokenizerSpec) -> PromptChunk:
        return tokenize_line(spec, "", self.emphasis, self.comma_padding_backtrack)[0][0]

    def _encode_chunk(
        self, encoder: Any, batch: list[PromptChunk], enc_index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(encoder.parameters()).device
        ids = torch.tensor([c.tokens for c in batch], dtype=torch.long, device=device)
        multipliers = torch.tensor([c.multipliers for c in batch], dtype=torch.float32, device=device)
        out = self._run_encoder(encoder, ids, batch)
        pooled = None
        if self.model.is_sdxl:
            z = out.hidden_states[-2]
            if enc_index == len(self.specs) - 1:
                pooled = getattr(out, "text_embeds", None)
                if pooled is None:
                    pooled = out.pooler_output
        elif self.layer_index > 1:
            z = _transformer(encoder).final_layer_norm(out.hidden_states[-self.layer_index])
        else:
            z = out.last_hidden_state
        return apply_emphasis(z, multipliers, self.emphasis), pooled
