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
    return torch_path.transform_grid(theta.to(dtype), *size, align_corners)


def _is_affine(theta) -> bool:
    return theta.shape[1] == 2


def _theta_grad(ggrid, grid, theta, aux, size, align_corners):
    """grad theta from the grid's gradient: (base^T @ g)^T per image (one batched matmul, exactly
    autograd's backward of transform_grid's bmm, as affine_grid's), chained through the division by w for projective theta
    (x_s = u / w, y_s = v / w)."""
    n = theta.shape[0]
    cdt = ggrid.dtype
    base = torch_path.base_grid(*size, align_corners, cdt, ggrid.device).expand(n, -1, 3)  # (N, P, 3)
    g = ggrid.reshape(n, -1, 2)
    if theta.shape[1] == 2:  # autograd's bmm backward through transform_grid (same bits as recorded)
        return base.transpose(1, 2).bmm(g).transpose(1, 2).to(theta.dtype)
    src = grid.reshape(n, -1, 2)
    inv_w = 1.0 / (theta[:, 2].to(cdt) @ base[0].t())[..., None]  # (N, P, 1)
    # the sampler's own rule says which coordinates sampled nothing (non-finite, e.g. w = 0): their
    # gradient is zero and stays zero through 1 / w; in the common all-finite case on CPU it builds
    # no mask (one aminmax), elsewhere it always does (no sync). src itself stays unclamped.
    _, finite = torch_path.sanitize_grid(src)
    if finite is not None:
        src, g, inv_w = (torch.where(finite, v, 0.0) for v in (src, g, inv_w))
    g_uv = g * inv_w  # d/du, d/dv
    # d/dw = -(g . src) / w, written per column: a sum over the size-2 axis is 3x slower on CPU
    g_w = -(g_uv[..., :1] * src[..., :1] + g_uv[..., 1:] * src[..., 1:])
    # two matmuls, no (N, P, 3) concatenation: the rows of theta for (u, v) and for w
    return torch.cat([g_uv.transpose(1, 2).bmm(base), g_w.transpose(1, 2).bmm(base)], 1).to(theta.dtype)


def _kernel_forward(x, theta, aux, size, mode, padding_mode, align_corners, fill=None):
    return kw.warp_fwd(x, theta, *size, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, theta, aux, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
                     fill=None):
    return kw.warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta,
                       deterministic=deterministic, fill=fill)


SPEC = TransformSpec(name="warp", param="theta", aux=(), grid=_grid, param_grad=_theta_grad,
                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, supports_fill=True,
                     autograd_param_grad=_is_affine)
WARP = register(SPEC)  # the entry the public function calls
warp_op = WARP.op  # the custom op itself (torch.compile, opcheck)
