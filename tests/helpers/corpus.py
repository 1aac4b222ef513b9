"""A corpus of bad LoRA and checkpoint files, written by the tests into a folder they give, each case with the words
the product must say about it.

`lora_corpus(folder, model, full)` writes every LoRA case into its own subfolder of `folder` (a Lora root holding
only that case's files, so one case cannot hide another) and returns `LoraCase`s:

* framing and header: empty file, truncation at many offsets (quick form: 12 spread over the length field, the
  header and the payload; full form: every offset of the length field and the header plus 256 in the payload),
  header length beyond the file, absurd header length, non-JSON / non-UTF-8 / non-object headers, unknown dtype,
  invalid shape, overlapping offsets, offsets out of range, a size that does not match dtype x shape;
* tensors: NaN and Inf (a whole file, and one bad layer in an otherwise good file), rank mismatch, 3-D factors where
  2-D ones are expected, rank 0, a non-scalar alpha, a layer of another width, unknown parts;
* architecture: a SDXL- and a SD2-shaped LoRA on the SD1 model, metadata saying SDXL, keys of no SD model at all
  (a language-model LoRA), a checkpoint put into the Lora folder;
* pickles: `.pt`/`.ckpt` whose unpickling would run `os.system` / `builtins.exec` (they must be refused by the
  `weights_only` loader; the command would create `LoraCase.marker`), a pickle of a list, random bytes;
* the file system: a directory named `x.safetensors`, a broken symlink, a symlink loop, an unreadable file (not as
  root, who can read it anyway), a non-UTF-8 file name (when the file system takes one), a name of 255 bytes, and the
  same stem in two subfolders (both usable as `sub/stem`; the bare stem is the first in scan order, as in A1111).

`checkpoint_corpus(folder, good, full)` writes bad checkpoints into `folder` (the checkpoints folder) and returns
`CheckpointCase`s: the same framing/header cases, truncations, a LoRA as checkpoint, a missing and a misshapen
tensor, pickles, a broken symlink, a non-UTF-8 name.

Stages of a LoRA case: `scan` (the registry scan skips the file; its reason is kept in `NetworkRegistry.errors`),
`load` (found, then refused when loaded: `ActivationReport.errors`), `ok` (loads and applies exactly `deltas` at
multiplier 1; `fragment` then is the warning when part of it is reported as not applied).

`weights_problems(model, pristine, expected)` is the suite's nothing-lost check of a model's weights: layers with an
expected delta equal pristine + delta (float32 tolerance), every other tensor is bitwise pristine, and no parameter
was added or removed.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modules.sd_model_types import LoadedModel
from tests.helpers.lora_testing import kohya_name, lora_targets, write_kohya_lora

MAX_NAME_BYTES = 255


@dataclass
class LoraCase:
    """One bad (or oddly named but good) LoRA file and what the product must do with it."""

    name: str
    root: Path
    request: str
    stage: str  # "scan", "load" or "ok"
    fragment: str | None = None  # words the user must see (scan/load: the error; ok: the warning, if any)
    path: Path | None = None  # the file the scan reason is kept under
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # what applies at multiplier 1 (stage "ok")
    marker: Path | None = None  # must not exist after loading (a pickle payload would create it)


@dataclass
class CheckpointCase:
    """One bad checkpoint file in the checkpoints folder: the name to load it by, the words of the error."""

    name: str
    request: str
    fragment: str
    marker: Path | None = None


class _Call:
    """Unpickles as `function(*args)`: what a malicious `.pt`/`.ckpt` uses to run code."""

    def __init__(self, function: Callable[..., object], *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.function, self.args


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    """(header, payload) of a well-formed safetensors file."""
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def join_safetensors(header: dict | list | str | bytes, payload: bytes) -> bytes:
    """A file from a header (any JSON value, or raw bytes) and a payload, with a correct length field."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(body)) + body + payload


