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

* ``stn_triton::<name>(x, <param>, <aux>..., size, mode, padding_mode, align_corners, backend,
  fill=None)`` and
* ``stn_triton::<name>_backward(grad_out, x, <param>, <aux>..., mode, padding_mode,
  align_corners, need_x, need_<param>, backend, fill=None) -> (grad_x, grad_<param>)``.

**Fill padding** (``padding_mode="fill"``, specs with ``supports_fill``): ``fill`` holds the (C,)
fill values and may require grad. The kernels read it where a tap falls outside (forward, and the
coordinate gradient); its own gradient needs no kernel of its own: the output is
``sample_zeros + fill * (1 - coverage)`` with ``coverage`` an all-ones image sampled with zeros
padding, so the autograd formula computes grad_fill[c] = sum over the batch and the output pixels
of grad_out[:, c] * (1 - coverage) with one more call of the forward op (only when fill requires
grad), which also gives its higher orders.

**The backend is an argument of both ops**, resolved once by the caller
(:func:`resolve_backend` in the public function) and carried from the forward to its backward
through the autograd context. Resolving it again in the backward would be wrong on CUDA: autograd
runs CUDA backward passes on its own device thread, where the caller's ``use_backend`` context is
not set. Under ``torch.compile`` the backend is resolved when the graph is traced.

Both ops are opaque to ``torch.compile`` (``fullgraph=True`` sees one node each way) and
contain no host synchronisation on the Triton path. The backward op's own autograd formula
(second and higher orders) differentiates a recomputation through ``spec.grid`` and the composed
sampler (``stn_triton._double_backward``).

**Eager calls skip the custom ops** (:class:`RegisteredTransform`, ``_eager_path.py``): the
custom-op dispatch costs the host several times what ``F.affine_grid`` + ``F.grid_sample`` cost
at small shapes, and only tracers need it. Both paths run :func:`_forward_keeping_grid` and
:func:`_backward`, so their results are bit-identical; an eager PyTorch-path call where no library
rule applies leaves the spec's grid and aten's sampler to autograd itself
(``_eager_path.recorded_by_autograd``), for specs whose ``param_grad`` is autograd's own formula:
the same ops, the same bits. An empty output (``nothing_to_sample``:
N = 0, C = 0 or an output extent 0) is handled here, once for both backends.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from . import torch_path
from ._double_backward import backward_of_backward
from ._sample_composed import grid_sample_composed
from ._eager_path import eager_entry
from .backend import resolve_backend
from stn_triton.kernels.layout import empty_output, memory_format_of, nothing_to_sample
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
    supports_fill: bool = False   # padding_mode="fill": both kernel callables then take fill= (the (C,) values)
    needs_input_size: bool = False  # grid and param_grad also take in_size= (x's spatial size): a displacement
                                    # field in input pixels needs it to reach normalised coordinates
    autograd_param_grad: bool = False  # param_grad computes what autograd computes through grid (the same ops
                                       # in the same order: the same bits), so an eager PyTorch-path call may
                                       # leave grid and sampler to autograd (``_eager_path.recorded_by_autograd``)


def _grid_of(spec, x, param, aux, size, align_corners):
    """``spec.grid`` in x's compute dtype (with x's spatial size where the spec needs it)."""
    extra = {"in_size": tuple(x.shape[2:])} if spec.needs_input_size else {}
    return spec.grid(param, aux, size, align_corners, compute_dtype(x.dtype), **extra)


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


class RegisteredTransform:
    """What :func:`register` defines for a spec: the two custom ops, and :meth:`__call__`, the entry
    the public functions call, which picks the path once per call:

    * under ``torch.compile`` / ``torch.export`` (``torch.compiler.is_compiling()``), or for tensor
      subclasses (fake / functional tensors of other tracers), the custom op (one opaque node);
    * otherwise the eager path (``stn_triton._eager_path``): the same implementations without the
      custom-op dispatch (a lean ``autograd.Function``, or the implementation itself when autograd
      records nothing). Outputs and gradients are bit-identical: both call :func:`_forward` and
      :func:`_backward` with the same arguments.
    """

    def __init__(self, spec, op, backward_op, eager):
        self.spec, self.op, self.backward_op, self._eager = spec, op, backward_op, eager

    def __call__(self, x, param, aux, size, mode, padding_mode, align_corners, fill=None):
        """``size`` a list of ints; the arguments already validated by the public function."""
        if torch.compiler.is_compiling() or not _plain_tensors(x, param, fill, aux):
            return self.op(x, param, *aux, size, mode, padding_mode, align_corners, backend_for(x), fill)
        return self._eager(x, param, aux, size, mode, padding_mode, align_corners, resolve_backend(x.device), fill)


def _plain_tensors(x, param, fill, aux) -> bool:
    """Every tensor argument is a plain ``torch.Tensor`` (no subclass a tracer dispatches on)."""
    if type(x) is not torch.Tensor or type(param) is not torch.Tensor or not (fill is None or type(fill) is torch.Tensor):
        return False
    for a in aux:  # a loop, not all(generator): this runs on every eager call
        if a is not None and type(a) is not torch.Tensor:
            return False
    return True


