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


def _theta_grad(ggrid, grid, theta, aux, size, align_corners):
    """grad theta from the grid's gradient: g^T @ [x_t, y_t, 1] per image (one batched matmul, as
    affine_grid's backward), chained through the division by w for projective theta
    (x_s = u / w, y_s = v / w)."""
    n = theta.shape[0]
    cdt = ggrid.dtype
    base = torch_path.base_grid(*size, align_corners, cdt, ggrid.device).expand(n, -1, 3)  # (N, P, 3)
    g = ggrid.reshape(n, -1, 2)
    if theta.shape[1] == 3:
        inv_w = 1.0 / base.bmm(theta[:, 2:].to(cdt).transpose(1, 2)).squeeze(-1)  # (N, P)
        ok = torch.isfinite(grid.reshape(n, -1, 2)).all(-1)  # zero gradient stays zero through 1 / w
        src = torch.where(ok[..., None], grid.reshape(n, -1, 2), 0.0)
        g_w = torch.where(ok, -(g * src).sum(-1) * inv_w, 0.0)
        g = torch.cat([torch.where(ok[..., None], g * inv_w[..., None], 0.0), g_w[..., None]], dim=-1)
    return g.transpose(1, 2).bmm(base).to(theta.dtype)


def _kernel_forward(x, theta, aux, size, mode, padding_mode, align_corners, fill=None):
    return kw.warp_fwd(x, theta, *size, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, theta, aux, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
                     fill=None):
    return kw.warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta,
                       deterministic=deterministic, fill=fill)


SPEC = TransformSpec(name="warp", param="theta", aux=(), grid=_grid, param_grad=_theta_grad,
                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, supports_fill=True)
warp_op = register(SPEC)
