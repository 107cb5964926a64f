"""Sampling at a caller's grid on the op template: ``stn_triton::grid_sample`` (images) and
``stn_triton::grid_sample3d`` (volumes), and their backwards.

The template's differentiable parameter is the grid itself: its PyTorch-path grid is the
parameter (in the compute dtype: fp32 for fp16 / bf16 data, fp64 for fp64), and the parameter's
gradient is the grid's gradient. Everything else -- padding (fill included), the non-finite
rule, the deterministic grad_x, the eager path, ``torch.compile`` / ``opcheck``, higher orders --
is the template's, shared with the warps (``kernels/grid_sample.py`` for the kernels).
"""
from __future__ import annotations

from ._op_template import TransformSpec, register
from .torch_path import in_dtype
from stn_triton.kernels import grid_sample as kg


def _grid(grid, aux, size, align_corners, dtype):
    return in_dtype(grid, dtype)


def _grid_grad(ggrid, grid, param, aux, size, align_corners):
    return in_dtype(ggrid, param.dtype)


def _kernel_forward(x, grid, aux, size, mode, padding_mode, align_corners, fill=None):
    return kg.grid_sample_fwd(x, grid, mode, padding_mode, align_corners, fill=fill)


def _kernel_backward(grad_out, x, grid, aux, mode, padding_mode, align_corners, need_x, need_grid, deterministic,
                     fill=None):
    return kg.grid_sample_bwd(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_grid,
                              deterministic=deterministic, fill=fill)


GRID_SAMPLE = register(TransformSpec(name="grid_sample", param="grid", aux=(), grid=_grid, param_grad=_grid_grad,
                                     kernel_forward=_kernel_forward, kernel_backward=_kernel_backward,
                                     supports_fill=True, autograd_param_grad=True))
GRID_SAMPLE3D = register(TransformSpec(name="grid_sample3d", param="grid", aux=(), grid=_grid,
                                       param_grad=_grid_grad, kernel_forward=_kernel_forward,
                                       kernel_backward=_kernel_backward, supports_fill=True, autograd_param_grad=True))
grid_sample_op = GRID_SAMPLE.op  # the custom ops themselves (torch.compile, opcheck)
grid_sample3d_op = GRID_SAMPLE3D.op
