"""Fused affine / projective warp: grid generation + sampling in one kernel each way.

Forward, one program per (image n, block of BLOCK_P output pixels):

    output pixel p = (i, j)  ->  (x_t, y_t) normalised output coordinate     (sampling.output_coords)
                             ->  (x_s, y_s) = theta_n @ [x_t, y_t, 1]          (divided by w if projective)
                             ->  (ix, iy) pixel coordinate after padding       (sampling.source_pixel)
                             ->  2x2 taps (bilinear) or 1 tap (nearest), shared by every channel,
    then the channels are walked in blocks of BLOCK_C: tile [BLOCK_P, BLOCK_C] of each tap is
    gathered from ``x + n*sxn + c*sxc + y*sxh + x*sxw``. With channels_last (sxc == 1) each tap
    reads BLOCK_C contiguous values (vectorised); with NCHW the output store is contiguous in p.
    No grid tensor is ever written: coordinates live in registers, in ACC precision (fp32, or
    fp64 for fp64 data) whatever the storage dtype.

Backward, same tiling: grad_out is read once per tile; grad_x is scattered with atomic adds into
an fp32 (fp64) buffer; the gradient w.r.t. (x_s, y_s) is reduced over channels in registers,
chained through padding / unnormalisation / the projective division, multiplied by the basis
[x_t, y_t, 1] and summed over the tile into one row of an fp32 partial buffer
(N * NUM_PBLOCKS, ROWS * 3) (ROWS = 2 affine, 3 projective) that the launcher sums afterwards:
no (N, H, W, 2) grad-grid tensor and no contended atomics on theta.

theta is read in place, (N, ROWS, 3) with any strides and float dtype (``theta + n*stn + r*str
+ c*stc``), and converted to ACC in registers: no host-side copy, so the forward is one launch
and the backward three (zero the grad_x buffer, the kernel, sum the partial rows).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .fixed_point import grad_x_buffer, grad_x_from_buffer
from .launch_plan import config_key, meta_tensor, plan_cache, tensor_key
from .layout import empty_output, is_channels_last, memory_format_of, nothing_to_sample
from .policy import MODE_CODES, PADDING_CODES, compute_dtype, launch_config, needs_int64, triton_dtype
from .sampling import MODE_NEAREST, backprop_at, program_pixels, sample_at


@triton.jit
def _theta(theta_ptr, n, r: tl.constexpr, c: tl.constexpr, stride_tn, stride_tr, stride_tc, ACC: tl.constexpr):
    # n is int64 in INDEX_64 kernels; r, c in {0, 1, 2}: adding the strides r and c times keeps
    # every term of the offset at n's width (a product r * stride would be int32)
    ptr = theta_ptr + n * stride_tn
    for _ in tl.static_range(r):
        ptr += stride_tr
    for _ in tl.static_range(c):
        ptr += stride_tc
    return tl.load(ptr).to(ACC)


@triton.jit
def _source_coords(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, PROJECTIVE: tl.constexpr,
                   ACC: tl.constexpr):
    """(x_s, y_s, 1 / w) for output coordinates (x_t, y_t) of image n (w == 1 when affine)."""
    u = (_theta(theta_ptr, n, 0, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
         + _theta(theta_ptr, n, 0, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
         + _theta(theta_ptr, n, 0, 2, stride_tn, stride_tr, stride_tc, ACC))
    v = (_theta(theta_ptr, n, 1, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
         + _theta(theta_ptr, n, 1, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
         + _theta(theta_ptr, n, 1, 2, stride_tn, stride_tr, stride_tc, ACC))
    if PROJECTIVE:
        inv_w = 1.0 / (_theta(theta_ptr, n, 2, 0, stride_tn, stride_tr, stride_tc, ACC) * x_t
                       + _theta(theta_ptr, n, 2, 1, stride_tn, stride_tr, stride_tc, ACC) * y_t
                       + _theta(theta_ptr, n, 2, 2, stride_tn, stride_tr, stride_tc, ACC))
        u = u * inv_w
        v = v * inv_w
    else:
        inv_w = tl.full(x_t.shape, 1.0, x_t.dtype)
    return u, v, inv_w


@triton.jit
def _warp_fwd_kernel(
    # pointers
    x_ptr, theta_ptr, out_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_tn, stride_tr, stride_tc,
    # meta-parameters
    PROJECTIVE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s, inv_w = _source_coords(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, PROJECTIVE, ACC)
    sample_at(
        x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _warp_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, theta_ptr, grad_x_ptr, grad_theta_partial_ptr, dx_exp_ptr, fill_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS,
    # strides (elements)
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_tn, stride_tr, stride_tc,
    # meta-parameters
    PROJECTIVE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_THETA: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    x_s, y_s, inv_w = _source_coords(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, PROJECTIVE, ACC)
    g_xs, g_ys = backprop_at(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_gn, stride_gc, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_THETA and MODE != MODE_NEAREST, DETERMINISTIC,
        ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_THETA:  # bilinear / bicubic only: the launcher returns zeros for nearest
        # chain: normalised source coord -> (u, v, w) -> theta rows; one partial row per program.
        # A non-finite coordinate has zero gradient (sampling.source_pixel), and must stay zero
        # through 1 / w (inf where w == 0).
        ok = (tl.abs(x_s) < float("inf")) & (tl.abs(y_s) < float("inf"))
        g_u = tl.where(ok, g_xs * inv_w, 0.0)
        g_v = tl.where(ok, g_ys * inv_w, 0.0)
        out_row = grad_theta_partial_ptr + pid * (9 if PROJECTIVE else 6)
        tl.store(out_row + 0, tl.sum(g_u * x_t, axis=0))
        tl.store(out_row + 1, tl.sum(g_u * y_t, axis=0))
        tl.store(out_row + 2, tl.sum(g_u, axis=0))
        tl.store(out_row + 3, tl.sum(g_v * x_t, axis=0))
        tl.store(out_row + 4, tl.sum(g_v * y_t, axis=0))
        tl.store(out_row + 5, tl.sum(g_v, axis=0))
        if PROJECTIVE:
            g_w = tl.where(ok, -(g_xs * x_s + g_ys * y_s) * inv_w, 0.0)
            tl.store(out_row + 6, tl.sum(g_w * x_t, axis=0))
            tl.store(out_row + 7, tl.sum(g_w * y_t, axis=0))
            tl.store(out_row + 8, tl.sum(g_w, axis=0))
    # nearest: piecewise constant in the coordinates, so grad theta stays 0 (as in PyTorch)


# ----------------------------------------------------------------------------- launchers


def fill_values(fill, x, padding_mode):
    """The kernels' ``fill_ptr``: with ``padding_mode="fill"`` the fill values as a contiguous (C,)
    tensor in the compute dtype (a scalar is broadcast over the channels), else x (never read)."""
    if padding_mode != "fill":
        return x
    if fill is None:
        raise ValueError('padding_mode="fill" needs fill values')
    return fill.to(compute_dtype(x.dtype)).expand(x.shape[1]).contiguous()


@plan_cache
def _fwd_plan(x_key, theta_key, h_out, w_out, mode, padding_mode, align_corners, config):
    """(grid, out shape, out memory format, integer args, constexpr args) of a forward launch."""
    x, theta = meta_tensor(x_key), meta_tensor(theta_key)
    n, c, h, w = x.shape
    out = empty_output(x, h_out, w_out)
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config, mode)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    ints = (c, h, w, h_out, w_out, num_pblocks, *x.stride(), *out.stride(), *theta.stride())
    meta = dict(PROJECTIVE=theta.shape[1] == 3, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode],
                ALIGN_CORNERS=align_corners, ACC=triton_dtype(compute_dtype(x.dtype)),
                INDEX_64=needs_int64(x, out, theta), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    grid = None if nothing_to_sample(x, h_out, w_out) else (n * num_pblocks,)  # None: an empty output, no launch
    return grid, tuple(out.shape), memory_format_of(x), ints, meta


@on_tensor_device
def warp_fwd(x, theta, h_out, w_out, mode, padding_mode, align_corners, config=None, fill=None):
    """Launch ``_warp_fwd_kernel``; output has x's dtype and memory format.

    ``fill``: the (C,) fill values of ``padding_mode="fill"`` (any float dtype; :func:`fill_values`).

    ``config``: (BLOCK_P, BLOCK_C[, num_warps]) override of the default tiling (``policy.launch_config``).
    """
    grid, out_shape, memory_format, ints, meta = _fwd_plan(
        tensor_key(x), tensor_key(theta), h_out, w_out, mode, padding_mode, align_corners, config_key(config))
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    if grid is None:
        return out
    _warp_fwd_kernel[grid](x, theta, out, fill_values(fill, x, padding_mode), *ints, **meta)
    return out


@plan_cache
def _bwd_plan(grad_out_key, x_key, theta_key, mode, padding_mode, align_corners, need_x, need_theta, deterministic,
              config):
    """(grid or None, partial-row buffer shape or None, its (n, blocks, rows, 3) view, integer args,
    constexpr args) of a backward launch."""
    grad_out, x, theta = meta_tensor(grad_out_key), meta_tensor(x_key), meta_tensor(theta_key)
    n, c, h, w = x.shape
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    # the scatter buffer has x's shape and memory format; x stands in for it when grad_x is not needed
    grad_x_arg = torch.empty(x.shape, device="meta", memory_format=memory_format_of(x)) if need_x else x
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config, mode)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    rows = theta.shape[1]
    # bilinear: every program writes its whole partial row, so no zero-fill; nearest: grad theta is 0
    theta_in_kernel = need_theta and mode != "nearest" and not nothing_to_sample(x, h_out, w_out)
    partial_shape = (n * num_pblocks, rows * 3) if theta_in_kernel else None  # viewed as (n, blocks, rows, 3)
    ints = (c, h, w, h_out, w_out, num_pblocks,
            *grad_out.stride(), *x.stride(), *grad_x_arg.stride(), *theta.stride())
    meta = dict(PROJECTIVE=rows == 3, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode],
                ALIGN_CORNERS=align_corners, NEED_X=need_x, NEED_THETA=theta_in_kernel,
                DETERMINISTIC=bool(deterministic and need_x), ACC=triton_dtype(compute_dtype(x.dtype)),
                INDEX_64=needs_int64(x, grad_out, theta) or (theta_in_kernel and needs_int64(
                    torch.empty(partial_shape, device="meta"))),
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    # None: nothing to launch (an empty output, or neither gradient computed by the kernel)
    grid = (n * num_pblocks,) if (need_x or theta_in_kernel) and not nothing_to_sample(x, *grad_out.shape[2:]) else None
    return grid, partial_shape, (n, num_pblocks, rows, 3), ints, meta


@on_tensor_device
def warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta, deterministic=False,
             config=None, fill=None):
    """Launch ``_warp_bwd_kernel``. Returns (grad_x or None, grad_theta or None) in the inputs' dtypes.

    ``deterministic``: grad_x is accumulated in int64 fixed point (bit-identical run to run);
    grad_theta is always deterministic (per-program partial sums reduced in a fixed order).
    ``config``: (BLOCK_P, BLOCK_C[, num_warps]) override of the default tiling (``policy.launch_config``).
    """
    grid, partial_shape, partial_view, ints, meta = _bwd_plan(
        tensor_key(grad_out), tensor_key(x), tensor_key(theta), mode, padding_mode, align_corners, need_x, need_theta,
        deterministic, config_key(config))
    acc = compute_dtype(x.dtype)
    # scatter buffer in x's memory format: fp32 (fp64), or int64 fixed point when deterministic
    grad_x, exponents = grad_x_buffer(x, grad_out, acc, deterministic) if need_x else (None, None)
    partial = torch.empty(partial_shape, dtype=acc, device=x.device) if partial_shape is not None else None
    if grid is not None:
        # pointers a specialisation does not use still need a tensor: x stands in for them
        _warp_bwd_kernel[grid](
            grad_out, x, theta, grad_x if grad_x is not None else x, partial if partial is not None else x,
            exponents if exponents is not None else x, fill_values(fill, x, padding_mode), *ints, **meta)
    gx = grad_x_from_buffer(grad_x, exponents, x.dtype, acc) if need_x else None
    gt = None
    if partial is not None:  # the cast to theta's dtype happens inside the reduction: one launch
        gt = partial.view(partial_view).sum(dim=1, dtype=theta.dtype)
    elif need_theta:
        gt = torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device)
    return gx, gt
