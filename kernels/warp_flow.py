"""Displacement-field warping without a grid tensor: one kernel each way, images and volumes.

Output pixel p samples the input at the identity's normalised coordinate of p plus the flow at p,
converted from input pixels to normalised units per axis:

    output pixel p = (i, j)  ->  (x_t, y_t) normalised output coordinate      (sampling.program_pixels)
                             ->  (u, v) = flow[n, :, i, j]  (input pixels; read in place, any strides /
                                  float dtype, converted to ACC in registers)
                             ->  x_s = x_t + u * SX,  y_s = y_t + v * SY
                                  SX = 2 / (W - 1) (align_corners, W > 1) or 2 / W, SY likewise with H
                             ->  sampling.sample_at

So with equal sizes output pixel (i, j) samples input pixel (i + v, j + u) for either
``align_corners``: the base is added in ACC (fp32, fp64 for fp64 data) in registers, never in a
half-precision grid, and no (N, H, W, 2) identity or sampling grid is built.

Backward: grad_x as in the warps; the flow's gradient is per output pixel, (g_xs * SX, g_ys * SY),
stored by the one program that owns the pixel into a contiguous (N, 2, H_out, W_out) (volumes:
(N, 3, D_out, H_out, W_out)) buffer: no atomics, the same bits every run.
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
def _pixel_scale(size, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr):
    """Normalised units per input pixel along an axis of ``size`` (a single pixel with align_corners: 2)."""
    if ALIGN_CORNERS:
        return 2.0 / tl.maximum(size - 1, 1).to(ACC)
    return 2.0 / size.to(ACC)


@triton.jit
def _flow_coords(flow_ptr, n, p, p_mask, x_t, y_t, W, H, W_OUT, stride_fn, stride_fc, stride_fh, stride_fw,
                 ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr):
    """(x_s, y_s, SX, SY): the source coordinates of output pixels p of image n and the pixel scales."""
    ho = p // W_OUT
    f = flow_ptr + n * stride_fn + ho * stride_fh + (p - ho * W_OUT) * stride_fw
    sx = _pixel_scale(W, ALIGN_CORNERS, ACC)
    sy = _pixel_scale(H, ALIGN_CORNERS, ACC)
    u = tl.load(f, mask=p_mask, other=0.0).to(ACC)
    v = tl.load(f + stride_fc, mask=p_mask, other=0.0).to(ACC)
    return x_t + u * sx, y_t + v * sy, sx, sy


@triton.jit
def _warp_flow_fwd_kernel(
    # pointers
    x_ptr, flow_ptr, out_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_fn, stride_fc, stride_fh, stride_fw,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s, _sx, _sy = _flow_coords(flow_ptr, n, p, p_mask, x_t, y_t, W, H, W_OUT,
                                      stride_fn, stride_fc, stride_fh, stride_fw, ALIGN_CORNERS, ACC)
    sample_at(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _warp_flow_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, flow_ptr, grad_x_ptr, grad_flow_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_fn, stride_fc, stride_fh, stride_fw,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_FLOW: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s, sx, sy = _flow_coords(flow_ptr, n, p, p_mask, x_t, y_t, W, H, W_OUT,
                                    stride_fn, stride_fc, stride_fh, stride_fw, ALIGN_CORNERS, ACC)
    g_xs, g_ys = backprop_at(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_gn, stride_gc, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_FLOW, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_FLOW:  # bilinear / bicubic (the launcher zero-fills for nearest); grad_flow contiguous (N, 2, H_OUT, W_OUT)
        hw = out_plane(H_OUT, W_OUT, INDEX_64)
        off = n * (2 * hw) + p  # int64 with INDEX_64: n, p and hw are
        ty = grad_flow_ptr.dtype.element_ty
        tl.store(grad_flow_ptr + off, (g_xs * sx).to(ty), mask=p_mask)
        tl.store(grad_flow_ptr + (off + hw), (g_ys * sy).to(ty), mask=p_mask)


@triton.jit
def _flow_coords_3d(flow_ptr, n, p, p_mask, x_t, y_t, z_t, D, H, W, H_OUT, W_OUT,
                    stride_fn, stride_fc, stride_fd, stride_fh, stride_fw, ALIGN_CORNERS: tl.constexpr,
                    ACC: tl.constexpr):
    f = flow_ptr + _voxel_offset(n, p, H_OUT, W_OUT, stride_fn, stride_fd, stride_fh, stride_fw)
    sx = _pixel_scale(W, ALIGN_CORNERS, ACC)
    sy = _pixel_scale(H, ALIGN_CORNERS, ACC)
    sz = _pixel_scale(D, ALIGN_CORNERS, ACC)
    u = tl.load(f, mask=p_mask, other=0.0).to(ACC)
    v = tl.load(f + stride_fc, mask=p_mask, other=0.0).to(ACC)
    w = tl.load(f + stride_fc + stride_fc, mask=p_mask, other=0.0).to(ACC)  # not 2 * stride_fc: an int32 product
    return x_t + u * sx, y_t + v * sy, z_t + w * sz, sx, sy, sz


@triton.jit
def _warp_flow3d_fwd_kernel(
    # pointers
    x_ptr, flow_ptr, out_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    stride_fn, stride_fc, stride_fd, stride_fh, stride_fw,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t, z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                      INDEX_64, BLOCK_P)
    x_s, y_s, z_s, _sx, _sy, _sz = _flow_coords_3d(flow_ptr, n, p, p_mask, x_t, y_t, z_t, D, H, W, H_OUT, W_OUT,
                                                   stride_fn, stride_fc, stride_fd, stride_fh, stride_fw,
                                                   ALIGN_CORNERS, ACC)
    sample_at_3d(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_xn, stride_xc, stride_xd, stride_xh, stride_xw, stride_on, stride_oc, stride_od, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _warp_flow3d_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, flow_ptr, grad_x_ptr, grad_flow_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, D, H, W, D_OUT, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
    stride_fn, stride_fc, stride_fd, stride_fh, stride_fw,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_FLOW: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t, z_t = program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS, ACC,
                                                      INDEX_64, BLOCK_P)
    x_s, y_s, z_s, sx, sy, sz = _flow_coords_3d(flow_ptr, n, p, p_mask, x_t, y_t, z_t, D, H, W, H_OUT, W_OUT,
                                                stride_fn, stride_fc, stride_fd, stride_fh, stride_fw,
                                                ALIGN_CORNERS, ACC)
    g_xs, g_ys, g_zs = backprop_at_3d(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s, C, D, H, W, H_OUT, W_OUT,
        stride_gn, stride_gc, stride_gd, stride_gh, stride_gw, stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_FLOW, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_FLOW:  # trilinear only; grad_flow contiguous (N, 3, D_OUT, H_OUT, W_OUT)
        dhw = out_plane(H_OUT, W_OUT, INDEX_64) * D_OUT
        off = n * (3 * dhw) + p
        ty = grad_flow_ptr.dtype.element_ty
        tl.store(grad_flow_ptr + off, (g_xs * sx).to(ty), mask=p_mask)
        tl.store(grad_flow_ptr + (off + dhw), (g_ys * sy).to(ty), mask=p_mask)
        tl.store(grad_flow_ptr + (off + 2 * dhw), (g_zs * sz).to(ty), mask=p_mask)


# ----------------------------------------------------------------------------- launchers
def _kernels(x):
    return (_warp_flow3d_fwd_kernel, _warp_flow3d_bwd_kernel) if x.dim() == 5 else \
        (_warp_flow_fwd_kernel, _warp_flow_bwd_kernel)


@on_tensor_device
def warp_flow_fwd(x, flow, mode, padding_mode, align_corners, config=None, fill=None):
    """Warp ``x`` (N, C, H, W) by ``flow`` (N, 2, H_out, W_out) in input pixels, or a volume
    (N, C, D, H, W) by (N, 3, D_out, H_out, W_out); output in x's dtype and memory format."""
    plan = pixel_field.fwd_plan(tensor_key(x), tensor_key(flow), tuple(flow.shape[2:]), tuple(flow.stride()), mode,
                                padding_mode, align_corners, config_key(config))
    return pixel_field.launch_fwd(_kernels(x)[0], plan, x, flow, padding_mode, fill)


@on_tensor_device
def warp_flow_bwd(grad_out, x, flow, mode, padding_mode, align_corners, need_x, need_flow, deterministic=False,
                  config=None, fill=None):
    """Backward of :func:`warp_flow_fwd`: (grad_x or None, grad_flow or None) in the inputs' dtypes;
    grad_flow contiguous, written by one program per pixel (deterministic)."""
    plan = pixel_field.bwd_plan(tensor_key(grad_out), tensor_key(x), tensor_key(flow), tuple(flow.shape[2:]),
                                tuple(flow.stride()), "NEED_FLOW", mode, padding_mode, align_corners, need_x, need_flow,
                                deterministic, config_key(config))
    return pixel_field.launch_bwd(_kernels(x)[1], plan, grad_out, x, flow, padding_mode, need_x, need_flow,
                                  deterministic, fill)
