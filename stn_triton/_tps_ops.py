"""The thin-plate-spline transform on the op template, and its solved system.

``stn_triton::tps_warp(x, coef, control_points, ...)`` samples with the spline coefficients
``coef`` (N, K+3, 2) (rows w_1..w_K, a0, a1, a2; float64) at control points (K, 2) (float64).
The public :func:`stn_triton.tps_warp` computes ``coef = M @ points`` with an ordinary
differentiable torch op in front of it, so the backward returns grad_coef and autograd maps it to
the points (grad_points = M^T @ grad_coef): the coefficients are computed once per call and
nothing is recomputed in the backward.

``stn_triton::tps_system(control_points, k, device) -> (M, control points)`` gives the coefficient
map M (K+3, K) and the control points, both float64 on ``device``:

* ``control_points=None``, the default sqrt(K) x sqrt(K) grid: solved once per (K, device) and
  kept; no host synchronisation on later calls.
* explicit control points: read on the host every call (a (K, 2) copy; one synchronisation on
  CUDA), checked for a singular system (:func:`check_conditioning`) and solved in float64,
  remembered by *content* (an LRU of 64 layouts). Nothing is keyed by a tensor's identity or
  version counter: an in-place edit of any kind (``cp.data[...] = v``, ``cp.numpy()[...] = v``)
  can never hit a stale entry.

The PyTorch path's Phi (H*W, K+3) is remembered the same way, by content, on the CPU
(:func:`features`).

It is a custom op so that ``torch.compile(fullgraph=True)`` sees one opaque node, not the cache.
"""
from __future__ import annotations

import collections
import threading
from typing import Optional

import torch

from . import torch_path
from ._op_template import TransformSpec, register
from stn_triton.kernels import tps as kt

# Above this condition number (2-norm, float64) the (K+3) x (K+3) system is treated as singular: a
# float64 solve then has fewer than ~4 correct digits (eps64 * 1e12 ~ 2e-4 relative error in M).
# Well-spread layouts are far below it (the default grids: ~1e2 for K = 4 to ~1e4 for K = 64);
# collinear points (~1e17) and exact duplicates (infinite) are far above.
MAX_CONDITION = 1e12
_CACHE_SIZE = 64
_default: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
_explicit: "collections.OrderedDict[tuple[bytes, str], tuple[torch.Tensor, torch.Tensor]]" = collections.OrderedDict()
_phi: "collections.OrderedDict[tuple[bytes, tuple, bool], torch.Tensor]" = collections.OrderedDict()
_lock = threading.Lock()


def check_conditioning(c64: torch.Tensor) -> None:
    """Raise a clear ValueError unless the TPS system of control points ``c64`` (K, 2) (float64, CPU)
    is well conditioned (condition number <= MAX_CONDITION)."""
    k = c64.shape[0]
    if not torch.isfinite(c64).all():
        raise ValueError("control_points must be finite")
    if torch.unique(c64, dim=0).shape[0] < k:
        raise ValueError(
            f"the thin-plate-spline system of these {k} control points is singular: control points must be "
            "distinct (some are exact duplicates) and not all on one line"
        )
    s = torch.linalg.svdvals(torch_path.tps_system(c64))
    cond = (s[0] / s[-1]).item() if s[-1] > 0 else float("inf")
    if not cond <= MAX_CONDITION:
        raise ValueError(
            f"the thin-plate-spline system of these {k} control points is singular or nearly so (condition "
            f"number {cond:.2g} > {MAX_CONDITION:.0e}): control points must be distinct and not all on one line"
        )


