"""Fused thin-plate-spline warp: the spline is evaluated on the fly inside the sampling kernel.

Definition (see ``stn_triton.tps_warp``): for a normalised output location p = (x_t, y_t),

    source(p) = a0 + a1 * x_t + a2 * y_t + sum_k w_k * U(|p - c_k|),   U(r) = r^2 log r^2, U(0) = 0,

with the per-sample coefficients ``coef`` (N, K+3, 2) = M @ points (M the (K+3, K) coefficient map
of the control-point layout, solved in float64 by ``stn_triton._tps_ops``; the matmul is an
ordinary differentiable torch op in front of the kernel). Rows 0..K-1 of ``coef``
are the radial weights w_k, rows K, K+1, K+2 are a0, a1, a2; the last axis is (x, y).

Pointer arithmetic (all buffers contiguous, elements):

* ``coef_ptr``  (N, K+3, 2), contiguous, any float dtype (float64 from the op; converted to ACC in
  registers): w_k of image n at ``n*(K+3)*2 + 2*k + d`` (d = 0 for x, 1 for y), a_i at
  ``n*(K+3)*2 + 2*(K+i) + d``;
* ``ctrl_ptr``  (K, 2), contiguous, any float dtype: c_k = (ctrl[2k], ctrl[2k+1]) in the
  normalised output frame;
* ``x`` / ``out`` / ``grad_out`` / ``grad_x``: any strides, as in ``kernels/warp.py``
  (``x + n*sxn + c*sxc + y*sxh + x*sxw``);
* ``grad_coef_partial_ptr`` (N * NUM_PBLOCKS, K+3, 2), ACC: one row block per program
  (row = program id), same layout as ``coef``; the launcher sums over the NUM_PBLOCKS programs of
  each image. Every program writes only its own rows: no atomics on the coefficients.

Forward, one program per (image n, block of BLOCK_P output pixels): output pixel -> (x_t, y_t)
(sampling.output_coords) -> the affine part plus K radial terms, K walked in chunks of BLOCK_K
([BLOCK_P, BLOCK_K] tiles of U in registers, reduced over k) -> (x_s, y_s) -> padding and
unnormalisation (sampling.source_pixel) -> taps shared by every channel (sampling.sample_channels).
No (N, H*W, K) tensor, no grid tensor: coordinates live in ACC registers (fp32, fp64 for fp64).

Backward, same tiling: grad_x through sampling.backprop_channels (atomic scatter into an fp32
buffer, or an int64 fixed-point one when torch's deterministic algorithms are on, as ``warp``); the gradient w.r.t. (x_s, y_s) is chained through padding and
unnormalisation, then multiplied by the basis [U(|p - c_k|) for k, 1, x_t, y_t] (U recomputed in
the same BLOCK_K chunks) and summed over the program's pixels into its partial row block.
grad_points = M^T @ grad_coef is autograd's, through the matmul in front of the kernel.

K is a runtime argument: one compiled kernel serves every K (register use depends on BLOCK_K,
not on K).
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
from .sampling import MODE_BILINEAR, backprop_at, program_pixels, sample_at


@triton.jit
def _radial_tile(x_t, y_t, cx, cy):
    """U(|p - c_k|) = d2 * log(d2) (0 at d2 == 0) for a [BLOCK_P] x [BLOCK_K] tile."""
    dx = x_t[:, None] - cx[None, :]
    dy = y_t[:, None] - cy[None, :]
    d2 = dx * dx + dy * dy
    pos = d2 > 0.0
    return tl.where(pos, d2 * tl.log(tl.where(pos, d2, 1.0)), 0.0)


@triton.jit
def _tps_source(coef_ptr, ctrl_ptr, n, K, x_t, y_t, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Source coordinates (x_s, y_s) of image n at output coordinates (x_t, y_t)."""
    cf = coef_ptr + n * (K + 3) * 2  # n is int64 in INDEX_64 kernels
    aff = cf + 2 * K
    x_s = tl.load(aff).to(ACC) + tl.load(aff + 2).to(ACC) * x_t + tl.load(aff + 4).to(ACC) * y_t
    y_s = tl.load(aff + 1).to(ACC) + tl.load(aff + 3).to(ACC) * x_t + tl.load(aff + 5).to(ACC) * y_t
    k_range = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + k_range
        km = k < K
        cx = tl.load(ctrl_ptr + 2 * k, mask=km, other=0.0).to(ACC)
        cy = tl.load(ctrl_ptr + 2 * k + 1, mask=km, other=0.0).to(ACC)
        wx = tl.load(cf + 2 * k, mask=km, other=0.0).to(ACC)  # 0 for k >= K: those lanes add nothing
        wy = tl.load(cf + 2 * k + 1, mask=km, other=0.0).to(ACC)
        u = _radial_tile(x_t, y_t, cx, cy)
        x_s += tl.sum(u * wx[None, :], axis=1)
        y_s += tl.sum(u * wy[None, :], axis=1)
    return x_s, y_s


