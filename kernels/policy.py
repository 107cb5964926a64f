"""Launch policy shared by every kernel's launcher: one home for each decision.

* **Compute dtype** (:func:`compute_dtype`): coordinates, interpolation weights and gradient
  accumulation run in fp64 for fp64 data and in fp32 for everything else (fp16 / bf16 storage
  included). The kernels (``ACC``), the pure-PyTorch path and the composed sampler all read this
  one rule; :func:`triton_dtype` only spells the chosen torch dtype the way a kernel wants it.
* **Mode and padding codes** (:data:`MODE_CODES`, :data:`PADDING_CODES`): the integers the
  kernels specialise on (``kernels/sampling.py`` names them).
* **Tiling** (:func:`block_sizes`, :func:`launch_config`): (BLOCK_P, BLOCK_C, num_warps).
* **Index width** (:func:`needs_int64`): when any element offset can pass 2**31 - 1 the kernels
  are specialised with ``INDEX_64`` and compute *every* offset in int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MODE_CODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}  # bicubic: images only
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2, "fill": 3}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinate / accumulation precision for data of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_dtype(dtype: torch.dtype):
    """``tl.float64`` / ``tl.float32`` for a :func:`compute_dtype` result."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_sizes(channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C). NCHW: many pixels per program, a few channels per step (stores are
    contiguous along pixels). channels_last: a wide channel block (each tap is a contiguous
    vector load) and fewer pixels, keeping BLOCK_P * BLOCK_C (registers per tap) near 1024."""
    c2 = triton.next_power_of_2(channels)
    if channels_last:
        block_c = min(c2, 64)
        return max(16, 1024 // block_c), block_c
    return 256, min(c2, 4)


def block_sizes_bicubic(channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) of bicubic sampling: 16 taps, four times the bilinear's, so a quarter of its
    tile (BLOCK_P * BLOCK_C near 256: fewer pixels, and for channels_last a narrower channel block):
    with the bilinear tile every bicubic NCHW kernel compiled to 255 registers (no spills, but few
    warps per SM); with this one 80-170 (``python -m bench.static --match bicubic``)."""
    block_p, block_c = block_sizes(channels, channels_last)
    block_p = max(16, block_p // 4)
    return block_p, min(block_c, max(1, 256 // block_p))  # channels_last tiles are already at 16 pixels


def launch_config(channels: int, channels_last: bool, config=None, mode: str = "bilinear") -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps) of a launch: ``config`` when given, as (BLOCK_P, BLOCK_C) or
    (BLOCK_P, BLOCK_C, num_warps) (tests vary the tiling; ``python -m bench.tune`` sweeps it on a
    GPU), else ``block_sizes`` (``block_sizes_bicubic`` for ``mode="bicubic"``) with 4 warps."""
    if config is None:
        sizes = block_sizes_bicubic if mode == "bicubic" else block_sizes
        return (*sizes(channels, channels_last), 4)
    block_p, block_c, *rest = config
    num_warps = rest[0] if rest else 4
    for name, v in (("BLOCK_P", block_p), ("BLOCK_C", block_c), ("num_warps", num_warps)):
        if not (isinstance(v, int) and v > 0 and v & (v - 1) == 0):
            raise ValueError(f"launch config {name} must be a power of two, got {v!r} in {tuple(config)}")
    return block_p, block_c, num_warps


def block_sizes_3d(channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C) of the 3-D warp: a trilinear tap is 8 gathers, twice the 2-D warp's, so
    half its tile (BLOCK_P * BLOCK_C near 512) keeps the same registers per thread."""
    block_p, block_c = block_sizes(channels, channels_last)
    return max(16, block_p // 2), block_c


def launch_config_3d(channels: int, channels_last: bool, config=None) -> tuple[int, int, int]:
    """:func:`launch_config` with :func:`block_sizes_3d` as the default tiling."""
    if config is None:
        return (*block_sizes_3d(channels, channels_last), 4)
    return launch_config(channels, channels_last, config)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when an element offset of any tensor can exceed int32: the kernels then index in int64."""
    limit = 2**31 - 1
    for t in tensors:
        span = sum(s * (d - 1) for s, d in zip(t.stride(), t.shape) if d > 0)
        if t.numel() >= limit or span >= limit:
            return True
    return False
