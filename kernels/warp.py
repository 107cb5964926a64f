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
from .layout import empty_output, is_channels_last
from .sampling import MODE_BILINEAR, backprop_at, output_coords, sample_at


@triton.jit
def _theta(theta_ptr, n, r, c, stride_tn, stride_tr, stride_tc, ACC: tl.constexpr):
    return tl.load(theta_ptr + n * stride_tn + r * stride_tr + c * stride_tc).to(ACC)


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
    x_ptr, theta_ptr, out_ptr,
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
    pid = tl.program_id(0)
    n = pid // NUM_PBLOCKS
    p = (pid - n * NUM_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < H_OUT * W_OUT

    x_t, y_t = output_coords(p, W_OUT, H_OUT, ALIGN_CORNERS, ACC)
    x_s, y_s, inv_w = _source_coords(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, PROJECTIVE, ACC)
    sample_at(
        x_ptr, out_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
        MODE, PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def _warp_bwd_kernel(
    # pointers
    grad_out_ptr, x_ptr, theta_ptr, grad_x_ptr, grad_theta_partial_ptr, dx_scale_ptr,
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
    pid = tl.program_id(0)
    n = pid // NUM_PBLOCKS
    p = (pid - n * NUM_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < H_OUT * W_OUT

    x_t, y_t = output_coords(p, W_OUT, H_OUT, ALIGN_CORNERS, ACC)
    x_s, y_s, inv_w = _source_coords(theta_ptr, n, stride_tn, stride_tr, stride_tc, x_t, y_t, PROJECTIVE, ACC)
    g_xs, g_ys = backprop_at(
        grad_out_ptr, x_ptr, grad_x_ptr, dx_scale_ptr, n, p, p_mask, x_s, y_s, C, H, W, W_OUT,
        stride_gn, stride_gc, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dn, stride_dc, stride_dh, stride_dw,
        MODE, PADDING, ALIGN_CORNERS, NEED_X, NEED_THETA and MODE == MODE_BILINEAR, DETERMINISTIC,
        ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    if NEED_THETA:  # bilinear only: the launcher returns zeros for nearest
        # chain: normalised source coord -> (u, v, w) -> theta rows; one partial row per program
        g_u = g_xs * inv_w
        g_v = g_ys * inv_w
        out_row = grad_theta_partial_ptr + pid * (9 if PROJECTIVE else 6)
        tl.store(out_row + 0, tl.sum(g_u * x_t, axis=0))
        tl.store(out_row + 1, tl.sum(g_u * y_t, axis=0))
        tl.store(out_row + 2, tl.sum(g_u, axis=0))
        tl.store(out_row + 3, tl.sum(g_v * x_t, axis=0))
        tl.store(out_row + 4, tl.sum(g_v * y_t, axis=0))
        tl.store(out_row + 5, tl.sum(g_v, axis=0))
        if PROJECTIVE:
            g_w = -(g_xs * x_s + g_ys * y_s) * inv_w
            tl.store(out_row + 6, tl.sum(g_w * x_t, axis=0))
            tl.store(out_row + 7, tl.sum(g_w * y_t, axis=0))
            tl.store(out_row + 8, tl.sum(g_w, axis=0))
    # nearest: piecewise constant in the coordinates, so grad theta stays 0 (as in PyTorch)


# ----------------------------------------------------------------------------- launchers

MODE_CODES = {"bilinear": 0, "nearest": 1}
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinate / accumulation precision for data of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_sizes(channels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C). NCHW: many pixels per program, a few channels per step (stores are
    contiguous along pixels). channels_last: a wide channel block (each tap is a contiguous
    vector load) and fewer pixels, keeping BLOCK_P * BLOCK_C (registers per tap) near 1024."""
    c2 = triton.next_power_of_2(channels)
    if channels_last:
        block_c = min(c2, 64)
        return max(16, 1024 // block_c), block_c
    return 256, min(c2, 4)


def launch_config(channels: int, channels_last: bool, config=None) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps) of a launch: ``config`` when given, as (BLOCK_P, BLOCK_C) or
    (BLOCK_P, BLOCK_C, num_warps) (tests vary the tiling; ``python -m bench.tune`` sweeps it on a
    GPU), else ``block_sizes`` with 4 warps."""
    if config is None:
        return (*block_sizes(channels, channels_last), 4)
    block_p, block_c, *rest = config
    num_warps = rest[0] if rest else 4
    for name, v in (("BLOCK_P", block_p), ("BLOCK_C", block_c), ("num_warps", num_warps)):
        if not (isinstance(v, int) and v > 0 and v & (v - 1) == 0):
            raise ValueError(f"launch config {name} must be a power of two, got {v!r} in {tuple(config)}")
    return block_p, block_c, num_warps


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when an element offset of any tensor can exceed int32: the kernels then index in int64."""
    limit = 2**31 - 1
    for t in tensors:
        span = sum(s * (d - 1) for s, d in zip(t.stride(), t.shape) if d > 0)
        if t.numel() >= limit or span >= limit:
            return True
    return False


@on_tensor_device
def warp_fwd(x, theta, h_out, w_out, mode, padding_mode, align_corners, config=None):
    """Launch ``_warp_fwd_kernel``; output has x's dtype and memory format.

    ``config``: (BLOCK_P, BLOCK_C[, num_warps]) override of the default tiling (``launch_config``).
    """
    n, c, h, w = x.shape
    out = empty_output(x, h_out, w_out)
    if n == 0:
        return out
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    _warp_fwd_kernel[(n * num_pblocks,)](
        x, theta, out,
        c, h, w, h_out, w_out, num_pblocks,
        *x.stride(), *out.stride(), *theta.stride(),
        PROJECTIVE=theta.shape[1] == 3, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode],
        ALIGN_CORNERS=align_corners, ACC=tl_dtype(x.dtype), INDEX_64=needs_int64(x, out),
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps,
    )
    return out


@on_tensor_device
def warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta, deterministic=False,
             config=None):
    """Launch ``_warp_bwd_kernel``. Returns (grad_x or None, grad_theta or None) in the inputs' dtypes.

    ``deterministic``: grad_x is accumulated in int64 fixed point (bit-identical run to run);
    grad_theta is always deterministic (per-program partial sums reduced in a fixed order).
    ``config``: (BLOCK_P, BLOCK_C[, num_warps]) override of the default tiling (``launch_config``).
    """
    n, c, h, w = x.shape
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    acc = acc_dtype(x.dtype)
    # scatter buffer in x's memory format: fp32 (fp64), or int64 fixed point when deterministic
    grad_x, scale = grad_x_buffer(x, grad_out, acc, deterministic) if need_x else (None, None)
    block_p, block_c, num_warps = launch_config(c, is_channels_last(x), config)
    num_pblocks = triton.cdiv(h_out * w_out, block_p)
    rows = theta.shape[1]
    # bilinear: every program writes its whole partial row, so no zero-fill; nearest: grad theta is 0
    theta_in_kernel = need_theta and mode == "bilinear"
    partial = torch.empty((n * num_pblocks, rows * 3), dtype=acc, device=x.device) if theta_in_kernel else None
    if n > 0 and (need_x or theta_in_kernel):
        dummy = grad_x if grad_x is not None else x
        _warp_bwd_kernel[(n * num_pblocks,)](
            grad_out, x, theta, dummy, partial if partial is not None else theta,
            scale if scale is not None else theta,
            c, h, w, h_out, w_out, num_pblocks,
            *grad_out.stride(), *x.stride(), *dummy.stride(), *theta.stride(),
            PROJECTIVE=rows == 3, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode],
            ALIGN_CORNERS=align_corners, NEED_X=need_x, NEED_THETA=theta_in_kernel,
            DETERMINISTIC=bool(deterministic and need_x),
            ACC=tl_dtype(x.dtype), INDEX_64=needs_int64(x, grad_out),
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps,
        )
    gx = grad_x_from_buffer(grad_x, scale, x.dtype, acc) if need_x else None
    gt = None
    if theta_in_kernel:
        gt = partial.view(n, num_pblocks, rows, 3).sum(dim=1).to(theta.dtype)
    elif need_theta:
        gt = torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device)
    return gx, gt


def _layout_strides(prefixes, channels_last: bool, c: int = 64, h: int = 32, w: int = 32) -> dict:
    """Representative strides of (N, C, H, W) tensors in NCHW or NHWC, for AOT specialisation."""
    if channels_last:
        n_, c_, h_, w_ = h * w * c, 1, w * c, c
    else:
        n_, c_, h_, w_ = c * h * w, h * w, w, 1
    out = {"C": c, "H": h, "W": w, "H_OUT": h, "W_OUT": w}
    for p in prefixes:
        out.update({f"stride_{p}n": n_, f"stride_{p}c": c_, f"stride_{p}h": h_, f"stride_{p}w": w_})
    return out


def _theta_strides(projective: bool) -> dict:
    """A contiguous (N, 2, 3) or (N, 3, 3) theta's strides, as a launch would specialise them."""
    return {"stride_tn": 9 if projective else 6, "stride_tr": 3, "stride_tc": 1}


def aot_configs():
    """Specialisations compiled ahead of time by ``bench.static`` and the tests (see kernels/aot.py)."""
    from .aot import KernelConfig

    configs = []
    for storage, layout_cl in (("fp32", False), ("bf16", True), ("fp16", False)):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes(channels, layout_cl)
        layout = "nhwc" if layout_cl else "nchw"
        fwd_strides = _layout_strides("xo", layout_cl, channels)
        bwd_strides = _layout_strides("gxd", layout_cl, channels)
        for projective in (False, True):
            theta_strides = _theta_strides(projective)
            for mode, padding in (("bilinear", "zeros"), ("bilinear", "reflection"), ("nearest", "border")):
                common = dict(PROJECTIVE=projective, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding],
                              ALIGN_CORNERS=False, ACC=tl.float32, INDEX_64=False, BLOCK_P=block_p, BLOCK_C=block_c)
                kind = "proj" if projective else "affine"
                configs.append(KernelConfig(
                    f"warp_fwd/{kind}/{mode}/{padding}/{storage}/{layout}", _warp_fwd_kernel,
                    {"x_ptr": storage, "theta_ptr": "fp32", "out_ptr": storage}, common,
                    {**fwd_strides, **theta_strides}))
                configs.append(KernelConfig(
                    f"warp_bwd/{kind}/{mode}/{padding}/{storage}/{layout}", _warp_bwd_kernel,
                    {"grad_out_ptr": storage, "x_ptr": storage, "theta_ptr": "fp32", "grad_x_ptr": "fp32",
                     "grad_theta_partial_ptr": "fp32", "dx_scale_ptr": "fp32"},
                    dict(common, NEED_X=True, NEED_THETA=mode == "bilinear", DETERMINISTIC=False),
                    {**bwd_strides, **theta_strides}))
    # int64 indexing and theta-only backward, once each
    block_p, block_c = block_sizes(3, False)
    base = dict(PROJECTIVE=False, MODE=0, PADDING=0, ALIGN_CORNERS=True, ACC=tl.float32, BLOCK_P=block_p, BLOCK_C=block_c)
    configs.append(KernelConfig("warp_fwd/affine/bilinear/zeros/fp32/nchw/int64", _warp_fwd_kernel,
                                {"x_ptr": "fp32", "theta_ptr": "fp32", "out_ptr": "fp32"}, dict(base, INDEX_64=True),
                                {**_layout_strides("xo", False, 3), **_theta_strides(False)}))
    configs.append(KernelConfig("warp_bwd/affine/bilinear/zeros/fp32/nchw/theta-only", _warp_bwd_kernel,
                                {"grad_out_ptr": "fp32", "x_ptr": "fp32", "theta_ptr": "fp32", "grad_x_ptr": "fp32",
                                 "grad_theta_partial_ptr": "fp32", "dx_scale_ptr": "fp32"},
                                dict(base, INDEX_64=False, NEED_X=False, NEED_THETA=True, DETERMINISTIC=False),
                                {**_layout_strides("gxd", False, 3), **_theta_strides(False)}))
    for storage, cl in (("fp32", False), ("bf16", True)):
        block_p, block_c = block_sizes(64 if cl else 3, cl)
        configs.append(KernelConfig(
            f"warp_bwd/affine/bilinear/zeros/{storage}/{'nhwc' if cl else 'nchw'}/deterministic", _warp_bwd_kernel,
            {"grad_out_ptr": storage, "x_ptr": storage, "theta_ptr": "fp32", "grad_x_ptr": "i64",
             "grad_theta_partial_ptr": "fp32", "dx_scale_ptr": "fp32"},
            dict(base, ALIGN_CORNERS=False, INDEX_64=False, NEED_X=True, NEED_THETA=True, DETERMINISTIC=True,
                 BLOCK_P=block_p, BLOCK_C=block_c),
            {**_layout_strides("gxd", cl, 64 if cl else 3), **_theta_strides(False)}))
    return configs