@triton.jit
def _tps_fwd_kernel(
    # pointers
    x_ptr, coef_ptr, ctrl_ptr, out_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS, K,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    if INDEX_64:  # so that every offset derived from K (k, 2 * K, (K + 3) * 2) is int64 too
        K = K.to(tl.int64)
    x_s, y_s = _tps_source(coef_ptr, ctrl_ptr, n, K, x_t, y_t, ACC, BLOCK_K)
    sample_at(
        x_ptr, out_ptr, x_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _tps_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, coef_ptr, ctrl_ptr, grad_x_ptr, grad_coef_partial_ptr, dx_exp_ptr,
    # sizes
    C, H, W, H_OUT, W_OUT, NUM_PBLOCKS, K,
    # strides (elements)
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    # meta-parameters
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_COEF: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid, n, p, p_mask, x_t, y_t = program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_P)
    if INDEX_64:  # so that every offset derived from K (k, 2 * K, (K + 3) * 2) is int64 too
        K = K.to(tl.int64)
    x_s, y_s = _tps_source(coef_ptr, ctrl_ptr, n, K, x_t, y_t, ACC, BLOCK_K)
    g_xs, g_ys = backprop_at(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, x_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_gn, stride_gc, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_COEF and MODE == MODE_BILINEAR, DETERMINISTIC,
        ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_COEF and MODE == MODE_BILINEAR:
        # basis [U(|p - c_k|), 1, x_t, y_t] x grad source coord, one partial row block per program
        # (a non-finite coordinate already has zero gradient: sampling.source_pixel)
        out_row = grad_coef_partial_ptr + pid * (K + 3) * 2  # pid is int64 in INDEX_64 kernels
        k_range = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + k_range
            km = k < K
            cx = tl.load(ctrl_ptr + 2 * k, mask=km, other=0.0).to(ACC)
            cy = tl.load(ctrl_ptr + 2 * k + 1, mask=km, other=0.0).to(ACC)
            u = _radial_tile(x_t, y_t, cx, cy)
            tl.store(out_row + 2 * k, tl.sum(u * g_xs[:, None], axis=0), mask=km)
            tl.store(out_row + 2 * k + 1, tl.sum(u * g_ys[:, None], axis=0), mask=km)
        aff = out_row + 2 * K
        tl.store(aff, tl.sum(g_xs, axis=0))
        tl.store(aff + 1, tl.sum(g_ys, axis=0))
        tl.store(aff + 2, tl.sum(g_xs * x_t, axis=0))
        tl.store(aff + 3, tl.sum(g_ys * x_t, axis=0))
        tl.store(aff + 4, tl.sum(g_xs * y_t, axis=0))
        tl.store(aff + 5, tl.sum(g_ys * y_t, axis=0))
    # nearest: piecewise constant in the coordinates, so grad coef stays 0 (as in PyTorch)


# ----------------------------------------------------------------------------- launchers


def block_k(k: int) -> int:
    """Radial terms per chunk: the [BLOCK_P, BLOCK_K] U tile stays at <= 16 values per thread
    for NCHW (BLOCK_P = 256, 4 warps)."""
    return max(2, min(triton.next_power_of_2(k), 8))


@plan_cache
def _fwd_plan(x_key, coef_key, ctrl_key, h_out, w_out, mode, padding_mode, align_corners, config):
    """(grid, out shape, out memory format, integer args, constexpr args, whether coef and ctrl are
    already in the kernel's contiguous layout) of a forward launch."""
    x, coef, ctrl = meta_tensor(x_key), meta_tensor(coef_key), meta_tensor(ctrl_key)
    dense = coef.is_contiguous() and ctrl.is_contiguous()
    coef, k = coef.contiguous(), ctrl.shape[0]
    n, c, h, w = x.shape
    out = empty_output(x, h_out, w_out)
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    ints = (c, h, w, h_out, w_out, num_pblocks, k, *x.stride(), *out.stride())
    meta = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode], ALIGN_CORNERS=align_corners,
                ACC=triton_dtype(compute_dtype(x.dtype)), INDEX_64=needs_int64(x, out, coef),
                BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_K=block_k(k), num_warps=num_warps)
    grid = None if nothing_to_sample(x, h_out, w_out) else (n * num_pblocks,)  # None: an empty output, no launch
    return grid, tuple(out.shape), memory_format_of(x), ints, meta, dense


