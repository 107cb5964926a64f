"""Sampling at a given grid (``F.grid_sample`` for any grid): one kernel each way, images and volumes.

Where the warp kernels (``kernels/warp.py``, ``kernels/warp3d.py``) *compute* each output pixel's
source coordinate from theta, these read it from the grid tensor the caller built (optical-flow
backward warping, deformable registration, deformable attention): the rest is the same shared
sampling core (``kernels/sampling.py``), so modes, padding (fill included), the non-finite rule,
int64 offsets and the deterministic grad_x are the warps'.

Forward, one program per (image n, block of BLOCK_P output pixels, row-major / x fastest):

    output pixel p = (i, j)  ->  grid[n, i, j, :] = (x_s, y_s)  read in place, any strides and float
                                 dtype, converted to ACC (fp32, fp64 for fp64 data) in registers
                             ->  sampling.sample_at (taps shared by every channel, channels in
                                 blocks of BLOCK_C) -> out[n, :, i, j]

The grid's element offset is ``n*ssn + i*ssh + j*ssw (+ ssc for y)``, the output's
``n*son + c*soc + i*soh + j*sow``: the same flat pixel index p addresses both.

Backward, same tiling: grad_x is scattered as in the warps (fp32 / fp64 atomics, or int64 fixed
point when deterministic); the gradient w.r.t. the grid is per output pixel, so each program
stores its own rows of grad_grid (N, H_out, W_out, 2) directly: no atomics, no reduction, the same
bits every run. Nearest sampling is piecewise constant: its grad_grid is zero, as in PyTorch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pixel_field
from .device import on_tensor_device
from .launch_plan import config_key, tensor_key
from .sampling import (_voxel_offset, backprop_at, backprop_at_3d, out_plane, program_pixels, program_voxels,
                       sample_at, sample_at_3d)


@triton.jit
def _grid_xy(grid_ptr, n, p, p_mask, W_OUT, stride_sn, stride_sh, stride_sw, stride_sc, ACC: tl.constexpr):
    """(x_s, y_s) of output pixels p of image n, read from the grid in ACC (masked pixels: 0)."""
    ho = p // W_OUT
    g = grid_ptr + n * stride_sn + ho * stride_sh + (p - ho * W_OUT) * stride_sw
    return (tl.load(g, mask=p_mask, other=0.0).to(ACC),
            tl.load(g + stride_sc, mask=p_mask, other=0.0).to(ACC))


@triton.jit
def _grid_sample_fwd_kernel(
    # pointers
    x_ptr, grid_ptr, out_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_sn, stride_sh, stride_sw, stride_sc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, _x_t, _y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s = _grid_xy(grid_ptr, n, p, p_mask, W_OUT, stride_sn, stride_sh, stride_sw, stride_sc, ACC)
    sample_at(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _grid_sample_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, grid_ptr, grad_x_ptr, grad_grid_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_sn, stride_sh, stride_sw, stride_sc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_GRID: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, _x_t, _y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s = _grid_xy(grid_ptr, n, p, p_mask, W_OUT, stride_sn, stride_sh, stride_sw, stride_sc, ACC)
    g_xs, g_ys = backprop_at(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_gn, stride_gc, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_GRID, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_GRID:  # bilinear only (the launcher zero-fills for nearest): grad_grid is contiguous (N, H_OUT, W_OUT, 2)
        row = grad_grid_ptr + (n * out_plane(H_OUT, W_OUT, INDEX_64) + p) * 2
        ty = grad_grid_ptr.dtype.element_ty
        tl.store(row, g_xs.to(ty), mask=p_mask)
        tl.store(row + 1, g_ys.to(ty), mask=p_mask)


@triton.jit
def _grid_xyz(grid_ptr, n, p, p_mask, H_OUT, W_OUT, stride_sn, stride_sd, stride_sh, stride_sw, stride_sc,
              ACC: tl.constexpr):
    """(x_s, y_s, z_s) of output voxels p of volume n, read from the grid in ACC (masked voxels: 0)."""
    g = grid_ptr + _voxel_offset(n, p, H_OUT, W_OUT, stride_sn, stride_sd, stride_sh, stride_sw)
    return (tl.load(g, mask=p_mask, other=0.0).to(ACC),
            tl.load(g + stride_sc, mask=p_mask, other=0.0).to(ACC),
            tl.load(g + stride_sc + stride_sc, mask=p_mask, other=0.0).to(ACC))  # not 2 * stride_sc: an int32 product


@triton.jit
def _grid_sample3d_fwd_kernel(
    # pointers
    x_ptr, grid_ptr, out_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    stride_sn, stride_sd, stride_sh, stride_sw, stride_sc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, _x_t, _y_t, _z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                         INDEX_64, BLOCK_P)
    x_s, y_s, z_s = _grid_xyz(grid_ptr, n, p, p_mask, H_OUT, W_OUT, stride_sn, stride_sd, stride_sh, stride_sw,
                              stride_sc, ACC)
    sample_at_3d(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_xn, stride_xc, stride_xd, stride_xh, stride_xw, stride_on, stride_oc, stride_od, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _grid_sample3d_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, grid_ptr, grad_x_ptr, grad_grid_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
    stride_sn, stride_sd, stride_sh, stride_sw, stride_sc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_GRID: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, _x_t, _y_t, _z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                         INDEX_64, BLOCK_P)
    x_s, y_s, z_s = _grid_xyz(grid_ptr, n, p, p_mask, H_OUT, W_OUT, stride_sn, stride_sd, stride_sh, stride_sw,
                              stride_sc, ACC)
    g_xs, g_ys, g_zs = backprop_at_3d(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_gn, stride_gc, stride_gd, stride_gh, stride_gw, stride_xn, stride_xc, stride_xd, stride_xh,
        stride_xw, stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_GRID, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_GRID:  # trilinear only; grad_grid is contiguous (N, D_OUT, H_OUT, W_OUT, 3)
        row = grad_grid_ptr + (n * (out_plane(H_OUT, W_OUT, INDEX_64) * D_OUT) + p) * 3
        ty = grad_grid_ptr.dtype.element_ty
        tl.store(row, g_xs.to(ty), mask=p_mask)
        tl.store(row + 1, g_ys.to(ty), mask=p_mask)
        tl.store(row + 2, g_zs.to(ty), mask=p_mask)


# ----------------------------------------------------------------------------- launchers
def _grid_strides(grid: torch.Tensor) -> tuple:
    """The grid's strides in the kernels' order: batch, spatial (outer to inner), coordinate."""
    s = grid.stride()
    return (s[0], *s[1:-1], s[-1])


def _kernels(x):
    return (_grid_sample3d_fwd_kernel, _grid_sample3d_bwd_kernel) if x.dim() == 5 else \
        (_grid_sample_fwd_kernel, _grid_sample_bwd_kernel)


@on_tensor_device
def grid_sample_fwd(x, grid, mode, padding_mode, align_corners, config=None, fill=None):
    """Sample ``x`` (N, C, H, W) at ``grid`` (N, H_out, W_out, 2), or a volume (N, C, D, H, W) at
    (N, D_out, H_out, W_out, 3); output in x's dtype and memory format. ``fill``: the (C,) values of
    ``padding_mode="fill"``. ``config``: (BLOCK_P, BLOCK_C[, num_warps]) tiling override."""
    plan = pixel_field.fwd_plan(tensor_key(x), tensor_key(grid), tuple(grid.shape[1:-1]), _grid_strides(grid), mode,
                                padding_mode, align_corners, config_key(config))
    return pixel_field.launch_fwd(_kernels(x)[0], plan, x, grid, padding_mode, fill)


@on_tensor_device
def grid_sample_bwd(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_grid, deterministic=False,
                    config=None, fill=None):
    """Backward of :func:`grid_sample_fwd`: (grad_x or None, grad_grid or None) in the inputs' dtypes.

    ``deterministic``: grad_x in int64 fixed point (bit-identical run to run); grad_grid is always
    deterministic (one writer per element). ``grad_grid`` is contiguous whatever the grid's strides."""
    plan = pixel_field.bwd_plan(tensor_key(grad_out), tensor_key(x), tensor_key(grid), tuple(grid.shape[1:-1]),
                                _grid_strides(grid), "NEED_GRID", mode, padding_mode, align_corners, need_x, need_grid,
                                deterministic, config_key(config))
    return pixel_field.launch_bwd(_kernels(x)[1], plan, grad_out, x, grid, padding_mode, need_x, need_grid,
                                  deterministic, fill)
