"""``F.grid_sample`` written out in differentiable torch ops, so autograd can take any order of it.

Used for second (and higher) order gradients (``stn_triton._double_backward``): PyTorch can
differentiate ``grid_sample`` only once on some supported versions (torch 2.11 raises
"derivative for aten::grid_sampler_2d_backward is not implemented"), while gathers, clamps and
arithmetic can be differentiated again on every version.

Same conventions as ``F.grid_sample`` (and the kernels' ``kernels/sampling.py``): grid (x, y) in
[-1, 1], unnormalised with ``align_corners``, then padded; ``zeros`` masks taps outside the image,
``border`` clamps the coordinate (zero gradient where clamped), ``reflection`` folds it back
(sign-flipping gradient) and then clamps; nearest rounds half to even (zero grid gradient);
non-finite coordinates sample 0 (``torch_path.sanitize_grid``).
Memory: O(N * C * H_out * W_out) per tap, which is fine for the small second-order use.
"""
from __future__ import annotations

import torch

from .torch_path import sanitize_grid
from stn_triton.kernels.layout import memory_format_of
from stn_triton.kernels.policy import compute_dtype


def _unnormalize(coord: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord: torch.Tensor, twice_low: int, twice_high: int) -> torch.Tensor:
    if twice_low == twice_high:
        return torch.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    coord = (coord - low).abs()
    extra = torch.fmod(coord, span)
    flips = torch.floor(coord / span)
    return torch.where(flips % 2 == 0, extra + low, span - extra + low)


def _source_coord(coord: torch.Tensor, size: int, padding_mode: str, align_corners: bool) -> torch.Tensor:
    coord = _unnormalize(coord, size, align_corners)
    if padding_mode == "reflection":
        coord = _reflect(coord, 0, 2 * (size - 1)) if align_corners else _reflect(coord, -1, 2 * size - 1)
    if padding_mode in ("border", "reflection"):
        coord = coord.clamp(0, size - 1)
    return coord


def _tap(flat: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """x[n, :, yi, xi] for integer-valued float coordinates (N, P); 0 outside the image."""
    n, c = flat.shape[:2]
    valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
    vals = flat.gather(2, idx[:, None, :].expand(n, c, idx.shape[1]))
    return vals * valid[:, None, :].to(vals.dtype)


def grid_sample_composed(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                         align_corners: bool = False) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode, padding_mode, align_corners)`` for 4-D x, differentiable to
    any order in x and grid; computed in fp32 (fp64 for fp64), returned in x's dtype and layout."""
    cdt = compute_dtype(x.dtype)
    n, c, h, w = x.shape
    h_out, w_out = grid.shape[1], grid.shape[2]
    flat = x.to(cdt).reshape(n, c, h * w)
    grid, finite = sanitize_grid(grid.to(cdt), traceable=True)  # the kernels' rule for non-finite coordinates
    g = grid.reshape(n, h_out * w_out, 2)
    ix = _source_coord(g[..., 0], w, padding_mode, align_corners)
    iy = _source_coord(g[..., 1], h, padding_mode, align_corners)
    if mode == "nearest":
        out = _tap(flat, torch.round(ix).detach(), torch.round(iy).detach(), h, w)
    else:
        x0, y0 = torch.floor(ix).detach(), torch.floor(iy).detach()
        fx, fy = (ix - x0)[:, None, :], (iy - y0)[:, None, :]
        out = ((1 - fx) * (1 - fy) * _tap(flat, x0, y0, h, w) + fx * (1 - fy) * _tap(flat, x0 + 1, y0, h, w)
               + (1 - fx) * fy * _tap(flat, x0, y0 + 1, h, w) + fx * fy * _tap(flat, x0 + 1, y0 + 1, h, w))
    out = (out * finite.reshape(n, 1, h_out * w_out).to(cdt)).reshape(n, c, h_out, w_out)
    return out.to(dtype=x.dtype, memory_format=memory_format_of(x))
