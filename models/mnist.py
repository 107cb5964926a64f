"""Distorted-MNIST networks of the supplement, section 1.3, and the pieces the other MNIST
experiments reuse.

* FCN: two hidden fully connected layers (ReLU) + a linear classifier (softmax in the loss).
* CNN: conv 9x9 (stride 1, no padding) - max 2 - conv 7x7 (stride 1, no padding) - max 2 -
  linear classifier; ReLU after each conv; both convs have the same number of filters.
* ST-FCN / ST-CNN: a spatial transformer at the input, then the FCN / CNN. Localisation nets
  have three hidden layers: 32-unit FC x3 for ST-FCN; for ST-CNN two 20-filter 5x5 convs
  (stride 1, no padding) on a 2x downsampled input with 2x2 max-pooling between them, then a
  20-unit FC. ``st_pool=True`` (the paper's choice for the RTS and TC data) average-pools the
  transformer's output by 2 before the classifier.
* Every model of an experiment is sized to the same parameter budget (default 400k) by solving
  for the classifier's width (:func:`stn_triton.models.fit_width`); the count is printed.

Note: the unpadded 9x9 / 7x7 CNN needs an input of at least 26 px. Where the classifier's input
is smaller (ST-CNN with ``st_pool`` on 42 px RTS gives 21 px) the convs are zero-padded
("same" size: 4 and 3 px); the model's ``note`` attribute says so.
"""
from __future__ import annotations

import torch
from torch import nn

from stn_triton.modules import SpatialTransformer

from .budget import PAPER_BUDGET, count_params, fit_width

ARCHS = ("fcn", "cnn", "st-fcn", "st-cnn")


