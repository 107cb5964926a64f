"""CUB-200-2011 multi-stream spatial transformer network (supplement 1.5).

* Localisation net (:class:`SharedLocalisation`, a ``stn_triton.modules.SpatialTransformer`` so
  the harness applies the localisation lr multiplier), shared by all N transformers: the BN-Inception trunk without its classifier
  and last pooling (1024 x 7 x 7 at 224), then conv 1x1 -> 128 (+ReLU), fc[128] (+ReLU),
  fc[2N] (the regression layer).
* N translation-only transformers at a fixed scale (0.5 of the image side): transformer i has
  theta_i = [[s, 0, tx_i], [0, s, ty_i]] and samples a ``crop_size`` (224) crop with
  :func:`stn_triton.warp`.
* ``input_size == 2 * crop_size`` (448): a fixed 2x downscale (2x2 average pooling) feeds the
  localisation net, whose input stays 224; the crops are sampled from the full 448 image.
* Tiling initialisation: the regression layer starts with zero weights and a bias holding the
  centres of a near-square grid of crops covering the image -- N=4: the four quadrants
  ((+-0.5, +-0.5)), N=2: left and right halves' centres ((-0.5, 0), (0.5, 0)); see
  :func:`tile_centres`.
* Each crop goes through its own BN-Inception stream to a 1024-D descriptor; the N descriptors
  are concatenated, (dropout), and classified by a 200-way linear layer (softmax in the loss).
* ``n_st=0`` is the paper's CNN baseline: one BN-Inception on the whole (224) image.

:class:`InputNorm` converts RGB images in [0, 1] to the pretrained weights' convention
(``caffe``: BGR, 0..255, minus (104, 117, 128) -- the ports documented in
:mod:`stn_triton.models.inception_bn`; ``imagenet``: torchvision mean/std; ``none``).
Normalisation happens before sampling, so the zero padding of a crop that leaves the image is
the mean colour.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import stn_triton
from stn_triton.modules import SpatialTransformer

from .inception_bn import BNInception

NORMS = {
    "caffe": dict(bgr=True, scale=255.0, mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0)),
    "imagenet": dict(bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "none": dict(bgr=False, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
}


class InputNorm(nn.Module):
    """RGB in [0, 1] -> the convention the trunk's weights expect."""

    def __init__(self, kind: str = "caffe"):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {kind!r}")
        c = NORMS[kind]
        self.kind, self.bgr, self.scale = kind, c["bgr"], c["scale"]
        self.register_buffer("mean", torch.tensor(c["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std


def tile_centres(n: int, scale: float = 0.5) -> list[tuple[float, float]]:
    """n normalised (x, y) centres of n crops of side ``scale`` tiling the image.

    Crops are laid on a grid of ``cols = ceil(sqrt(n))`` by ``rows = ceil(n / cols)`` cells; along
    an axis with k cells the centres are ``linspace(-(1 - scale), 1 - scale, k)`` (0 for k = 1),
    so for scale 0.5 and k = 2 the crops are exactly the two halves. Row-major, x fastest.
    """
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)

    def axis(k):
        a = 1.0 - scale
        return [0.0] if k == 1 else [-a + 2 * a * j / (k - 1) for j in range(k)]

    pts = [(x, y) for y in axis(rows) for x in axis(cols)][:n]
    return pts


class SharedLocalisation(SpatialTransformer):
    """N translation-only spatial transformers at a fixed scale sharing one localisation net.

    A :class:`stn_triton.modules.SpatialTransformer` (so the training harness gives its
    parameters the localisation learning rate) whose localisation net is the truncated
    BN-Inception (``trunk``, no classifier, no last pooling) + conv 1x1 -> 128 (``conv``) +
    fc[128] (``fc``), and whose regression layer (``regressor``, fc[2N]) outputs the N crop
    centres (tx_i, ty_i); ``theta_i = [[s, 0, tx_i], [0, s, ty_i]]``. With ``downscale = 2`` a
    fixed 2x2 average pooling feeds the localisation net (448 inputs). ``forward(xn)`` returns
    the crops (B, N, C, crop, crop) and theta (B, N, 2, 3).
    """

    def __init__(self, trunk: BNInception, n_st: int, *, loc_side: int, crop_size: int, scale: float = 0.5,
                 downscale: int = 1):
        nn.Module.__init__(self)  # SpatialTransformer's own __init__ builds a single-transform head
        self.transform, self.k, self.n_params = "translation", 16, 2 * n_st
        self.out_size = (crop_size, crop_size)
        self.mode, self.padding_mode, self.align_corners = "bilinear", "zeros", False
        self.n_st, self.scale, self.downscale = n_st, float(scale), downscale
        fs = loc_side // 32
        self.trunk = trunk
        self.conv = nn.Conv2d(trunk.out_dim, 128, 1)
        self.fc = nn.Linear(128 * fs * fs, 128)
        self.regressor = nn.Linear(128, 2 * n_st)
        self.reset_regressor()

    def reset_regressor(self) -> None:
        """Zero weights, bias = :func:`tile_centres` (the tiling initialisation)."""
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(torch.tensor([c for xy in tile_centres(self.n_st, self.scale) for c in xy]))

    def theta(self, xn: torch.Tensor) -> torch.Tensor:
        z = F.avg_pool2d(xn, self.downscale) if self.downscale > 1 else xn
        z = F.relu(self.conv(self.trunk.features(z)), inplace=True)
        t = self.regressor(F.relu(self.fc(z.flatten(1)), inplace=True)).view(-1, self.n_st, 2)
        theta = t.new_zeros(t.shape[0], self.n_st, 2, 3)
        theta[..., 0, 0] = self.scale
        theta[..., 1, 1] = self.scale
        theta[..., 0, 2] = t[..., 0]
        theta[..., 1, 2] = t[..., 1]
        return theta

    def forward(self, xn: torch.Tensor):
        theta = self.theta(xn)
        crops = [stn_triton.warp(xn, theta[:, i].contiguous().to(xn.dtype), self.out_size) for i in range(self.n_st)]
        return torch.stack(crops, 1), theta

    def extra_repr(self) -> str:
        return f"n_st={self.n_st}, scale={self.scale}, out_size={self.out_size}, downscale={self.downscale}"


class CUBSTNet(nn.Module):
    """N x ST-CNN for CUB (``n_st`` in {2, 4}; 0 = the single-stream CNN baseline).

    Args:
        n_st: number of transformers / streams.
        input_size: side of the image the transformers sample from (224 or 448).
        crop_size: side of each crop (224; smaller in tests).
        num_classes: 200.
        scale: fixed crop scale (0.5 of the image side).
        width: BN-Inception channel multiplier (tests only; 1 = pretrained-compatible).
        norm: :class:`InputNorm` convention of the pretrained weights.
        dropout: before the classifier (0 = none; not specified by the paper).

    ``forward(x)`` with x (B, 3, input_size, input_size) RGB in [0, 1] returns logits (B, classes);
    ``last_thetas`` holds the (B, N, 2, 3) transforms of the last call (detached); :meth:`crops`
    returns the crops themselves (figures). The localisation part is ``self.loc``, a
    :class:`SharedLocalisation` (``None`` for the CNN baseline).
    """

    def __init__(self, n_st: int = 2, *, input_size: int = 224, crop_size: int = 224, num_classes: int = 200,
                 scale: float = 0.5, width: float = 1.0, norm: str = "caffe", dropout: float = 0.0):
        super().__init__()
        if n_st < 0:
            raise ValueError(f"n_st must be >= 0, got {n_st}")
        if input_size % crop_size or input_size // crop_size not in (1, 2):
            raise ValueError(f"input_size must be crop_size or 2 * crop_size, got {input_size} / {crop_size}")
        self.n_st, self.input_size, self.crop_size, self.scale = n_st, input_size, crop_size, float(scale)
        self.downscale = input_size // crop_size
        self.norm = InputNorm(norm)
        n_streams = max(n_st, 1)
        self.streams = nn.ModuleList(BNInception(None, width=width) for _ in range(n_streams))
        d = self.streams[0].out_dim
        self.loc = (SharedLocalisation(BNInception(None, width=width), n_st, loc_side=input_size // self.downscale,
                                       crop_size=crop_size, scale=scale, downscale=self.downscale)
                    if n_st > 0 else None)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(n_streams * d, num_classes)
        self.last_thetas: torch.Tensor | None = None

    # ----------------------------------------------------------------------------- parts
    def reset_tiling(self) -> None:
        """Zero regression weights, bias = :func:`tile_centres` (the tiling initialisation)."""
        if self.loc is not None:
            self.loc.reset_regressor()

    @property
    def loc_trunk(self) -> BNInception | None:
        return None if self.loc is None else self.loc.trunk

    def trunk_modules(self) -> list[BNInception]:
        return list(self.streams) + ([self.loc.trunk] if self.loc is not None else [])

    def loc_parameters(self):
        return [] if self.loc is None else list(self.loc.parameters())

    def load_pretrained(self, src) -> dict:
        """Load ImageNet BN-Inception weights into every stream and the localisation trunk."""
        if not isinstance(src, dict):
            import os
            if not os.path.isfile(src):
                raise FileNotFoundError(f"pretrained BN-Inception weights not found: {src}")
            src = torch.load(src, map_location="cpu", weights_only=True)
        info = {}
        for i, m in enumerate(self.trunk_modules()):
            info = m.load_pretrained(src)
        return {"trunks": len(self.trunk_modules()), **info}

    def thetas(self, xn: torch.Tensor) -> torch.Tensor:
        """(B, N, 2, 3) transforms for a normalised input."""
        return self.loc.theta(xn)

    def crops(self, x: torch.Tensor, normalise: bool = True):
        """(list of N crops (B, 3, crop, crop), theta (B, N, 2, 3)) for RGB input x."""
        c, theta = self.loc(self.norm(x) if normalise else x)
        return list(c.unbind(1)), theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.norm(x)
        if self.n_st == 0:
            if xn.shape[-1] != self.crop_size:
                xn = F.interpolate(xn, size=(self.crop_size, self.crop_size), mode="bilinear",
                                   align_corners=False, antialias=True)
            desc = [self.streams[0](xn)]
            self.last_thetas = None
        else:
            crops, theta = self.crops(xn, normalise=False)
            self.last_thetas = theta.detach()
            desc = [s(c) for s, c in zip(self.streams, crops)]
        return self.classifier(self.drop(torch.cat(desc, 1)))


def expected_param_count(n_st: int = 2, input_size: int = 224, crop_size: int = 224, num_classes: int = 200,
                         width: float = 1.0) -> int:
    """Closed-form count: streams + localisation (trunk, 1x1 conv, fc[128], fc[2N]) + classifier."""
    trunk = sum(p.numel() for p in BNInception(None, width=width).parameters()) if width != 1.0 else 10_270_240
    d = BNInception(None, width=width).out_dim if width != 1.0 else 1024
    streams = max(n_st, 1)
    total = streams * trunk + (streams * d + 1) * num_classes
    if n_st:
        fs = (input_size // (input_size // crop_size)) // 32
        total += trunk + (d * 128 + 128) + (128 * fs * fs * 128 + 128) + (128 * 2 * n_st + 2 * n_st)
    return total


@torch.no_grad()
def predict_views(model: nn.Module, views: torch.Tensor, chunk: int = 10) -> torch.Tensor:
    """Average softmax posteriors over views: ``views`` (B, V, 3, H, W) -> (B, classes).

    The paper's evaluation uses V = 10 (four corners + centre, each with its horizontal flip).
    """
    b, v = views.shape[:2]
    flat = views.flatten(0, 1)
    probs = torch.cat([F.softmax(model(flat[i:i + chunk]), -1) for i in range(0, flat.shape[0], chunk)])
    return probs.view(b, v, -1).mean(1)


def ten_views(img: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 10, 3, crop, crop): 4 corners + centre, and their horizontal flips."""
    h, w = img.shape[-2:]
    if h < crop or w < crop:
        raise ValueError(f"image {h}x{w} smaller than crop {crop}")
    tops = [0, 0, h - crop, h - crop, (h - crop) // 2]
    lefts = [0, w - crop, 0, w - crop, (w - crop) // 2]
    vs = [img[..., t:t + crop, l:l + crop] for t, l in zip(tops, lefts)]
    vs = vs + [v.flip(-1) for v in vs]
    return torch.stack(vs, 1)
