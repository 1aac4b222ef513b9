"""Inpainting on tiny real models: the original kept outside the mask, inverted masks, masked content, "only
masked" with padding, mask blur against an independent convolution, masks of another size, alpha masks, and
9-channel inpainting checkpoints fed the mask and masked-image latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import masking
from modules.host import WebUI
from modules.img2img import StableDiffusionProcessingImg2Img
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.model_factory import write_single_file


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size)
    mask.paste(255, box)
    return mask


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("inpaint")), "--no-embedded-default"],
                      load_extensions_now=False)
    write_single_file(ui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    write_single_file(ui.paths.ckpt_dir / "tiny-inpainting.safetensors", "SD1", seed=0, inpainting=True)
    ui.models.load("tiny.safetensors")
    return ui


INIT = noise_image(64, 64, seed=1)
MASK = box_mask((64, 64), (16, 16, 48, 40))


def inpaint(webui, **kwargs):
    values = {"prompt": "a cat", "seed": 7, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
              "init_images": [INIT], "mask": MASK, "mask_blur": 0, "inpaint_full_res": False,
              "denoising_strength": 0.9, "do_not_save_samples": True}
    values.update(kwargs)
    p = StableDiffusionProcessingImg2Img(**values)
    return process_images(webui, p), p


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def inside(array: np.ndarray) -> np.ndarray:
    return array[16:40, 16:48]


def outside(array: np.ndarray) -> np.ndarray:
    keep = np.ones(array.shape[:2], bool)
    keep[16:40, 16:48] = False
    return array[keep]


def test_original_is_kept_outside_the_mask_and_repainted_inside(webui):
    result, _ = inpaint(webui)
    diff = np.abs(px(result.images[0]) - px(INIT))
    assert outside(diff).max() == 0
    assert inside(diff).mean() > 10
    assert "Mask blur" not in result.infotexts[0]


def test_inverted_mask_repaints_the_outside(webui):
    result, _ = inpaint(webui, inpainting_mask_invert=1)
    diff = np.abs(px(result.images[0]) - px(INIT))
    assert inside(diff).max() == 0 and outside(diff).mean() > 10
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


@pytest.mark.parametrize(("fill", "text"), [(0, "Masked content: fill"), (1, None), (2, "Masked content: latent noise"),
                                            (3, "Masked content: latent nothing")])
def test_masked_content_modes(webui, fill, text):
    result, p = inpaint(webui, inpainting_fill=fill)
    if text:
        assert text in result.infotexts[0]
    else:
        assert "Masked content" not in result.infotexts[0]
    assert outside(np.abs(px(result.images[0]) - px(INIT))).max() == 0
    if fill == 3:
        keep = p.mask_keep[0, 0]
        assert torch.all(p.init_latent[0][:, keep == 0] == 0)


def test_masked_contents_differ_from_each_other(webui):
    images = [px(inpaint(webui, inpainting_fill=fill)[0].images[0]) for fill in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(images[a] - images[b]).max() > 0


def test_only_masked_crops_with_padding_and_pastes_back_into_the_full_image(webui):
    big = noise_image(128, 96, seed=3)
    mask = box_mask((128, 96), (60, 40, 80, 56))
    result, p = inpaint(webui, init_images=[big], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=4)
    assert result.images[0].size == (128, 96)  # the original's size, not width x height
    # bbox (60, 40)-(80, 56) grown by 4 = 28x24, then grown to the processing aspect ratio 1:1 = 28x28
    assert p.paste_to == (56, 34, 28, 28)
    diff = np.abs(px(result.images[0]) - px(big))
    assert diff[:, :50].max() == 0 and diff[:30].max() == 0  # far outside the crop nothing moved
    assert diff[40:56, 60:80].mean() > 10
    text = result.infotexts[0]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 4" in text


def test_only_masked_with_a_blank_mask_falls_back_with_a_comment(webui):
    result, _ = inpaint(webui, mask=Image.new("L", (64, 64)), inpaint_full_res=True)
    assert any("mask is blank" in c for c in result.comments)


def test_mask_blur_is_opencvs_gaussian(webui):
    mask = box_mask((40, 30), (10, 8, 30, 20))
    blurred = np.asarray(masking.blur_mask(mask, 3, 1), dtype=np.float64)
    # independent oracle: direct sums over a reflect-101 padded array (numpy's "reflect" mode)
    array = np.asarray(mask, dtype=np.float64)
    for axis, sigma in ((1, 3), (0, 1)):
        radius = int(2.5 * sigma + 0.5)
        weights = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
        weights /= weights.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(array, pad, mode="reflect")
        length = array.shape[axis]
        array = sum(w * np.take(padded, range(i, i + length), axis=axis) for i, w in enumerate(weights))
    assert np.abs(blurred - np.rint(array)).max() <= 1
    result, _ = inpaint(webui, mask_blur=4)
    assert "Mask blur: 4" in result.infotexts[0]


def test_mask_of_another_size_is_stretched_to_the_init_image(webui):
    small = box_mask((32, 32), (8, 8, 24, 20))
    stretched = small.resize((64, 64))
    a, _ = inpaint(webui, mask=small)
    b, _ = inpaint(webui, mask=stretched)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))


def test_transparent_rgba_mask_uses_its_alpha(webui):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (16, 16, 48, 40))
    a, _ = inpaint(webui, mask=rgba)
    b, _ = inpaint(webui)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))


def test_inpainting_checkpoint_gets_mask_and_masked_image_latents(webui):
    webui.models.load("tiny-inpainting.safetensors")
    seen: list[torch.Size] = []
    handle = webui.models.current.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        result, p = inpaint(webui)
    finally:
        handle.remove()
        webui.models.load("tiny.safetensors")
    assert seen and all(shape[1] == 9 for shape in seen)
    cond = p.image_conditioning
    assert cond.shape == (1, 5, 8, 8)
    expected_mask = 1.0 - p.mask_keep[0, 0]
    assert torch.equal(cond[0, 0], expected_mask)
    assert result.js().count('"is_using_inpainting_conditioning": true') == 1
    assert outside(np.abs(px(result.images[0]) - px(INIT))).max() == 0


def test_latent_mask_replaces_the_mask_for_content_and_blending(webui):
    small = Image.new("L", (64, 64))
    small.paste(255, (24, 24, 40, 32))
    with_latent, p = inpaint(webui, latent_mask=small, inpainting_fill=3)
    keep = p.mask_keep[0, 0]
    assert int((keep == 0).sum()) == 2 * 1  # the 16x8 box is 2x1 latent cells; the 32x24 mask would be 4x3
    plain, _ = inpaint(webui, inpainting_fill=3)
    assert np.abs(px(with_latent.images[0]) - px(plain.images[0])).max() > 0


def test_txt2img_on_an_inpainting_checkpoint_repaints_everything(webui):
    webui.models.load("tiny-inpainting.safetensors")
    seen: list[torch.Size] = []
    handle = webui.models.current.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        p = StableDiffusionProcessingTxt2Img(prompt="a cat", seed=1, steps=2, width=64, height=64, enable_hr=True,
                                             hr_scale=1.5, denoising_strength=0.5, do_not_save_samples=True)
        result = process_images(webui, p)
    finally:
        handle.remove()
        webui.models.load("tiny.safetensors")
    assert result.images[0].size == (96, 96)
    assert {shape[1] for shape in seen} == {9}  # 4 noise channels + mask + grey-image latents, in both passes
    assert {tuple(shape[2:]) for shape in seen} == {(8, 8), (12, 12)}
