"""Launch plans and launchers shared by the kernels whose parameter is a per-pixel field read in
place -- a sampling grid (``kernels/grid_sample.py``) or a displacement field
(``kernels/warp_flow.py``) -- and whose gradient is written per pixel (one writer per element).

The two differ only in the field's layout (the caller passes its output size and its strides in
the kernel's order) and in the kernels and the name of their "field gradient needed" constexpr;
everything else -- tiling (``policy.launch_config`` / ``launch_config_3d``), the int64 decision,
the output's shape and memory format, the grad_x buffer (atomic or int64 fixed point), the
nothing-to-sample rule -- is decided here once, cached per key of shapes / strides / dtypes / modes
(``kernels/launch_plan.py``).
"""
from __future__ import annotations

import math

import torch
import triton

from .fixed_point import grad_x_buffer, grad_x_from_buffer
from .launch_plan import meta_tensor, plan_cache
from .layout import empty_output, is_channels_last, memory_format_of, nothing_to_sample
from .policy import MODE_CODES, PADDING_CODES, compute_dtype, launch_config, launch_config_3d, needs_int64, triton_dtype
from .warp import fill_values


def _tiling(x, mode, config):
    if x.dim() == 5:
        return launch_config_3d(x.shape[1], is_channels_last(x), config)
    return launch_config(x.shape[1], is_channels_last(x), config, mode)


@plan_cache
def fwd_plan(x_key, field_key, size, field_strides, mode, padding_mode, align_corners, config):
    """(launch grid or None, out shape, out memory format, integer args, constexpr args) of a forward."""
    x, f = meta_tensor(x_key), meta_tensor(field_key)
    out = empty_output(x, *size)
    block_p, block_c, num_warps = _tiling(x, mode, config)
    num_pblocks = triton.cdiv(math.prod(size), block_p)
    ints = (*x.shape[1:], *size, num_pblocks, *x.stride(), *out.stride(), *field_strides)
    meta = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding_mode], ALIGN_CORNERS=align_corners,
                ACC=triton_dtype(compute_dtype(x.dtype)), INDEX_64=needs_int64(x, out, f),
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    launch = None if nothing_to_sample(x, *size) else (x.shape[0] * num_pblocks,)
    return launch, tuple(out.shape), memory_format_of(x), ints, meta


@plan_cache
def bwd_plan(grad_out_key, x_key, field_key, size, field_strides, need_name, mode, padding_mode, align_corners,
             need_x, need_field, deterministic, config):
    """(launch grid or None, whether the kernel writes the field's gradient, integer args, constexpr
    args) of a backward; ``need_name`` is the kernel's constexpr for "the field's gradient is needed"."""
    grad_out, x, f = meta_tensor(grad_out_key), meta_tensor(x_key), meta_tensor(field_key)
    grad_x_arg = torch.empty(x.shape, device="meta", memory_format=memory_format_of(x)) if need_x else x
    block_p, block_c, num_warps = _tiling(x, mode, config)
    num_pblocks = triton.cdiv(math.prod(size), block_p)
    empty = nothing_to_sample(x, *size)
    field_in_kernel = need_field and mode != "nearest" and not empty  # nearest: piecewise constant, zero
    ints = (*x.shape[1:], *size, num_pblocks, *grad_out.stride(), *x.stride(), *grad_x_arg.stride(), *field_strides)
    meta = {"MODE": MODE_CODES[mode], "PADDING": PADDING_CODES[padding_mode], "ALIGN_CORNERS": align_corners,
            "NEED_X": need_x, need_name: field_in_kernel, "DETERMINISTIC": bool(deterministic and need_x),
            "ACC": triton_dtype(compute_dtype(x.dtype)), "INDEX_64": needs_int64(x, grad_out, f),
            "BLOCK_P": block_p, "BLOCK_C": block_c, "num_warps": num_warps}
    launch = (x.shape[0] * num_pblocks,) if (need_x or field_in_kernel) and not empty else None
    return launch, field_in_kernel, ints, meta


def launch_fwd(kernel, plan, x, field, padding_mode, fill):
    """Allocate the output and launch ``kernel`` with a :func:`fwd_plan`."""
    launch, out_shape, memory_format, ints, meta = plan
    out = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    if launch is not None:
        kernel[launch](x, field, out, fill_values(fill, x, padding_mode), *ints, **meta)
    return out


def launch_bwd(kernel, plan, grad_out, x, field, padding_mode, need_x, need_field, deterministic, fill):
    """(grad_x or None, grad_field or None): allocate, launch ``kernel`` with a :func:`bwd_plan`, convert.
    The field's gradient is contiguous in the field's shape and dtype, zeros where the kernel does not
    write it (nearest)."""
    launch, field_in_kernel, ints, meta = plan
    acc = compute_dtype(x.dtype)
    grad_x, exponents = grad_x_buffer(x, grad_out, acc, deterministic) if need_x else (None, None)
    grad_field = (torch.empty if field_in_kernel else torch.zeros)(field.shape, dtype=field.dtype,
                                                                   device=field.device) if need_field else None
    if launch is not None:
        # pointers a specialisation does not use still need a tensor: x stands in for them
        kernel[launch](grad_out, x, field, grad_x if grad_x is not None else x,
                       grad_field if grad_field is not None else x, exponents if exponents is not None else x,
                       fill_values(fill, x, padding_mode), *ints, **meta)
    gx = grad_x_from_buffer(grad_x, exponents, x.dtype, acc) if need_x else None
    return gx, grad_field
