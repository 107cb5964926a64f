"""``torch.library`` custom ops for the thin-plate-spline warp, with fake kernels and autograd.

``stn_triton::tps_warp`` and ``stn_triton::tps_warp_backward`` follow ``_warp_ops``: opaque to
``torch.compile``, backend picked when the op *runs* (``resolve_backend``).

Both backends share the host-side algebra: the (K+3) x (K+3) TPS system is solved once per
control-point layout in float64 (:func:`layout`, cached per layout, device and dtype), giving the
coefficient map M (K+3, K); per sample the coefficients are ``coef = M @ points`` (one small
float64 matmul), and the backward maps the coefficient gradient back with
``grad_points = M^T @ grad_coef``. ``control_points=None`` means the default sqrt(K) x sqrt(K)
grid (its cache key needs no host copy); explicit control points are read on the host only the
first time a tensor (or a new version of it) is seen.
"""
from __future__ import annotations

import collections
import threading
from typing import Optional

import torch

from . import torch_path
from ._double_backward import backward_of_backward
from ._sample_composed import grid_sample_composed
from .backend import resolve_backend
from stn_triton.kernels import tps as kt
from stn_triton.kernels import warp as kw
from stn_triton.kernels.layout import empty_output, memory_format_of

_CACHE_SIZE = 64
_cache: "collections.OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]" = collections.OrderedDict()
# Explicit control points are keyed by content, which needs a host copy. Most callers pass the same
# tensor every step (a module buffer), so a first lookup by identity skips that copy: the entry
# holds the tensor itself, so its id cannot be reused while cached, and its version counter
# catches in-place edits.
_by_identity: "collections.OrderedDict[tuple, tuple[torch.Tensor, int, tuple]]" = collections.OrderedDict()
_lock = threading.Lock()