def register(spec: TransformSpec) -> RegisteredTransform:
    """Define ``stn_triton::<spec.name>`` and its backward, and the eager path to the same code."""
    aux_schema = "".join(f"Tensor? {a}, " for a in spec.aux)
    fwd_schema = (f"(Tensor x, Tensor {spec.param}, {aux_schema}int[] size, str mode, str padding_mode, "
                  "bool align_corners, str backend, Tensor? fill=None) -> Tensor")
    bwd_schema = (f"(Tensor grad_out, Tensor x, Tensor {spec.param}, {aux_schema}str mode, str padding_mode, "
                  f"bool align_corners, bool need_x, bool need_{spec.param}, str backend, Tensor? fill=None) "
                  "-> (Tensor, Tensor)")

    def check_fill(padding_mode, fill):
        if padding_mode == "fill" and (fill is None or not spec.supports_fill):
            raise ValueError(f'stn_triton::{spec.name}: padding_mode="fill" needs fill values'
                             if spec.supports_fill else f'stn_triton::{spec.name} does not support padding_mode="fill"')

    def forward_impl(*args):
        x, param, aux, (size, mode, padding_mode, align_corners, backend, *opt) = _split(spec, args)
        fill = opt[0] if opt else None
        _check_backend(backend)
        check_fill(padding_mode, fill)
        size = tuple(size)
        return _forward(spec, backend, x, param, aux, size, mode, padding_mode, align_corners, fill)

    def forward_fake(*args):
        x, _, _, (size, *_rest) = _split(spec, args)
        return empty_output(x, *size)

    def backward_args(args):
        grad_out, x, rest = args[0], args[1], args[1:]
        _, param, aux, (mode, padding_mode, align_corners, need_x, need_param, backend, *opt) = _split(spec, rest)
        return grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param, backend, \
            (opt[0] if opt else None)

    def backward_impl(*args):
        grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param, backend, fill = \
            backward_args(args)
        _check_backend(backend)
        check_fill(padding_mode, fill)
        return _backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param,
                         backend, fill)

    def backward_fake(*args):
        _, x, param, *_rest = args
        need_x, need_param = backward_args(args)[7:9]
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)) if need_x \
            else x.new_empty(0)
        gp = torch.empty(param.shape, dtype=param.dtype, device=param.device) if need_param else param.new_empty(0)
        return gx, gp

    forward_op = torch.library.custom_op(f"stn_triton::{spec.name}", forward_impl, mutates_args=(), schema=fwd_schema)
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(f"stn_triton::{spec.name}_backward", backward_impl, mutates_args=(),
                                          schema=bwd_schema)
    backward_op.register_fake(backward_fake)

    fill_input = 2 + len(spec.aux) + 5  # the forward op's fill argument: after x, param, aux and 5 others

    def setup_context(ctx, inputs, output):
        x, param, aux, (_size, mode, padding_mode, align_corners, backend, *opt) = _split(spec, inputs)
        fill = opt[0] if opt else None
        ctx.save_for_backward(x, param, fill, *aux)
        ctx.config = (mode, padding_mode, align_corners)
        ctx.backend = backend  # the forward's decision, carried to the backward
        ctx.eager = None  # the custom-op path: its backward and the fill coverage are the ops

    def backward(ctx, grad_out):
        """The autograd formula of both paths. ``ctx.eager`` is None on the custom-op path (the
        backward is the op: what torch.compile must see) and the eager entry on the eager path,
        whose first-order backward calls the implementation directly; with ``create_graph`` (grad
        mode on here) it calls the op too, for its registered higher orders."""
        x, param, fill, *aux = ctx.saved_tensors
        # needs_input_grad covers the arguments actually passed (fill may be left at its default)
        grads = [None] * len(ctx.needs_input_grad)
        need_x, need_param = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_fill = len(grads) > fill_input and ctx.needs_input_grad[fill_input] and ctx.config[1] == "fill"
        if need_x or need_param:
            if ctx.eager is None or torch.is_grad_enabled():
                gx, gp = backward_op(grad_out, x, param, *aux, *ctx.config, need_x, need_param, ctx.backend, fill)
            else:
                gx, gp = _backward(spec, grad_out, x, param, tuple(aux), *ctx.config, need_x, need_param, ctx.backend,
                                   fill, ctx.grid)
            grads[0], grads[1] = (gx if need_x else None), (gp if need_param else None)
        if need_fill:
            # out = sample_zeros + fill * (1 - coverage): grad fill = sum of grad_out * (1 - coverage),
            # the coverage one more forward of the same op (differentiable, so higher orders follow)
            mode, _, align_corners = ctx.config
            size = list(grad_out.shape[2:])
            if ctx.eager is None:
                cov = forward_op(_ones_like_image(x), param, *aux, size, mode, "zeros", align_corners, ctx.backend)
            else:
                cov = ctx.eager(_ones_like_image(x), param, tuple(aux), size, mode, "zeros", align_corners,
                                ctx.backend, None)
            grads[fill_input] = torch_path.fill_grad(grad_out, cov, fill)
        return tuple(grads)

    forward_op.register_autograd(backward, setup_context=setup_context)

    def setup_context_backward(ctx, inputs, output):
        grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param, _backend, fill = \
            backward_args(inputs)
        ctx.save_for_backward(grad_out, x, param, fill, *aux)
        ctx.config = (mode, padding_mode, align_corners)
        ctx.computed = (need_x, need_param)

    def double_backward(ctx, gg_x, gg_param):
        """Second order through the PyTorch path: the same function, so the derivative of the
        fused first-order backward; the aux tensors stay constants, as in the first order. With
        fill padding the fill values are an input too (grad theta depends on them)."""
        grad_out, x, param, fill, *aux = ctx.saved_tensors
        mode, padding_mode, align_corners = ctx.config
        size = tuple(grad_out.shape[2:])

        def forward(x_, param_, fill_=None):
            grid = _grid_of(spec, x_, param_, tuple(aux), size, align_corners)
            return grid_sample_composed(x_, grid, mode, padding_mode, align_corners, fill=fill_)

        with_fill = padding_mode == "fill"
        inputs = [x, param] + ([fill] if with_fill else [])
        d = backward_of_backward(forward, grad_out, inputs, ctx.computed + ((False,) if with_fill else ()),
                                 [gg_x, gg_param] + ([None] if with_fill else []))
        grads = d[:3] + [None] * (len(ctx.needs_input_grad) - 3)
        fill_at = 3 + len(spec.aux) + 6  # grad_out, x, param, aux, 6 non-tensor args, then fill
        if with_fill and len(grads) > fill_at:
            grads[fill_at] = d[3]
        return tuple(grads)

    backward_op.register_autograd(double_backward, setup_context=setup_context_backward)
    eager = eager_entry(spec, _forward_keeping_grid, backward, fill_input, _grid_of)
    return RegisteredTransform(spec, forward_op, backward_op, eager)


