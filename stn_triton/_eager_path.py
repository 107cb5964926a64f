"""The eager path of a registered transform: the op template's implementations reached without
the ``torch.library`` custom-op machinery.

A custom-op call in eager mode goes through its autograd wrapper, a redispatch, a dynamo
``disable`` wrapper and the schema's argument normalisation before our implementation runs:
several times the host cost of ``F.affine_grid`` + ``F.grid_sample`` at the small shapes where an
eager training step is host-bound. Outside ``torch.compile`` none of it is needed, so
:class:`RegisteredTransform` (``_op_template.py``) sends eager calls here:

* when autograd records nothing (grad mode off, or no input requires grad), the forward
  implementation is called directly;
* otherwise one ``torch.autograd.Function`` per transform, whose backward is the custom op's own
  autograd formula (``ctx.eager`` set, so its first-order backward calls the implementation
  directly and ``create_graph`` still reaches the backward op's registered higher orders).

On the PyTorch path a Python ``autograd.Function`` alone costs the host more than the two C++
autograd nodes of ``F.affine_grid`` + ``F.grid_sample``, so where the library's rules change
nothing (:func:`recorded_by_autograd`: no fill padding, every coordinate finite and inside the
limit, data and parameter in their compute dtype, a contiguous x on the CPU) and the spec's
``param_grad`` is autograd's own formula, the grid and aten's sampler are called directly and
autograd records them: the same ops as the Function's forward and backward, so the same bits.

The inputs are passed in the custom op's order, so ``ctx.needs_input_grad`` means the same in
both paths, and the forward's backend is carried in ``ctx`` exactly as the op carries it.
"""
from __future__ import annotations

import torch

from . import torch_path
from stn_triton.kernels.layout import nothing_to_sample


_RECORDED_DTYPES = (torch.float32, torch.float64)  # dtypes that are their own compute dtype


def recorded_by_autograd(spec, grid_of, x, param, aux, size, mode, padding_mode, align_corners):
    """The PyTorch path's output with its grid and aten's grid sampler left to autograd (C++ nodes,
    no Python Function), or None where a library rule needs the Function: fill padding, a
    coordinate that is not finite or outside the limit, half data (its conversions), x not
    contiguous (the gradient's layout), a device other than the CPU (the coordinate test is read on
    the host), an empty output, a spec whose ``param_grad`` is not autograd's formula."""
    if (padding_mode == "fill" or not spec.autograd_param_grad or not x.is_cpu
            or x.dtype not in _RECORDED_DTYPES or not x.is_contiguous() or nothing_to_sample(x, *size)):
        return None
    grid = grid_of(spec, x, param, aux, size, align_corners)
    if not torch_path.coordinates_inside(grid):
        return None
    return torch.grid_sampler(x, grid, torch_path.ATEN_MODES[mode], torch_path.ATEN_PADDINGS[padding_mode],
                              align_corners)


def eager_entry(spec, forward, backward_formula, fill_input: int, grid_of):
    """``eager(x, param, aux, size, mode, padding_mode, align_corners, backend, fill)``: the call
    without the custom op. ``forward`` is the template's ``_forward_keeping_grid`` (the PyTorch
    path's grid is kept in ``ctx.grid`` for the backward); ``backward_formula`` its
    autograd formula; ``fill_input`` the op's index of ``fill`` (where the Function takes it too);
    ``grid_of`` the template's PyTorch-path grid (for :func:`recorded_by_autograd`)."""
    n_aux = len(spec.aux)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, param, *rest):
            aux = rest[:n_aux]
            size, mode, padding_mode, align_corners, backend, fill = rest[n_aux:]
            ctx.save_for_backward(x, param, fill, *aux)
            ctx.config = (mode, padding_mode, align_corners)
            ctx.backend = backend  # the forward's decision, carried to the backward (autograd's thread)
            ctx.eager = eager
            out, ctx.grid = forward(spec, backend, x, param, aux, tuple(size), mode, padding_mode, align_corners, fill)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            return backward_formula(ctx, grad_out)

    Eager.__name__ = Eager.__qualname__ = f"{spec.name}_eager"

    def eager(x, param, aux, size, mode, padding_mode, align_corners, backend, fill):
        if backend == "torch":
            out = recorded_by_autograd(spec, grid_of, x, param, aux, size, mode, padding_mode, align_corners)
            if out is not None:
                return out
        if torch.is_grad_enabled() and (x.requires_grad or param.requires_grad
                                        or (fill is not None and fill.requires_grad)):
            return Eager.apply(x, param, *aux, size, mode, padding_mode, align_corners, backend, fill)
        return forward(spec, backend, x, param, aux, tuple(size), mode, padding_mode, align_corners, fill)[0]

    assert fill_input == 2 + n_aux + 5  # Eager.apply's argument order is the op's
    return eager
