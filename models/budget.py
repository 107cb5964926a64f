"""Parameter budgets: every model of one experiment gets the same number of learnable parameters.

The supplement (section 1.3): "The exact number of units in FCN and CNN based classification
models varies so as to always ensure that all networks for a particular experiment contain the
same number of learnable parameters (around 400k)". :func:`fit_width` solves for that width.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

PAPER_BUDGET = 400_000


def count_params(model: nn.Module) -> int:
    """Learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fit_width(build: Callable[[int], nn.Module], budget: int = PAPER_BUDGET, lo: int = 1, hi: int = 4096) -> int:
    """The width w in [lo, hi] whose ``count_params(build(w))`` is closest to ``budget``.

    ``build(w)`` must be monotone non-decreasing in parameter count (hidden units / filters), so
    this bisects for the crossing and compares its two neighbours.
    """
    def n(w: int) -> int:
        return count_params(build(w))

    if n(lo) >= budget:
        return lo
    a, b = lo, hi
    if n(b) < budget:
        return b
    while b - a > 1:  # invariant: n(a) < budget <= n(b)
        m = (a + b) // 2
        if n(m) < budget:
            a = m
        else:
            b = m
    return a if budget - n(a) <= n(b) - budget else b


def describe(name: str, model: nn.Module, width: int | None = None) -> str:
    w = f", width {width}" if width is not None else ""
    return f"{name}: {count_params(model):,} parameters{w}"
