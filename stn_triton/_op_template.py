"""One op template for every transform: a :class:`TransformSpec` becomes two ``torch.library``
custom ops with fake kernels, autograd, a PyTorch path and higher-order gradients.

A transform maps a parameter tensor (theta, spline coefficients, ...) and optional constant
tensors to a sampling grid; everything after the grid (sampling, padding, grad_x) is shared. A
spec says only what differs:

* ``grid(param, aux, size, align_corners, dtype)``: the sampling grid (N, *size, 2) built with
  differentiable torch ops: the PyTorch path, and what higher orders differentiate;
* ``param_grad(grad_grid, grid, param, aux, size, align_corners)``: the PyTorch path's map from
  the grid's gradient to the parameter's (autograd is off inside a custom op, so it is written
  out);
* ``kernel_forward`` / ``kernel_backward``: the fused Triton launchers.

:func:`register` then defines

* ``stn_triton::<name>(x, <param>, <aux>..., size, mode, padding_mode, align_corners, backend)``
  and
* ``stn_triton::<name>_backward(grad_out, x, <param>, <aux>..., mode, padding_mode,
  align_corners, need_x, need_<param>, backend) -> (grad_x, grad_<param>)``.

**The backend is an argument of both ops**, resolved once by the caller
(:func:`resolve_backend` in the public function) and carried from the forward to its backward
through the autograd context. Resolving it again in the backward would be wrong on CUDA: autograd
runs CUDA backward passes on its own device thread, where the caller's ``use_backend`` context is
not set. Under ``torch.compile`` the backend is resolved when the graph is traced.

Both ops are opaque to ``torch.compile`` (``fullgraph=True`` sees one node each way) and
contain no host synchronisation on the Triton path. The backward op's own autograd formula
(second and higher orders) differentiates a recomputation through ``spec.grid`` and the composed
sampler (``stn_triton._double_backward``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from . import torch_path
from ._double_backward import backward_of_backward
from ._sample_composed import grid_sample_composed
from .backend import resolve_backend
from stn_triton.kernels.layout import empty_output, memory_format_of
from stn_triton.kernels.policy import compute_dtype

EXECUTED_BACKENDS = ("triton", "torch")


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    name: str                     # op names: stn_triton::<name>, stn_triton::<name>_backward
    param: str                    # the differentiable parameter's argument name
    aux: tuple[str, ...]          # constant tensor arguments (Tensor?), passed to every callable
    grid: Callable                # (param, aux, size, align_corners, dtype) -> grid (N, *size, 2)
    param_grad: Callable          # (grad_grid, grid, param, aux, size, align_corners) -> grad param
    kernel_forward: Callable      # (x, param, aux, size, mode, padding_mode, align_corners) -> out
    kernel_backward: Callable     # (grad_out, x, param, aux, mode, padding_mode, align_corners,
                                  #  need_x, need_param, deterministic) -> (grad_x | None, grad_param | None)


@torch.compiler.assume_constant_result
def _resolve(device_type: str, device_index: int) -> str:
    return resolve_backend(torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type))


def backend_for(x: torch.Tensor) -> str:
    """The backend that runs an op on ``x`` ("triton" or "torch"), resolved now; under
    ``torch.compile``, when the graph is traced."""
    return _resolve(x.device.type, -1 if x.device.index is None else x.device.index)


def _check_backend(backend: str) -> None:
    if backend not in EXECUTED_BACKENDS:
        raise ValueError(f"backend must be one of {EXECUTED_BACKENDS} (an already resolved backend), got {backend!r}")


def _split(spec: TransformSpec, args: Sequence):
    """(x-like first tensor, param, aux tuple, rest) of an op's positional arguments."""
    na = len(spec.aux)
    return args[0], args[1], tuple(args[2:2 + na]), tuple(args[2 + na:])


