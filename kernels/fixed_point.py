"""Deterministic scatter: int64 fixed-point accumulation of grad_x, its scale, and the conversion back.

Float atomics make grad_x depend on the order in which programs add into a pixel. The
deterministic backward instead scatters ``round(value * 2**e[n])`` into an int64 buffer (integer
addition is associative, so the sum is bit-identical whatever the order; ``sampling.scatter_add``)
and converts once at the end: ``grad_x = buffer * 2**-e[n]``.

**The exponent** ``e[n]`` (int32, one per image) comes from ``_exponent_kernel``, one program per
image, in one launch. An input pixel receives at most one full |grad| from each output pixel (the
tap weights of an output pixel sum to 1), so |sum| <= max|grad_out[n]| * H_out * W_out
< 2**(E + 1 + L), with E the binary exponent of max|grad_out[n]| (read exactly from its bits) and
L = ceil(log2(H_out * W_out)). ``e = 61 - E - L`` keeps every partial sum below 2**62: no
overflow, and a resolution of 2**-(61 - L) of the largest incoming gradient, *whatever its
magnitude*: the exponent is applied as two exact power-of-two factors, so it may leave the float
range (e reaches ~190 for fp32 gradients near the smallest normal, ~-990 for fp64 ones near the
largest). An all-zero image gets e = 0.

**Non-finite gradients.** An image whose grad_out holds a NaN or inf gets ``e = NONFINITE``; its
contributions are added as float64 into the same buffer bits (zeroed int64 bits are float64 0.0),
and the conversion reads them as float64. The sums there are not finite anyway, and a float sum
propagates NaN / inf exactly where the atomic path does, so AMP's GradScaler sees the overflow.

**The conversion** ``_fixed_to_float_kernel``: 8 bytes read + ``x.element_size()`` written per
element, one rounding (int64 -> the compute dtype) and an exact multiplication by 2**-e.

Pointer arithmetic: the buffer and the output are dense with identical strides (the output is
``empty_like(buffer)``), in NCHW or channels_last. Both layouts keep the image index outermost, so
element ``f`` of the flat storage belongs to image ``f // (C*H*W)`` whatever the layout, and the
kernel walks storage order: program (n, b) converts elements ``n*CHW + b*BLOCK + [0, BLOCK)``,
all offsets in int64. grad_out, read by the exponent kernel, has any strides (an expanded scalar
gradient has all-zero strides); its offsets are int64 too.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .layout import memory_format_of
from .policy import triton_dtype
from .sampling import NONFINITE, pow2

EXP_BLOCK = 1024


@triton.jit
def _exponent_kernel(
    grad_ptr, exp_ptr,                              # pointers: grad_out (any strides), (N,) int32 exponents
    C, H, W,                                        # grad_out's sizes
    stride_gn, stride_gc, stride_gh, stride_gw,     # grad_out's strides (elements)
    LOG2_PIXELS,                                    # ceil(log2(H * W))
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    g_img = grad_ptr + n * stride_gn
    hw_size = H.to(tl.int64) * W
    chw = hw_size * C
    amax = tl.zeros([BLOCK], dtype=ACC)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    for f0 in range(0, chw, BLOCK):
        f = f0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = f < chw
        c = f // hw_size
        hw = f - c * hw_size
        h = hw // W
        v = tl.abs(tl.load(g_img + c * stride_gc + h * stride_gh + (hw - h * W) * stride_gw, mask=mask,
                           other=0.0).to(ACC))
        finite = v < float("inf")  # False for NaN too
        amax = tl.maximum(amax, tl.where(finite, v, 0.0))
        bad = tl.maximum(bad, tl.where(finite, 0, 1))
    m = tl.max(amax, axis=0)
    # binary exponent of m from its bits (exact; a subnormal m reads as the smallest exponent,
    # which overestimates it, so the bound still holds)
    if ACC == tl.float64:
        e_m = ((m.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32) - 1023
    else:
        e_m = ((m.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.where(m > 0.0, 61 - e_m - LOG2_PIXELS, 0)
    e = tl.where(tl.max(bad, axis=0) > 0, NONFINITE, e)
    tl.store(exp_ptr + n, e)


@triton.jit
def _fixed_to_float_kernel(
    buf_ptr, exp_ptr, out_ptr,       # pointers: int64 sums, (N,) int32 exponents, output
    CHW,                             # elements per image
    NUM_BLOCKS,                      # programs per image
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // NUM_BLOCKS
    offs = n * CHW + (pid - n * NUM_BLOCKS) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < (n + 1) * CHW
    e = tl.load(exp_ptr + n)
    v = tl.load(buf_ptr + offs, mask=mask, other=0)
    if e == NONFINITE:  # this image was scattered as float64 (sampling.scatter_add)
        value = v.to(tl.float64, bitcast=True).to(ACC)
    else:
        e1 = e >> 1
        value = (v.to(ACC) * pow2(-e1, ACC)) * pow2(e1 - e, ACC)  # exact scaling after one rounding
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


@on_tensor_device
def fixed_point_exponents(grad_out: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Per-image scale exponents (N,) int32 for the fixed-point scatter of ``grad_out``; see the
    module docstring. One launch, on the device: no host synchronisation. A volume's grad_out
    (N, C, D, H, W) is read as (N, C, D*H, W) (a view where its strides allow, else a copy)."""
    if grad_out.dim() == 5:
        grad_out = grad_out.flatten(2, 3)
    n, c, h, w = grad_out.shape
    exps = torch.empty(n, dtype=torch.int32, device=grad_out.device)
    if n == 0:
        return exps
    _exponent_kernel[(n,)](
        grad_out, exps, c, h, w, *grad_out.stride(), math.ceil(math.log2(max(h * w, 1))),
        ACC=triton_dtype(acc), BLOCK=EXP_BLOCK,
    )
    return exps