def truncation_offsets(size: int, header_end: int, full: bool, payload_samples: int = 256) -> list[int]:
    """Offsets to cut a file of `size` bytes at (`header_end` = 8 + header length). Quick: 12 spread over the
    length field, the header and the payload. Full: every offset up to the end of the header, then
    `payload_samples` spread over the payload."""
    if full:
        payload = size - header_end
        step = max(payload // payload_samples, 1)
        return sorted(set(range(0, header_end + 1)) | set(range(header_end, size, step)) | {size - 1})
    quick = [0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 1,
             header_end + (size - header_end) // 3, header_end + 2 * (size - header_end) // 3, size - 1]
    return sorted(set(quick))


def truncation_fragment(offset: int, header_end: int) -> str:
    """What the header check says about a file cut at `offset`."""
    if offset < 8:
        return "too short to be a safetensors file"
    if offset < header_end:
        return "beyond the end of the file"
    return "out of range"


def _layer(model: LoadedModel, index: int = 0) -> tuple[str, str, torch.nn.Module]:
    """(target name, kohya key, module) of the model's `index`-th usual Linear LoRA target."""
    name, module = [(n, m) for n, m in lora_targets(model).items() if m.weight.dim() == 2][index]
    return name, kohya_name(model, name), module


def _factors(module: torch.nn.Module, rank: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = module.weight.shape
    return (torch.randn(rank, in_features, generator=generator) * 0.1,
            torch.randn(out_features, rank, generator=generator) * 0.1)


def lora_corpus(folder: Path, model: LoadedModel, full: bool) -> list[LoraCase]:
    """Write every LoRA case into `folder/<case name>/` and return the cases (see the module docstring)."""
    cases: list[LoraCase] = []

    def root(name: str) -> Path:
        path = folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(name: str, data: bytes, fragment: str, stage: str = "scan", suffix: str = ".safetensors") -> None:
        path = root(name) / f"{name}{suffix}"
        path.write_bytes(data)
        cases.append(LoraCase(name, path.parent, name, stage, fragment, path))

    def tensors(name: str, parts: dict[str, torch.Tensor], fragment: str, metadata: dict[str, str] | None = None,
                stage: str = "load") -> None:
        path = root(name) / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in parts.items()}, str(path), metadata=metadata)
        cases.append(LoraCase(name, path.parent, name, stage, fragment, path))

    # ------------------------------------------------------------------ framing and header
    base_path = folder / "_base" / "base.safetensors"
    write_kohya_lora(base_path, model, seed=11, only=2)
    raw = base_path.read_bytes()
    header, payload = split_safetensors(raw)
    header_end = len(raw) - len(payload)
    write("empty", b"", "file is 0 bytes, too short to be a safetensors file")
    for offset in truncation_offsets(len(raw), header_end, full):
        write(f"cut{offset:05d}", raw[:offset], truncation_fragment(offset, header_end))
    write("header_beyond", struct.pack("<Q", len(raw)) + raw[8:], "beyond the end of the file")
    write("header_absurd", struct.pack("<Q", 2**63 + 5) + raw[8:], "is absurdly large")
    write("header_not_json", join_safetensors(b"{this is not json", payload), "header is not valid JSON")
    write("header_not_utf8", join_safetensors(b'{"\xff\xfe": 1}', payload), "header is not valid JSON")
    write("header_list", join_safetensors([1, 2, 3], payload), "header is a JSON list, not an object")
    write("header_string", join_safetensors("text", payload), "header is a JSON str, not an object")
    keys = [k for k in header if k != "__metadata__"]
    alphas = [k for k in keys if k.endswith(".alpha")]

    def edited(name: str, fragment: str, edit: Callable[[dict], None]) -> None:
        changed = json.loads(json.dumps(header))
        edit(changed)
        write(name, join_safetensors(changed, payload), fragment)

    edited("dtype_unknown", "has unknown dtype 'F7'", lambda h: h[keys[0]].update(dtype="F7"))
    edited("shape_negative", "has an invalid shape [-4, 32]", lambda h: h[keys[0]].update(shape=[-4, 32]))
    edited("offsets_overlap", "overlap", lambda h: h[alphas[1]].update(data_offsets=h[alphas[0]]["data_offsets"]))
    edited("offsets_out_of_range", "are out of range",
           lambda h: h[keys[-1]].update(data_offsets=[len(payload) - 4, len(payload) + 4]))
    edited("offsets_wrong_size", "needs", lambda h: h[alphas[0]].update(dtype="F64"))
    edited("metadata_not_object", "__metadata__ is not an object", lambda h: h.update(__metadata__=["x"]))
    edited("entry_not_object", "has no description object", lambda h: h.update(extra=[1, 2]))

    # ------------------------------------------------------------------ tensors
    name0, key0, module0 = _layer(model, 0)
    down, up = _factors(module0)
    for label, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = down.clone()
        bad[1, 2] = value
        tensors(f"tensor_{label}", {f"{key0}.lora_down.weight": bad, f"{key0}.lora_up.weight": up},
                "contains NaN or Inf values")
    partial_root = root("tensor_nan_one_layer")
    partial_path = partial_root / "tensor_nan_one_layer.safetensors"
    deltas = write_kohya_lora(partial_path, model, seed=12, only=5)
    parts = load_file(str(partial_path))
    victim = kohya_name(model, next(iter(deltas)))
    parts[f"{victim}.lora_up.weight"][0, 0] = float("nan")
    save_file(parts, str(partial_path))
    cases.append(LoraCase("tensor_nan_one_layer", partial_root, "tensor_nan_one_layer", "ok",
                          "1 layers no strategy understands", partial_path,
                          {n: d for n, d in deltas.items() if kohya_name(model, n) != victim}))
    tensors("rank_mismatch", {f"{key0}.lora_down.weight": down, f"{key0}.lora_up.weight": up[:, :3]},
            "LoRA rank mismatch")
    tensors("up_3d", {f"{key0}.lora_down.weight": down, f"{key0}.lora_up.weight": up.reshape(*up.shape, 1).repeat(1, 1, 2)},
            "LoRA rank mismatch")
    tensors("down_3d", {f"{key0}.lora_down.weight": down.reshape(*down.shape, 1).repeat(1, 1, 3),
                        f"{key0}.lora_up.weight": up}, "delta has")
    tensors("rank_zero", {f"{key0}.lora_down.weight": down[:0], f"{key0}.lora_up.weight": up[:, :0]},
            f"part 'lora_up.weight' is empty (shape {tuple(up[:, :0].shape)}, rank 0?)")
    tensors("alpha_not_scalar", {f"{key0}.lora_down.weight": down, f"{key0}.lora_up.weight": up,
                                 f"{key0}.alpha": torch.ones(2)}, "part 'alpha' must be a scalar")
    wide_up = torch.randn(up.shape[0] * 2, 4)
    tensors("wrong_width", {f"{key0}.lora_down.weight": down, f"{key0}.lora_up.weight": wide_up},
            "layers with shapes for another model")
    tensors("unknown_parts", {f"{key0}.hypernet_w1": down, f"{key0}.hypernet_w2": up},
            "layers no strategy understands")

    # ------------------------------------------------------------------ architecture
    generator = torch.Generator().manual_seed(3)
    sdxl = {  # kohya SDXL names and real SDXL widths (2048-wide context, 1280-wide second text encoder)
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 2048, generator=generator),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(640, 4, generator=generator),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 1280, generator=generator),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(5120, 4, generator=generator),
    }
    tensors("arch_sdxl", sdxl, "is a LoRA for SDXL, but the loaded model is SD1")
    sd2 = {  # diffusers names with SD2's 1024-wide context
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 1024),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(640, 4),
    }
    tensors("arch_sd2", sd2, "is a LoRA for SD2, but the loaded model is SD1")
    tensors("arch_metadata_sdxl", {f"{key0}.lora_down.weight": down, f"{key0}.lora_up.weight": up},
            "is a LoRA for SDXL, but the loaded model is SD1",
            metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    llm = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{p}.weight": torch.randn(4, 4)
           for i in range(7) for p in "AB"}
    tensors("arch_language_model", llm, "7 keys matched no layer of the loaded model")
    checkpoint_like = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
                       "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.randn(8)}
    tensors("arch_checkpoint", checkpoint_like, "nothing in it fits the loaded SD1 model")

    # ------------------------------------------------------------------ pickles and other torch files
    for name, suffix, call, shown in (("pickle_os_system", ".pt", os.system, "posix.system"),
                                      ("pickle_exec", ".ckpt", exec, "exec")):
        case_root = root(name)
        marker = case_root / "PWNED"
        path = case_root / f"{name}{suffix}"
        command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
        if suffix == ".pt":  # the zip format torch writes, tensors and all
            torch.save({f"{key0}.lora_down.weight": down, "x": _Call(call, command)}, path)
        else:  # a bare legacy pickle
            path.write_bytes(pickle.dumps({"x": _Call(call, command)}, protocol=2))
        cases.append(LoraCase(name, case_root, name, "load",
                              f"refused to unpickle: the file names a forbidden global ({shown})", path, marker=marker))
    list_root = root("pickle_list")
    torch.save([down, up], list_root / "pickle_list.pt")
    cases.append(LoraCase("pickle_list", list_root, "pickle_list", "load", "holds a list, not a dict of tensors",
                          list_root / "pickle_list.pt"))
    write("pickle_garbage", random.Random(0).randbytes(64), "cannot read as a torch file", "load", ".pt")

    # ------------------------------------------------------------------ the file system
    dir_root = root("fs_directory")
    (dir_root / "fs_directory.safetensors").mkdir()
    cases.append(LoraCase("fs_directory", dir_root, "fs_directory", "scan", "is a directory, not a LoRA file",
                          dir_root / "fs_directory.safetensors"))
    link_root = root("fs_broken_link")
    (link_root / "fs_broken_link.safetensors").symlink_to(link_root / "nowhere.safetensors")
    cases.append(LoraCase("fs_broken_link", link_root, "fs_broken_link", "scan", "No such file or directory",
                          link_root / "fs_broken_link.safetensors"))
    loop_root = root("fs_link_loop")
    (loop_root / "fs_link_loop.safetensors").symlink_to(loop_root / "fs_link_loop.safetensors")
    cases.append(LoraCase("fs_link_loop", loop_root, "fs_link_loop", "scan", "Too many levels of symbolic links",
                          loop_root / "fs_link_loop.safetensors"))
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        write("fs_unreadable", raw, "Permission denied")
        cases[-1].path.chmod(0)
    odd_root = root("fs_non_utf8")
    odd_name = os.fsencode(odd_root) + b"/caf\xe9-latin1.safetensors"
    try:
        with open(odd_name, "wb") as handle:
            handle.write(raw)
    except OSError as exc:  # file systems that insist on UTF-8 names refuse it: nothing to test there
        if exc.errno not in (errno.EILSEQ, errno.EINVAL):
            raise
    else:
        cases.append(LoraCase("fs_non_utf8", odd_root, "caf\ufffd-latin1", "scan",
                              "file name is not valid UTF-8", odd_root / "caf\ufffd-latin1.safetensors"))
    long_root = root("fs_long_name")
    long_stem = "long-" + "x" * (MAX_NAME_BYTES - len(".safetensors") - len("long-"))
    long_deltas = write_kohya_lora(long_root / f"{long_stem}.safetensors", model, seed=13, only=3)
    cases.append(LoraCase("fs_long_name", long_root, long_stem, "ok", None, long_root / f"{long_stem}.safetensors",
                          long_deltas))
    dup_root = root("fs_duplicate_stem")
    first = write_kohya_lora(dup_root / "a" / "style.safetensors", model, seed=14, only=3)
    second = write_kohya_lora(dup_root / "b" / "style.safetensors", model, seed=15, only=3)
    for label, request, expected in (("a", "a/style", first), ("b", "b/style", second), ("bare", "style", first)):
        cases.append(LoraCase(f"fs_duplicate_stem_{label}", dup_root, request, "ok", None,
                              dup_root / ("b" if expected is second else "a") / "style.safetensors", expected))
    return cases


