"""Deterministic scatter: int64 fixed-point accumulation of grad_x and its conversion back.

Float atomics make grad_x depend on the order in which programs add into a pixel. The
deterministic backward instead scatters ``round(value * scale[n])`` into an int64 buffer (integer
addition is associative, so the sum is bit-identical whatever the order; ``sampling.scatter_add``)
and converts once at the end: ``grad_x = buffer / scale[n]``.

``scale[n]`` is a power of two, so the conversion is a single rounding (int64 -> the accumulation
dtype) followed by an exact multiplication by ``2**-e``. ``_fixed_to_float_kernel`` does it in one
pass: 8 bytes read + ``x.element_size()`` written per element, where the composed torch ops
(int64 -> float64, divide, cast) read and write four float64-sized temporaries.

Pointer arithmetic: the buffer and the output are dense with identical strides (the output is
``empty_like(buffer)``), in NCHW or channels_last. Both layouts keep the image index outermost, so
element ``f`` of the flat storage belongs to image ``f // (C*H*W)`` whatever the layout, and the
kernel walks storage order: program (n, b) converts elements ``n*CHW + b*BLOCK + [0, BLOCK)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .layout import memory_format_of


def fixed_point_scale(grad_out: torch.Tensor) -> torch.Tensor:
    """Per-image power-of-two scale (N,) float32 for the int64 fixed-point grad_x scatter.

    An input pixel receives at most one full |grad| from each output pixel (the tap weights of an
    output pixel sum to 1), so |sum| <= max|grad_out[n]| * H_out * W_out; the scale maps that bound
    to 2**62. Resolution: 2**-62 of the bound, i.e. ~2**-(62 - log2(H_out * W_out)) of the largest
    incoming gradient. The exponent stays within [-126, 120], so 1/scale is exact in float32.
    Computed on the device: no host synchronisation.
    """
    n = grad_out.shape[0]
    amax = grad_out.detach().abs().amax(dim=(1, 2, 3)).double() if grad_out.numel() else grad_out.new_zeros(n, dtype=torch.float64)
    bound = amax * float(grad_out.shape[2] * grad_out.shape[3])
    exp = torch.floor(62.0 - torch.log2(bound.clamp_min(1e-300))).clamp(min=-126.0, max=120.0)
    exp = torch.where(torch.isfinite(bound) & (bound > 0), exp, torch.zeros_like(exp))
    return torch.exp2(exp).float()


@triton.jit
def _fixed_to_float_kernel(
    buf_ptr, scale_ptr, out_ptr,     # pointers: int64 sums, (N,) float32 scales, output
    CHW,                             # elements per image
    NUM_BLOCKS,                      # programs per image
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // NUM_BLOCKS
    offs = (pid - n * NUM_BLOCKS) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    base = n.to(tl.int64) * CHW  # N * CHW may exceed int32 even when CHW does not
    inv = 1.0 / tl.load(scale_ptr + n).to(ACC)  # exact: the scale is a power of two
    v = tl.load(buf_ptr + base + offs, mask=mask, other=0)
    tl.store(out_ptr + base + offs, (v.to(ACC) * inv).to(out_ptr.dtype.element_ty), mask=mask)


@on_tensor_device
def fixed_to_float(buf: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, acc: torch.dtype) -> torch.Tensor:
    """``buf / scale[n]`` as ``dtype``, in one pass; ``buf`` (N, C, H, W) int64, NCHW- or NHWC-contiguous."""
    dense = buf.is_contiguous() or buf.is_contiguous(memory_format=torch.channels_last)
    if buf.dtype != torch.int64 or buf.dim() != 4 or not dense:
        raise ValueError("fixed_to_float: buf must be an (N, C, H, W) int64 tensor, contiguous or channels_last, "
                         f"got {buf.dtype} of shape {tuple(buf.shape)}, strides {buf.stride()}")
    out = torch.empty_like(buf, dtype=dtype)
    n = buf.shape[0]
    chw = buf[0].numel() if n else 0
    if n == 0 or chw == 0:
        return out
    block = 1024
    num_blocks = triton.cdiv(chw, block)
    _fixed_to_float_kernel[(n * num_blocks,)](
        buf, scale, out, chw, num_blocks,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK=block,
    )
    return out


def grad_x_buffer(x: torch.Tensor, grad_out: torch.Tensor, acc: torch.dtype, deterministic: bool):
    """The zeroed scatter buffer of a backward kernel, in x's memory format, and its fixed-point
    scale: int64 + per-image scale when ``deterministic``, else ``acc`` (fp32 / fp64) and None."""
    dtype = torch.int64 if deterministic else acc
    buf = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format_of(x)).zero_()
    return buf, (fixed_point_scale(grad_out) if deterministic else None)


def grad_x_from_buffer(buf: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype,
                       acc: torch.dtype) -> torch.Tensor:
    """grad_x in ``dtype`` from :func:`grad_x_buffer`'s buffer once the kernel has scattered into it."""
    return fixed_to_float(buf, scale, dtype, acc) if scale is not None else buf.to(dtype)


def aot_configs():
    """Specialisations compiled ahead of time by ``bench.static`` and the tests (see kernels/aot.py)."""
    from .aot import KernelConfig

    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        yield KernelConfig(
            f"fixed_to_float/{dtype}", _fixed_to_float_kernel,
            {"buf_ptr": "i64", "scale_ptr": "fp32", "out_ptr": dtype},
            {"ACC": tl.float64 if acc == "fp64" else tl.float32, "BLOCK": 1024},
            {"CHW": 3 * 224 * 224, "NUM_BLOCKS": 147},
        )