@on_tensor_device
def fixed_to_float(buf: torch.Tensor, exps: torch.Tensor, dtype: torch.dtype, acc: torch.dtype) -> torch.Tensor:
    """``buf * 2**-exps[n]`` as ``dtype``, in one pass; ``buf`` (N, C, H, W) int64, NCHW- or
    NHWC-contiguous, or a volume (N, C, D, H, W), NCDHW- or NDHWC-contiguous."""
    dense = buf.is_contiguous() or buf.is_contiguous(memory_format=memory_format_of(buf))
    if buf.dtype != torch.int64 or buf.dim() not in (4, 5) or not dense:
        raise ValueError("fixed_to_float: buf must be an (N, C, H, W) or (N, C, D, H, W) int64 tensor, contiguous "
                         "or channels-last, "
                         f"got {buf.dtype} of shape {tuple(buf.shape)}, strides {buf.stride()}")
    out = torch.empty_like(buf, dtype=dtype)
    n = buf.shape[0]
    chw = buf[0].numel() if n else 0
    if n == 0 or chw == 0:
        return out
    block = 1024
    num_blocks = triton.cdiv(chw, block)
    _fixed_to_float_kernel[(n * num_blocks,)](buf, exps, out, chw, num_blocks, ACC=triton_dtype(acc), BLOCK=block)
    return out


def grad_x_buffer(x: torch.Tensor, grad_out: torch.Tensor, acc: torch.dtype, deterministic: bool):
    """The zeroed scatter buffer of a backward kernel, in x's memory format, and the fixed-point
    exponents: int64 + per-image exponents when ``deterministic``, else ``acc`` (fp32 / fp64) and None."""
    dtype = torch.int64 if deterministic else acc
    buf = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format_of(x)).zero_()
    return buf, (fixed_point_exponents(grad_out, acc) if deterministic else None)


def grad_x_from_buffer(buf: torch.Tensor, exps: torch.Tensor | None, dtype: torch.dtype,
                       acc: torch.dtype) -> torch.Tensor:
    """grad_x in ``dtype`` from :func:`grad_x_buffer`'s buffer once the kernel has scattered into it."""
    return fixed_to_float(buf, exps, dtype, acc) if exps is not None else buf.to(dtype)