@on_tensor_device
def tps_fwd(x, coef, ctrl, h_out, w_out, mode, padding_mode, align_corners, config=None):
    """Launch ``_tps_fwd_kernel``. ``coef``: (N, K+3, 2), ``ctrl``: (K, 2), both contiguous, any
    float dtype (read in place, converted to the compute dtype in registers). The output has x's
    dtype and memory format."""
    grid, out_shape, memory_format, ints, meta, dense = _fwd_plan(
        tensor_key(x), tensor_key(coef), tensor_key(ctrl), h_out, w_out, mode, padding_mode, align_corners,
        config_key(config))
    if not dense:  # the kernel's layout (the op's own tensors already have it)
        coef, ctrl = coef.contiguous(), ctrl.contiguous()
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    if grid is None:
        return out
    _tps_fwd_kernel[grid](x, coef, ctrl, out, *ints, **meta)
    return out


@plan_cache
def _bwd_plan(grad_out_key, x_key, coef_key, ctrl_key, mode, padding_mode, align_corners, need_x, need_coef,
              deterministic, config):
    """(grid or None, partial buffer shape or None, its (n, blocks, K+3, 2) view, integer args,
    constexpr args, whether coef and ctrl are already contiguous) of a backward launch."""
    grad_out, x, coef, ctrl = (meta_tensor(key) for key in (grad_out_key, x_key, coef_key, ctrl_key))
    dense = coef.is_contiguous() and ctrl.is_contiguous()
    coef, k = coef.contiguous(), ctrl.shape[0]
    n, c, h, w = x.shape
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    grad_x_arg = torch.empty(x.shape, device="meta", memory_format=memory_format_of(x)) if need_x else x
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    # every program writes all of its rows: no zero-fill
    coef_in_kernel = need_coef and mode == "bilinear" and not nothing_to_sample(x, h_out, w_out)
    partial_shape = (n * num_pblocks, k + 3, 2) if coef_in_kernel else None
    ints = (c, h, w, h_out, w_out, num_pblocks, k, *grad_out.stride(), *x.stride(), *grad_x_arg.stride())
    meta = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode], ALIGN_CORNERS=align_corners,
                NEED_X=need_x, NEED_COEF=coef_in_kernel, DETERMINISTIC=bool(deterministic and need_x),
                ACC=triton_dtype(compute_dtype(x.dtype)),
                INDEX_64=needs_int64(x, grad_out, coef) or (coef_in_kernel and needs_int64(
                    torch.empty(partial_shape, device="meta"))),
                BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_K=block_k(k), num_warps=num_warps)
    # None: nothing to launch (an empty output, or neither gradient computed by the kernel)
    grid = (n * num_pblocks,) if (need_x or coef_in_kernel) and not nothing_to_sample(x, *grad_out.shape[2:]) else None
    return grid, partial_shape, (n, num_pblocks, k + 3, 2), ints, meta, dense


@on_tensor_device
def tps_bwd(grad_out, x, coef, ctrl, mode, padding_mode, align_corners, need_x, need_coef, deterministic=False,
            config=None):
    """Launch ``_tps_bwd_kernel``. Returns (grad_x in x's dtype or None, grad_coef (N, K+3, 2) in
    coef's dtype or None).

    ``deterministic``: grad_x is accumulated in int64 fixed point as in ``warp_bwd`` (bit-identical
    run to run); grad_coef is always deterministic (per-program partials summed in a fixed order).
    """
    grid, partial_shape, partial_view, ints, meta, dense = _bwd_plan(
        tensor_key(grad_out), tensor_key(x), tensor_key(coef), tensor_key(ctrl), mode, padding_mode, align_corners,
        need_x, need_coef, deterministic, config_key(config))
    if not dense:  # the kernel's layout (the op's own tensors already have it)
        coef, ctrl = coef.contiguous(), ctrl.contiguous()
    acc = compute_dtype(x.dtype)
    # scatter buffer in x's memory format: fp32 (fp64), or int64 fixed point when deterministic
    grad_x, exponents = grad_x_buffer(x, grad_out, acc, deterministic) if need_x else (None, None)
    partial = torch.empty(partial_shape, dtype=acc, device=x.device) if partial_shape is not None else None
    if grid is not None:
        # pointers a specialisation does not use still need a tensor: x stands in for them
        _tps_bwd_kernel[grid](
            grad_out, x, coef, ctrl, grad_x if grad_x is not None else x, partial if partial is not None else x,
            exponents if exponents is not None else x, *ints, **meta)
    gx = grad_x_from_buffer(grad_x, exponents, x.dtype, acc) if need_x else None
    gc = None
    if partial is not None:  # the cast to coef's dtype happens inside the reduction: one launch
        gc = partial.view(partial_view).sum(dim=1, dtype=coef.dtype)
    elif need_coef:  # nearest: piecewise constant in the coordinates
        gc = torch.zeros(coef.shape, dtype=coef.dtype, device=coef.device)
    return gx, gc