def fcn_classifier(in_ch: int, in_size: int, num_classes: int, hidden: int) -> nn.Sequential:
    d = in_ch * in_size * in_size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def _cnn_out(s: int, pad: bool) -> int:
    if pad:
        return s // 2 // 2
    return ((s - 8) // 2 - 6) // 2


def cnn_needs_padding(in_size: int) -> bool:
    return _cnn_out(in_size, False) < 1


def cnn_classifier(in_ch: int, in_size: int, num_classes: int, filters: int, pad: bool | None = None) -> nn.Sequential:
    pad = cnn_needs_padding(in_size) if pad is None else pad
    s = _cnn_out(in_size, pad)
    if s < 1:
        raise ValueError(f"input of {in_size} px is too small for the 9x9/7x7 CNN")
    return nn.Sequential(
        nn.Conv2d(in_ch, filters, 9, padding=4 if pad else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(filters, filters, 7, padding=3 if pad else 0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(filters * s * s, num_classes))


def fcn_loc_net(in_ch: int, in_size: int, hidden: int = 32) -> nn.Sequential:
    """ST-FCN localisation net: three hidden 32-unit FC layers (the regressor is added by the ST)."""
    d = in_ch * in_size * in_size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU())


def cnn_loc_net(in_ch: int, in_size: int, filters: int = 20, fc: int = 20) -> nn.Sequential:
    """ST-CNN localisation net: 2x downsample (average), conv5x5(20) - max 2 - conv5x5(20) - FC 20."""
    s = ((in_size // 2 - 4) // 2) - 4
    if s < 1:
        raise ValueError(f"input of {in_size} px is too small for the ST-CNN localisation net")
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_ch, filters, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(filters, filters, 5), nn.ReLU(), nn.Flatten(), nn.Linear(filters * s * s, fc),
                         nn.ReLU())


class Standardize(nn.Module):
    """(x - mean) / std with fixed constants (no parameters); MNIST's 0.1307 / 0.3081 by default."""

    def __init__(self, mean: float = 0.1307, std: float = 0.3081):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"mean={self.mean}, std={self.std}"


class Classifier(nn.Module):
    """A plain classifier (FCN / CNN); ``transformers`` is empty."""

    def __init__(self, body: nn.Module, name: str, width: int):
        super().__init__()
        self.body, self.arch, self.width, self.note = body, name, width, ""

    def forward(self, x):
        return self.body(x)

    def transformed(self, x):
        return []


class STClassifier(nn.Module):
    """Spatial transformer(s) at the input, outputs concatenated along channels, optional 2x
    average pooling, then the classifier. ``transformed(x)`` returns each transformer's output."""

    def __init__(self, sts: list[SpatialTransformer], pool: bool, body: nn.Module, name: str, width: int):
        super().__init__()
        self.sts = nn.ModuleList(sts)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.body, self.arch, self.width, self.note = body, name, width, ""

    def forward(self, x):
        ys = [st(x)[0] for st in self.sts]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, 1)
        return self.body(self.pool(y))

    @torch.no_grad()
    def transformed(self, x):
        return [st(x)[0] for st in self.sts]

    @torch.no_grad()
    def thetas(self, x):
        return [st(x)[1] for st in self.sts]


def he_init(model: nn.Module) -> nn.Module:
    """He (Kaiming-normal, fan-in, ReLU gain) weights and zero biases for every Linear / Conv2d,
    except spatial-transformer regressors (which stay at zero: the identity transform)."""
    regressors = {id(m.regressor) for m in model.modules() if isinstance(m, SpatialTransformer)}
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in regressors:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def build(arch: str, *, in_ch: int = 1, in_size: int = 28, num_classes: int = 10, transform: str = "affine",
          st_pool: bool = False, n_st: int = 1, budget: int = PAPER_BUDGET, width: int | None = None,
          standardize: tuple[float, float] | None = None, init: str = "default",
          verbose: bool = False) -> nn.Module:
    """Build ``arch`` (fcn | cnn | st-fcn | st-cnn) with the classifier width solved for ``budget``
    (or fixed by ``width``). ``n_st`` parallel transformers (each sees and warps all ``in_ch``
    channels; outputs concatenated) -- the MNIST-addition 2xST-FCN is ``st-fcn`` with ``n_st=2``.
    ``standardize=(mean, std)`` prepends a fixed (x - mean) / std to the classifier and to each
    localisation net (after the transformer, so the warp's zero padding stays black).
    ``init``: ``"default"`` (PyTorch's layer defaults) or ``"he"`` (:func:`he_init`).
    """
    norm = (lambda m: nn.Sequential(Standardize(*standardize), *m)) if standardize else (lambda m: m)
    arch = arch.lower()
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    conv = arch.endswith("cnn")
    has_st = arch.startswith("st-")
    cls_ch = in_ch * n_st if has_st else in_ch
    cls_size = in_size // 2 if (has_st and st_pool) else in_size
    pad = cnn_needs_padding(cls_size) if conv else False

    def make(w: int) -> nn.Module:
        body = norm(cnn_classifier(cls_ch, cls_size, num_classes, w, pad) if conv
                    else fcn_classifier(cls_ch, cls_size, num_classes, w))
        if not has_st:
            return Classifier(body, arch, w)
        sts = []
        for _ in range(n_st):
            loc = norm(cnn_loc_net(in_ch, in_size) if conv else fcn_loc_net(in_ch, in_size))
            sts.append(SpatialTransformer(loc, transform, (in_size, in_size)))
        return STClassifier(sts, st_pool, body, arch, w)

    if width is None:
        width = fit_width(_CountOnly(make, conv, cls_ch, cls_size, num_classes, in_ch, in_size, has_st, n_st,
                                     transform), budget)
    model = make(width)
    if init == "he":
        he_init(model)
    elif init != "default":
        raise ValueError(f"init must be 'default' or 'he', got {init!r}")
    if pad:
        model.note = f"convs zero-padded ('same'): the classifier's {cls_size}px input is too small unpadded"
    if verbose:
        print(f"{arch}{' x' + str(n_st) if n_st > 1 else ''}: {count_params(model):,} parameters "
              f"(width {width}, budget {budget:,})")
    return model


class _CountOnly:
    """Cheap stand-in for ``make`` while solving the width: builds parameter-shaped meta modules."""

    def __init__(self, make, *args):
        self.make = make

    def __call__(self, w: int) -> nn.Module:
        with torch.device("meta"):
            return self.make(w)
