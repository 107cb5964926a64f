"""The 3-D affine transform on the op template: ``stn_triton::warp3d`` and its backward.

theta (N, 3, 4) maps normalised output coordinates (x_t, y_t, z_t) of a volume to source
coordinates, as ``F.affine_grid`` for 5-D sizes, to rounding (``torch_path.transform_grid_3d``); the
kernels read it in place (``kernels/warp3d.py``). Everything after the grid (sampling, padding,
grad_x, the deterministic mode, higher orders) is the template's.
"""
from __future__ import annotations

import torch

from . import torch_path
from ._op_template import TransformSpec, register
from stn_triton.kernels import warp3d as kw3


def _grid(theta, aux, size, align_corners, dtype):
    return torch_path.transform_grid_3d(torch_path.in_dtype(theta, dtype), *size, align_corners)


def _theta_grad(ggrid, grid, theta, aux, size, align_corners):
    """grad theta = sum over voxels of g (x) [x_t, y_t, z_t, 1]: the gradient in the product's
    layout times the base (P, 4), exactly autograd's backward of transform_grid_3d's product (same
    bits as recorded)."""
    axis = torch_path.coordinate_axis(theta.shape[0], size[0] * size[1] * size[2])
    base = torch_path.base_grid_3d(*size, align_corners, ggrid.dtype, ggrid.device)  # (P, 4)
    g = torch_path.product_of_grid(ggrid, axis)
    return torch_path.in_dtype(torch_path.linear_product_grad(g, base, axis), theta.dtype)


def _kernel_forward(x, theta, aux, size, mode, padding_mode, align_corners, fill=None):
    return kw3.warp3d_fwd(x, theta, *size, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, theta, aux, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
                     fill=None):
    return kw3.warp3d_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta,
                          deterministic=deterministic, fill=fill)


SPEC = TransformSpec(name="warp3d", param="theta", aux=(), grid=_grid, param_grad=_theta_grad,
                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward, supports_fill=True,
                     autograd_param_grad=True)
WARP3D = register(SPEC)  # the entry the public function calls
warp3d_op = WARP3D.op  # the custom op itself (torch.compile, opcheck)
