"""Device and dtype choice: float32 on CPU (fp16 matmul is very slow there), fp16 (or bf16) on CUDA."""

from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The model dtype for `device`: `precision` names one explicitly, `auto` picks float32 on CPU, fp16 on CUDA."""
    if precision == "float32":
        return torch.float32
    if precision == "float16":
        return torch.float16
    if precision == "bfloat16":
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32
