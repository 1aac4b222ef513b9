"""The CLIP tokenizer, built offline from the BPE merges shipped in the `openai-clip` PyPI package.

The vocabulary is rebuilt exactly as CLIP's `SimpleTokenizer` does: the 256 byte-level characters, the same
256 each followed by `</w>`, then one entry per merge (the first 48,894 merges of `bpe_simple_vocab_16e6.txt.gz`),
then `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 49,408 entries. The result is a transformers
`CLIPTokenizer` (`model_max_length=77`), subclassed only to clean the text the way CLIP does before tokenizing
(`ftfy.fix_text`, HTML unescape twice, whitespace collapsed), so its ids equal CLIP's own on any prompt.
(A1111's transformers-4 slow tokenizer skipped the HTML unescape; the two differ only on text like `&amp;`.)

Padding: SD1 and SDXL's first encoder (CLIP-L) pad with `<|endoftext|>` (49407); SD2's OpenCLIP-H and SDXL's
OpenCLIP bigG pad with "!" (id 0), as `open_clip.tokenize` does and as the `tokenizer`/`tokenizer_2` configs of
the diffusers SD2/SDXL repositories say (`"pad_token": "!"`).

The `clip` package itself is never imported (its `__init__` needs torchvision); its files are located with
`importlib.util.find_spec`.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_L_PAD = EOS_TOKEN
OPEN_CLIP_PAD = "!"
_MERGE_COUNT = 49152 - 256 - 2


class TokenizerUnavailableError(RuntimeError):
    """The CLIP BPE vocabulary file cannot be found (the `openai-clip` package is not installed)."""


def clip_package_dir() -> Path:
    """The installed `clip` package folder (located without importing it)."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailableError(
            "the CLIP vocabulary ships in the 'openai-clip' package, which is not installed "
            "(pip install openai-clip==1.0.1)")
    return Path(next(iter(spec.submodule_search_locations)))


def bpe_vocab_path() -> Path:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the `clip` package."""
    path = clip_package_dir() / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise TokenizerUnavailableError(f"{path}: CLIP BPE vocabulary file is missing")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Read once per process; callers get copies."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:_MERGE_COUNT + 1])
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    if len(vocab) != VOCAB_SIZE or any(len(m) != 2 for m in merges):
        raise TokenizerUnavailableError(f"{bpe_vocab_path()}: built {len(vocab)} vocabulary entries, expected {VOCAB_SIZE}")
    return dict(zip(vocab, range(len(vocab)))), merges


def clip_vocab() -> dict[str, int]:
    """CLIP's 49,408-entry vocabulary {token: id}."""
    return dict(_vocab_and_merges()[0])


def clip_merges() -> list[tuple[str, str]]:
    """CLIP's BPE merges as (left, right) pairs, in rank order (48,894 of them)."""
    return list(_vocab_and_merges()[1])


def clean_text(text: str) -> str:
    """CLIP's text cleaning: ftfy.fix_text, HTML unescape twice, strip, collapse whitespace (lower-casing is
    done by the tokenizer's normaliser)."""
    import ftfy  # noqa: PLC0415 - only needed when tokenizing

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class SDClipTokenizer(CLIPTokenizer):
    """transformers' CLIPTokenizer with CLIP's own text cleaning applied to every raw string input."""

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("is_split_into_words"):
            text = _clean_any(text)
            text_pair = _clean_any(text_pair)
        return super()._encode_plus(text, text_pair, *args, **kwargs)


def _clean_any(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [clean_text(v) for v in value]
    return value


def build_clip_tokenizer(pad_token: str = CLIP_L_PAD) -> CLIPTokenizer:
    """A CLIP tokenizer built offline; `pad_token` "<|endoftext|>" (CLIP-L) or "!" (OpenCLIP H/bigG)."""
    if pad_token not in (CLIP_L_PAD, OPEN_CLIP_PAD):
        raise ValueError(f"pad_token must be {CLIP_L_PAD!r} or {OPEN_CLIP_PAD!r}, got {pad_token!r}")
    return SDClipTokenizer(
        vocab=clip_vocab(), merges=clip_merges(), unk_token=EOS_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        pad_token=pad_token, model_max_length=MAX_LENGTH)


def tokenizers_for(config: dict[str, Any]) -> list[CLIPTokenizer]:
    """One tokenizer per text encoder of a family config (`config["tokenizers"][i]["pad_token"]`)."""
    return [build_clip_tokenizer(entry.get("pad_token", CLIP_L_PAD)) for entry in config["tokenizers"]]
