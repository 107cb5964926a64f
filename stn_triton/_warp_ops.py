"""The affine / projective transform on the op template: ``stn_triton::warp`` and its backward.

theta (N, 2, 3) affine or (N, 3, 3) projective maps normalised output coordinates to source
coordinates (``torch_path.transform_grid``); the kernels read it in place (``kernels/warp.py``).
"""
from __future__ import annotations

import torch

from . import torch_path
from ._op_template import TransformSpec, register
from stn_triton.kernels import warp as kw


def _grid(theta, aux, size, align_corners, dtype):
    return torch_path.transform_grid(torch_path.in_dtype(theta, dtype), *size, align_corners)


def _theta_grad(ggrid, grid, theta, aux, size, align_corners):
    """grad theta from the grid's gradient, written as autograd's backward of transform_grid (the
    same ops in the same order, so the same bits as a call autograd recorded): the gradient in the
    product's layout (``torch_path.coordinate_axis``) times the base (P, 3); for projective theta it
    chains through the division (x_s = u / w, y_s = v / w) as autograd's ``div`` backward does:
    g_uv = g / w, g_w = sum over (x, y) of -g * ((uv / w) / w)."""
    n = theta.shape[0]
    cdt = ggrid.dtype
    axis = torch_path.coordinate_axis(n, size[0] * size[1])
    base = torch_path.base_grid(*size, align_corners, cdt, ggrid.device)  # (P, 3)
    g = torch_path.product_of_grid(ggrid, axis)
    if theta.shape[1] == 3:
        uvw = torch_path.linear_product(torch_path.in_dtype(theta, cdt), base, axis)  # the forward's, same bits
        uv, w = uvw.narrow(axis, 0, 2), uvw.narrow(axis, 2, 1)
        g_uv = g / w
        g_w = (-g * ((uv / w) / w)).sum(axis, keepdim=True)
        # the sampler's own rule says which coordinates sampled nothing (non-finite, e.g. w = 0):
        # their gradient is zero (not 0 / 0). In the common all-finite case on CPU no mask is built
        # (one aminmax), elsewhere it always is (no sync).
        _, finite = torch_path.sanitize_grid(grid)
        if finite is not None:
            finite = finite.reshape(n, 1, -1) if axis == 1 else finite.reshape(n, -1, 1)
            g_uv, g_w = torch.where(finite, g_uv, 0.0), torch.where(finite, g_w, 0.0)
        g = torch.cat([g_uv, g_w], axis)
    return torch_path.in_dtype(torch_path.linear_product_grad(g, base, axis), theta.dtype)


def _kernel_forward(x, theta, aux, size, mode, padding_mode, align_corners, fill=None):
    return kw.warp_fwd(x, theta, *size, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, theta, aux, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
                     fill=None):
    return kw.warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta,
                       deterministic=deterministic, fill=fill)


SPEC = TransformSpec(name="warp", param="theta", aux=(), grid=_grid, param_grad=_theta_grad,
                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, supports_fill=True,
                     autograd_param_grad=True)
WARP = register(SPEC)  # the entry the public function calls
warp_op = WARP.op  # the custom op itself (torch.compile, opcheck)
