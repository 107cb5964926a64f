"""SVHN multi-digit networks (supplement 1.4): CNN, ST-CNN Single, ST-CNN Multi.

Trunk (the paper's, ``width=1``)::

    conv[48,5,1,2]-max[2]-conv[64,5,1,2]-conv[128,5,1,2]-max[2]-conv[160,5,1,2]-conv[192,5,1,2]-
    max[2]-conv[192,5,1,2]-conv[192,5,1,2]-max[2]-conv[192,5,1,2]-fc[3072]-fc[3072]-fc[3072]

ReLU after every weight layer, then ``n_digits`` (5) parallel fc[11] softmax heads. Class 10 of a
head means "no digit at this position", so a label is the digit sequence left-aligned and padded
with 10s; the sequence length is implied by the first blank. **Choice:** the paper's classifier
(five fc[11] heads, no separate length head) is the default; ``length_head=True`` adds Goodfellow
et al.'s 7-way length softmax (0..5 digits, ">5") as an option. Sequence error counts an image as
right only when every head is right (see :func:`sequence_correct`).

* ``model="cnn"``       -- the trunk alone.
* ``model="st-single"`` -- one spatial transformer on the input image, localisation net
  conv[32,5,1,2]-max[2]-conv[32,5,1,2]-fc[32]-fc[32] (+ the zero-initialised regression layer).
* ``model="st-multi"``  -- four spatial transformers, one before each of the first four conv
  layers (on the image and on the 48-, 64- and 128-channel feature maps), each with an
  fc[32]-fc[32] localisation net on the flattened input.

Every transformer is a :class:`stn_triton.modules.SpatialTransformer` that warps its input to its
own size with :func:`stn_triton.warp` (affine by default; any :mod:`stn_triton.params` name); the
final regression layer of every localisation net starts at zero weights and zero bias: the
identity transform. (The harness gives ``SpatialTransformer`` parameters the localisation lr.)

Dropout (p=0.5 by default) follows every weight layer except the first conv and the
localisation nets (the paper's recipe). ``width`` scales every channel / unit count (the trunk's,
the fc layers' and the localisation nets'), so tests and the CPU smoke profile can run tiny
versions of the same architecture; ``width=1`` is the paper's network. ``in_size`` must be a
multiple of 16 (four max[2]); the paper uses 64 and 128.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stn_triton import params as _params
from stn_triton.modules import SpatialTransformer

PAPER_CONV = (48, 64, 128, 160, 192, 192, 192, 192)
POOL_AFTER = (0, 2, 4, 6)           # max[2] follows these convs (0-based)
PAPER_FC = (3072, 3072, 3072)
LOC_CONV = (32, 32)                 # ST-CNN Single localisation convs
LOC_FC = (32, 32)                   # every localisation net's hidden fc layers
MULTI_ST_BEFORE = (0, 1, 2, 3)      # ST-CNN Multi: a transformer before each of these convs
BLANK = 10                          # head class meaning "no digit here"
MODELS = ("cnn", "st-single", "st-multi")


def scaled(c: int, width: float) -> int:
    """Channel count ``c`` scaled by ``width`` (at least 1)."""
    return max(1, int(round(c * width)))


def _kaiming(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _fc_loc(in_features: int, width: float) -> tuple[nn.Module, int]:
    """fc[32]-fc[32] localisation net on the flattened input (ST-CNN Multi)."""
    h1, h2 = (scaled(c, width) for c in LOC_FC)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, h1), nn.ReLU(inplace=True),
                         nn.Linear(h1, h2), nn.ReLU(inplace=True)), h2


def _conv_loc(in_ch: int, size: int, width: float) -> tuple[nn.Module, int]:
    """conv[32,5,1,2]-max[2]-conv[32,5,1,2]-fc[32]-fc[32] (ST-CNN Single)."""
    c1, c2 = (scaled(c, width) for c in LOC_CONV)
    h1, h2 = (scaled(c, width) for c in LOC_FC)
    flat = c2 * (size // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(in_ch, c1, 5, 1, 2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, 1, 2), nn.ReLU(inplace=True), nn.Flatten(),
        nn.Linear(flat, h1), nn.ReLU(inplace=True), nn.Linear(h1, h2), nn.ReLU(inplace=True)), h2


class SVHNNet(nn.Module):
    """CNN / ST-CNN Single / ST-CNN Multi for multi-digit SVHN (see the module docstring).

    ``forward(x)`` takes (N, in_channels, in_size, in_size) and returns digit logits
    (N, n_digits, n_classes), or ``(digit_logits, length_logits)`` when ``length_head``.
    The transforms of the last forward pass are kept (detached) in ``self.last_thetas``
    (one (N, 2, 3) tensor per transformer) for attention figures.
    """

    def __init__(self, model: str = "cnn", *, in_size: int = 64, in_channels: int = 3,
                 width: float = 1.0, n_digits: int = 5, n_classes: int = 11,
                 length_head: bool = False, transform: str = "affine", dropout: float = 0.5):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if in_size % 16:
            raise ValueError(f"in_size must be a multiple of 16 (four max[2] layers), got {in_size}")
        self.model, self.in_size, self.width = model, in_size, width
        self.n_digits, self.n_classes = n_digits, n_classes
        chans = [scaled(c, width) for c in PAPER_CONV]
        self.convs = nn.ModuleList()
        self.sts = nn.ModuleDict()
        cin, size = in_channels, in_size
        for i, cout in enumerate(chans):
            if model == "st-single" and i == 0:
                loc, f = _conv_loc(cin, size, width)
                self.sts[str(i)] = SpatialTransformer(loc, transform, None, loc_features=f)
            elif model == "st-multi" and i in MULTI_ST_BEFORE:
                loc, f = _fc_loc(cin * size * size, width)
                self.sts[str(i)] = SpatialTransformer(loc, transform, None, loc_features=f)
            self.convs.append(nn.Conv2d(cin, cout, 5, 1, 2))
            cin = cout
            if i in POOL_AFTER:
                size //= 2
        self.feat_dim = cin * size * size
        fcs = [scaled(c, width) for c in PAPER_FC]
        self.fcs = nn.ModuleList()
        fin = self.feat_dim
        for fout in fcs:
            self.fcs.append(nn.Linear(fin, fout))
            fin = fout
        self.heads = nn.ModuleList(nn.Linear(fin, n_classes) for _ in range(n_digits))
        self.length = nn.Linear(fin, n_digits + 2) if length_head else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for m in list(self.convs) + list(self.fcs) + list(self.heads) + ([self.length] if self.length else []):
            _kaiming(m)
        for st in self.sts.values():
            for m in st.loc_net.modules():
                _kaiming(m)
        self.last_thetas: list[torch.Tensor] = []

    def loc_parameters(self):
        """Parameters of the localisation nets (the paper trains them at a tenth of the lr)."""
        return [p for st in self.sts.values() for p in st.parameters()]

    def forward(self, x: torch.Tensor):
        thetas = []
        for i, conv in enumerate(self.convs):
            st = self.sts[str(i)] if str(i) in self.sts else None
            if st is not None:
                x, theta = st(x)
                thetas.append(theta.detach())
            x = F.relu(conv(x), inplace=True)
            if i > 0:
                x = self.drop(x)
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
        self.last_thetas = thetas
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.drop(F.relu(fc(x), inplace=True))
        digits = torch.stack([h(x) for h in self.heads], 1)
        if self.length is not None:
            return digits, self.length(x)
        return digits


def build(model: str = "cnn", **kw) -> SVHNNet:
    """``build("st-multi", in_size=64)`` -- the paper's network; ``width=`` for smaller ones."""
    return SVHNNet(model, **kw)


