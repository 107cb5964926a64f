"""Displacement-field warping on the op template: ``stn_triton::warp_flow`` (images) and
``stn_triton::warp_flow3d`` (volumes), and their backwards.

The template's parameter is the flow, (N, 2, H_out, W_out) / (N, 3, D_out, H_out, W_out) in input
pixels, channel order (x, y[, z]). Its PyTorch-path grid is the identity's base grid plus the flow
scaled to normalised units (2 / (S - 1) with ``align_corners``, 2 / S without, S the input's size
along the axis: ``needs_input_size``); the kernels never build it (``kernels/warp_flow.py``).
"""
from __future__ import annotations

import torch

from . import torch_path
from ._op_template import TransformSpec, register
from stn_triton.kernels import warp_flow as kf


def pixel_scales(in_size, align_corners: bool) -> list[float]:
    """Normalised units per input pixel, per axis in (x, y[, z]) order: ``in_size`` is (H, W) or
    (D, H, W). A single pixel with ``align_corners`` (where any coordinate reads it): 2."""
    return [2.0 / max(s - 1, 1) if align_corners else 2.0 / s for s in reversed(tuple(in_size))]


def _build_scale(in_size, align_corners, dtype, device) -> torch.Tensor:
    return torch.tensor(pixel_scales(in_size, align_corners), dtype=dtype, device=device)


def _scale(in_size, align_corners, dtype, device) -> torch.Tensor:
    """:func:`pixel_scales` as a tensor, remembered per key (a training step needs it every call)."""
    return torch_path.remembered(_build_scale, tuple(in_size), align_corners, dtype, device)


def _grid(flow, aux, size, align_corners, dtype, in_size):
    base = torch_path.identity_grid(size, align_corners, dtype, flow.device)
    # base + flow * scale in one op (~1.5 µs less per call at small sizes; where the CPU kernel fuses
    # the multiply-add it rounds once, not twice: within the tolerance of the two-op form, not its bits)
    scale = _scale(in_size, align_corners, dtype, flow.device)
    return torch.addcmul(base, torch_path.in_dtype(flow.movedim(1, -1), dtype), scale)


def _flow_grad(ggrid, grid, flow, aux, size, align_corners, in_size):
    grad = (ggrid * _scale(in_size, align_corners, ggrid.dtype, ggrid.device)).movedim(-1, 1)
    return torch_path.in_dtype(grad, flow.dtype)


def _kernel_forward(x, flow, aux, size, mode, padding_mode, align_corners, fill=None):
    return kf.warp_flow_fwd(x, flow, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, flow, aux, mode, padding_mode, align_corners, need_x, need_flow, deterministic,
                     fill=None):
    return kf.warp_flow_bwd(grad_out, x, flow, mode, padding_mode, align_corners, need_x, need_flow,
                            deterministic=deterministic, fill=fill)


def _spec(name):
    return TransformSpec(name=name, param="flow", aux=(), grid=_grid, param_grad=_flow_grad,
                         kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, supports_fill=True,
                         needs_input_size=True, autograd_param_grad=True)


WARP_FLOW = register(_spec("warp_flow"))
WARP_FLOW3D = register(_spec("warp_flow3d"))
warp_flow_op = WARP_FLOW.op  # the custom ops themselves (torch.compile, opcheck)
warp_flow3d_op = WARP_FLOW3D.op