def checkpoint_corpus(folder: Path, good: Path, lora: Path, full: bool) -> list[CheckpointCase]:
    """Write bad checkpoints into `folder` (made from the good single file `good` and the LoRA file `lora`)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[CheckpointCase] = []
    raw = good.read_bytes()
    header, payload = split_safetensors(raw)
    header_end = len(raw) - len(payload)

    def write(name: str, data: bytes, fragment: str) -> None:
        (folder / name).write_bytes(data)
        cases.append(CheckpointCase(name, name, fragment))

    write("empty.safetensors", b"", "too short to be a safetensors file")
    header_cuts = 48 if full else 3
    payload_cuts = 16 if full else 2
    offsets = {0, 7, 8, header_end - 1, header_end + 1, len(raw) - 1}
    offsets |= {8 + i * (header_end - 8) // header_cuts for i in range(1, header_cuts)}
    offsets |= {header_end + i * (len(raw) - header_end) // payload_cuts for i in range(1, payload_cuts)}
    for offset in sorted(offsets):
        write(f"cut{offset:09d}.safetensors", raw[:offset], truncation_fragment(offset, header_end))
    write("header_beyond.safetensors", struct.pack("<Q", len(raw)) + raw[8:4096], "beyond the end of the file")
    write("header_absurd.safetensors", struct.pack("<Q", 2**40) + raw[8:4096], "is absurdly large")
    write("header_not_json.safetensors", join_safetensors(b"{oops", payload[:64]), "header is not valid JSON")
    write("header_list.safetensors", join_safetensors([], payload[:64]), "header is a JSON list, not an object")
    keys = [k for k in header if k != "__metadata__"]

    def edited(name: str, fragment: str, edit: Callable[[dict], None]) -> None:
        changed = json.loads(json.dumps(header))
        edit(changed)
        write(name, join_safetensors(changed, payload), fragment)

    edited("dtype_unknown.safetensors", "has unknown dtype 'Q4'", lambda h: h[keys[0]].update(dtype="Q4"))
    edited("offsets_overlap.safetensors", "overlap",
           lambda h: h[keys[1]].update(data_offsets=h[keys[0]]["data_offsets"], shape=h[keys[0]]["shape"],
                                       dtype=h[keys[0]]["dtype"]))
    edited("offsets_out_of_range.safetensors", "are out of range",
           lambda h: h[keys[-1]].update(data_offsets=[0, len(payload) + 8]))
    write("lora_as_checkpoint.safetensors", lora.read_bytes(), "not an SD1/SD2/SDXL single-file checkpoint")
    state = load_file(str(good))
    missing = dict(state)
    del missing["model.diffusion_model.out.0.bias"]
    save_file(missing, str(folder / "missing_tensor.safetensors"))
    cases.append(CheckpointCase("missing_tensor.safetensors", "missing_tensor.safetensors",
                                "checkpoint lacks tensor 'model.diffusion_model.out.0.bias'"))
    misshapen = dict(state)
    misshapen["model.diffusion_model.out.2.weight"] = torch.zeros(3, 3)
    save_file(misshapen, str(folder / "misshapen.safetensors"))
    cases.append(CheckpointCase("misshapen.safetensors", "misshapen.safetensors", "misshapen.safetensors: "))
    marker = folder / "PWNED-ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "run": _Call(os.system, f"touch {marker}")},
               folder / "pickle_os_system.ckpt")
    cases.append(CheckpointCase("pickle_os_system.ckpt", "pickle_os_system.ckpt", "GLOBAL posix.system", marker))
    (folder / "pickle_exec.ckpt").write_bytes(pickle.dumps(_Call(exec, f"open({str(marker)!r}, 'w').close()")))
    cases.append(CheckpointCase("pickle_exec.ckpt", "pickle_exec.ckpt", "not a loadable .ckpt checkpoint", marker))
    torch.save([torch.zeros(2)], folder / "pickle_list.ckpt")
    cases.append(CheckpointCase("pickle_list.ckpt", "pickle_list.ckpt", ".ckpt does not hold a state dict of tensors"))
    (folder / "broken_link.safetensors").symlink_to(folder / "nowhere.safetensors")
    cases.append(CheckpointCase("broken_link.safetensors", "broken_link.safetensors", "checkpoint file not found"))
    # A checkpoint whose file name is not valid UTF-8 is not a bad input any more: checkpoints are read with plain
    # reads (`modules.safetensors_header.SafetensorsReader`), which take any path, so it loads (no case here).
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Checking the weights
# ---------------------------------------------------------------------------------------------------------------

def weights_problems(model: LoadedModel, pristine: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     rtol: float = 1e-5, atol: float = 1e-6) -> list[str]:
    """What differs from pristine + `expected` ({target layer name: delta}); [] when nothing does.

    `pristine` is a `lora_testing.state_snapshot` taken before any LoRA. Layers in `expected` must be within
    `rtol`/`atol` of pristine + delta; every other tensor (UNet, text encoders, VAE) must be bitwise pristine, and the
    model must have exactly the pristine parameters (an injected adapter layer counts as a difference).
    """
    wanted = {f"{name}.weight": delta for name, delta in expected.items()}
    current = {f"{prefix}.{name}": tensor for prefix, module in model.torch_modules().items()
               for name, tensor in module.state_dict().items()}  # the live tensors, not copies
    problems = [f"{key}: not in the pristine model (an adapter layer was injected)" for key in current
                if key not in pristine]
    problems += [f"{key}: missing" for key in pristine if key not in current]
    problems += [f"{key}: no such layer" for key in wanted if key not in pristine]
    for key, tensor in current.items():
        if key not in pristine:
            continue
        if key in wanted:
            want = pristine[key] + wanted[key]
            if not torch.allclose(tensor, want, rtol=rtol, atol=atol):
                problems.append(f"{key}: off by {(tensor - want).abs().max().item():.3g}")
        elif not torch.equal(tensor, pristine[key]):
            problems.append(f"{key}: not pristine")
    return problems


def sum_deltas(*parts: tuple[dict[str, torch.Tensor], float]) -> dict[str, torch.Tensor]:
    """Σ multiplier x delta per layer over (deltas, multiplier) pairs."""
    total: dict[str, torch.Tensor] = {}
    for deltas, multiplier in parts:
        for name, delta in deltas.items():
            total[name] = total.get(name, torch.zeros_like(delta)) + multiplier * delta
    return total