def svhn_loss(out, labels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (plus the length head's when present).

    ``labels``: (N, n_digits) int64, digits 0..9 left-aligned, :data:`BLANK` (10) padding.
    """
    digits, length = (out if isinstance(out, tuple) else (out, None))
    loss = F.cross_entropy(digits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    loss = loss.mean(0).sum()
    if length is not None:
        if lengths is None:
            lengths = labels_to_lengths(labels)
        loss = loss + F.cross_entropy(length, lengths.clamp(max=length.shape[1] - 1))
    return loss


def labels_to_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of digits before the first blank."""
    blank = labels == BLANK
    first = torch.where(blank.any(1), blank.float().argmax(1), torch.full_like(labels[:, 0], labels.shape[1]))
    return first


def sequence_correct(out, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every head (every digit and every blank) predicted right."""
    digits = out[0] if isinstance(out, tuple) else out
    return (digits.argmax(-1) == labels).all(1)


def encode_labels(sequences, n_digits: int = 5) -> torch.Tensor:
    """``[[1, 9], [2, 0, 7]]`` -> (N, n_digits) int64 padded with :data:`BLANK`."""
    out = torch.full((len(sequences), n_digits), BLANK, dtype=torch.long)
    for i, s in enumerate(sequences):
        s = list(s)[:n_digits]
        if s:
            out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def expected_param_count(model: str = "cnn", in_size: int = 64, in_channels: int = 3, width: float = 1.0,
                         n_digits: int = 5, n_classes: int = 11, length_head: bool = False,
                         transform: str = "affine") -> int:
    """Closed-form parameter count (independent of the module code; used by the tests)."""
    def conv(ci, co, k=5):
        return k * k * ci * co + co

    def lin(i, o):
        return i * o + o

    chans = [scaled(c, width) for c in PAPER_CONV]
    npar = _params.n_params(transform)
    h1, h2 = (scaled(c, width) for c in LOC_FC)
    total, cin, size = 0, in_channels, in_size
    for i, co in enumerate(chans):
        if model == "st-single" and i == 0:
            l1, l2 = (scaled(c, width) for c in LOC_CONV)
            total += conv(cin, l1) + conv(l1, l2) + lin(l2 * (size // 2) ** 2, h1) + lin(h1, h2) + lin(h2, npar)
        if model == "st-multi" and i in MULTI_ST_BEFORE:
            total += lin(cin * size * size, h1) + lin(h1, h2) + lin(h2, npar)
        total += conv(cin, co)
        cin = co
        if i in POOL_AFTER:
            size //= 2
    fin = cin * size * size
    for fo in (scaled(c, width) for c in PAPER_FC):
        total += lin(fin, fo)
        fin = fo
    total += n_digits * lin(fin, n_classes)
    if length_head:
        total += lin(fin, n_digits + 2)
    return total


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_param_count(model: str = "cnn", **kw) -> int:
    """Parameter count of the full-size network built on the meta device (no memory)."""
    with torch.device("meta"):
        net = SVHNNet(model, **kw)
    return count_params(net)

