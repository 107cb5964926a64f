"""MNIST-addition networks (supplement section 1.1, Table 1).

Input: 2 channels of 42x42, one independently RTS-distorted digit per channel; output: 19-way
logits for the sum 0..18. All four models are sized to the same parameter budget (default 400k):

* ``fcn``: FCN on the 2x42x42 input.
* ``cnn``: the 9x9/7x7 CNN on the 2x42x42 input.
* ``st-fcn``: one spatial transformer (32-32-32 FC localisation net) on both channels, output
  2x42x42, average-pooled by 2 (RTS data, as section 1.3), then the FCN.
* ``2xst-fcn``: two parallel spatial transformers, each seeing both channels and warping both;
  their 2-channel outputs are concatenated to 4 channels, average-pooled by 2, then the FCN.

The transform defaults to affine (the supplement's figure shows TPS; ``transform="tps"`` builds
that; see the recipe's notes for which was used).
"""
from __future__ import annotations

from torch import nn

from . import mnist
from .budget import PAPER_BUDGET

MODELS = ("fcn", "cnn", "st-fcn", "2xst-fcn")
IN_CH, IN_SIZE, NUM_CLASSES = 2, 42, 19


def build(name: str, *, transform: str = "affine", budget: int = PAPER_BUDGET, st_pool: bool = True,
          width: int | None = None, standardize: tuple[float, float] | None = None, init: str = "default",
          verbose: bool = False) -> nn.Module:
    name = name.lower()
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    arch, n_st = ("st-fcn", 2) if name == "2xst-fcn" else (name, 1)
    model = mnist.build(arch, in_ch=IN_CH, in_size=IN_SIZE, num_classes=NUM_CLASSES, transform=transform,
                        st_pool=st_pool, n_st=n_st, budget=budget, width=width, standardize=standardize,
                        init=init, verbose=False)
    model.arch = name
    if verbose:
        from .budget import count_params
        print(f"{name}: {count_params(model):,} parameters (width {model.width}, budget {budget:,})")
    return model