def register(spec: TransformSpec):
    """Define ``stn_triton::<spec.name>`` and its backward; returns the forward op."""
    aux_schema = "".join(f"Tensor? {a}, " for a in spec.aux)
    fwd_schema = (f"(Tensor x, Tensor {spec.param}, {aux_schema}int[] size, str mode, str padding_mode, "
                  "bool align_corners, str backend) -> Tensor")
    bwd_schema = (f"(Tensor grad_out, Tensor x, Tensor {spec.param}, {aux_schema}str mode, str padding_mode, "
                  f"bool align_corners, bool need_x, bool need_{spec.param}, str backend) -> (Tensor, Tensor)")

    def forward_impl(*args):
        x, param, aux, (size, mode, padding_mode, align_corners, backend) = _split(spec, args)
        _check_backend(backend)
        size = tuple(size)
        if backend == "torch":
            grid = spec.grid(param, aux, size, align_corners, compute_dtype(x.dtype))
            return torch_path.sample(x, grid, mode, padding_mode, align_corners)
        return spec.kernel_forward(x, param, aux, size, mode, padding_mode, align_corners)

    def forward_fake(*args):
        x, _, _, (size, *_rest) = _split(spec, args)
        return empty_output(x, *size)

    def backward_impl(*args):
        grad_out, x, rest = args[0], args[1], args[1:]
        _, param, aux, (mode, padding_mode, align_corners, need_x, need_param, backend) = _split(spec, rest)
        _check_backend(backend)
        if backend == "torch":
            gx, gp = _torch_backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x,
                                     need_param)
        else:
            # any grad_out strides work, including the all-zero strides of an expanded scalar grad
            gx, gp = spec.kernel_backward(grad_out, x, param, aux, mode, padding_mode, align_corners, need_x,
                                          need_param, torch.are_deterministic_algorithms_enabled())
        return (gx if gx is not None else x.new_empty(0)), (gp if gp is not None else param.new_empty(0))

    def backward_fake(*args):
        _, x, param = args[0], args[1], args[2]
        need_x, need_param = args[-3], args[-2]
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)) if need_x \
            else x.new_empty(0)
        gp = torch.empty(param.shape, dtype=param.dtype, device=param.device) if need_param else param.new_empty(0)
        return gx, gp

    forward_op = torch.library.custom_op(f"stn_triton::{spec.name}", forward_impl, mutates_args=(), schema=fwd_schema)
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(f"stn_triton::{spec.name}_backward", backward_impl, mutates_args=(),
                                          schema=bwd_schema)
    backward_op.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        x, param, aux, (_size, mode, padding_mode, align_corners, backend) = _split(spec, inputs)
        ctx.save_for_backward(x, param, *aux)
        ctx.config = (mode, padding_mode, align_corners)
        ctx.backend = backend  # the forward's decision, carried to the backward
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_out):
        x, param, *aux = ctx.saved_tensors
        need_x, need_param = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nones = (None,) * (ctx.n_inputs - 2)
        if not (need_x or need_param):
            return (None, None) + nones
        gx, gp = backward_op(grad_out, x, param, *aux, *ctx.config, need_x, need_param, ctx.backend)
        return (gx if need_x else None, gp if need_param else None) + nones

    forward_op.register_autograd(backward, setup_context=setup_context)

    def setup_context_backward(ctx, inputs, output):
        grad_out, x, param, *rest = inputs
        aux = tuple(rest[:len(spec.aux)])
        mode, padding_mode, align_corners, need_x, need_param, _backend = rest[len(spec.aux):]
        ctx.save_for_backward(grad_out, x, param, *aux)
        ctx.config = (mode, padding_mode, align_corners)
        ctx.computed = (need_x, need_param)
        ctx.n_inputs = len(inputs)

    def double_backward(ctx, gg_x, gg_param):
        """Second order through the PyTorch path: the same function, so the derivative of the
        fused first-order backward; the aux tensors stay constants, as in the first order."""
        grad_out, x, param, *aux = ctx.saved_tensors
        mode, padding_mode, align_corners = ctx.config
        size = tuple(grad_out.shape[2:])

        def forward(x_, param_):
            grid = spec.grid(param_, tuple(aux), size, align_corners, compute_dtype(x_.dtype))
            return grid_sample_composed(x_, grid, mode, padding_mode, align_corners)

        d_go, d_x, d_param = backward_of_backward(forward, grad_out, [x, param], ctx.computed, [gg_x, gg_param])
        return (d_go, d_x, d_param) + (None,) * (ctx.n_inputs - 3)

    backward_op.register_autograd(double_backward, setup_context=setup_context_backward)
    return forward_op


def _torch_backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param):
    """Backward of the PyTorch path: aten's grid-sampler backward, then ``spec.param_grad``."""
    if x.shape[0] == 0:
        gx = torch.zeros(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=memory_format_of(x)) \
            if need_x else None
        return gx, (torch.zeros(param.shape, dtype=param.dtype, device=param.device) if need_param else None)
    size = tuple(grad_out.shape[2:])
    grid = spec.grid(param, aux, size, align_corners, compute_dtype(x.dtype))
    gx, ggrid = torch_path.sample_backward(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_param)
    gp = spec.param_grad(ggrid, grid, param, aux, size, align_corners).contiguous() if need_param else None
    return gx, gp
