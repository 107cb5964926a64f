"""Inception with batch normalisation (Ioffe & Szegedy, ICML 2015): "BN-Inception".

The GoogLeNet-BN layout of the paper's Figure 5 / the Caffe ``bn_inception`` model: conv 7x7/2
(64) - max 3x3/2 - conv 1x1 (64) - conv 3x3 (192) - max 3x3/2 - inception 3a, 3b, 3c (stride 2),
4a..4d, 4e (stride 2), 5a, 5b - global average pool -> **1024-D** - (optional) fc[1000]. Every
conv has a bias and is followed by BatchNorm and ReLU; max pools use ``ceil_mode=True`` as in
Caffe. With a 224x224 input the trunk's last feature map is 1024x7x7.

Pretrained weights: expected key layout
---------------------------------------
:meth:`BNInception.load_pretrained` reads a ``torch.save``'d state dict (or a checkpoint dict
holding one under ``state_dict`` / ``model``) whose keys follow the flat Caffe-port naming used by
the widely distributed ImageNet BN-Inception ports (``pretrainedmodels``' ``bninception``, the
TSN ``bn_inception`` port). For every conv ``NAME`` there are

* ``NAME.weight`` (out, in, k, k) and ``NAME.bias`` (out,)
* ``NAME_bn.weight``, ``NAME_bn.bias``, ``NAME_bn.running_mean``, ``NAME_bn.running_var`` (out,)
  (``(1, out)`` as stored by some ports is accepted and squeezed; ``num_batches_tracked`` is
  optional)

with ``NAME`` in ``conv1_7x7_s2``, ``conv2_3x3_reduce``, ``conv2_3x3`` and, for each block
``B`` in 3a 3b 3c 4a 4b 4c 4d 4e 5a 5b, ``inception_B_1x1``, ``inception_B_3x3_reduce``,
``inception_B_3x3``, ``inception_B_double_3x3_reduce``, ``inception_B_double_3x3_1``,
``inception_B_double_3x3_2``, ``inception_B_pool_proj`` (3c and 4e, the stride-2 blocks, have no
``_1x1`` and no ``_pool_proj``). The ImageNet classifier is ``last_linear.weight`` (1000, 1024) /
``last_linear.bias`` (``fc.*`` is accepted as an alias); it is ignored when the model is built
without a classifier (``num_classes=None``, the CUB streams). Prefixes ``module.`` (DataParallel)
and ``base_model.`` are stripped. Any other missing / unexpected key or shape mismatch raises
:class:`PretrainedLayoutError` listing them. ``expected_keys()`` returns the full list.

Input convention of those ports: BGR, range 0..255, mean (104, 117, 128), std 1 -- see
``stn_triton.models.cub.InputNorm``. :func:`make_state_dict` generates a state dict of this
layout (random values) for tests.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# (block, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool, pool proj); a block with
# 1x1 == 0 is a stride-2 reduction block (no 1x1 branch, max-pool pass-through, no projection).
BLOCKS = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 0, 128, 160, 64, 96, "max", 0),
    ("4a", 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 0, 128, 192, 192, 256, "max", 0),
    ("5a", 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 352, 192, 320, 192, 224, "max", 128),
)
CLASSIFIER_PREFIXES = ("last_linear.", "fc.")
STRIP_PREFIXES = ("module.", "base_model.")


class PretrainedLayoutError(ValueError):
    """A pretrained state dict does not match the BN-Inception key layout."""


def _ch(c: int, width: float) -> int:
    return 0 if c == 0 else max(1, int(round(c * width)))


class BNInception(nn.Module):
    """BN-Inception trunk (+ optional classifier).

    Args:
        num_classes: ``None`` (default) -> no classifier, ``forward`` returns the pooled descriptor
            (N, out_dim) (1024-D at ``width=1``); an int adds ``last_linear``.
        width: channel multiplier (tests only; 1 = the real network, whose keys match
            pretrained files).
        in_channels: 3.

    ``features(x)`` is the trunk without the last pooling: (N, out_dim, H/32, W/32), 7x7 at 224.
    Inputs must be multiples of 32 pixels (so the stride-2 conv and ceil-mode pool branches of
    3c / 4e agree).
    """

    def __init__(self, num_classes: int | None = None, *, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.width = width
        self._convs: list[str] = []
        self._conv("conv1_7x7_s2", in_channels, _ch(64, width), 7, 2, 3)
        self._conv("conv2_3x3_reduce", _ch(64, width), _ch(64, width), 1)
        self._conv("conv2_3x3", _ch(64, width), _ch(192, width), 3, 1, 1)
        cin = _ch(192, width)
        self.blocks: list[tuple] = []
        for name, c1, r3, c3, rd, cd, pool, proj in BLOCKS:
            c1, r3, c3, rd, cd, proj = (_ch(c, width) for c in (c1, r3, c3, rd, cd, proj))
            p = f"inception_{name}"
            stride = 2 if c1 == 0 else 1
            if c1:
                self._conv(f"{p}_1x1", cin, c1, 1)
            self._conv(f"{p}_3x3_reduce", cin, r3, 1)
            self._conv(f"{p}_3x3", r3, c3, 3, stride, 1)
            self._conv(f"{p}_double_3x3_reduce", cin, rd, 1)
            self._conv(f"{p}_double_3x3_1", rd, cd, 3, 1, 1)
            self._conv(f"{p}_double_3x3_2", cd, cd, 3, stride, 1)
            if proj:
                self._conv(f"{p}_pool_proj", cin, proj, 1)
            self.blocks.append((p, bool(c1), pool, bool(proj), stride))
            cin = c1 + c3 + cd + (proj if proj else cin)
        self.out_dim = cin
        self.last_linear = nn.Linear(cin, num_classes) if num_classes else None

    def _conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, k, stride, pad))
        self.add_module(name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))
        self._convs.append(name)

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, name + "_bn")(getattr(self, name)(x)), inplace=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"BNInception needs inputs whose sides are multiples of 32, got {tuple(x.shape[-2:])}")
        x = self._cbr("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for p, has1, pool, has_proj, stride in self.blocks:
            outs = []
            if has1:
                outs.append(self._cbr(f"{p}_1x1", x))
            outs.append(self._cbr(f"{p}_3x3", self._cbr(f"{p}_3x3_reduce", x)))
            d = self._cbr(f"{p}_double_3x3_reduce", x)
            outs.append(self._cbr(f"{p}_double_3x3_2", self._cbr(f"{p}_double_3x3_1", d)))
            if pool == "avg":
                q = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            else:
                q = F.max_pool2d(x, 3, stride, 1 if stride == 1 else 0, ceil_mode=True)
            outs.append(self._cbr(f"{p}_pool_proj", q) if has_proj else q)
            x = torch.cat(outs, 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))    # = the 7x7 global average pool at 224
        return self.last_linear(x) if self.last_linear is not None else x

    # ----------------------------------------------------------------------------- weights
    def expected_keys(self) -> list[str]:
        """State-dict keys a pretrained file must provide (classifier keys only with one)."""
        return [k for k in self.state_dict() if not k.endswith("num_batches_tracked")]

    def load_pretrained(self, src, *, strict: bool = True, check_only: bool = False) -> dict:
        """Load ImageNet weights from a file path (or an in-memory state dict).

        See the module docstring for the key layout. Raises :class:`PretrainedLayoutError`
        naming the missing / unexpected keys and the shape mismatches. Returns a summary dict
        (``loaded``, ``ignored`` keys). ``check_only``: validate the layout, load nothing (works for a
        model built on the meta device).
        """
        if isinstance(src, (str, os.PathLike)):
            if not os.path.isfile(src):
                raise FileNotFoundError(f"pretrained BN-Inception weights not found: {src}")
            sd = torch.load(src, map_location="cpu", weights_only=True)
        else:
            sd = src
        sd = _unwrap(sd)
        own = self.state_dict()
        ignored, fixed = [], {}
        for k, v in sd.items():
            for pre in STRIP_PREFIXES:
                if k.startswith(pre):
                    k = k[len(pre):]
            if k.startswith("fc."):
                k = "last_linear." + k[3:]
            if self.last_linear is None and k.startswith("last_linear."):
                ignored.append(k)
                continue
            if k in own and tuple(v.shape) != tuple(own[k].shape) and v.numel() == own[k].numel() \
                    and [s for s in v.shape if s != 1] == [s for s in own[k].shape if s != 1]:
                v = v.reshape(own[k].shape)        # (1, C) BN vectors of some ports
            fixed[k] = v
        missing = [k for k in own if k not in fixed and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in fixed if k not in own]
        mismatched = [f"{k}: file {tuple(fixed[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in fixed if k in own and tuple(fixed[k].shape) != tuple(own[k].shape)]
        if strict and (missing or unexpected or mismatched):
            raise PretrainedLayoutError(_layout_message(src, missing, unexpected, mismatched,
                                                        len(self.expected_keys())))
        summary = {"loaded": len([k for k in fixed if k in own]), "ignored": ignored,
                   "missing": missing, "unexpected": unexpected, "mismatched": mismatched}
        if check_only:
            return summary
        for k in own:
            if k.endswith("num_batches_tracked") and k not in fixed:
                fixed[k] = own[k]
        self.load_state_dict({k: v for k, v in fixed.items() if k in own and k not in
                              {m.split(":")[0] for m in mismatched}}, strict=False)
        return summary


def _unwrap(sd):
    if not isinstance(sd, dict):
        raise PretrainedLayoutError(f"expected a state dict (dict of tensors), got {type(sd).__name__}")
    for key in ("state_dict", "model", "model_state_dict"):
        if key in sd and isinstance(sd[key], dict):
            return _unwrap(sd[key])
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PretrainedLayoutError(f"state dict has non-tensor entries: {bad[:10]}")
    return sd


def _layout_message(src, missing, unexpected, mismatched, n_own, show: int = 25) -> str:
    name = src if isinstance(src, (str, os.PathLike)) else "<state dict>"

    def block(title, items):
        if not items:
            return ""
        more = f"\n    ... and {len(items) - show} more" if len(items) > show else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:show]) + more

    return (f"{name} does not match the BN-Inception key layout (the model expects {n_own} keys; see "
            f"the docstring of stn_triton.models.inception_bn for the expected names, or "
            f"BNInception().expected_keys())."
            + block("missing keys", missing) + block("unexpected keys", unexpected)
            + block("shape mismatches", mismatched))


def make_state_dict(num_classes: int | None = 1000, *, seed: int = 0, bn_row_vectors: bool = False) -> dict:
    """A random state dict in the pretrained layout (tests / documentation of the format)."""
    g = torch.Generator().manual_seed(seed)
    net = BNInception(num_classes)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        t = torch.randn(v.shape, generator=g) * 0.01
        if k.endswith("running_var"):
            t = t.abs() + 1.0
        if bn_row_vectors and "_bn." in k:
            t = t.view(1, -1)
        sd[k] = t
    return sd


def feature_size(side: int) -> int:
    """Spatial side of ``features`` for an input side (a multiple of 32): side / 32."""
    return side // 32
