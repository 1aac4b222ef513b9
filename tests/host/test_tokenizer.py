"""The offline CLIP tokenizer gives the same ids as openai-clip's own SimpleTokenizer."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from modules.tokenizer import (
    MAX_LENGTH,
    VOCAB_SIZE,
    bpe_vocab_path,
    build_clip_tokenizer,
    clip_merges,
    clip_vocab,
)

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT, Masterpiece, BEST quality",
    "(masterpiece:1.2), [blue eyes], ((detailed face)), {wings}, <lora:add_detail:0.7>",
    "score_9, score_8_up, 1girl, solo, looking_at_viewer",
    "   extra    spaces\tand\nnewlines   ",
    "numbers 1234567890 3.14159 -42 1e-5 100%",
    "emoji 🐱🔥✨ and 👩‍👩‍👧 family",
    "unicode: café naïve Ærøskøbing 東京 タワー Москва ñandú",
    "punctuation!!! ?? ... ;; -- __ // \\ | ~ ` ' \" @ # $ ^ & * + =",
    "don't can't it's we're they've I'm we'll he'd",
    "html entities &amp; &lt;tag&gt; &quot;quoted&quot;",
    "mojibake cafÃ© and “smart quotes” — em dash",
    "",
    "masterpiece, " * 40 + "a very long prompt that goes far beyond seventy-five tokens",
]


@pytest.fixture(scope="module")
def simple_tokenizer() -> ModuleType:
    """openai-clip's simple_tokenizer.py loaded by file path (importing `clip` itself would need torchvision)."""
    path = bpe_vocab_path().parent / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("_openai_clip_simple_tokenizer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_vocabulary_matches_clip(simple_tokenizer) -> None:
    vocab = clip_vocab()
    assert len(vocab) == VOCAB_SIZE == len(simple_tokenizer.encoder)
    assert vocab == simple_tokenizer.encoder
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert len(clip_merges()) == 48894 and clip_merges()[0] == ("i", "n")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_openai_clip(simple_tokenizer, prompt: str) -> None:
    tokenizer = build_clip_tokenizer()
    ours = tokenizer(prompt).input_ids
    theirs = [49406, *simple_tokenizer.encode(prompt), 49407]
    assert ours == theirs
    assert tokenizer.encode(prompt) == theirs
    assert tokenizer.tokenize(prompt) == [simple_tokenizer.decoder[i] for i in theirs[1:-1]]


def test_batch_and_padding_truncation() -> None:
    clip_l = build_clip_tokenizer()
    open_clip = build_clip_tokenizer("!")
    assert clip_l.model_max_length == MAX_LENGTH == 77
    batch = clip_l(["a cat", "  A   CAT "], padding="max_length", max_length=77, truncation=True).input_ids
    assert batch[0] == batch[1] and len(batch[0]) == 77
    assert batch[0][:4] == [49406, 320, 2368, 49407] and set(batch[0][4:]) == {49407}
    padded = open_clip("a cat", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {0} and open_clip.pad_token_id == 0
    long = clip_l(PROMPTS[-1], padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407
    with pytest.raises(ValueError, match="pad_token"):
        build_clip_tokenizer("<pad>")
