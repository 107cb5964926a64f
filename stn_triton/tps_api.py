"""Public thin-plate-spline warp: ``stn_triton.tps_warp`` and ``stn_triton.tps_grid``."""
from __future__ import annotations

import torch

from . import _checks, torch_path
from ._tps_ops import TPS_WARP, solved_system, tps_system


def check_points(x_batch: int | None, points, control_points) -> torch.Tensor | None:
    """Validate ``points`` / ``control_points``; return the (K, 2) control points, or None for the
    default sqrt(K) x sqrt(K) grid (K checked to be a perfect square)."""
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor of shape (N, K, 2), got {type(points).__name__}")
    if points.dim() != 3 or points.shape[2] != 2:
        raise ValueError(f"points must have shape (N, K, 2) with (x, y) last, got {tuple(points.shape)}")
    _checks.check_float(points, "points")
    if x_batch is not None and points.shape[0] != x_batch:
        raise ValueError(f"points' batch size must equal x's: x has N = {x_batch}, points has shape {tuple(points.shape)}")
    k = points.shape[1]
    if control_points is None:
        torch_path.check_default_k(k)
        return None
    if not isinstance(control_points, torch.Tensor) or control_points.dim() != 2 or control_points.shape[1] != 2:
        got = tuple(control_points.shape) if isinstance(control_points, torch.Tensor) else type(control_points).__name__
        raise ValueError(f"control_points must have shape (K, 2), got {got}")
    if control_points.shape[0] != k:
        raise ValueError(
            f"control_points has K = {control_points.shape[0]} but points has K = {k} "
            f"(points {tuple(points.shape)}, control_points {tuple(control_points.shape)})"
        )
    if k < 3:
        raise ValueError(f"a thin-plate spline needs K >= 3 control points, got K = {k}")
    _checks.check_float(control_points, "control_points")
    if control_points.device != points.device:
        raise ValueError(f"control_points is on {control_points.device} but points is on {points.device}")
    if control_points.requires_grad:
        raise ValueError(
            "control_points may not require grad: the TPS system is solved once per control-point layout "
            "and cached; gradients flow to points only. Pass control_points.detach()."
        )
    return control_points


def tps_grid(points: torch.Tensor, size, *, control_points: torch.Tensor | None = None,
             align_corners: bool = False) -> torch.Tensor:
    """The thin-plate-spline sampling grid (N, H_out, W_out, 2), (x, y) last, for ``F.grid_sample``.

    See :func:`tps_warp` for the convention. This builds the grid explicitly (O(N*H*W*K) work);
    ``tps_warp`` never does.
    """
    cps = check_points(None, points, control_points)
    h_out, w_out = _checks.resolve_size(None, size)
    m64, c64 = tps_system(cps, points.shape[1], points.device)
    coef = torch_path.tps_coefficients(points, m64)
    return torch_path.tps_grid_from_coef(coef, c64, h_out, w_out, _checks.check_align_corners(align_corners),
                                         points.dtype)


def tps_warp(x: torch.Tensor, points: torch.Tensor, size=None, *, control_points: torch.Tensor | None = None,
             mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False) -> torch.Tensor:
    """Warp ``x`` by thin-plate splines.

    Convention:
        * ``x``: (N, C, H, W) as in :func:`stn_triton.warp`; output (N, C, H_out, W_out), x's dtype
          and memory format.
        * ``control_points``: (K, 2) positions (x, y) in the normalised *output* frame; default a
          regular sqrt(K) x sqrt(K) grid over [-1, 1]^2 with x varying fastest (K a perfect square).
        * ``points``: (N, K, 2), (x, y) in normalised *source* coordinates: where each control
          point lands in the input image. ``points == control_points`` is the identity warp.
        * For an output location p (the pixel grid ``F.affine_grid`` builds for ``size`` and
          ``align_corners``): source(p) = a0 + a1 x + a2 y + sum_k w_k U(|p - c_k|),
          U(r) = r^2 log r^2 (U(0) = 0), with (a, w) the interpolating spline:
          source(c_k) = points_k, sum w_k = 0, sum w_k c_k = 0.
        * ``mode``, ``padding_mode``, ``align_corners``: as :func:`stn_triton.warp`.

    Gradients flow to ``x`` and ``points`` (one fused backward kernel, bit-reproducible under
    ``torch.use_deterministic_algorithms(True)``; higher orders through PyTorch ops);
    ``control_points`` may not require grad.

    Backend: as :func:`stn_triton.warp` (fused Triton kernels on CUDA, which evaluate the spline
    per output pixel without any (N, H*W, K) tensor; PyTorch otherwise). The TPS system is solved
    in float64: once per K for the default grid; explicit control points are read on the host
    every call (a (K, 2) copy) to check the system is not singular (condition number <= 1e12,
    else ValueError) and to find their solved system by content.
    """
    _checks.check_image(x, "x")
    cps = check_points(x.shape[0], points, control_points)
    _checks.check_modes(mode, padding_mode, bicubic="by tps_warp (bilinear and nearest only)")
    _checks.check_same_device(x, points, "points")
    align_corners = _checks.check_align_corners(align_corners)
    h_out, w_out = _checks.resolve_size(x, size)
    # the custom op only where a tracer must see one opaque node; eager calls skip its dispatch
    system = tps_system if torch.compiler.is_compiling() else solved_system
    m64, c64 = system(cps, points.shape[1], x.device)
    coef = torch_path.tps_coefficients(points, m64)  # differentiable: grad_points = M^T @ grad_coef
    return TPS_WARP(x, coef, (c64,), [h_out, w_out], mode, padding_mode, align_corners)
