"""Text formats of generation: A1111 infotext (write + parse), PNG `parameters` chunks, file numbering, and the
prompt syntax (emphasis, BREAK, 75-token chunks with comma backtracking) on the real CLIP tokenizer."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.images import image_to_png_bytes, next_sequence_number, read_info_from_image, save_image
from modules.infotext import format_infotext, format_params, parse_generation_parameters, quote, unquote
from modules.prompt_encoding import TokenizerSpec, parse_prompt_attention, tokenize_line
from modules.script_callbacks import Callbacks
from modules.tokenizer import build_clip_tokenizer

A1111_INFOTEXT = """masterpiece, 1girl, <lora:add_detail:0.7>
(best quality:1.2), outdoors
Negative prompt: lowres, bad hands
worst quality
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3923201913, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 2, \
Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54, my_style: 0123456789ab", Version: v1.10.1"""


# ---- infotext writing ----------------------------------------------------------------------------------------------


def test_quote_only_values_with_separators():
    assert quote("Euler a") == "Euler a"
    assert quote(7) == 7
    assert quote("a: b") == '"a: b"'
    assert quote("x, y") == '"x, y"'
    assert quote('line\n"quoted"') == '"line\\n\\"quoted\\""'
    assert unquote('"a: b"') == "a: b" and unquote("plain") == "plain" and unquote('"broken') == '"broken'


def test_format_params_skips_none_and_writes_whole_floats_as_ints():
    text = format_params({"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Denoising strength": 0.45,
                          "Clip skip": None, "Lora hashes": "a: 0123456789ab, b: ba9876543210", "Tiling": "Tiling"})
    assert text == ('Steps: 20, Sampler: Euler a, CFG scale: 7, Denoising strength: 0.45, '
                    'Lora hashes: "a: 0123456789ab, b: ba9876543210", Tiling')


def test_format_infotext_layout():
    params = {"Steps": 20, "Sampler": "Euler a", "Seed": 1, "Size": "512x512"}
    assert format_infotext("a cat", "ugly", params) == (
        "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512")
    assert format_infotext("a cat", "", params) == "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512"


# ---- infotext parsing ----------------------------------------------------------------------------------------------


def test_parse_a1111_infotext():
    res = parse_generation_parameters(A1111_INFOTEXT)
    assert res["Prompt"] == "masterpiece, 1girl, <lora:add_detail:0.7>\n(best quality:1.2), outdoors"
    assert res["Negative prompt"] == "lowres, bad hands\nworst quality"
    assert res["Steps"] == "20" and res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Karras"
    assert res["Seed"] == "3923201913" and res["CFG scale"] == "7"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768") and "Size" not in res
    assert res["Model hash"] == "6ce0161689" and res["Model"] == "v1-5-pruned-emaonly"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54, my_style: 0123456789ab"
    assert res["Clip skip"] == "2" and res["Hires upscale"] == "2" and res["Version"] == "v1.10.1"
    assert res["Emphasis"] == "Original"  # the prompt uses (x:1.2)


def test_parse_fills_a1111_defaults():
    res = parse_generation_parameters("a cat\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 64x64")
    assert res["Clip skip"] == "1"
    assert res["Schedule type"] == "Automatic" and res["RNG"] == "GPU"
    assert res["Hires resize-1"] == 0 and res["Hires sampler"] == "Use same sampler" and res["Hires prompt"] == ""
    assert res["Negative prompt"] == "" and "Emphasis" not in res


def test_parse_without_parameter_line_is_all_prompt():
    res = parse_generation_parameters("just a prompt, with: a colon\nNegative prompt: bad")
    assert res["Prompt"] == "just a prompt, with: a colon" and res["Negative prompt"] == "bad"
    assert "Steps" not in res


def test_parse_converts_old_first_pass_size():
    res = parse_generation_parameters("x\nSteps: 20, Size: 1024x1024, First pass size: 0x0, Seed: 1")
    assert (res["Size-1"], res["Size-2"]) == (512, 512)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 1024)


def test_parse_runs_infotext_pasted_callbacks():
    callbacks = Callbacks()
    seen = []

    def rewrite(text, params):
        seen.append(text)
        params["Prompt"] = params["Prompt"].replace("<lora:old:", "<lora:new:")

    callbacks.add("infotext_pasted", rewrite)
    res = parse_generation_parameters("a <lora:old:0.5>\nSteps: 20, Seed: 1, Size: 8x8", callbacks=callbacks)
    assert res["Prompt"] == "a <lora:new:0.5>" and len(seen) == 1


def test_round_trip_keeps_awkward_values():
    params = {"Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 42,
              "Size": "640x448", "Hires prompt": 'a "dog", sitting: here\nsecond line',
              "Lora hashes": "x: 0123456789ab, y: ba9876543210"}
    text = format_infotext("a cat, (fluffy:1.2)\nline two", "bad: hands, ugly", params)
    res = parse_generation_parameters(text)
    assert res["Prompt"] == "a cat, (fluffy:1.2)\nline two"
    assert res["Negative prompt"] == "bad: hands, ugly"
    assert res["Hires prompt"] == 'a "dog", sitting: here\nsecond line'
    assert res["Lora hashes"] == "x: 0123456789ab, y: ba9876543210"
    assert (res["Steps"], res["CFG scale"], res["Seed"]) == ("30", "6.5", "42")
    assert (res["Size-1"], res["Size-2"]) == ("640", "448")


