"""Second-order gradients (double backward) of the warp ops, through the pure-PyTorch path.

The first-order backward is a fused kernel (``stn_triton::warp_backward`` /
``stn_triton::tps_warp_backward``). Differentiating *that* again (gradient penalties, Hessian-vector
products, meta-learning) is rare and not worth a third kernel, so the backward ops' own autograd
formula recomputes the first-order gradients with a differentiable PyTorch composition (the same
grid, sampled by ``stn_triton._sample_composed``: gathers and arithmetic, which autograd
differentiates to any order on every torch version, where ``F.grid_sample``'s own backward is not
differentiable on some) and differentiates them. Both paths compute the same function, so the second-order gradient is that of the fused
first-order one; ``tests/test_double_backward.py`` checks it with ``gradgradcheck``.

When this backward itself runs with ``create_graph=True`` (third and higher orders), the
recomputation keeps the inputs' graph, so those orders go on through PyTorch's own derivatives.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def backward_of_backward(forward: Callable[..., torch.Tensor], grad_out: torch.Tensor,
                         inputs: Sequence[torch.Tensor], computed: Sequence[bool],
                         grads_of_grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Gradients of ``sum_i <grads_of_grads[i], d forward / d inputs[i] applied to grad_out>``.

    ``forward(*inputs)`` is the differentiable PyTorch path; ``computed[i]`` says whether the
    first-order backward produced a gradient for ``inputs[i]`` (else it returned an empty
    placeholder), and ``grads_of_grads[i]`` is the incoming gradient of that output (None or empty
    when it is unused). Returns [d/d grad_out, d/d inputs[0], ...], None where there is none.
    """
    terms = [(i, gg) for i, gg in enumerate(grads_of_grads)
             if computed[i] and gg is not None and gg.numel() > 0]
    if not terms:
        return [None] * (1 + len(inputs))
    higher = torch.is_grad_enabled()  # the engine enables grad mode here iff create_graph=True

    def leaf(t: torch.Tensor) -> torch.Tensor:
        # The derivative wanted is the *partial* one through this recomputation. With a higher
        # order being built, an alias (view_as) keeps the result connected to the caller's graph
        # while the grad below stops at the alias. Differentiating w.r.t. ``t`` itself would also
        # follow the paths through grad_out and the incoming grads, which the engine chains
        # separately: counted twice.
        if higher and t.requires_grad:
            return t.view_as(t)
        return t.detach().requires_grad_(t.is_floating_point())

    with torch.enable_grad():
        go = leaf(grad_out)
        ins = [leaf(t) for t in inputs]
        out = forward(*ins)
        firsts = torch.autograd.grad(out, [ins[i] for i, _ in terms], go, create_graph=True, allow_unused=True)
        total = sum((f * gg).sum() for f, (_, gg) in zip(firsts, terms) if f is not None and f.requires_grad)
        if not isinstance(total, torch.Tensor):  # no first-order gradient depends on anything
            return [None] * (1 + len(inputs))
        wrt = [go] + [t for t in ins if t.requires_grad]
        grads = iter(torch.autograd.grad(total, wrt, allow_unused=True, create_graph=higher))
    result = [next(grads)]
    for t in ins:
        result.append(next(grads) if t.requires_grad else None)
    return result
