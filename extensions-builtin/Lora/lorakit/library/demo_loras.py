"""Demo LoRA files for a fresh machine: one per algorithm, for the embedded tiny SD1 model, each with training
metadata, a sidecar JSON (description, activation text, preferred weight, ...) and a preview image, so that every
card feature and every strategy can be tried without downloading anything.

The files use the key layouts real trainers write (kohya `lora_unet_`/`lora_te_` names; LyCORIS part names).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from modules.atomic_io import write_bytes_atomic, write_json_atomic
from modules.regular_files import walk
from modules.safetensors_header import write_safetensors

log = logging.getLogger(__name__)


def _kohya(prefix: str, path: str) -> str:
    path = path[len("text_model."):] if path.startswith("text_model.") else path
    return f"{prefix}{'text_model_' if prefix == 'lora_te_' else ''}{path.replace('.', '_')}"


def _layers(components: dict, kinds: tuple[type, ...], unet_filter: Callable[[str], bool],
            text_encoder: bool = True) -> list[tuple[str, torch.nn.Module]]:
    found = [(_kohya("lora_unet_", name), m) for name, m in components["unet"].named_modules()
             if isinstance(m, kinds) and unet_filter(name)]
    if text_encoder:
        found += [(_kohya("lora_te_", name), m) for name, m in components["text_encoders"][0].named_modules()
                  if isinstance(m, kinds) and "layers" in name]
    return found


def _attention(name: str) -> bool:
    return "attentions" in name and "transformer_blocks" in name


def _tensors_for(algorithm: str, components: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The file's tensors for one algorithm on the demo model's layers."""
    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    tensors: dict[str, torch.Tensor] = {}
    rank = 4
    if algorithm in ("LoRA", "DoRA"):
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            out_f, in_f = m.weight.shape
            tensors |= {f"{key}.lora_down.weight": rnd(rank, in_f), f"{key}.lora_up.weight": rnd(out_f, rank),
                        f"{key}.alpha": torch.tensor(float(rank))}
            if algorithm == "DoRA":
                tensors[f"{key}.dora_scale"] = m.weight.detach().norm(dim=0, keepdim=True) * 1.1
    elif algorithm == "LoCon":
        for key, m in _layers(components, (torch.nn.Linear, torch.nn.Conv2d),
                              lambda n: _attention(n) or "resnets" in n, text_encoder=False):
            shape = m.weight.shape
            down_shape = (rank, *shape[1:]) if len(shape) == 4 else (rank, shape[1])
            up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
            tensors |= {f"{key}.lora_down.weight": rnd(*down_shape), f"{key}.lora_up.weight": rnd(*up_shape),
                        f"{key}.alpha": torch.tensor(float(rank) / 2)}
    elif algorithm == "LoHa":
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            out_f, in_f = m.weight.shape
            tensors |= {f"{key}.hada_w1_a": rnd(out_f, rank), f"{key}.hada_w1_b": rnd(rank, in_f),
                        f"{key}.hada_w2_a": rnd(out_f, rank), f"{key}.hada_w2_b": rnd(rank, in_f),
                        f"{key}.alpha": torch.tensor(float(rank))}
    elif algorithm == "LoKr":
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            out_f, in_f = m.weight.shape
            a, c = (2, 2) if out_f % 2 == 0 and in_f % 2 == 0 else (1, 1)
            tensors |= {f"{key}.lokr_w1": rnd(a, c, scale=1.0), f"{key}.lokr_w2_a": rnd(out_f // a, rank),
                        f"{key}.lokr_w2_b": rnd(rank, in_f // c), f"{key}.alpha": torch.tensor(float(rank))}
    elif algorithm == "IA3":
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            tensors |= {f"{key}.weight": rnd(m.weight.shape[0], scale=0.3), f"{key}.on_input": torch.tensor(False)}
    elif algorithm == "Full":
        for key, m in _layers(components, (torch.nn.Linear,), _attention, text_encoder=False):
            tensors |= {f"{key}.diff": rnd(*m.weight.shape, scale=0.05), f"{key}.diff_b": rnd(m.weight.shape[0], scale=0.05)}
    elif algorithm == "Norm":
        for key, m in _layers(components, (torch.nn.GroupNorm, torch.nn.LayerNorm), lambda n: "resnets" in n or "norm" in n,
                              text_encoder=False):
            tensors |= {f"{key}.w_norm": rnd(m.weight.shape[0], scale=0.1), f"{key}.b_norm": rnd(m.weight.shape[0], scale=0.1)}
    elif algorithm == "GLoRA":
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            out_f, in_f = m.weight.shape
            tensors |= {f"{key}.a1.weight": rnd(rank, in_f), f"{key}.a2.weight": rnd(in_f, rank),
                        f"{key}.b1.weight": rnd(rank, in_f), f"{key}.b2.weight": rnd(out_f, rank),
                        f"{key}.alpha": torch.tensor(float(rank))}
    elif algorithm == "OFT":
        for key, m in _layers(components, (torch.nn.Linear,), _attention):
            out_f = m.weight.shape[0]
            block = 8 if out_f % 8 == 0 else out_f
            tensors[f"{key}.oft_blocks"] = rnd(out_f // block, block, block, scale=0.05)
    else:
        raise ValueError(f"no demo for algorithm {algorithm!r}")
    return tensors


DEMOS = (
    ("demo_lora", "LoRA", "networks.lora", "warm sunset palette", "sunset style", 0.8),
    ("demo_locon", "LoCon", "lycoris.kohya", "thick ink outlines", "ink lineart", 0.7),
    ("demo_loha", "LoHa", "lycoris.kohya", "watercolour washes", "watercolor", 1.0),
    ("demo_lokr", "LoKr", "lycoris.kohya", "pixel-art blocks", "pixel art", 0.6),
    ("demo_ia3", "IA3", "lycoris.kohya", "high-contrast lighting", "dramatic light", 1.0),
    ("demo_full", "Full", "lycoris.kohya", "a full fine-tune difference", "finetune", 1.0),
    ("demo_norm", "Norm", "lycoris.kohya", "colour-grading through norm layers", "color grade", 1.0),
    ("demo_glora", "GLoRA", "lycoris.kohya", "generalised LoRA texture", "glora texture", 0.9),
    ("demo_oft", "OFT", "lycoris.kohya", "orthogonal rotation of attention", "oft rotate", 1.0),
    ("demo_dora", "DoRA", "networks.lora", "weight-decomposed LoRA", "dora detail", 0.8),
)


def _preview(hue: int) -> bytes:
    from PIL import Image, ImageDraw  # noqa: PLC0415

    image = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(image)
    for y in range(256):
        draw.line([(0, y), (255, y)], fill=((hue + y) % 256, (hue * 3 + 255 - y) % 256, (hue * 7) % 256))
    draw.ellipse([64, 64, 192, 192], outline=(255, 255, 255), width=6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def ensure_demo_loras(lora_dir: Path, seed: int = 0) -> list[Path]:
    """Write the demo LoRAs into `lora_dir` when it holds no LoRA file at all; returns the files written."""
    lora_dir = Path(lora_dir)
    if lora_dir.is_dir() and any(name.lower().endswith((".safetensors", ".pt", ".ckpt"))
                                 for _, _, names in walk(lora_dir) for name in names):  # loop-proof, bounded
        return []
    from modules.tiny_models import build_tiny_components  # noqa: PLC0415

    components = build_tiny_components("SD1", seed=seed)
    written = []
    for index, (name, algorithm, module, description, trigger, weight) in enumerate(DEMOS):
        gen = torch.Generator().manual_seed(seed * 1000 + index)
        tensors = {k: v.contiguous() for k, v in _tensors_for(algorithm, components, gen).items()}
        tags = {trigger: 40, "masterpiece": 25, "1girl": 18, algorithm.lower(): 12, "outdoors": 5}
        metadata = {
            "ss_output_name": name.replace("demo_", "demo-"), "ss_base_model_version": "sd_v1",
            "ss_sd_model_name": "tiny-sd1-demo.safetensors", "ss_network_module": module,
            "ss_network_dim": "4", "ss_network_alpha": "4", "ss_resolution": "(512, 512)", "ss_num_train_images": "42",
            "ss_num_epochs": "10", "ss_learning_rate": "0.0001", "ss_clip_skip": "1",
            "ss_training_started_at": str(1_700_000_000 + index * 3600),
            "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 42}}}),
            "ss_tag_frequency": json.dumps({"10_demo": tags}),
            "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": f"Demo {algorithm}",
        }
        target = lora_dir / f"{name}.safetensors"
        write_safetensors(target, tensors, metadata)
        write_json_atomic(lora_dir / f"{name}.json", {
            "description": f"Demo {algorithm} for the embedded tiny model: {description}.",
            "sd version": "SD1", "activation text": trigger, "preferred weight": weight,
            "negative text": "blurry" if index % 2 == 0 else "", "notes": f"Written on first start ({algorithm}).",
        })
        write_bytes_atomic(lora_dir / f"{name}.png", _preview(index * 25))
        written.append(target)
    log.info("wrote %d demo LoRAs into %s", len(written), lora_dir)
    return written
