"""Upscalers: the registry's built-in resizes, ESRGAN model files (a tiny RRDBNet the test writes as .pth and
.safetensors) loaded through spandrel without torchvision and compared with spandrel's own model, tiling, the size
cap, unknown names, and the same upscalers in hires fix."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images, upscaler_names
from modules.upscalers import (
    MAX_OUTPUT_SIDE,
    UpscalerError,
    UpscalerRegistry,
    import_spandrel,
    pil_to_tensor,
    tensor_to_pil,
)
from tests.helpers.model_factory import write_single_file


def tiny_esrgan_state_dict(seed: int = 0, features: int = 8, blocks: int = 1) -> dict[str, torch.Tensor]:
    """A 4x RRDBNet (ESRGAN) in the new BasicSR key layout: conv_first, body.N.rdbK.convM (growth 32), conv_body,
    conv_up1/2, conv_hr, conv_last; small random weights."""
    generator = torch.Generator().manual_seed(seed)
    growth = 32
    tensors: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int) -> None:
        tensors[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * 0.05
        tensors[f"{name}.bias"] = torch.randn(out_ch, generator=generator) * 0.01

    conv("conv_first", features, 3)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                conv(f"body.{block}.rdb{rdb}.conv{index}", features if index == 5 else growth,
                     features + (index - 1) * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, features, features)
    conv("conv_last", 3, features)
    return tensors


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    save_file(tiny_esrgan_state_dict(seed=1), str(root / "ESRGAN" / "4x_tiny.safetensors"))
    torch.save(tiny_esrgan_state_dict(seed=2), root / "ESRGAN" / "tiny_pickled.pth")
    save_file(tiny_esrgan_state_dict(seed=3), str(root / "RealESRGAN" / "RealESRGAN_x4tiny.safetensors"))
    (root / "ESRGAN" / "notes.txt").write_text("not a model")
    return root


def spandrel_reference(state_dict: dict[str, torch.Tensor], image: Image.Image) -> Image.Image:
    """spandrel's own model for the same tensors, called directly on the whole image."""
    spandrel = import_spandrel()
    model = spandrel.ModelLoader().load_from_state_dict(state_dict).eval()
    return tensor_to_pil(model(pil_to_tensor(image)))


def test_registry_lists_builtins_then_model_files(models_dir):
    registry = UpscalerRegistry(models_dir)
    assert registry.names() == ["None", "Lanczos", "Nearest", "4x_tiny", "tiny_pickled", "RealESRGAN_x4tiny"]
    assert registry.find("4X_TINY").path == models_dir / "ESRGAN" / "4x_tiny.safetensors"
    assert registry.find("4x_tiny").scale_hint == 4.0
    assert registry.by_index_or_name(1).name == "Lanczos"
    with pytest.raises(UpscalerError, match=r"unknown upscaler 'ESRGAN_4x'; valid upscalers: None, Lanczos, Nearest, "
                                            r"4x_tiny, tiny_pickled, RealESRGAN_x4tiny"):
        registry.find("ESRGAN_4x")
    with pytest.raises(UpscalerError, match="index 9 out of range 0..5"):
        registry.by_index_or_name(9)


@pytest.mark.parametrize(("name", "seed"), [("4x_tiny", 1), ("tiny_pickled", 2)])
def test_esrgan_file_upscales_like_spandrels_own_model_without_torchvision(models_dir, name, seed):
    registry = UpscalerRegistry(models_dir)
    image = noise_image(40, 24)
    result = registry.upscale(image, name, 4)
    assert result.size == (160, 96)
    expected = spandrel_reference(tiny_esrgan_state_dict(seed=seed), image)
    assert np.array_equal(np.asarray(result), np.asarray(expected))
    assert "torchvision" not in sys.modules  # the placeholders were only there while spandrel imported
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401, PLC0415


def test_tiled_upscale_equals_whole_image_and_other_scales_end_with_lanczos(models_dir):
    whole = UpscalerRegistry(models_dir)
    tiled = UpscalerRegistry(models_dir, tile=16, tile_overlap=16)
    image = noise_image(48, 40, seed=5)
    a, b = whole.upscale(image, "4x_tiny", 4), tiled.upscale(image, "4x_tiny", 4)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    two = whole.upscale(image, "4x_tiny", 2)  # one 4x pass, then Lanczos down to the target (A1111)
    assert two.size == (96, 80)
    assert np.array_equal(np.asarray(two), np.asarray(a.resize((96, 80), Image.Resampling.LANCZOS)))


def test_builtin_resizes_and_size_cap():
    registry = UpscalerRegistry(None)
    image = noise_image(30, 20)
    assert registry.upscale(image, "Lanczos", 2).size == (56, 40)  # A1111: the target floored to /8
    nearest = registry.upscale(image, "Nearest", 2)
    assert np.array_equal(np.asarray(nearest), np.asarray(image.resize((56, 40), Image.Resampling.NEAREST)))
    with pytest.raises(UpscalerError, match=f"outside 1..{MAX_OUTPUT_SIDE} pixels per side"):
        registry.upscale(image, "Lanczos", 1000)


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "broken.pth").write_bytes(b"not a pickle")
    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "ESRGAN" / "foreign.safetensors"))
    registry = UpscalerRegistry(tmp_path)
    with pytest.raises(UpscalerError, match="'broken' could not be loaded"):
        registry.upscale(noise_image(8, 8), "broken", 2)
    with pytest.raises(UpscalerError, match="foreign.safetensors: not an upscaler model spandrel recognises"):
        registry.upscale(noise_image(8, 8), "foreign", 2)


def test_hires_fix_offers_and_uses_model_upscalers(tmp_path):
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"], load_extensions_now=False)
    (webui.paths.models_dir / "ESRGAN").mkdir()
    save_file(tiny_esrgan_state_dict(seed=1), str(webui.paths.models_dir / "ESRGAN" / "4x_tiny.safetensors"))
    write_single_file(webui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    webui.models.load("tiny.safetensors")
    assert upscaler_names(webui.upscalers)[-4:] == ["None", "Lanczos", "Nearest", "4x_tiny"]

    def run(upscaler: str):
        p = StableDiffusionProcessingTxt2Img(prompt="a cat", seed=3, steps=2, width=64, height=64, enable_hr=True,
                                             hr_scale=1.5, hr_upscaler=upscaler, denoising_strength=0.0,
                                             do_not_save_samples=True)
        return process_images(webui, p)

    esrgan, lanczos = run("4x_tiny"), run("Lanczos")
    assert esrgan.images[0].size == (96, 96)
    assert "Hires upscaler: 4x_tiny" in esrgan.infotexts[0]
    assert np.abs(np.asarray(esrgan.images[0], int) - np.asarray(lanczos.images[0], int)).max() > 0
    with pytest.raises(ValueError, match="unknown hr_upscaler 'ESRGAN_4x'; valid upscalers: Latent, .*4x_tiny"):
        run("ESRGAN_4x")
