"""Fused 3-D affine warp of volumes: grid generation + trilinear / nearest sampling in one kernel
each way, the same design as the 2-D warp (``kernels/warp.py``).

Forward, one program per (volume n, block of BLOCK_P output voxels, x fastest):

    output voxel p = (k, i, j) -> (x_t, y_t, z_t) normalised output coordinate  (sampling.program_voxels)
                               -> (x_s, y_s, z_s) = theta_n @ [x_t, y_t, z_t, 1]   (theta (N, 3, 4))
                               -> (ix, iy, iz) voxel coordinate after padding      (sampling.source_pixel)
                               -> 2x2x2 taps (trilinear, PyTorch's 5-D ``bilinear``) or 1 (nearest),
    then the channels are walked in blocks of BLOCK_C (``sampling.sample_channels_3d``). Coordinates
    live in registers in ACC precision (fp32, fp64 for fp64 data); no grid tensor is written.

Backward, same tiling: grad_x is scattered into an fp32 (fp64) buffer, or an int64 fixed-point one
when deterministic (``kernels/fixed_point.py``); the gradient w.r.t. (x_s, y_s, z_s) is chained to
theta and summed over the tile into one row of a (N * NUM_PBLOCKS, 12) partial buffer that the
launcher sums afterwards: no grad-grid tensor and no atomics on theta.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .fixed_point import grad_x_buffer, grad_x_from_buffer
from .launch_plan import config_key, meta_tensor, plan_cache, tensor_key
from .layout import empty_output, is_channels_last, memory_format_of, nothing_to_sample
from .policy import MODE_CODES, PADDING_CODES, compute_dtype, launch_config_3d, needs_int64, triton_dtype
from .sampling import backprop_at_3d, program_voxels, sample_at_3d
from .warp import _theta, fill_values


@triton.jit
def _source_coords_3d(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, z_t, ACC: tl.constexpr):
    """(x_s, y_s, z_s) = theta_n @ [x_t, y_t, z_t, 1] (theta read in place, any strides)."""
    x_s = (_theta(theta_ptr, n, 0, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
           + _theta(theta_ptr, n, 0, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
           + _theta(theta_ptr, n, 0, 2, stride_tn, stride_tr, stride_tc, ACC) * z_t
           + _theta(theta_ptr, n, 0, 3, stride_tn, stride_tr, stride_tc, ACC))
    y_s = (_theta(theta_ptr, n, 1, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
           + _theta(theta_ptr, n, 1, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
           + _theta(theta_ptr, n, 1, 2, stride_tn, stride_tr, stride_tc, ACC) * z_t
           + _theta(theta_ptr, n, 1, 3, stride_tn, stride_tr, stride_tc, ACC))
    z_s = (_theta(theta_ptr, n, 2, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
           + _theta(theta_ptr, n, 2, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
           + _theta(theta_ptr, n, 2, 2, stride_tn, stride_tr, stride_tc, ACC) * z_t
           + _theta(theta_ptr, n, 2, 3, stride_tn, stride_tr, stride_tc, ACC))
    return x_s, y_s, z_s


@triton.jit
def _warp3d_fwd_kernel(
    # pointers
    x_ptr, theta_ptr, out_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    stride_tn, stride_tr, stride_tc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t, z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                      INDEX_64, BLOCK_P)
    x_s, y_s, z_s = _source_coords_3d(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, z_t, ACC)
    sample_at_3d(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_xn, stride_xc, stride_xd, stride_xh, stride_xw, stride_on, stride_oc, stride_od, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _warp3d_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, theta_ptr, grad_x_ptr, grad_theta_partial_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
    stride_tn, stride_tr, stride_tc,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_THETA: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t, z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                      INDEX_64, BLOCK_P)
    x_s, y_s, z_s = _source_coords_3d(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, z_t, ACC)
    g_xs, g_ys, g_zs = backprop_at_3d(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_gn, stride_gc, stride_gd, stride_gh, stride_gw, stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_THETA, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_THETA:  # trilinear only (the launcher returns zeros for nearest); one partial row per program
        out_row = grad_theta_partial_ptr + pid * 12
        tl.store(out_row + 0, tl.sum(g_xs * x_t, axis=0))
        tl.store(out_row + 1, tl.sum(g_xs * y_t, axis=0))
        tl.store(out_row + 2, tl.sum(g_xs * z_t, axis=0))
        tl.store(out_row + 3, tl.sum(g_xs, axis=0))
        tl.store(out_row + 4, tl.sum(g_ys * x_t, axis=0))
        tl.store(out_row + 5, tl.sum(g_ys * y_t, axis=0))
        tl.store(out_row + 6, tl.sum(g_ys * z_t, axis=0))
        tl.store(out_row + 7, tl.sum(g_ys, axis=0))
        tl.store(out_row + 8, tl.sum(g_zs * x_t, axis=0))
        tl.store(out_row + 9, tl.sum(g_zs * y_t, axis=0))
        tl.store(out_row + 10, tl.sum(g_zs * z_t, axis=0))
        tl.store(out_row + 11, tl.sum(g_zs, axis=0))


# ----------------------------------------------------------------------------- launchers


@plan_cache
def _fwd_plan(x_key, theta_key, d_out, h_out, w_out, mode, padding_mode, align_corners, config):
    """(grid, out shape, out memory format, integer args, constexpr args) of a forward launch."""
    x, theta = meta_tensor(x_key), meta_tensor(theta_key)
    n, c, d, h, w = x.shape
    out = empty_output(x, d_out, h_out, w_out)
    block_p, block_c, num_warps = launch_config_3d(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(d_out * h_out * w_out, block_p)
    ints = (c, d, h, w, d_out, h_out, w_out, num_pblocks, *x.stride(), *out.stride(), *theta.stride())
    meta = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode], ALIGN_CORNERS=align_corners,
                ACC=triton_dtype(compute_dtype(x.dtype)), INDEX_64=needs_int64(x, out, theta),
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    grid = None if nothing_to_sample(x, d_out, h_out, w_out) else (n * num_pblocks,)  # None: an empty output, no launch
    return grid, tuple(out.shape), memory_format_of(x), ints, meta


@on_tensor_device
def warp3d_fwd(x, theta, d_out, h_out, w_out, mode, padding_mode, align_corners, config=None, fill=None):
    """Launch ``_warp3d_fwd_kernel`` for x (N, C, D, H, W), theta (N, 3, 4); output has x's dtype
    and memory format (NCDHW or channels_last_3d). ``config``: (BLOCK_P, BLOCK_C[, num_warps])."""
    grid, out_shape, memory_format, ints, meta = _fwd_plan(
        tensor_key(x), tensor_key(theta), d_out, h_out, w_out, mode, padding_mode, align_corners, config_key(config))
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    if grid is None:
        return out
    _warp3d_fwd_kernel[grid](x, theta, out, fill_values(fill, x, padding_mode), *ints, **meta)
    return out


@plan_cache
def _bwd_plan(grad_out_key, x_key, theta_key, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
              config):
    """(grid, partial-row buffer shape or None, its (n, blocks, 3, 4) view, integer args, constexpr
    args) of a backward launch."""
    grad_out, x, theta = meta_tensor(grad_out_key), meta_tensor(x_key), meta_tensor(theta_key)
    n, c, d, h, w = x.shape
    d_out, h_out, w_out = grad_out.shape[2:]
    grad_x_arg = torch.empty(x.shape, device="meta", memory_format=memory_format_of(x)) if need_x else x
    block_p, block_c, num_warps = launch_config_3d(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(d_out * h_out * w_out, block_p)
    theta_in_kernel = need_theta and mode == "bilinear" and not nothing_to_sample(x, d_out, h_out, w_out)
    partial_shape = (n * num_pblocks, 12) if theta_in_kernel else None
    ints = (c, d, h, w, d_out, h_out, w_out, num_pblocks,
            *grad_out.stride(), *x.stride(), *grad_x_arg.stride(), *theta.stride())
    meta = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode], ALIGN_CORNERS=align_corners,
                NEED_X=need_x, NEED_THETA=theta_in_kernel, DETERMINISTIC=bool(deterministic and need_x),
                ACC=triton_dtype(compute_dtype(x.dtype)),
                INDEX_64=needs_int64(x, grad_out, theta) or (theta_in_kernel and needs_int64(
                    torch.empty(partial_shape, device="meta"))),
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    # None: nothing to launch (an empty output, or neither gradient computed by the kernel)
    grid = (n * num_pblocks,) if (need_x or theta_in_kernel) and not nothing_to_sample(x, *grad_out.shape[2:]) else None
    return grid, partial_shape, (n, num_pblocks, 3, 4), ints, meta


@on_tensor_device
def warp3d_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta, deterministic=False,
               config=None, fill=None):
    """Launch ``_warp3d_bwd_kernel``. Returns (grad_x or None, grad_theta or None) in the inputs'
    dtypes; ``deterministic`` as in :func:`kernels.warp.warp_bwd`."""
    grid, partial_shape, partial_view, ints, meta = _bwd_plan(
        tensor_key(grad_out), tensor_key(x), tensor_key(theta), mode, padding_mode, align_corners, need_x, need_theta,
        deterministic, config_key(config))
    acc = compute_dtype(x.dtype)
    grad_x, exponents = grad_x_buffer(x, grad_out, acc, deterministic) if need_x else (None, None)
    partial = torch.empty(partial_shape, dtype=acc, device=x.device) if partial_shape is not None else None
    if grid is not None:
        _warp3d_bwd_kernel[grid](
            grad_out, x, theta, grad_x if grad_x is not None else x, partial if partial is not None else x,
            exponents if exponents is not None else x, fill_values(fill, x, padding_mode), *ints, **meta)
    gx = grad_x_from_buffer(grad_x, exponents, x.dtype, acc) if need_x else None
    gt = None
    if partial is not None:
        gt = partial.view(partial_view).sum(dim=1, dtype=theta.dtype)
    elif need_theta:
        gt = torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device)
    return gx, gt
