"""Pure-PyTorch implementations: the CPU path and the independent reference for the kernels.

Everything here composes stock PyTorch ops (``F.grid_sample`` does the sampling), so it is
differentiable by autograd and shares no code with the Triton kernels in ``kernels/`` beyond two
policy rules: the compute dtype (half-precision inputs are computed in float32, coordinates must
be fp32-accurate, the same contract as the kernels) and the memory format of outputs.

Non-finite coordinates: ``F.grid_sample`` returns NaN for them, and its CPU backward reads out of
bounds (it crashes) with border or reflection padding. :func:`sanitize_grid` applies the kernels'
rule first (``kernels/sampling.py: source_pixel``): a pixel whose source coordinate is NaN or
+-inf samples 0 with zero gradient in every padding mode, and finite coordinates are clamped to
+-COORD_LIMIT.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from stn_triton.kernels.layout import empty_output, memory_format_of, nothing_to_sample
from stn_triton.kernels.policy import compute_dtype

COORD_LIMIT = 2.0 ** 20  # the kernels' sampling.COORD_LIMIT
BASE_GRID_CACHE_SIZE = 64  # distinct (size, align_corners, dtype, device): a training run has a few


def in_dtype(t: torch.Tensor, dtype) -> torch.Tensor:
    """``t.to(dtype)``, but ``t`` itself when it is already in ``dtype`` without the call (which
    costs ~0.6 µs of host even then: several per PyTorch-path call). The same tensor and autograd
    graph either way."""
    return t if t.dtype == dtype else t.to(dtype)


def _linspace_from_neg_one(steps: int, align_corners: bool, dtype, device) -> torch.Tensor:
    # Exactly what F.affine_grid uses: a single step sits at 0.
    if steps <= 1:
        return torch.zeros(max(steps, 1), dtype=dtype, device=device)[:steps]
    r = torch.linspace(-1.0, 1.0, steps, dtype=dtype, device=device)
    if not align_corners:
        r = r * (steps - 1) / steps
    return r


def _build_base_grid(h: int, w: int, align_corners: bool, dtype, device) -> torch.Tensor:
    base = torch.empty(h, w, 3, dtype=dtype, device=device)
    base[..., 0].copy_(_linspace_from_neg_one(w, align_corners, dtype, device))
    base[..., 1].copy_(_linspace_from_neg_one(h, align_corners, dtype, device)[:, None])
    base[..., 2].fill_(1.0)
    return base.view(h * w, 3)


def _build_base_grid_3d(d: int, h: int, w: int, align_corners: bool, dtype, device) -> torch.Tensor:
    xs = _linspace_from_neg_one(w, align_corners, dtype, device)
    ys = _linspace_from_neg_one(h, align_corners, dtype, device)
    zs = _linspace_from_neg_one(d, align_corners, dtype, device)
    gz, gy, gx = torch.meshgrid(zs, ys, xs, indexing="ij")
    ones = torch.ones(d * h * w, dtype=dtype, device=device)
    return torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1), ones], dim=1)


@functools.lru_cache(maxsize=BASE_GRID_CACHE_SIZE)
def _cached(build, *key) -> torch.Tensor:
    # built outside inference mode: an inference tensor could not be saved for a later backward
    with torch.inference_mode(False):
        return build(*key)


def remembered(build, *key) -> torch.Tensor:
    """``build(*key)``, remembered per key (sizes, align_corners, dtype, device last: values, never
    a tensor) in eager code; built afresh under a tracer (a fake tensor must not be kept). For
    constant tensors the PyTorch path needs every call (base grids, scales): read them, never write
    them."""
    device = key[-1]
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return build(*key)
    if not isinstance(device, torch.device):  # None, "cpu", "cuda:0", ...: one spelling per device
        device = torch.device("cpu" if device is None else device)
    return _cached(build, *key[:-1], device)


def base_grid(h: int, w: int, align_corners: bool, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous output coordinates, shape (H*W, 3), rows ``[x, y, 1]`` with x varying fastest.
    Shared between calls (a training step needs it three times, every step): read it, never write it."""
    return remembered(_build_base_grid, h, w, align_corners, dtype, device)