def _remember(cache: collections.OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def layout(control_points: Optional[torch.Tensor], k: int, device: torch.device, dtype: torch.dtype):
    """(M float64 (K+3, K), control points float64 (K, 2), control points in ``dtype`` (K, 2)),
    all contiguous on ``device``; solved once per (layout, device, dtype) and cached (LRU).
    No host synchronisation on a hit: the default grid is keyed by K, explicit control points by
    the tensor's identity and version (a new tensor is read once, to key it by content)."""
    if control_points is None:
        key = ("grid", k, str(device), dtype)
    else:
        ident = (id(control_points), str(device), dtype)
        with _lock:
            known = _by_identity.get(ident)
            if known is not None and known[0] is control_points and known[1] == control_points._version:
                _by_identity.move_to_end(ident)
                return known[2]
        key = (control_points.detach().to("cpu", torch.float64).contiguous().numpy().tobytes(), k, str(device), dtype)
    entry = _solved(key, control_points, k, device, dtype)
    if control_points is not None:
        with _lock:
            _remember(_by_identity, ident, (control_points, control_points._version, entry))
    return entry


def _solved(key, control_points: Optional[torch.Tensor], k: int, device: torch.device, dtype: torch.dtype):
    """The cache entry of ``key``, solving the TPS system on a miss."""
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    if control_points is None:
        c64 = torch_path.default_control_points(k, torch.float64, device)
    else:
        c64 = control_points.detach().to(device=device, dtype=torch.float64).contiguous()
    try:
        m64 = torch_path.tps_coefficient_map(c64).contiguous()
    except RuntimeError as err:  # torch.linalg.LinAlgError: singular system
        raise ValueError(
            f"the thin-plate-spline system of these {k} control points is singular: control points must be "
            "distinct and not all on one line"
        ) from err
    if not torch.isfinite(m64).all():
        raise ValueError(f"the thin-plate-spline system of these {k} control points is singular or not finite")
    entry = (m64, c64, c64.to(dtype).contiguous())
    with _lock:
        _remember(_cache, key, entry)
    return entry


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _by_identity.clear()


@torch.library.custom_op("stn_triton::tps_warp", mutates_args=())
def tps_warp_op(x: torch.Tensor, points: torch.Tensor, control_points: Optional[torch.Tensor], h_out: int,
                w_out: int, mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    k = points.shape[1]
    if resolve_backend(x.device) == "torch":
        m64, c64, _ = layout(control_points, k, x.device, torch.float64)
        grid = torch_path.tps_grid_from_map(points, m64, c64, h_out, w_out, align_corners,
                                            torch_path.compute_dtype(x.dtype))
        return torch_path.sample(x, grid, mode, padding_mode, align_corners)
    acc = kw.acc_dtype(x.dtype)
    m64, _, ctrl = layout(control_points, k, x.device, acc)
    coef = torch.einsum("jk,nkd->njd", m64, points.to(torch.float64)).to(acc).contiguous()
    return kt.tps_fwd(x, coef, ctrl, h_out, w_out, mode, padding_mode, align_corners)


@tps_warp_op.register_fake
def _(x, points, control_points, h_out, w_out, mode, padding_mode, align_corners):
    return empty_output(x, h_out, w_out)


@torch.library.custom_op("stn_triton::tps_warp_backward", mutates_args=())
def tps_warp_backward_op(grad_out: torch.Tensor, x: torch.Tensor, points: torch.Tensor,
                         control_points: Optional[torch.Tensor], mode: str, padding_mode: str, align_corners: bool,
                         need_x: bool, need_points: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_x, grad_points); a gradient that is not needed comes back as an empty tensor."""
    k = points.shape[1]
    if resolve_backend(x.device) == "torch":
        gx, gcoef, m64 = _torch_backward(grad_out, x, points, control_points, mode, padding_mode, align_corners,
                                         need_x, need_points)
    else:
        acc = kw.acc_dtype(x.dtype)
        m64, _, ctrl = layout(control_points, k, x.device, acc)
        coef = torch.einsum("jk,nkd->njd", m64, points.to(torch.float64)).to(acc).contiguous()
        gx, gcoef = kt.tps_bwd(grad_out, x, coef, ctrl, mode, padding_mode, align_corners, need_x, need_points,
                               deterministic=torch.are_deterministic_algorithms_enabled())
    gp = None
    if need_points:
        gp = torch.einsum("jk,njd->nkd", m64, gcoef.to(torch.float64)).to(points.dtype).contiguous()
    return (gx if gx is not None else x.new_empty(0)), (gp if gp is not None else points.new_empty(0))


@tps_warp_backward_op.register_fake
def _(grad_out, x, points, control_points, mode, padding_mode, align_corners, need_x, need_points):
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)) if need_x \
        else x.new_empty(0)
    gp = points.new_empty(points.shape) if need_points else points.new_empty(0)  # contiguous
    return gx, gp


def _torch_backward(grad_out, x, points, control_points, mode, padding_mode, align_corners, need_x, need_points):
    """Backward of the PyTorch path: aten's grid-sampler backward, then grid -> coefficients
    (Phi^T @ grad_grid, Phi in float64). Returns (grad_x or None, grad_coef or None, M)."""
    k = points.shape[1]
    m64, c64, _ = layout(control_points, k, x.device, torch.float64)
    n = x.shape[0]
    if n == 0:
        gcoef = points.new_zeros((0, k + 3, 2), dtype=torch.float64) if need_points else None
        return (torch.zeros_like(x) if need_x else None), gcoef, m64
    cdt = torch_path.compute_dtype(x.dtype)
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    phi = torch_path.tps_features(c64, h_out, w_out, align_corners)  # (P, K+3) float64
    coef = torch.einsum("jk,nkd->njd", m64, points.to(torch.float64))
    grid = torch.einsum("pj,njd->npd", phi, coef).reshape(n, h_out, w_out, 2).to(cdt)
    gx, ggrid = torch_path.sample_backward(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_points)
    gcoef = None
    if need_points:
        gcoef = torch.einsum("pj,npd->njd", phi, ggrid.reshape(n, -1, 2).to(torch.float64))
    return gx, gcoef, m64


def _setup_context(ctx, inputs, output):
    x, points, control_points, _h, _w, mode, padding_mode, align_corners = inputs
    ctx.save_for_backward(x, points, control_points)
    ctx.config = (mode, padding_mode, align_corners)


def _backward(ctx, grad_out):
    x, points, control_points = ctx.saved_tensors
    need_x, need_points = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_points):
        return None, None, None, None, None, None, None, None
    gx, gp = tps_warp_backward_op(grad_out, x, points, control_points, *ctx.config, need_x, need_points)
    return (gx if need_x else None), (gp if need_points else None), None, None, None, None, None, None


tps_warp_op.register_autograd(_backward, setup_context=_setup_context)


def _setup_context_backward(ctx, inputs, output):
    grad_out, x, points, control_points, mode, padding_mode, align_corners, need_x, need_points = inputs
    ctx.save_for_backward(grad_out, x, points, control_points)
    ctx.config = (mode, padding_mode, align_corners)
    ctx.computed = (need_x, need_points)


def _double_backward(ctx, gg_x, gg_points):
    """Second order through the PyTorch path (``stn_triton._double_backward``); the control
    points stay constants, as in the first-order backward."""
    grad_out, x, points, control_points = ctx.saved_tensors
    mode, padding_mode, align_corners = ctx.config
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    # Solved again here rather than through the host-side layout cache, so this formula can be
    # traced (torch.compile / AOT autograd); a (K+3) x (K+3) solve is nothing next to the sampling.
    k = int(points.shape[1])  # a SymInt under symbolic tracing; K fixes the layout anyway
    c64 = (torch_path.default_control_points(k, torch.float64, x.device) if control_points is None
           else control_points.detach().to(device=x.device, dtype=torch.float64))
    m64 = torch_path.tps_coefficient_map(c64)

    def forward(x_, points_):
        grid = torch_path.tps_grid_from_map(points_, m64, c64, h_out, w_out, align_corners,
                                            torch_path.compute_dtype(x_.dtype))
        return grid_sample_composed(x_, grid, mode, padding_mode, align_corners)

    d_go, d_x, d_points = backward_of_backward(forward, grad_out, [x, points], ctx.computed, [gg_x, gg_points])
    return d_go, d_x, d_points, None, None, None, None, None, None


tps_warp_backward_op.register_autograd(_double_backward, setup_context=_setup_context_backward)