def _solve(c64_cpu: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m64 = torch_path.tps_coefficient_map(c64_cpu).contiguous()
    return m64.to(device), c64_cpu.to(device, copy=True)


def solved_system(control_points: Optional[torch.Tensor], k: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M float64 (K+3, K), control points float64 (K, 2)) on ``device``; see the module docstring.
    The returned tensors are shared between calls: read them, never write them. Eager calls use
    this function itself; under ``torch.compile`` it is the custom op :data:`tps_system`."""
    if control_points is None:
        key = (k, device)  # a torch.device: hashable, and cheaper than its string
        # one dict read is atomic; the entry is written whole under the lock (two threads may both
        # solve a missing one: the same values), and it is never removed but by clear_cache
        hit = _default.get(key)
        if hit is None:
            hit = _solve(torch_path.default_control_points(k, torch.float64, "cpu"), device)
            with _lock:
                _default[key] = hit
        return hit
    if control_points.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "tps_warp with explicit control_points reads them on the host every call (to check the spline "
            "system and find its solve by content), which a CUDA graph cannot capture; capture with the "
            "default grid (control_points=None), or run this call outside the graph")
    # a copy, never the caller's storage (.to() returns the tensor itself when it is already a
    # contiguous CPU float64 tensor): what is kept must not change when the caller's tensor does
    c64 = control_points.detach().to("cpu", torch.float64, copy=True).contiguous()
    key = (c64.numpy().tobytes(), str(device))
    with _lock:
        hit = _explicit.get(key)
        if hit is not None:
            _explicit.move_to_end(key)
            return hit
    check_conditioning(c64)
    hit = _solve(c64, device)
    with _lock:
        _explicit[key] = hit
        while len(_explicit) > _CACHE_SIZE:
            _explicit.popitem(last=False)
    return hit


tps_system = torch.library.custom_op("stn_triton::tps_system", solved_system, mutates_args=())


@tps_system.register_fake
def _(control_points, k, device):
    return (torch.empty((k + 3, k), dtype=torch.float64, device=device),
            torch.empty((k, 2), dtype=torch.float64, device=device))


def clear_cache() -> None:
    with _lock:
        _default.clear()
        _explicit.clear()
        _phi.clear()


def _default_features(k: int, size: tuple, align_corners: bool, device) -> torch.Tensor:
    return torch_path.tps_features(solved_system(None, k, device)[1], *size, align_corners)


def features(control_points: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Phi (H*W, K+3) float64 of :func:`torch_path.tps_features` for the PyTorch path, remembered:
    a training step otherwise builds the same Phi three times (forward grid, backward grid,
    coefficient gradient).

    * The default grid's own tensor (``solved_system``'s): by K, size and align_corners (its
      content is determined by K; nothing read), on any device.
    * Other control points on the CPU: by *content* (their bytes, the size, align_corners; an LRU
      of ``_CACHE_SIZE``).
    * Elsewhere computed: on a GPU a content key would need a host copy of the control points, and
      a traced tensor has no content.

    The returned tensor is shared: read it, never write it."""
    if type(control_points) is torch.Tensor and not torch.compiler.is_compiling():  # not traced: K is an int
        k = control_points.shape[0]
        default = _default.get((k, control_points.device))
        if default is not None and default[1] is control_points:
            # the default grid's own tensor (solved_system's, never written): its content is its K, no bytes to read
            return torch_path.remembered(_default_features, k, tuple(size), bool(align_corners), control_points.device)
    c64 = control_points.detach().to(torch.float64)
    if c64.device.type != "cpu" or type(c64) is not torch.Tensor:  # GPU, or traced (fake / functional tensors)
        return torch_path.tps_features(c64, *size, align_corners)
    key = (c64.contiguous().numpy().tobytes(), tuple(size), bool(align_corners))
    with _lock:
        phi = _phi.get(key)
        if phi is not None:
            _phi.move_to_end(key)
            return phi
    phi = torch_path.tps_features(c64, *size, align_corners)
    with _lock:
        _phi[key] = phi
        while len(_phi) > _CACHE_SIZE:
            _phi.popitem(last=False)
    return phi


def _grid(coef, aux, size, align_corners, dtype):
    (control_points,) = aux
    return torch_path.tps_grid_from_features(features(control_points, size, align_corners), coef, *size, dtype)


def _coef_grad(ggrid, grid, coef, aux, size, align_corners):
    """grad coef = Phi^T @ grad_grid (Phi (P, K+3) in float64): autograd's backward of the
    grid's batched product (the same bits: tests/test_eager_path.py)."""
    (control_points,) = aux
    grad = torch_path.tps_grid_to_coef_grad(features(control_points, size, align_corners), ggrid)
    return torch_path.in_dtype(grad, coef.dtype)


def _kernel_forward(x, coef, aux, size, mode, padding_mode, align_corners):
    (control_points,) = aux
    return kt.tps_fwd(x, coef, control_points, *size, mode, padding_mode, align_corners)


def _kernel_backward(grad_out, x, coef, aux, mode, padding_mode, align_corners, need_x, need_coef, deterministic):
    (control_points,) = aux
    return kt.tps_bwd(grad_out, x, coef, control_points, mode, padding_mode, align_corners, need_x, need_coef,
                      deterministic=deterministic)


SPEC = TransformSpec(name="tps_warp", param="coef", aux=("control_points",), grid=_grid, param_grad=_coef_grad,
                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, autograd_param_grad=True)
TPS_WARP = register(SPEC)  # the entry the public function calls
tps_warp_op = TPS_WARP.op  # the custom op itself (torch.compile, opcheck)
