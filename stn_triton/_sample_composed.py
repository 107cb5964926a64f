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

import itertools

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


CUBIC_A = -0.75  # PyTorch's bicubic kernel (kernels/sampling.py: CUBIC_A)


def _cubic_weights(t: torch.Tensor) -> list:
    """The weights of taps -1, 0, 1, 2 at fraction t (PyTorch's get_cubic_upsample_coefficients)."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic_tap(f: torch.Tensor, size: int, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """An integer-valued tap coordinate after PyTorch's per-tap padding rule (zeros: unchanged)."""
    if padding_mode == "reflection":
        f = _reflect(f, 0, 2 * (size - 1)) if align_corners else _reflect(f, -1, 2 * size - 1)
    if padding_mode in ("border", "reflection"):
        f = f.clamp(0, size - 1)
    return f


def _tap(flat: torch.Tensor, idx: list, sizes: list) -> torch.Tensor:
    """x[n, :, (zi,) yi, xi] for integer-valued float coordinates (N, P), ``idx`` = [xi, yi(, zi)],
    ``sizes`` = [W, H(, D)]; 0 outside the image."""
    n, c = flat.shape[:2]
    valid = torch.ones_like(idx[0], dtype=torch.bool)
    lin = torch.zeros_like(idx[0])
    stride = 1
    for i, s in zip(idx, sizes):
        valid = valid & (i >= 0) & (i <= s - 1)
        lin = lin + i.clamp(0, s - 1) * stride
        stride *= s
    lin = lin.long()
    vals = flat.gather(2, lin[:, None, :].expand(n, c, lin.shape[1]))
    return vals * valid[:, None, :].to(vals.dtype)


def grid_sample_composed(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                         align_corners: bool = False, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode, padding_mode, align_corners)`` for 4-D x (grid (N, H, W, 2))
    or 5-D x (grid (N, D, H, W, 3), trilinear), differentiable to any order in x and grid;
    computed in fp32 (fp64 for fp64), returned in x's dtype and layout. ``padding_mode="fill"``:
    zeros padding plus ``fill * (1 - coverage)`` (``torch_path.sample``), differentiable in fill too."""
    cdt = compute_dtype(x.dtype)
    n, c = x.shape[:2]
    sizes = list(x.shape[2:])[::-1]  # [W, H(, D)]: the grid's (x, y(, z)) order
    out_size = tuple(grid.shape[1:-1])
    p = 1
    for s in out_size:
        p *= s
    flat = x.to(cdt).reshape(n, c, -1)
    grid, finite = sanitize_grid(grid.to(cdt), traceable=True)  # the kernels' rule for non-finite coordinates
    g = grid.reshape(n, p, len(sizes))
    pad = "zeros" if padding_mode == "fill" else padding_mode
    if mode == "bicubic":  # the coordinate is not padded: each of the 4x4 taps is (kernels/sampling.py)
        coords = [_unnormalize(g[..., k], s, align_corners) for k, s in enumerate(sizes)]
    else:
        coords = [_source_coord(g[..., k], s, pad, align_corners) for k, s in enumerate(sizes)]

    def interpolate(values):
        if mode == "bicubic":
            lows = [torch.floor(i).detach() for i in coords]
            weights = [_cubic_weights((i - lo)[:, None, :]) for i, lo in zip(coords, lows)]
            total = 0
            for a, b in itertools.product(range(4), repeat=2):
                taps = [_bicubic_tap(lows[0] + (a - 1), sizes[0], pad, align_corners),
                        _bicubic_tap(lows[1] + (b - 1), sizes[1], pad, align_corners)]
                total = total + weights[0][a] * weights[1][b] * _tap(values, taps, sizes)
            return total
        if mode == "nearest":
            return _tap(values, [torch.round(i).detach() for i in coords], sizes)
        lows = [torch.floor(i).detach() for i in coords]
        fracs = [(i - lo)[:, None, :] for i, lo in zip(coords, lows)]
        total = 0
        for corner in itertools.product((0, 1), repeat=len(sizes)):
            weight = 1
            for f, bit in zip(fracs, corner):
                weight = weight * (f if bit else 1 - f)
            total = total + weight * _tap(values, [lo + bit for lo, bit in zip(lows, corner)], sizes)
        return total

    keep = finite.reshape(n, 1, p).to(cdt)
    out = interpolate(flat) * keep
    if padding_mode == "fill":
        cov = interpolate(torch.ones((), dtype=cdt, device=x.device).expand(n, 1, flat.shape[2])) * keep
        out = out + fill.to(cdt).reshape(1, -1, 1) * (1 - cov)
    out = out.reshape(n, c, *out_size)
    return out.to(dtype=x.dtype, memory_format=memory_format_of(x))