def base_grid_3d(d: int, h: int, w: int, align_corners: bool, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous output coordinates of a volume, shape (D*H*W, 4), rows ``[x, y, z, 1]`` with x
    varying fastest, then y, then z (``F.affine_grid``'s 5-D base grid). Shared: never write it."""
    return remembered(_build_base_grid_3d, d, h, w, align_corners, dtype, device)


def _build_identity_grid(size: tuple, align_corners: bool, dtype, device) -> torch.Tensor:
    base = base_grid(*size, align_corners, dtype, device) if len(size) == 2 else \
        base_grid_3d(*size, align_corners, dtype, device)
    return base[:, :len(size)].reshape(*size, len(size))


def identity_grid(size: tuple, align_corners: bool, dtype=torch.float32, device=None) -> torch.Tensor:
    """The identity's sampling grid (*size, 2) for (H, W), (*size, 3) for (D, H, W), contiguous
    (``F.affine_grid`` of the identity, without the batch). Shared between calls: never write it."""
    return remembered(_build_identity_grid, tuple(size), align_corners, dtype, device)


# From this many coordinates (N x H x W) on, grids are built planar; below, a call is host-bound and
# the batch-major product costs the host less (2 x 8 x 8: ~3 µs less forward, ~11 µs less forward +
# backward), while above, batch-major runs MKL's slow small-matrix batch path (bench/NOTES.md,
# 2026-12-06 fourth session).
PLANAR_MIN_POINTS = 1024


def coordinate_axis(n: int, points: int) -> int:
    """The axis of a PyTorch-path grid product that holds the coordinates: 1, planar (N, dims, P),
    from :data:`PLANAR_MIN_POINTS` coordinates on; else -1, batch-major (N, P, dims), which is
    ``F.affine_grid``'s own product (its bits). A grid and its gradient both ask, so they agree."""
    return 1 if n * points >= PLANAR_MIN_POINTS else -1


def linear_product(theta: torch.Tensor, base: torch.Tensor, axis: int) -> torch.Tensor:
    """``theta`` (N, rows, k) applied to every row of ``base`` (P, k): (N, rows, P) for ``axis`` 1,
    one GEMM of the N·rows rows of θ by baseᵀ (MKL's small-matrix *batch* path, a bmm of N
    (rows, k) x (k, P), is 5-6x slower at the models' shapes: bench/NOTES.md, 2026-12-06 fifth session);
    (N, P, rows) for -1, ``F.affine_grid``'s batched product."""
    n = theta.shape[0]
    if axis == 1:
        return theta.contiguous().view(-1, theta.shape[2]).mm(base.t()).view(n, theta.shape[1], -1)
    return base.expand(n, -1, -1).bmm(theta.transpose(1, 2))


def linear_product_grad(g: torch.Tensor, base: torch.Tensor, axis: int) -> torch.Tensor:
    """grad theta (N, rows, k) of :func:`linear_product` from its output's gradient ``g``, written
    as autograd's backward of that product (the same bits as a recorded call: for ``axis`` 1 the
    gradient made row-major as autograd's view backward makes it, times the base, as ``mm``'s
    backward for a row-major first factor)."""
    n = g.shape[0]
    if axis == 1:
        return g.reshape(-1, g.shape[2]).mm(base).view(n, g.shape[1], -1)
    return base.expand(n, -1, -1).transpose(1, 2).bmm(g).transpose(1, 2)


def grid_of_product(product: torch.Tensor, size: tuple, axis: int) -> torch.Tensor:
    """The sampling grid (N, *size, dims) of a product laid out along ``axis``: a view, planar
    (strides (dims·P, ..., 1, P)) for ``axis`` 1, contiguous for -1."""
    n = product.shape[0]
    if axis == 1:
        order = (0, 2, 3, 1) if len(size) == 2 else (0, 2, 3, 4, 1)
        return product.view(n, product.shape[1], *size).permute(order)
    return product.reshape(n, *size, product.shape[-1])


def product_of_grid(grid: torch.Tensor, axis: int) -> torch.Tensor:
    """A grid-shaped (N, *size, dims) tensor (a grid's gradient) in the layout of the product along
    ``axis``: the inverse view of :func:`grid_of_product`, as autograd carries it back (same bits)."""
    n, dims = grid.shape[0], grid.shape[-1]
    if axis == 1:
        order = (0, 3, 1, 2) if grid.dim() == 4 else (0, 4, 1, 2, 3)
        return grid.permute(order).reshape(n, dims, -1)
    return grid.reshape(n, -1, dims)


def transform_grid_3d(theta: torch.Tensor, d: int, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Sampling grid (N, D, H, W, 3), (x, y, z) order, for affine (N, 3, 4) ``theta``, in the layout
    of :func:`coordinate_axis` (see :func:`transform_grid`)."""
    axis = coordinate_axis(theta.shape[0], d * h * w)
    base = base_grid_3d(d, h, w, align_corners, theta.dtype, theta.device)  # (P, 4)
    return grid_of_product(linear_product(theta, base, axis), (d, h, w), axis)


def transform_grid(theta: torch.Tensor, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Sampling grid (N, H, W, 2) for affine (N, 2, 3) or projective (N, 3, 3) ``theta``.

    Large grids (:func:`coordinate_axis`) are planar: θ's N·rows rows times the cached base's
    transpose (3, H·W), one GEMM (:func:`linear_product`), viewed as (N, H, W, 2) with strides (2·H·W, W, 1, H·W). There
    ``F.affine_grid``'s (N, H·W, 3) x θᵀ (N, 3, 2), two output columns per image, runs MKL's slow
    small-matrix batch path on the CPU (the grid alone, forward + backward, at 256 x 42 x 42: 2.5 vs
    5.6 ms), and aten's grid sampler reads the planar grid as fast as a contiguous one; the values
    are ``F.affine_grid``'s to rounding, not always its bits. Small grids, where a call is
    host-bound, keep that batch-major product (its bits). (A batch-interleaved grid, as an einsum
    gives, is the slow layout to sample.)"""
    axis = coordinate_axis(theta.shape[0], h * w)
    base = base_grid(h, w, align_corners, theta.dtype, theta.device)  # (P, 3)
    uvw = linear_product(theta, base, axis)
    if theta.shape[1] == 3:
        uvw = uvw.narrow(axis, 0, 2) / uvw.narrow(axis, 2, 1)
    return grid_of_product(uvw, (h, w), axis)


def sanitize_grid(grid: torch.Tensor, traceable: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grid', mask)``: grid' samples like the kernels (non-finite -> 0, clamped to +-COORD_LIMIT),
    ``mask`` (N, H_out, W_out, 1) ((N, D_out, H_out, W_out, 1) for a volume's grid) is False where a coordinate is not finite, or None when every
    coordinate is finite and inside the limit (grid' is then grid itself: the common case costs one
    reduction; on CPU its result is read on the host, on other devices the mask is always built so
    nothing synchronises). ``traceable``: always build the mask (no data-dependent branch), for
    code that autograd or torch.compile traces."""
    if not traceable and grid.device.type == "cpu" and grid.numel() and coordinates_inside(grid):
        return grid, None
    finite = torch.isfinite(grid).all(dim=-1, keepdim=True)
    safe = torch.where(finite, grid, torch.zeros((), dtype=grid.dtype, device=grid.device))
    return safe.clamp(-COORD_LIMIT, COORD_LIMIT), finite


def coordinates_inside(grid: torch.Tensor) -> bool:
    """Every coordinate of ``grid`` (non-empty) is finite and inside +-COORD_LIMIT: the case where
    the non-finite rule changes nothing. One reduction, read on the host (a sync off the CPU)."""
    if not grid.is_contiguous():
        # a planar grid (transform_grid's permuted view): reduce the contiguous tensor it views, in
        # memory order (~2x cheaper at small sizes than following the view's strides, and cheaper
        # than a permute back). Every element of a view is in its base, so this never says "inside"
        # wrongly; equal sizes keep it from reading more than the grid.
        root = grid._base
        if root is not None and root.is_contiguous() and root.numel() == grid.numel():
            grid = root
    lo, hi = torch.aminmax(grid.detach() if grid.requires_grad else grid)  # one pass; NaN fails both tests
    return -COORD_LIMIT < lo.item() and hi.item() < COORD_LIMIT


def fill_column(fill: torch.Tensor, x: torch.Tensor, dtype) -> torch.Tensor:
    """The (C,) (or scalar) fill values as (1, C, 1, 1[, 1]), broadcastable against x's samples."""
    return fill.to(dtype).reshape(1, -1, *([1] * (x.dim() - 2)))


def coverage(x: torch.Tensor, grid: torch.Tensor, mode: str, align_corners: bool) -> torch.Tensor:
    """(N, 1, *out): the weight the samples of ``grid`` give to taps inside x (1 inside, 0 far
    outside): an all-ones image sampled with zeros padding. ``padding_mode="fill"`` reads
    ``sample_zeros + fill * (1 - coverage)``; ``grid`` is already sanitised."""
    ones = torch.ones((), dtype=grid.dtype, device=grid.device).expand(x.shape[0], 1, *x.shape[2:])
    return F.grid_sample(ones, grid, mode=mode, padding_mode="zeros", align_corners=align_corners)


ATEN_MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}  # at::native::GridSamplerInterpolation
ATEN_PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}  # at::native::GridSamplerPadding


def sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool,
           fill: torch.Tensor | None = None) -> torch.Tensor:
    """``F.grid_sample`` in fp32 (fp64 for fp64 input), result in x's dtype and memory format;
    non-finite coordinates sample 0 (:func:`sanitize_grid`). 4-D x with an (N, H, W, 2) grid, or
    5-D x with an (N, D, H, W, 3) grid (trilinear, called ``bilinear`` as in PyTorch).
    ``padding_mode="fill"``: outside x the samples read ``fill`` ((C,) or scalar), blended by the
    interpolation weights as if x were surrounded by that constant; a non-finite coordinate reads it
    too (it is outside everywhere)."""
    cdt = compute_dtype(x.dtype)
    if nothing_to_sample(x, *grid.shape[1:-1]):  # F.grid_sample rejects an empty batch; we return an empty result
        return empty_output(x, *grid.shape[1:-1])
    grid, finite = sanitize_grid(in_dtype(grid, cdt))
    pad = "zeros" if padding_mode == "fill" else padding_mode
    # the aten op F.grid_sample calls after checking its string arguments (ours are checked once,
    # by the public function): the same op and bits, without ~1 µs of Python per call
    out = torch.grid_sampler(in_dtype(x, cdt), grid, ATEN_MODES[mode], ATEN_PADDINGS[pad], align_corners)
    if finite is not None:
        out = out * finite.squeeze(-1).unsqueeze(1).to(out.dtype)
    if padding_mode == "fill":
        cov = coverage(x, grid, mode, align_corners)
        if finite is not None:
            cov = cov * finite.squeeze(-1).unsqueeze(1).to(cdt)
        out = out + fill_column(fill, x, cdt) * (1 - cov)
    return out.to(dtype=x.dtype, memory_format=memory_format_of(x))


def sample_backward(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_grid, fill=None):
    """Backward of :func:`sample` through aten's grid-sampler backward, in fp32 (fp64 for fp64).

    Returns (grad_x in x's dtype and memory format, or None; grad_grid in the compute dtype, or None).
    ``padding_mode="fill"``: grad_x is zeros padding's; grad_grid adds the fill term's, the
    backward of ``fill * (1 - coverage)`` (the grad of ``fill`` itself: :func:`fill_grad`).
    Non-finite coordinates contribute nothing and get zero gradient (:func:`sanitize_grid`).
    """
    cdt = compute_dtype(x.dtype)
    grid, finite = sanitize_grid(in_dtype(grid, cdt))
    grad_out = in_dtype(grad_out, cdt)
    if finite is not None:
        grad_out = grad_out * finite.squeeze(-1).unsqueeze(1).to(cdt)
    aten_backward = torch.ops.aten.grid_sampler_3d_backward if x.dim() == 5 else torch.ops.aten.grid_sampler_2d_backward
    pad = "zeros" if padding_mode == "fill" else padding_mode
    gx, ggrid = aten_backward(
        grad_out, in_dtype(x, cdt), grid, ATEN_MODES[mode], ATEN_PADDINGS[pad], align_corners,
        [need_x, need_grid],
    )
    if need_grid and padding_mode == "fill":
        ones = torch.ones((), dtype=cdt, device=x.device).expand(x.shape[0], 1, *x.shape[2:])
        g_cov = -(grad_out * fill_column(fill, x, cdt)).sum(1, keepdim=True)
        ggrid = ggrid + aten_backward(g_cov, ones, grid, ATEN_MODES[mode], 0, align_corners, [False, True])[1]
    if need_grid and finite is not None:  # clamped coordinates have zero gradient too
        ggrid = ggrid * (finite & (grid.abs() < COORD_LIMIT)).to(cdt)
    if need_x:
        gx = gx.to(dtype=x.dtype, memory_format=memory_format_of(x))
    return (gx if need_x else None), (ggrid if need_grid else None)


def fill_grad(grad_out: torch.Tensor, coverage_: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """grad of ``fill`` ((C,) or scalar, in its dtype) from grad_out and the samples' coverage
    (N, 1, *out): sum over the batch and the output pixels of grad_out * (1 - coverage)."""
    dims = [0, *range(2, grad_out.dim())]
    g = (grad_out.to(coverage_.dtype) * (1 - coverage_)).sum(dims)  # (C,)
    return (g.sum() if fill.dim() == 0 else g).reshape(fill.shape).to(fill.dtype)


def warp(x, theta, h_out, w_out, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Reference affine/projective warp: ``grid_sample(x, transform_grid(theta))``."""
    grid = transform_grid(theta.to(compute_dtype(x.dtype)), h_out, w_out, align_corners)
    return sample(x, grid, mode, padding_mode, align_corners)


def warp3d(x, theta, d_out, h_out, w_out, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Reference 3-D affine warp: ``grid_sample(x, transform_grid_3d(theta))``."""
    grid = transform_grid_3d(theta.to(compute_dtype(x.dtype)), d_out, h_out, w_out, align_corners)
    return sample(x, grid, mode, padding_mode, align_corners)


# ----------------------------------------------------------------------------- thin-plate spline


def tps_radial(d2: torch.Tensor) -> torch.Tensor:
    """U as a function of the squared distance: U = r^2 log r^2, U(0) = 0."""
    return torch.where(d2 > 0, d2 * torch.log(torch.where(d2 > 0, d2, torch.ones_like(d2))), torch.zeros_like(d2))


def check_default_k(k: int) -> int:
    """sqrt(K) for the default control-point grid; a clear error unless K is a perfect square >= 4."""
    g = int(round(k ** 0.5))
    if g * g != k or k < 4:
        raise ValueError(
            f"the default control points form a sqrt(K) x sqrt(K) grid, so K must be a perfect square >= 4; "
            f"got K = {k}. Pass control_points=(K, 2) for other layouts."
        )
    return g


def default_control_points(k: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Regular sqrt(K) x sqrt(K) grid over [-1, 1]^2, x varying fastest, shape (K, 2)."""
    g = check_default_k(k)
    t = torch.linspace(-1.0, 1.0, g, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def tps_system(control_points: torch.Tensor) -> torch.Tensor:
    """The (K+3) x (K+3) interpolation matrix L = [[U(|c_i - c_j|), P], [P^T, 0]], P = [1, x, y]."""
    c = control_points
    k = c.shape[0]
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    p = torch.cat([torch.ones(k, 1, dtype=c.dtype, device=c.device), c], dim=1)
    top = torch.cat([tps_radial(d2), p], dim=1)
    bottom = torch.cat([p.t(), torch.zeros(3, 3, dtype=c.dtype, device=c.device)], dim=1)
    return torch.cat([top, bottom], dim=0)


def tps_coefficient_map(control_points: torch.Tensor) -> torch.Tensor:
    """M (K+3, K) with coefficients = M @ points: rows 0..K-1 are the radial weights w, rows K..K+2 a0, a1, a2.

    Solved in float64 with ``torch.linalg.solve``; the right-hand side is [points; 0].
    """
    c64 = control_points.detach().to(torch.float64)
    k = c64.shape[0]
    rhs = torch.zeros(k + 3, k, dtype=torch.float64, device=c64.device)
    rhs[:k] = torch.eye(k, dtype=torch.float64, device=c64.device)
    return torch.linalg.solve(tps_system(c64), rhs)


def tps_features(control_points: torch.Tensor, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Phi (H*W, K+3): [U(|p - c_k|) for k, 1, x, y] for every output pixel p. O(H*W*K) memory."""
    base = base_grid(h, w, align_corners, control_points.dtype, control_points.device)
    d2 = ((base[:, None, :2] - control_points[None, :, :]) ** 2).sum(-1)
    return torch.cat([tps_radial(d2), base[:, 2:3], base[:, :2]], dim=1)


def tps_coefficients(points: torch.Tensor, coef_map: torch.Tensor) -> torch.Tensor:
    """Spline coefficients (N, K+3, 2) = M @ points in float64 (rows: w_1..w_K, a0, a1, a2), contiguous.
    One batched product over M expanded (a view): ~3 µs less host time per call than ``torch.matmul``'s
    broadcast of a 2-D by 3-D product, forward and backward, the same values."""
    p64 = in_dtype(points, torch.float64)
    return in_dtype(coef_map, torch.float64).expand(p64.shape[0], -1, -1).bmm(p64)


def tps_grid_from_coef(coef, control_points, h, w, align_corners=False, out_dtype=torch.float64):
    """TPS sampling grid (N, H, W, 2) from the coefficients (N, K+3, 2) of :func:`tps_coefficients`.

    Computed in float64 (Phi @ coefficients) and rounded once to ``out_dtype``, so an fp32 grid is
    the float64 grid to fp32 rounding (building it in fp32 costs ~1e-5 through the radial terms'
    cancellation). Differentiable w.r.t. ``coef`` by autograd.
    """
    phi = tps_features(control_points.detach().to(torch.float64), h, w, align_corners)
    return tps_grid_from_features(phi, coef, h, w, out_dtype)


def tps_grid_from_features(phi, coef, h, w, out_dtype=torch.float64):
    """The grid (N, H, W, 2) = Phi (P, K+3) @ coef (N, K+3, 2), in float64, rounded once to
    ``out_dtype``; differentiable w.r.t. ``coef``. Laid out as :func:`transform_grid`'s (planar for
    large grids: coefᵀ times Phiᵀ, the same float64 values in a fraction of the time)."""
    n, axis = coef.shape[0], coordinate_axis(coef.shape[0], h * w)
    c64 = in_dtype(coef, torch.float64)
    # planar: linear_product of coefᵀ (θ's place); batch-major: coef used as it is (linear_product
    # would record two transposes that cancel)
    grid = linear_product(c64.transpose(1, 2), phi, axis) if axis == 1 else phi.expand(n, -1, -1).bmm(c64)
    return in_dtype(grid_of_product(grid, (h, w), axis), out_dtype)


def tps_grid_to_coef_grad(phi, grad_grid):
    """grad coef (N, K+3, 2) = Phi^T @ grad_grid in float64: the adjoint of
    :func:`tps_grid_from_features`, for the PyTorch path's backward, written as autograd's backward
    of its batched product (the same bits)."""
    n, axis = grad_grid.shape[0], coordinate_axis(grad_grid.shape[0], grad_grid.shape[1] * grad_grid.shape[2])
    g = product_of_grid(in_dtype(grad_grid, torch.float64), axis)
    if axis == 1:
        return linear_product_grad(g, phi, axis).transpose(1, 2)
    return phi.expand(n, -1, -1).transpose(1, 2).bmm(g)


def tps_grid(points, control_points, h, w, align_corners=False, out_dtype=None):
    """Reference TPS sampling grid (N, H, W, 2): solve (float64), then Phi @ coefficients (float64)."""
    coef = tps_coefficients(points, tps_coefficient_map(control_points))
    return tps_grid_from_coef(coef, control_points, h, w, align_corners,
                              points.dtype if out_dtype is None else out_dtype)


def tps_warp(x, points, control_points, h_out, w_out, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Reference TPS warp: ``grid_sample(x, tps_grid(points))``, the grid built in float64."""
    grid = tps_grid(points, control_points, h_out, w_out, align_corners, out_dtype=compute_dtype(x.dtype))
    return sample(x, grid, mode, padding_mode, align_corners)