VALUE_TEXT = st.text(alphabet=st.sampled_from(list("abcxyz019 ,:-_()'\"\n")), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(value=VALUE_TEXT, prompt=VALUE_TEXT)
def test_round_trip_property(value, prompt):
    value = value.strip()
    if not value or re.fullmatch(r"\d+x\d+", value) or (value[0] == '"' and value[-1] == '"'):
        return  # A1111's format cannot carry these unambiguously (empty, WxH sizes, pre-quoted text)
    prompt = prompt.strip()
    if not prompt or "\n" in prompt or prompt.startswith("Negative prompt:"):
        return
    text = format_infotext(prompt, "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1, "Extra key": value})
    res = parse_generation_parameters(text)
    assert res["Extra key"] == value
    assert res["Steps"] == "20" and res["Seed"] == "1"


# ---- PNG chunks and file names -------------------------------------------------------------------------------------


def test_png_bytes_round_trip_with_unicode():
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    text = "ein Hund, 犬 (dog:1.2)\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 8x8"
    data = image_to_png_bytes(image, text, extra={"note": "hi"})
    with Image.open(io.BytesIO(data)) as loaded:
        info, other = read_info_from_image(loaded)
        assert loaded.size == (8, 8)
    assert info == text and other == {"note": "hi"}
    with Image.open(io.BytesIO(image_to_png_bytes(image))) as loaded:
        assert read_info_from_image(loaded) == (None, {})


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_infotext_from_exif_user_comment(fmt):
    """A1111 stores the infotext of JPEG/WebP images in EXIF UserComment ("UNICODE" + UTF-16BE)."""
    text = "a cat, 犬\nSteps: 20, Sampler: Euler a, Seed: 7, Size: 8x8"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt, exif=exif)
    with Image.open(io.BytesIO(buffer.getvalue())) as loaded:
        info, other = read_info_from_image(loaded)
    assert info == text and "exif" not in other
    assert parse_generation_parameters(info)["Seed"] == "7"


def test_save_image_numbers_files_and_is_atomic(tmp_path):
    (tmp_path / "00005-1.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert next_sequence_number(tmp_path) == 6
    image = Image.new("RGB", (8, 8))
    first = save_image(image, tmp_path, seed=99, infotext="a\nSteps: 1, Seed: 99, Size: 8x8")
    second = save_image(image, tmp_path, seed=99, infotext="b\nSteps: 1, Seed: 99, Size: 8x8")
    assert (first.name, second.name) == ("00006-99.png", "00007-99.png")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    with Image.open(second) as loaded:
        assert parse_generation_parameters(read_info_from_image(loaded)[0])["Prompt"] == "b"
    plain = save_image(image, tmp_path, seed=1, infotext="c", pnginfo_enabled=False)
    with Image.open(plain) as loaded:
        assert read_info_from_image(loaded)[0] is None
    with pytest.raises(ValueError, match="unsupported image format 'gif'"):
        save_image(image, tmp_path, seed=1, extension="gif")


# ---- prompt syntax -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # A1111's own documented examples
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
         [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
          (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_prompt_attention(text, expected):
    result = parse_prompt_attention(text)
    assert [t for t, _ in result] == [t for t, _ in expected]
    assert [w for _, w in result] == pytest.approx([w for _, w in expected])


@pytest.fixture(scope="module")
def clip_l():
    return TokenizerSpec.from_tokenizer(build_clip_tokenizer())


def test_tokenize_line_uses_real_clip_ids_and_weights(clip_l):
    chunks, count = tokenize_line(clip_l, "a photo of a (cat:1.5)")
    assert count == 5 and len(chunks) == 1
    chunk = chunks[0]
    assert len(chunk.tokens) == 77
    assert chunk.tokens[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(chunk.tokens[7:]) == {49407}  # CLIP-L pads with the end token
    assert chunk.multipliers[:7] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.0]


def test_open_clip_padding_is_zero_after_end():
    spec = TokenizerSpec.from_tokenizer(build_clip_tokenizer("!"))
    chunk = tokenize_line(spec, "a cat")[0][0]
    assert chunk.tokens[:4] == [49406, 320, 2368, 49407] and set(chunk.tokens[4:]) == {0}


def test_long_prompt_moves_words_after_last_comma(clip_l):
    prompt = " ".join(["cat"] * 72) + ", dog dog dog dog dog"
    chunks, count = tokenize_line(clip_l, prompt)
    assert len(chunks) == 2 and count == 75 + 5
    first, second = chunks
    assert first.tokens[1:74] == [2368] * 72 + [267]  # 72 cats and the comma stay together
    assert first.tokens[74:] == [49407] * 3  # padded after the comma
    assert second.tokens[1:6] == [1929] * 5 and second.tokens[6] == 49407
    without_backtrack, _ = tokenize_line(clip_l, prompt, comma_padding_backtrack=0)
    assert without_backtrack[0].tokens[74:76] == [1929, 1929]  # plain cut at 75 tokens


def test_break_starts_a_new_chunk_and_emphasis_none_keeps_brackets(clip_l):
    chunks, _ = tokenize_line(clip_l, "a cat BREAK a dog")
    assert len(chunks) == 2 and chunks[1].tokens[:4] == [49406, 320, 1929, 49407]
    none_chunks, count = tokenize_line(clip_l, "(cat:1.5) BREAK dog", emphasis="None")
    assert len(none_chunks) == 1 and set(none_chunks[0].multipliers) == {1.0}
    assert count > 3  # brackets, weight and BREAK are tokenized as text (A1111's "None" emphasis)


def test_infotext_json_escapes_are_valid_json():
    value = 'a "b", c'
    assert json.loads(quote(value)) == value
