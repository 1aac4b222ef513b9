"""Shared math of the network strategies: dtype choice, Tucker rebuild, Kronecker, Cayley, DoRA, factorisation.

Every function is pure (inputs are never modified) and device/dtype-agnostic: results live on the inputs'
device. Shapes use ``out``/``in`` for the layer's output/input channels and ``k...`` for spatial kernel dims.
"""

from __future__ import annotations

import math

import torch

from ..errors import PartsError

ACCELERATOR_DTYPES = (torch.float32, torch.bfloat16)
MAX_OFFSET_ELEMENTS = 1 << 28  # 1 GiB of float32: more than any layer weight of the supported models


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype deltas are computed in: the weight's own dtype when it is float32/bfloat16 on an accelerator,
    float64 for a float64 weight, float32 otherwise (CPU half-precision matmuls are very slow, and fp16 loses
    small deltas)."""
    if weight.dtype == torch.float64:
        return weight.dtype
    if weight.device.type != "cpu" and weight.dtype in ACCELERATOR_DTYPES:
        return weight.dtype
    return torch.float32


def check_finite(key: str, weights: dict[str, torch.Tensor]) -> None:
    """Raise PartsError naming the key and part when a floating tensor holds NaN or Inf."""
    for part, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise PartsError(f"{key}: part {part!r} is not a tensor ({type(tensor).__name__})")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PartsError(f"{key}: part {part!r} contains NaN or Inf values")


def legacy_weight_offset(key: str, weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The legacy LyCORIS additive weight offset: dense ``bias`` part, or the sparse triple
    ``bias_indices`` (2, nnz) / ``bias_values`` (nnz,) / ``bias_size`` (2,) written by old LyCORIS extraction
    (``--use_sparse_bias``), densified to shape ``bias_size``. None when absent. A ``bias_size`` that is no layer
    shape (more than ``MAX_OFFSET_ELEMENTS`` elements: a file cannot make us allocate terabytes) is a PartsError."""
    if "bias" in weights:
        return weights["bias"]
    sparse = [weights.get(name) for name in ("bias_indices", "bias_values", "bias_size")]
    if all(t is None for t in sparse):
        return None
    if any(t is None for t in sparse):
        raise PartsError(f"{key}: sparse bias needs bias_indices, bias_values and bias_size together")
    indices, values, size = sparse
    try:
        shape = tuple(int(s) for s in size.reshape(-1).tolist())
        if not shape or min(shape) < 1 or math.prod(shape) > MAX_OFFSET_ELEMENTS:
            raise PartsError(f"bias_size {list(shape)} is not the shape of a layer weight")
        offset = torch.sparse_coo_tensor(indices.long(), values.float(), shape, check_invariants=True)
        return offset.to_dense()
    except (RuntimeError, ValueError, TypeError) as error:
        raise PartsError(f"{key}: malformed sparse bias (bias_indices/bias_values/bias_size): {error}") from error


def as_2d(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` viewed as (rows, everything else)."""
    return tensor.reshape(tensor.shape[0], -1)


def rebuild_tucker(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Tucker/CP rebuild: ``W[o, c, k...] = Σ_{a,b} up[o, a] · core[a, b, k...] · down[b, c]``.

    ``core`` (r1, r2, k...), ``up`` (out, r1), ``down`` (r2, in) -> (out, in, k...).
    """
    return torch.einsum("a b ..., o a, b c -> o c ...", core, up, down)


def make_kron(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Kronecker product ``kron(w1, w2)``; the factor with fewer dims gets trailing singleton dims (a 2-D ``w1``
    with a conv-shaped ``w2`` (b, d, k...) gives (a·b, c·d, k...))."""
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    while w2.dim() < w1.dim():
        w2 = w2.unsqueeze(-1)
    return torch.kron(w1.contiguous(), w2.contiguous())


def cayley(blocks: torch.Tensor, constraint: float = 0.0) -> torch.Tensor:
    """Orthogonal blocks from free blocks (LyCORIS ``get_r``): ``Q = B − Bᵀ`` (last two dims), optionally
    shrunk so that ``‖Q‖_F`` (over *all* blocks together) stays within ``constraint`` when ``constraint > 0``:
    ``Q ← Q · c / (‖Q‖ + 1e-8)`` when ``‖Q‖ + 1e-8 > c``; then ``R = (I + Q)(I − Q)⁻¹``.

    ``blocks`` (..., n, n) -> R of the same shape and dtype; the inverse runs in float32 (or float64 input).
    """
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    inv_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    eye = torch.eye(q.shape[-1], device=q.device, dtype=inv_dtype)
    qf = q.to(inv_dtype)
    return ((eye + qf) @ torch.linalg.inv(eye - qf)).to(blocks.dtype)


def dora_on_output(key: str, dora_shape: torch.Size, weight_shape: torch.Size) -> bool:
    """Which axis a ``dora_scale`` of ``dora_shape`` normalises for a layer weight of ``weight_shape``.

    True: per output row, shape (out, 1, ...) or (out,) (LyCORIS default ``wd_on_out=True``, PEFT magnitude);
    False: per input column, shape (1, in, ...) (older kohya/LyCORIS). When both fit (out == in == 1) the two
    norms coincide. Raises PartsError naming the key when neither fits.
    """
    dora_shape, weight_shape = tuple(dora_shape), tuple(weight_shape)
    ones = (1,) * (len(weight_shape) - 1)
    if dora_shape in ((weight_shape[0], *ones), (weight_shape[0],)):
        return True
    if len(weight_shape) > 1 and dora_shape == (1, weight_shape[1], *ones[1:]):
        return False
    raise PartsError(
        f"{key}: dora_scale shape {dora_shape} fits neither the output axis {(weight_shape[0], *ones)} "
        f"nor the input axis {(1, *weight_shape[1:2], *ones[1:])} of layer weight shape {weight_shape}"
    )


def weight_decompose(
    merged: torch.Tensor, dora_scale: torch.Tensor, multiplier: float, on_output: bool
) -> torch.Tensor:
    """DoRA as LyCORIS applies it at inference (``functional.general.weight_decompose``):

    ``W' = M · (m · (g / (‖M‖ + eps) − 1) + 1)`` with ``M = W + ΔW`` (ΔW at multiplier 1), ``g = dora_scale``,
    ``‖M‖`` the L2 norm per output row (``on_output``) or per input column (over out and kernel dims), and
    ``eps`` the machine epsilon of the dtype. At m = 1 this is ``g · M / ‖M‖``; the multiplier interpolates the
    magnitude *scale*, not the weight, so at m = 0 the plain ΔW is still applied. Other hosts differ: A1111
    lerps the weight (``W + m·(W' − W)``) and only knows the input axis; ComfyUI/Forge lerp too and, on the
    output axis, take the norm of the unmodified ``W`` instead of ``W + ΔW``.
    """
    extra = merged.dim() - 1
    eps = torch.finfo(merged.dtype).eps
    if on_output:
        norm = as_2d(merged).norm(dim=1).reshape(merged.shape[0], *[1] * extra)
    else:
        norm = as_2d(merged.transpose(0, 1)).norm(dim=1).reshape(merged.shape[1], *[1] * extra).transpose(0, 1)
    scale = dora_scale.reshape(norm.shape).to(merged.dtype) / (norm + eps)
    if multiplier != 1:
        scale = multiplier * (scale - 1) + 1
    return merged * scale


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m * n == dimension``, m as close to ``factor`` as
    allowed (``factor <= 0``: the most balanced split). This is how LyCORIS sizes LoKr and Diag-OFT factors."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    if factor <= 0:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)