def _ones_like_image(x: torch.Tensor) -> torch.Tensor:
    """An all-ones (N, 1, *spatial) image in x's compute dtype (stride 0: no memory)."""
    return torch.ones((), dtype=compute_dtype(x.dtype), device=x.device).expand(x.shape[0], 1, *x.shape[2:])


def _forward(spec, backend, x, param, aux, size, mode, padding_mode, align_corners, fill):
    return _forward_keeping_grid(spec, backend, x, param, aux, size, mode, padding_mode, align_corners, fill)[0]


def _forward_keeping_grid(spec, backend, x, param, aux, size, mode, padding_mode, align_corners, fill):
    """(output, the PyTorch path's sampling grid or None): the eager path keeps the grid for its
    backward, which would otherwise build the same grid again (same bits: the same ops)."""
    if nothing_to_sample(x, *size):
        return empty_output(x, *size), None
    if backend == "torch":
        grid = _grid_of(spec, x, param, aux, size, align_corners)
        return torch_path.sample(x, grid, mode, padding_mode, align_corners, fill), grid
    extra = {"fill": fill} if padding_mode == "fill" else {}
    return spec.kernel_forward(x, param, aux, size, mode, padding_mode, align_corners, **extra), None


def _backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param, backend, fill,
              grid=None):
    """(grad_x, grad_param) of either backend; an empty placeholder for what was not asked (the
    backward op's schema returns two tensors). ``grid``: the PyTorch path's forward grid, if kept."""
    if nothing_to_sample(x, *grad_out.shape[2:]):  # an empty output: every gradient is zero
        gx = torch.zeros(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=memory_format_of(x)) \
            if need_x else None
        gp = torch.zeros(param.shape, dtype=param.dtype, device=param.device) if need_param else None
    elif backend == "torch":
        gx, gp = _torch_backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param,
                                 fill, grid)
    else:
        extra = {"fill": fill} if padding_mode == "fill" else {}
        # any grad_out strides work, including the all-zero strides of an expanded scalar grad
        gx, gp = spec.kernel_backward(grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param,
                                      torch.are_deterministic_algorithms_enabled(), **extra)
    return (gx if gx is not None else x.new_empty(0)), (gp if gp is not None else param.new_empty(0))


def _torch_backward(spec, grad_out, x, param, aux, mode, padding_mode, align_corners, need_x, need_param,
                    fill=None, grid=None):
    """Backward of the PyTorch path: aten's grid-sampler backward, then ``spec.param_grad``."""
    size = tuple(grad_out.shape[2:])
    if grid is None:
        grid = _grid_of(spec, x, param, aux, size, align_corners)
    gx, ggrid = torch_path.sample_backward(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_param,
                                           fill)
    extra = {"in_size": tuple(x.shape[2:])} if spec.needs_input_size else {}
    gp = spec.param_grad(ggrid, grid, param, aux, size, align_corners, **extra).contiguous() if need_param else None
    return gx, gp
