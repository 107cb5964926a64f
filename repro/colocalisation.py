"""Co-localisation (supplement section 1.2, Table 2 and Figure 1).

    python -m repro.colocalisation --variant both             # T then TC, digits 0-9, table.md + figures
    python -m repro.colocalisation --variant TC --digits 8
    python -m repro.colocalisation --variant T --scale learned --negatives window-inside   # the older set-up

Task: for one digit class, the first 100 test images of ``repro.data.colocalisation_set(variant,
digit)`` (a 28x28 MNIST digit at a uniform random integer position in an 84x84 black canvas; TC
adds 16 random 6x6 crops of other digits). Neither labels nor boxes are used for optimisation.

* Encoder e(.): the section-4.1 CNN *trained for digit classification*
  (:mod:`repro.coloc_encoder`: MNIST train digits shrunk to a random 1/3-1 of the 28 px frame at
  random positions, the sizes a digit has in the schedule's windows; 1.75 % error on the full-size
  MNIST test digits), trained once and cached by hash, frozen (``--encoder-augment shift``: the
  full-size-only encoder, 1.0 %; ``tc-window``: 28 px windows of cluttered TC canvases around the
  digit, 1.69 %). The descriptor concatenates the two hidden layers' activations
  (after ReLU + max-pool, flattened) and the pre-softmax logits; ``--encoder PATH`` loads a
  distorted-MNIST recipe checkpoint instead.
* Localiser: a spatial transformer parameterised for attention (scale + translation) producing a
  28x28 crop (``stn_triton.warp``); localisation net as the supplement describes it: conv 8 filters
  9x9 stride 4 - ReLU - max-pool 2x2 stride 2 - FC 8 - ReLU - FC 8 - ReLU - regressor, zero-initialised
  so that every image starts at the identity (the whole image), as the supplement initialises every ST.
* Loss: supplement eq. (1), the triplet hinge
  sum_n sum_{m != n} max(0, |e(I_n^T) - e(I_m^T)|^2 - |e(I_n^T) - e(I_n^rand)|^2 + alpha), alpha = 1
  in the text (``--alpha``; the candidate localiser's default is 2, see below), estimated per step from ``batch`` random pairs (n, m != n); I_n^rand is a crop of I_n of the same
  size as I_n^T at a random position.
* Metric: a digit is localised when IoU(predicted box, true 28x28 box) > 0.5; the predicted box is
  the attention window, s*[-1, 1] + t in normalised coordinates. Beside it the table shows an *ink
  reference* (:func:`ink_centroid_boxes`: no encoder, no learning, the window moved to the ink's
  centroid): the level the metric reaches on these images by ink statistics alone -- a yardstick
  for reading the numbers, not a co-localisation result, and never applied to eq. (1)'s windows.

Localiser (``--localiser``, default ``candidates``, profile ``full``): an attention spatial
transformer at the digit's scale (1/3) whose translation is the soft-argmax of the supplement's
localisation layers scoring a 15x15 grid of candidate windows, trained on eq. (1) *relaxed over
every pair of candidate windows* (each window of the anchor charged the hinge of its best match in
the other image, the soft-min weighted by where that image's localiser looks): the gradient then
reaches the digit from any window, where the regressor's reaches only the pixels under its own
window. Details, the temperature ``--tau`` and why not the plain expectation:
:mod:`repro.coloc_candidates`. The encoder is then the plain digit classifier (full-size digits,
``--encoder-augment shift``), as in the text. ``--localiser regress`` (profiles ``regress``,
``quick``) is the supplement's regressor with the options below; it localises T (90-100 %) but
not TC (0-15 %).

Departures from the text, each a named option (default first; the supplement gives none of these
choices, or the default is what made the optimisation work -- ``repro/results/colocalisation/
findings.md`` has the measurements):

* ``--scale schedule`` (default) | ``learned``. *schedule*: coarse to fine -- the window's scale is
  not predicted but set per step: 1 (the identity) for the first ``hold`` fraction of the steps,
  then linear down to 1/3 (a digit's size) over the next ``shrink`` fraction, then held; the
  localiser predicts the translation t = (2/3) tanh(.), so that a final 1/3-scale window lies inside
  the image (larger windows on the way may reach past the edge, where the warp samples zeros). At
  scale 1 every window holds its digit, and eq. (1) is low for any *consistent* placement (0.15 at
  a common offset of 0.3 vs 1.4 for the centred start, T digit 8), so the localiser can learn to
  follow the digits before the windows tighten; without the hold the same run localised 100 % or
  0 % depending on the encoder's seed. *learned*: the localiser predicts the scale too, bounded so
  the window stays inside the image (s = sigmoid(.), t = (1 - s) tanh(.)), starting at
  ``init_scale``; it collapses onto empty background (0-2 % localised).
* ``--start-scale`` (default 1, the identity) and ``--translation final-inside`` (default,
  |t| <= 2/3) | ``final-slack`` (|t| <= 5/6: 2/3 is exactly the farthest digit centre, which a
  tanh reaches only at infinity) | ``window-inside`` (|t| <= 1 - s: the window never reaches past
  the edge; with a start scale of 0.8 every digit still fits in some window, and there is no zero
  padding to hide in).
* ``--padding zeros`` (default) | ``reflection``: what a window reaching past the edge samples.
* ``--negatives centre-inside`` (default) | ``window-inside``: where I_n^rand may lie -- its centre
  uniform inside the image (it may reach past the edge), or the whole window inside the image
  (at scale 1 the only such window is the anchor itself, so d_neg = 0).
* ``--alpha 2`` (profile ``full``) | ``1`` (the supplement's; profiles ``regress``, ``quick``): the
  margin of eq. (1). With the layer-normalised descriptor and alpha = 1, eq. (1) itself scores
  windows on single 6x6 clutter fragments lower than the true boxes for TC digits 1 and 2 (found
  0.045-0.063 vs true 0.091-0.122); alpha = 2 reverses that for digit 2 (TC 0 -> 99 %) and costs T
  nothing measurable (97-100 % per class, alpha = 1: 99-100 %). Digit 1 stays on fragments.
* ``--descriptor layer-l2`` (default) | ``concat`` (the paper's): L2-normalise each layer's block
  before concatenating, so that squared distances are O(1) and alpha = 1 matters; with plain
  concatenation eq. (1) scores empty windows lower than the true boxes.
* ``--final-encoder-augment shift`` (default) | ``same``: the encoder of eq. (1) once the windows
  have their final size -- the section-4.1 CNN trained on full-size MNIST digits (+-2 px shifts,
  0.99 % error), i.e. a plain digit classifier as in the text, while the coarse phases keep the
  ``--encoder-augment`` one (small digits anywhere in the frame, which the large windows show).
  With the scale encoder throughout, eq. (1) is flat to ~0.01 over 8 px common offsets of all
  windows (``offset_landscape``) and the windows stop up to 6.6 px off (T digit 9: 40 % localised);
  with the full-size encoder in the final phase the same run localises 99 %.
* ``--optimizer adam`` (default) | ``sgd``: the paper says SGD; learning rate, batch and steps are
  ours (``PROFILES``). The loss is the batch mean (eq. (1) sums: a constant factor).
* ``--loc-stride 4`` (default) | ``1``: the localisation net as described has 5.9k parameters on an
  84x84 input, not the "100k" the supplement states; a stride-1 first conv gives 93k.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from repro.harness.figures import save_figure
from repro.paths import default_out
import torch.nn.functional as F
from torch import nn

NAME = "colocalisation"
DEFAULT_OUT = default_out(NAME)  # runs/colocalisation (untracked); publish with python -m repro.publish
VARIANTS = ("T", "TC")
CANVAS = 84
CROP = 28
PAPER = {"T": "100", "TC": "75–93 (range over classes)"}
SCALES = ("schedule", "learned")
NEGATIVES = ("centre-inside", "window-inside")
OPTIMIZERS = ("adam", "sgd")
PADDINGS = ("zeros", "reflection")
TRANSLATIONS = ("final-inside", "final-slack", "window-inside")
LOC_STRIDES = (4, 1)  # the localisation net's first conv: the stated stride, or the one the "100k" fits
TRANSLATION_SLACK = 5 / 6  # final-slack: a final 28 px window may reach 7 px (a quarter of its width) past the edge
LOCALISERS = ("candidates", "regress")  # repro.coloc_candidates (default) | the supplement's regressor + scale schedule


@dataclass(frozen=True)
class CoProfile:
    name: str
    steps: int
    batch: int  # random pairs (n, m) per step
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    alpha: float = 1.0
    scale: str = "schedule"
    start_scale: float = 1.0  # schedule: the scale held first (1 = the identity)
    translation: str = "final-inside"  # schedule: bound on t, see Localiser
    hold: float = 0.125  # schedule: fraction of the steps at scale 1 (the identity) first
    shrink: float = 0.125  # schedule: fraction of the steps over which the scale then goes 1 -> 1/3
    init_scale: float = CROP / CANVAS  # learned: the starting scale
    final_lr_mult: float = 1.0  # schedule: the lr is multiplied by this once the windows reach 1/3 (the last phase)
    negatives: str = "centre-inside"
    loc_stride: int = 4  # the localisation net's first conv stride (4 as stated; 1 gives the stated ~100k parameters)
    padding: str = "zeros"  # what a window reaching past the image edge samples there
    descriptor: str = "layer-l2"
    n_images: int = 100
    encoder_steps: int = 2000
    encoder_augment: str = "scale"  # repro.coloc_encoder: digits at 1/3-1 of the frame ("scale") or full size ("shift")
    final_encoder_augment: str = "shift"  # the encoder once the windows have their final size; "same": encoder_augment's
    snapshot_every: int = 10
    localiser: str = "regress"  # "candidates": repro.coloc_candidates (eq. (1) relaxed over a grid of windows)
    cand_stride: int = 4  # candidates: px between candidate windows (a multiple of the localisation conv's 4)
    tau: float = 0.3  # candidates: temperature of the soft-min over the other image's windows
    pca_dims: int = 384  # candidates: descriptors projected onto this many principal directions
    refine_steps: int = 0  # candidates: eq. (1) proper through the ST after the relaxation's `steps`
    note: str = ""


PROFILES = {
    "full": CoProfile("full", steps=300, batch=64, lr=1e-2, localiser="candidates", encoder_augment="shift",
                       final_encoder_augment="same", alpha=2.0,
                       note="the candidate localiser (repro.coloc_candidates): 300 Adam steps of 64 random pairs "
                            "of eq. (1) relaxed over 15x15 candidate windows (4 px apart); encoder: the section-4.1 "
                            "CNN trained 2,000 Adam steps for digit classification on full-size MNIST digits"),
    "regress": CoProfile("regress", steps=2400, batch=32, lr=3e-3, hold=0.125, shrink=0.125,
                         note="the supplement's regression localiser with the scale schedule (the fourth "
                              "session's default): 2,400 Adam steps of 32 random pairs per class (300 at scale 1, "
                              "300 shrinking to 1/3, 1,800 at 1/3); encoders trained 2,000 Adam steps on MNIST "
                              "digits at 1/3-1 scale (coarse phases) and at full size (final phase)"),
    "quick": CoProfile("quick", steps=1200, batch=32, lr=3e-3, hold=0.25, shrink=0.25,
                       note="regression localiser, 1,200 steps of 32 random pairs per class (the regress "
                            "profile's hold and shrink, 600 at 1/3)"),
    "smoke": CoProfile("smoke", steps=4, batch=2, lr=3e-3, encoder_steps=3, snapshot_every=2,
                       note="seconds; for tests"),
}


# --- pieces --------------------------------------------------------------------------------------
def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes (..., 4) = (x0, y0, x1, y1), x1 >= x0, y1 >= y0."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda t: (t[..., 2] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def attention_box(theta: torch.Tensor, width: int = CANVAS, height: int = CANVAS) -> torch.Tensor:
    """The source window of an attention (or any axis-aligned affine) theta (N, 2, 3) as pixel-edge
    boxes (N, 4): normalised [-1, 1] (align_corners=False) maps to [0, W] / [0, H]."""
    sx, tx, sy, ty = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]
    x0, x1 = (tx - sx.abs() + 1) * width / 2, (tx + sx.abs() + 1) * width / 2
    y0, y1 = (ty - sy.abs() + 1) * height / 2, (ty + sy.abs() + 1) * height / 2
    return torch.stack([x0, y0, x1, y1], -1)


def window_theta(scale: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Attention thetas [[s, 0, cx], [0, s, cy]] (N, 2, 3): square windows whose side is ``scale`` (N,)
    times the image's, centred at ``centre`` (N, 2) = (x, y) in normalised [-1, 1] coordinates
    (align_corners=False). The one place the co-localisation code builds a window theta: the
    localiser, the random negatives, the boxes of the diagnosis and the encoder's training windows."""
    z = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, z, centre[:, 0]], 1), torch.stack([z, scale, centre[:, 1]], 1)], 1)


def triplet_loss(e_n: torch.Tensor, e_m: torch.Tensor, e_rand: torch.Tensor, alpha: float = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """Supplement eq. (1) for a batch of triplets (row i: anchor n_i, positive m_i, negative = a random
    crop of n_i): max(0, |e_n - e_m|^2 - |e_n - e_rand|^2 + alpha), summed or averaged over rows."""
    d_pos = (e_n - e_m).pow(2).flatten(1).sum(1)
    d_neg = (e_n - e_rand).pow(2).flatten(1).sum(1)
    h = F.relu(d_pos - d_neg + alpha)
    if reduction == "sum":
        return h.sum()
    if reduction == "mean":
        return h.mean()
    if reduction == "none":
        return h
    raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")


def loc_net(stride: int = 4) -> nn.Sequential:
    """The supplement's co-localisation localisation CNN (without its final 3-unit regressor): conv
    8@9x9 with the stated 4 px stride (5.9k parameters in all), or stride 1 (~93k: the "100k" the
    supplement gives fits this one)."""
    s = ((CANVAS - 9) // stride + 1) // 2  # stride 4: 19 -> 9; stride 1: 76 -> 38
    return nn.Sequential(nn.Conv2d(1, 8, 9, stride=stride), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                         nn.Linear(8 * s * s, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())


def scale_at(step: int, prof: CoProfile) -> float:
    """The scheduled window scale at ``step``: 1 (the identity) for the first ``prof.hold`` fraction
    of the steps, then linear down to 1/3 over the next ``prof.shrink`` fraction, then held at 1/3."""
    start = prof.hold * prof.steps
    frac = min(1.0, max(0.0, step - start) / max(1.0, prof.shrink * prof.steps)) if prof.shrink > 0 else 1.0
    return prof.start_scale + (CROP / CANVAS - prof.start_scale) * frac


def final_phase_start(prof: CoProfile) -> int | None:
    """The first step at which :func:`scale_at` gives the final scale 1/3 (the schedule's last
    phase, where ``final_lr_mult`` applies); None for a learned scale or the candidate localiser
    (always at 1/3). One home for the boundary."""
    if prof.localiser != "regress" or prof.scale != "schedule":
        return None
    return int(round((prof.hold + prof.shrink) * prof.steps))


class Localiser(nn.Module):
    """An attention spatial transformer over the supplement's localisation net. ``theta(x)`` is the
    attention theta [[s, 0, tx], [0, s, ty]]; ``forward(x)`` returns (28x28 crop, theta) like
    :class:`stn_triton.SpatialTransformer`. The regressor is zero-initialised.

    ``scale="schedule"``: s is set from outside (``self.scale``, see :func:`scale_at`; 1 = the
    identity at the start), the regressor predicts 2 numbers, t = (2/3) tanh(.): a window of the
    final scale 1/3 stays inside the image (with t = tanh(.), windows reaching the image corner, 3/4
    zero padding, were a collapse the TC runs found). ``scale="learned"``: the regressor predicts 3, s = sigmoid(v0 + logit(s_init)),
    t = (1 - s) tanh(v1, v2), so the whole window stays inside the image (with the unbounded
    parameterisation it escapes in the first steps: two all-black crops are a zero-loss solution)."""

    def __init__(self, scale: str = "schedule", init_scale: float = CROP / CANVAS, padding: str = "zeros",
                 translation: str = "final-inside", loc_stride: int = 4):
        super().__init__()
        if loc_stride not in LOC_STRIDES:
            raise ValueError(f"loc_stride must be one of {LOC_STRIDES}, got {loc_stride!r}")
        if translation not in TRANSLATIONS:
            raise ValueError(f"translation must be one of {TRANSLATIONS}, got {translation!r}")
        self.translation = translation
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.padding = padding
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.mode = scale
        self.loc_net = loc_net(loc_stride)
        self.regressor = nn.Linear(8, 2 if scale == "schedule" else 3)
        self.scale = 1.0  # schedule mode: the current window scale
        self.init_logit = math.log(init_scale / (1 - init_scale))
        nn.init.zeros_(self.regressor.weight)
        nn.init.zeros_(self.regressor.bias)

    def theta(self, x):
        v = self.regressor(self.loc_net(x))
        if self.mode == "schedule":
            # final-inside: a final 1/3-scale window stays inside the image; window-inside: this one does
            # final-slack: a little past 2/3, so that the farthest digit centres (+-2/3) need no saturated tanh
            bound = {"final-inside": 1 - CROP / CANVAS, "final-slack": TRANSLATION_SLACK,
                     "window-inside": max(0.0, 1 - self.scale)}[self.translation]
            t = bound * torch.tanh(v)
            s = torch.full_like(t[:, 0], self.scale)
        else:
            s = torch.sigmoid(v[:, 0] + self.init_logit)
            t = (1 - s)[:, None] * torch.tanh(v[:, 1:])
        return window_theta(s, t)

    def forward(self, x):
        from stn_triton import warp

        th = self.theta(x)
        return warp(x, th, (CROP, CROP), padding_mode=self.padding), th


def localiser(scale: str = "schedule", init_scale: float = CROP / CANVAS, padding: str = "zeros",
              translation: str = "final-inside", loc_stride: int = 4) -> Localiser:
    return Localiser(scale, init_scale, padding, translation, loc_stride)


DESCRIPTORS = ("concat", "layer-l2")


class _InputGradByFold(torch.autograd.Function):
    """conv2d (stride 1, no padding) of a frozen weight, whose input gradient is the transposed
    convolution written as matmul + fold. Why: oneDNN's transposed convolution onto one channel
    (the encoder's first layer, 89 -> 1 channels, 9x9) takes 45 ms for 64 crops at one thread,
    3x the whole forward; the matmul + fold takes 7 ms. No weight gradient (e(.) is frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        ctx.in_hw = tuple(x.shape[-2:])
        return F.conv2d(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        n, c_out, oh, ow = grad.shape
        cols = weight.flatten(1).t() @ grad.reshape(n, c_out, oh * ow)  # (N, C_in*kh*kw, oh*ow)
        return F.fold(cols, ctx.in_hw, weight.shape[-2:]), None, None


class FrozenConv(nn.Module):
    """A frozen stride-1, unpadded ``nn.Conv2d`` whose backward uses :class:`_InputGradByFold`."""

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        return isinstance(conv, nn.Conv2d) and (conv.stride, conv.padding, conv.dilation, conv.groups) == (
            (1, 1), (0, 0), (1, 1), 1)

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not self.fits(conv):
            raise ValueError(f"FrozenConv needs a Conv2d with stride 1, no padding, dilation 1, groups 1; got {conv}")
        self.conv = conv

    def forward(self, x):
        return _InputGradByFold.apply(x, self.conv.weight, self.conv.bias)


class Descriptor(nn.Module):
    """e(.): a frozen distorted-MNIST CNN; returns [hidden 1, hidden 2, logits] flattened, concatenated
    (``mode="concat"``, the paper's). ``mode="layer-l2"`` (a variant, not in the paper) L2-normalises
    each of the three blocks first, so that the 8,900-d first layer no longer dominates and the
    squared distances lie in [0, 12], where the margin alpha = 1 matters."""

    def __init__(self, cnn: nn.Module, mode: str = "concat"):
        super().__init__()
        if mode not in DESCRIPTORS:
            raise ValueError(f"descriptor mode must be one of {DESCRIPTORS}, got {mode!r}")
        self.mode = mode
        body = cnn.body if hasattr(cnn, "body") else cnn
        layers = list(body.children())
        # Conv ReLU Pool | Conv ReLU Pool | Flatten Linear   (stn_triton.models.mnist.cnn_classifier)
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 2:
            raise ValueError("expected the section-4.1 CNN (two conv / max-pool stages and a linear classifier)")
        if FrozenConv.fits(layers[0]):  # the crop's own layer: same values, a 6x cheaper input gradient
            layers[0] = FrozenConv(layers[0])
        self.h1 = nn.Sequential(*layers[:pools[0] + 1])
        self.h2 = nn.Sequential(*layers[pools[0] + 1:pools[1] + 1])
        self.head = nn.Sequential(*layers[pools[1] + 1:])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen, always eval
        return super().train(False)

    def forward(self, x):
        a = self.h1(x)
        b = self.h2(a)
        parts = [a.flatten(1), b.flatten(1), self.head(b)]
        if self.mode == "layer-l2":  # each layer's block scaled to unit length (not in the paper)
            parts = [F.normalize(p, dim=1) for p in parts]
        return torch.cat(parts, 1)


def random_crop_theta(scale: torch.Tensor, g: torch.Generator, negatives: str = "centre-inside") -> torch.Tensor:
    """Attention thetas with the given scales (N,) (gradient kept) at uniform random positions:
    the window's centre inside the image (``centre-inside``) or the whole window inside it
    (``window-inside``; at scale 1 that is only the identity)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    u = torch.rand(scale.shape[0], 2, generator=g).to(scale) * 2 - 1
    t = u if negatives == "centre-inside" else u * (1 - scale.detach().abs()).clamp(min=0)[:, None]
    return window_theta(scale, t)


# --- encoder -------------------------------------------------------------------------------------
def load_encoder(path: str | Path, dataset: str = "P") -> nn.Module:
    """A 28 px distorted-MNIST recipe CNN checkpoint (``runs/distorted_mnist/<set>/cnn/seed0/checkpoint.pt``)."""
    from repro import distorted_mnist as dm

    from repro.harness.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    state = ck["model"] if isinstance(ck, dict) and "model" in ck else ck
    ds = ck.get("dataset", dataset) if isinstance(ck, dict) else dataset
    m = dm.build_model(ds if dm.SIZE.get(ds) == CROP else dataset, "cnn")
    m.load_state_dict(state)
    return m.eval()


def encoder_spec(prof: CoProfile, seed: int = 0):
    """The :class:`repro.coloc_encoder.EncoderSpec` a profile asks for (one place: training and --restart)."""
    from repro.coloc_encoder import EncoderSpec

    return EncoderSpec(steps=prof.encoder_steps, augment=prof.encoder_augment, seed=seed)


def encoder(prof: CoProfile, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """The section-4.1 CNN trained for digit classification (:mod:`repro.coloc_encoder`), cached by hash."""
    from repro.coloc_encoder import digit_encoder

    return digit_encoder(encoder_spec(prof, seed), progress=progress)


FINAL_ENCODERS = ("same", "scale", "shift", "tc-window")


def final_encoder_spec(prof: CoProfile, seed: int = 0):
    """The EncoderSpec of the final phase's encoder, or None when it is the first encoder ("same",
    or the same augmentation)."""
    if prof.final_encoder_augment not in FINAL_ENCODERS:
        raise ValueError(f"final_encoder_augment must be one of {FINAL_ENCODERS}, got {prof.final_encoder_augment!r}")
    if prof.final_encoder_augment in ("same", prof.encoder_augment) or final_phase_start(prof) is None:
        return None
    return replace(encoder_spec(prof, seed), augment=prof.final_encoder_augment)


def final_encoder(prof: CoProfile, seed: int = 0, progress: bool = True) -> tuple[nn.Module | None, dict | None]:
    """The encoder of eq. (1) once the windows have their final size (:func:`final_encoder_spec`),
    trained once and cached like the first; (None, None) when there is no second one."""
    from repro.coloc_encoder import digit_encoder

    spec = final_encoder_spec(prof, seed)
    return (None, None) if spec is None else digit_encoder(spec, progress=progress)


def ink_inside(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fraction of each image's total intensity inside its box (pixel centres inside the box)."""
    h, w = images.shape[-2:]
    yc = torch.arange(h, dtype=images.dtype) + 0.5
    xc = torch.arange(w, dtype=images.dtype) + 0.5
    inx = (xc[None] >= boxes[:, 0:1]) & (xc[None] < boxes[:, 2:3])  # (N, W)
    iny = (yc[None] >= boxes[:, 1:2]) & (yc[None] < boxes[:, 3:4])  # (N, H)
    mask = (iny[:, :, None] & inx[:, None, :]).to(images.dtype)
    img = images.sum(1)
    return (img * mask).flatten(1).sum(1) / img.flatten(1).sum(1).clamp(min=1e-12)


# --- one optimisation ----------------------------------------------------------------------------
@torch.no_grad()
def predict_boxes(st: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return attention_box(st.theta(images))


def make_optimizer(params, prof: CoProfile) -> torch.optim.Optimizer:
    """The profile's optimiser over ``params`` (both localisers)."""
    if prof.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {prof.optimizer!r}")
    return (torch.optim.Adam(params, lr=prof.lr) if prof.optimizer == "adam"
            else torch.optim.SGD(params, lr=prof.lr, momentum=prof.momentum))


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, losses: list, step: int) -> None:
    """One step on ``loss``, its value appended to ``losses``; a non-finite loss stops the optimisation."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"non-finite co-localisation loss at step {step}")


def snapshot(st: nn.Module, images: torch.Tensor, boxes: torch.Tensor, track, step: int) -> dict:
    """The boxes of the tracked images and the fraction localised at ``step`` (the figure's frames)."""
    pb = predict_boxes(st, images)
    return {"step": step, "boxes": pb[list(track)].tolist(), "localised": (iou(pb, boxes) > 0.5).float().mean().item()}


def optimisation_record(st: nn.Module, images: torch.Tensor, boxes: torch.Tensor, losses: list, wall: float,
                        steps: int, snaps: list) -> dict:
    """The result of one optimisation (both localisers): the final windows against the true boxes."""
    pb = predict_boxes(st, images)
    ious = iou(pb, boxes)
    with torch.no_grad():  # how much of each image's ink the final window holds (0: an empty, black crop)
        ink_in = ink_inside(images, pb)
    return {"localised_pct": round(100.0 * (ious > 0.5).float().mean().item(), 1),
            "empty_window_pct": round(100.0 * (ink_in < 0.05).float().mean().item(), 1),
            "mean_ink_inside": round(ink_in.mean().item(), 4), "final_boxes": [[round(v, 2) for v in b] for b in pb.tolist()],
            "mean_iou": round(ious.mean().item(), 4), "final_loss": losses[-1] if losses else None,
            "wall_time_s": round(wall, 1), "steps": steps, "snapshots": snaps,
            "loss_history": [round(x, 4) for x in losses[::max(1, len(losses) // 50)]]}


def colocalise(images: torch.Tensor, boxes: torch.Tensor, enc: nn.Module, prof: CoProfile, seed: int = 0,
               track: tuple[int, ...] = (0, 1, 2), log=print, final_enc: nn.Module | None = None) -> dict:
    """One co-localisation optimisation over ``images`` (N, 1, 84, 84); ``boxes`` only for the metric.
    ``final_enc``: the encoder of eq. (1) once the windows have their final size (default ``enc``)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    st = localiser(prof.scale, prof.init_scale, prof.padding, prof.translation, prof.loc_stride)
    desc = Descriptor(enc, prof.descriptor)
    opt = make_optimizer(st.parameters(), prof)
    n = images.shape[0]
    snaps = [snapshot(st, images, boxes, track, 0)]  # (step, boxes of the tracked images, fraction localised)
    losses = []
    t0 = time.perf_counter()
    from stn_triton import warp

    final_phase = final_phase_start(prof)
    for step in range(prof.steps):
        st.scale = scale_at(step, prof)
        if step == final_phase:  # the windows have their final size: refine their position with a smaller step
            for group in opt.param_groups:
                group["lr"] *= prof.final_lr_mult
            if final_enc is not None:
                desc = Descriptor(final_enc, prof.descriptor)
        i = torch.randint(0, n, (prof.batch,), generator=g)
        j = (i + torch.randint(1, n, (prof.batch,), generator=g)) % n  # m != n
        crops, theta = st(images[torch.cat([i, j])])
        scale = theta[:prof.batch, 0, 0]
        # A scheduled scale is a constant, so the negative crop carries no gradient and its encoder
        # pass needs no graph: a third of the backward (a learned scale keeps it).
        th_r = random_crop_theta(scale.detach() if prof.scale == "schedule" else scale, g, prof.negatives)
        with torch.set_grad_enabled(th_r.requires_grad):
            e_r = desc(warp(images[i], th_r, (CROP, CROP), padding_mode=prof.padding))
        e_n, e_m = desc(crops).split(prof.batch)
        loss = triplet_loss(e_n, e_m, e_r, prof.alpha)
        optimiser_step(opt, loss, losses, step)
        if (step + 1) % prof.snapshot_every == 0 or step + 1 == prof.steps:
            st.scale = scale_at(step + 1, prof)
            snaps.append(snapshot(st, images, boxes, track, step + 1))
            ok = snaps[-1]["localised"]
            if log is not None and ((step + 1) % (prof.snapshot_every * 5) == 0 or step + 1 == prof.steps):
                log(f"  step {step + 1}: loss {sum(losses[-prof.snapshot_every:]) / prof.snapshot_every:.3f}, "
                    f"localised {100 * ok:.0f}%")
    return optimisation_record(st, images, boxes, losses, time.perf_counter() - t0, prof.steps, snaps)


# --- diagnosis: eq. (1) at fixed windows ----------------------------------------------------------
def box_theta(boxes: torch.Tensor, width: int = CANVAS) -> torch.Tensor:
    """Square pixel-edge boxes (N, 4) -> attention thetas (inverse of :func:`attention_box`)."""
    s = (boxes[:, 2] - boxes[:, 0]) / width
    tx = (boxes[:, 0] + boxes[:, 2]) / width - 1
    ty = (boxes[:, 1] + boxes[:, 3]) / width - 1
    return window_theta(s, torch.stack([tx, ty], 1))


def emptiest_corner_boxes(images: torch.Tensor) -> torch.Tensor:
    """Per image, the 28x28 corner window holding the least ink (a stand-in for 'an empty crop')."""
    c = CANVAS - CROP
    cands = torch.tensor([[0, 0], [c, 0], [0, c], [c, c]], dtype=torch.float32)
    out = []
    for img in images:
        inks = [img[0, y:y + CROP, x:x + CROP].sum() for x, y in cands.int().tolist()]
        x, y = cands[int(torch.stack(inks).argmin())]
        out.append(torch.stack([x, y, x + CROP, y + CROP]))
    return torch.stack(out)


@torch.no_grad()
def ink_centroid_boxes(images: torch.Tensor, size: float = CROP, iters: int = 10, context: float = 1.25) -> torch.Tensor:
    """A no-learning reference, not co-localisation: per image, a ``size`` px square box at the
    centroid of all its ink, then moved ``iters`` times to the centroid of the ink within
    ``context`` x the box around its centre (a mean shift). Pixel-edge boxes (N, 4).

    It needs no encoder and no optimisation; it uses what these images are made of (one MNIST digit,
    which MNIST centres by its centre of mass in the 28 px frame, the largest blob of ink among the
    clutter). The table shows it beside eq. (1)'s result as the level the IoU > 0.5 metric on these
    images can reach by ink statistics alone."""
    h, w = images.shape[-2:]
    img = images.sum(1)  # (N, H, W)
    yc = torch.arange(h, dtype=img.dtype) + 0.5
    xc = torch.arange(w, dtype=img.dtype) + 0.5

    def centroid(centre: torch.Tensor, half: float) -> torch.Tensor:
        inx = ((xc[None] >= centre[:, :1] - half) & (xc[None] < centre[:, :1] + half)).to(img.dtype)
        iny = ((yc[None] >= centre[:, 1:] - half) & (yc[None] < centre[:, 1:] + half)).to(img.dtype)
        m = img * iny[:, :, None] * inx[:, None, :]
        mass = m.flatten(1).sum(1)
        c = torch.stack([(m.sum(1) * xc).sum(1), (m.sum(2) * yc).sum(1)], 1) / mass.clamp(min=1e-12)[:, None]
        return torch.where((mass > 0)[:, None], c, centre)  # an empty window stays where it is

    c = centroid(torch.tensor([[w / 2, h / 2]], dtype=img.dtype).expand(img.shape[0], 2), float(max(h, w)))
    for _ in range(iters):
        c = centroid(c, context * size / 2)
    return torch.cat([c - size / 2, c + size / 2], 1)


@torch.no_grad()
def expected_loss(images: torch.Tensor, theta: torch.Tensor, desc: nn.Module, alpha: float = 1.0,
                  samples: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo mean of the eq. (1) hinge when every image's window is fixed at ``theta``
    (random pairs n != m, random same-size negatives inside the image)."""
    from stn_triton import warp

    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    e_t = desc(warp(images, theta, (CROP, CROP)))
    tot = 0.0
    for _ in range(0, samples, 250):
        i = torch.randint(0, n, (250,), generator=g)
        j = (i + torch.randint(1, n, (250,), generator=g)) % n
        th_r = random_crop_theta(theta[i, 0, 0], g)
        e_r = desc(warp(images[i], th_r, (CROP, CROP)))
        tot += triplet_loss(e_t[i], e_t[j], e_r, alpha, reduction="sum").item()
    return tot / (250 * ((samples + 249) // 250))


def offset_landscape(enc: nn.Module, variant: str, digit: int, offsets=(-8, -4, 0, 4, 8), seed: int = 0,
                     samples: int = 1000, descriptor: str = "layer-l2", n: int = 100) -> dict:
    """eq. (1) (:func:`expected_loss`, the same triplets for every cell) with every image's window at
    its true box moved by one common offset (dx, dy) px: where, among windows that all hold their
    digit, the objective itself has its minimum. ``{"offsets": [...], "hinge": rows dy x cols dx}``."""
    from repro.data import colocalisation_set

    desc = Descriptor(enc, descriptor)
    ds = colocalisation_set(variant, digit, seed=seed, n=n)
    grid = [[round(expected_loss(ds.images, box_theta(ds.boxes + torch.tensor([dx, dy, dx, dy], dtype=ds.boxes.dtype)),
                                 desc, samples=samples, seed=seed), 4) for dx in offsets] for dy in offsets]
    return {"variant": variant, "digit": digit, "offsets": list(offsets), "hinge": grid}


def diagnose(enc: nn.Module, variants=VARIANTS, digits=range(10), seed: int = 0, samples: int = 1000,
             descriptor: str = "concat") -> dict:
    """eq. (1) evaluated at the true boxes, at each image's emptiest 28x28 corner, and at the centred
    initial window: which configuration does the objective (with this encoder) prefer?"""
    from repro.data import colocalisation_set

    desc = Descriptor(enc, descriptor)
    out = {}
    for v in variants:
        for d in digits:
            ds = colocalisation_set(v, d, seed=seed)
            x = ds.images
            centre = torch.tensor([[28.0, 28, 56, 56]]).expand(x.shape[0], 4)
            out[f"{v}/{d}"] = {k: round(expected_loss(x, box_theta(b), desc, samples=samples, seed=seed), 2)
                               for k, b in (("true_boxes", ds.boxes), ("emptiest_corner", emptiest_corner_boxes(x)),
                                            ("centre", centre))}
            print(f"[diagnose] {v} digit {d}: {out[f'{v}/{d}']}", flush=True)
    return out


# --- outputs -------------------------------------------------------------------------------------
def figure(out: Path, variant: str, digit: int, seed: int = 0, n_cols: int = 6) -> Path | None:
    """Supplement Figure 1: the predicted boxes of three images over the optimisation steps."""
    p = out / variant / f"digit{digit}.json"
    if not p.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from repro.data import colocalisation_set

    r = json.loads(p.read_text())
    ds = colocalisation_set(variant, digit, seed=seed)
    snaps = r["snapshots"]
    pick = [snaps[round(k * (len(snaps) - 1) / (n_cols - 1))] for k in range(n_cols)] if len(snaps) >= n_cols else snaps
    track = r.get("track", [0, 1, 2])
    fig, axes = plt.subplots(len(track), len(pick), figsize=(1.6 * len(pick), 1.7 * len(track) + 0.4), squeeze=False)
    for a, idx in enumerate(track):
        gt = ds.boxes[idx].tolist()
        for c, s in enumerate(pick):
            ax = axes[a, c]
            ax.imshow(ds.images[idx, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.add_patch(Rectangle((gt[0] - .5, gt[1] - .5), gt[2] - gt[0], gt[3] - gt[1], fill=False, ec="lime",
                                   lw=1, ls="--"))
            b = s["boxes"][a]
            ax.add_patch(Rectangle((b[0] - .5, b[1] - .5), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if a == len(track) - 1:
                ax.set_xlabel(f"step {s['step']}\n({100 * s['localised']:.0f}% of 100)", fontsize=8)
    opt = r.get("schedule", {}).get("optimizer", "sgd")
    opt = opt.upper() if opt == "sgd" else opt.capitalize()
    fig.suptitle(f"Co-localisation {variant}, digit {digit}: predicted box (red) over {opt} steps; "
                 f"true box dashed green", fontsize=9)
    return save_figure(fig, out / f"steps_{variant}_digit{digit}.png", dpi=90)


def ink_reference_pct(variant: str, result: dict) -> float:
    """% of a run's images (the same ones: its variant, digit, seed and count) that
    :func:`ink_centroid_boxes` localises (IoU > 0.5)."""
    from repro.data import colocalisation_set

    ds = colocalisation_set(variant, result["digit"], seed=result.get("seed", 0), n=len(result["final_boxes"]))
    return 100.0 * (iou(ink_centroid_boxes(ds.images), ds.boxes) > 0.5).float().mean().item()


def write_table(out: Path) -> Path:
    res = {v: {} for v in VARIANTS}
    meta = {}
    for v in VARIANTS:
        for d in range(10):
            p = out / v / f"digit{d}.json"
            if p.exists():
                r = json.loads(p.read_text())
                res[v][d] = r
                meta.setdefault("profile", r.get("profile"))
                meta.setdefault("encoder", r.get("encoder"))
                meta.setdefault("final_encoder", r.get("final_encoder"))
    ref = {v: {d: ink_reference_pct(v, r) for d, r in res[v].items()} for v in VARIANTS}
    sched = next((r["schedule"] for v in VARIANTS for r in res[v].values() if "schedule" in r), {})
    prov = next((r["versions"] for v in VARIANTS for r in res[v].values() if "versions" in r), {})
    keys = (("localiser", "steps", "refine_steps", "batch", "optimizer", "lr", "cand_stride", "tau", "pca_dims",
             "encoder_augment", "encoder_steps", "descriptor", "alpha")
            if sched.get("localiser") == "candidates" else
            ("localiser", "steps", "batch", "optimizer", "lr", "scale", "start_scale", "translation", "hold", "shrink",
             "final_lr_mult", "encoder_augment", "final_encoder_augment", "encoder_steps", "loc_stride", "negatives",
             "descriptor", "padding", "alpha"))
    opts = ", ".join(f"{k} {sched[k]}" for k in keys if k in sched)
    lines = ["# Co-localisation (supplement Table 2): % of the 100 images whose box has IoU > 0.5", "",
             f"Profile `{meta.get('profile')}` ({opts}); device `cpu`, "
             f"{prov.get('threads', 1)} thread, commit {prov.get('git', '?')} "
             f"({'clean' if prov.get('git_clean') else 'dirty or unknown'} tree); one optimisation per digit "
             "class on its first 100 test images, seed 0. Paper: T 100 % for every class, TC 75–93 % "
             "depending on the class (per-class values not in our copy of the supplement). The options that "
             "depart from the supplement are listed in `python -m repro.colocalisation --help` and the module "
             "docstring. *Ink reference*: the same images boxed by :func:`ink_centroid_boxes`, with no encoder "
             "and no learning (the ink's centroid, then a mean shift): what the metric gives for ink statistics "
             "alone on these images, not a co-localisation result.", "",
             "| digit | T paper | T ours | T mean IoU | T ink reference | TC paper | TC ours | TC mean IoU | "
             "TC ink reference | wall time T / TC (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d in range(10):
        t, tc = res["T"].get(d), res["TC"].get(d)
        f = lambda r, k: "not run" if r is None else f"{r[k]}"  # noqa: E731
        rf = lambda v: f"{ref[v][d]:.0f}" if d in ref[v] else "not run"  # noqa: E731
        lines.append(f"| {d} | 100 | {f(t, 'localised_pct')} | {f(t, 'mean_iou')} | {rf('T')} | 75–93 | "
                     f"{f(tc, 'localised_pct')} | {f(tc, 'mean_iou')} | {rf('TC')} | {f(t, 'wall_time_s')} / {f(tc, 'wall_time_s')} |")
    for v in VARIANTS:
        if res[v]:
            vals = [r["localised_pct"] for r in res[v].values()]
            refs = list(ref[v].values())
            lines.append(f"\n{v}: mean over {len(vals)} classes {sum(vals) / len(vals):.1f} %, range "
                         f"{min(vals):.0f}–{max(vals):.0f} % (ink reference: mean {sum(refs) / len(refs):.1f} %, "
                         f"range {min(refs):.0f}–{max(refs):.0f} %).")
    run = out / "run.json"
    if run.exists():
        r = json.loads(run.read_text())
        lines.append(f"\nThe last command (variants {', '.join(r['variants'])}, digits {min(r['digits'])}–{max(r['digits'])}"
                     f"{', resumed' if r.get('resume') else ''}) took {r['wall_time_s'] / 60:.1f} min with {r['jobs']} "
                     f"worker process(es) of {r['threads']} thread(s), encoder cached.")
    if meta.get("encoder"):
        lines += ["", f"Encoder: {json.dumps(meta['encoder'])}"]
    if meta.get("final_encoder"):
        lines += ["", f"Final-phase encoder: {json.dumps(meta['final_encoder'])}"]
    f = out / "findings.md"
    if f.exists():
        lines += ["", f.read_text()]
    path = out / "table.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


# --- command line --------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repro.colocalisation", description=__doc__.split("\n\n")[0],
                                 epilog="profiles:\n" + "\n".join(f"  {k}: {v}" for k, v in PROFILES.items()),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="both", choices=["T", "TC", "both"])
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES),
                    help="full (default; the supplement gives no schedule, this is ours), quick, smoke")
    ap.add_argument("--encoder", default=None, help="distorted-MNIST CNN checkpoint (28 px); default: train on the spot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu only for now (the optimisation is tiny)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--resume", action="store_true", help="skip (variant, digit) pairs already done with this profile")
    ap.add_argument("--restart", action="store_true",
                    help="delete the cached on-the-spot encoder (encoder.pt) and redo every (variant, digit) pair")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=None,
                    help="(variant, digit) pairs optimised side by side in worker processes, each with --threads "
                         "threads (default: one per CPU core up to 4, one thread each; 1 = in this process)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--init-scale", type=float, help="--scale learned: the starting scale")
    ap.add_argument("--scale", choices=SCALES, help="schedule (default: 1 -> 1/3, coarse to fine) or learned")
    ap.add_argument("--start-scale", type=float, help="--scale schedule: the scale held first (default 1, the identity)")
    ap.add_argument("--translation", choices=TRANSLATIONS,
                    help="--scale schedule: final-inside (default; |t| <= 2/3), final-slack (|t| <= 5/6) or "
                         "window-inside (|t| <= 1 - s)")
    ap.add_argument("--hold", type=float, help="--scale schedule: fraction of the steps at scale 1 first")
    ap.add_argument("--shrink", type=float, help="--scale schedule: fraction of the steps over which 1 -> 1/3 next")
    ap.add_argument("--final-lr-mult", type=float,
                    help="--scale schedule: lr factor once the windows reach 1/3 (default 1: a constant lr)")
    ap.add_argument("--loc-stride", type=int, choices=LOC_STRIDES,
                    help="the localisation net's first conv stride: 4 (default, as stated: 5.9k parameters) or 1 (~93k)")
    ap.add_argument("--negatives", choices=NEGATIVES, help="centre-inside (default) or window-inside")
    ap.add_argument("--descriptor", choices=DESCRIPTORS, help="layer-l2 (default) or concat (the paper's)")
    ap.add_argument("--padding", choices=PADDINGS, help="zeros (default) or reflection: what windows past the edge see")
    from repro.coloc_encoder import AUGMENTS

    ap.add_argument("--encoder-augment", choices=AUGMENTS,
                    help="how the encoder's training digits are augmented: scale (default; 1/3-1 of the frame at a "
                         "random position), shift (full size, +-2 px) or tc-window (windows of cluttered TC canvases "
                         "around the digit, clutter included)")
    ap.add_argument("--final-encoder-augment", choices=FINAL_ENCODERS,
                    help="the encoder of eq. (1) once the windows have their final size (--scale schedule): shift "
                         "(default; trained on full-size digits, +-2 px, as a digit classifier is) or same (the "
                         "--encoder-augment encoder throughout)")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd (the paper's)")
    ap.add_argument("--localiser", choices=LOCALISERS,
                    help="candidates (profile full: eq. (1) relaxed over a grid of 28 px windows, "
                         "repro.coloc_candidates) or regress (profiles regress / quick: the supplement's regressor "
                         "with the scale schedule)")
    ap.add_argument("--alpha", type=float, help="the margin of eq. (1) (default: 2 for profile full, 1 -- the supplement's -- for regress and quick)")
    ap.add_argument("--tau", type=float, help="--localiser candidates: soft-min temperature (default 0.3)")
    ap.add_argument("--cand-stride", type=int, help="--localiser candidates: px between windows (default 4)")
    ap.add_argument("--pca-dims", type=int, help="--localiser candidates: descriptor dimensions kept (default 384)")
    ap.add_argument("--refine-steps", type=int,
                    help="--localiser candidates: steps of eq. (1) through the ST after the relaxation (default 0)")
    ap.add_argument("--figure-digit", type=int, default=8, help="digit shown in the steps figure (supplement: 8)")
    ap.add_argument("--diagnose", action="store_true",
                    help="only evaluate eq. (1) at the true boxes / emptiest corners / centre (writes diagnose.json)")
    a = ap.parse_args(argv)
    import os

    threads = a.threads or (1 if (os.cpu_count() or 1) <= 4 else None)
    if threads:
        torch.set_num_threads(threads)
    if a.jobs is None:
        a.jobs = min(4, os.cpu_count() or 1) if threads == 1 else 1
    if a.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {a.jobs}")
    prof = PROFILES[a.profile]
    ov = {k: v for k, v in {"steps": a.steps, "batch": a.batch_size, "lr": a.lr, "init_scale": a.init_scale,
                            "scale": a.scale, "start_scale": a.start_scale, "translation": a.translation, "hold": a.hold, "shrink": a.shrink, "negatives": a.negatives, "padding": a.padding,
                            "descriptor": a.descriptor, "optimizer": a.optimizer,
                            "encoder_augment": a.encoder_augment,
                            "final_encoder_augment": a.final_encoder_augment, "final_lr_mult": a.final_lr_mult, "loc_stride": a.loc_stride,
                            "localiser": a.localiser, "alpha": a.alpha, "tau": a.tau, "cand_stride": a.cand_stride,
                            "pca_dims": a.pca_dims, "refine_steps": a.refine_steps}.items()
          if v is not None}
    prof = replace(prof, **ov)
    if prof.localiser not in LOCALISERS:
        ap.error(f"--localiser must be one of {LOCALISERS}, got {prof.localiser!r}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from repro.harness.checkpoint import CheckpointError

    if a.restart:
        a.resume = False
        from repro.coloc_encoder import cache_file

        for spec in (None if a.encoder else encoder_spec(prof, a.seed), final_encoder_spec(prof, a.seed)):
            cached = cache_file(spec) if spec is not None else None
            if cached is not None and cached.exists():
                cached.unlink()
                print(f"--restart: deleted the cached encoder {cached}")
    try:
        if a.encoder:
            enc = load_encoder(a.encoder)
            enc_info = {"checkpoint": str(a.encoder)}
        else:
            enc, enc_info = encoder(prof, a.seed, progress=not a.no_progress)
        final_enc, final_info = (None, None) if a.diagnose else final_encoder(prof, a.seed, progress=not a.no_progress)
    except CheckpointError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 4
    variants = VARIANTS if a.variant == "both" else (a.variant,)
    digits = [int(d) for d in a.digits.split(",") if d.strip()]
    if a.diagnose:
        res = diagnose(enc, variants, digits, a.seed, descriptor=prof.descriptor)
        (out / "diagnose.json").write_text(json.dumps({"encoder": enc_info, "alpha": prof.alpha, "losses": res}, indent=1))
        write_table(out)
        return 0
    t0 = time.perf_counter()
    try:
        run_pairs(a, prof, (enc, final_enc), (enc_info, final_info), out, variants, digits)
    except KeyboardInterrupt:
        print("interrupted; finished (variant, digit) pairs are kept in their digit*.json; rerun the same command "
              "with --resume to skip them", file=sys.stderr)
        return 130
    (out / "run.json").write_text(json.dumps({  # the whole command, for the table's wall-time line
        "wall_time_s": round(time.perf_counter() - t0, 1), "jobs": a.jobs, "threads": torch.get_num_threads(),
        "variants": list(variants), "digits": digits, "resume": a.resume}, indent=1))
    write_table(out)
    for v in variants:
        figure(out, v, a.figure_digit if a.figure_digit in digits else digits[0], seed=a.seed)
    return 0


def run_pairs(a, prof, encs, enc_infos, out, variants, digits) -> None:
    """Localise every (variant, digit) pair (skipping finished ones under --resume), in this process
    or, with ``a.jobs > 1``, in that many worker processes (each loads the cached encoders).
    ``encs`` / ``enc_infos``: the first encoder and the final phase's (None: the same)."""
    todo = []
    for v in variants:
        for d in digits:
            p = out / v / f"digit{d}.json"
            if a.resume and p.exists():
                r = json.loads(p.read_text())
                if r.get("profile") == a.profile and r.get("steps") == prof.steps:
                    print(f"[{v} digit {d}] done: {r['localised_pct']}% (resume)")
                    continue
            todo.append((v, d))
    job = {"profile_name": a.profile, "prof": prof, "enc_info": enc_infos[0], "final_enc_info": enc_infos[1],
           "encoder_path": a.encoder, "seed": a.seed,
           "out": str(out), "threads": torch.get_num_threads(), "progress": not a.no_progress}
    jobs = min(a.jobs, len(todo))
    if jobs <= 1:
        for v, d in todo:
            _run_pair(job, v, d, encs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    print(f"{len(todo)} (variant, digit) pairs in {jobs} worker processes, {job['threads']} thread(s) each", flush=True)
    # spawn: a fresh interpreter per worker (no forked torch thread pools); each pair writes its own file
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
        for f in [ex.submit(_run_pair, {**job, "progress": False}, v, d) for v, d in todo]:
            f.result()  # re-raises a worker's error here


def _run_pair(job: dict, v: str, d: int, encs: tuple | None = None) -> None:
    """One (variant, digit) optimisation, its result written to ``<out>/<v>/digit<d>.json``;
    ``encs`` = (encoder, final-phase encoder or None), or None in a worker process."""
    from repro.data import colocalisation_set
    from repro.harness.provenance import versions

    prof, seed = job["prof"], job["seed"]
    if encs is None:  # a worker process: its own thread count, the encoders from the cache the parent filled
        torch.set_num_threads(job["threads"])
        encs = (load_encoder(job["encoder_path"]) if job["encoder_path"] else encoder(prof, seed, progress=False)[0],
                final_encoder(prof, seed, progress=False)[0])
    enc, final_enc = encs
    ds = colocalisation_set(v, d, seed=seed, n=prof.n_images)
    print(f"[{v} digit {d}] {prof.steps} {prof.optimizer} steps x {prof.batch} pairs", flush=True)
    if prof.localiser == "candidates":
        from repro.coloc_candidates import colocalise_candidates

        r = colocalise_candidates(ds.images, ds.boxes, enc, prof, seed=seed, log=print if job["progress"] else None)
    else:
        r = colocalise(ds.images, ds.boxes, enc, prof, seed=seed, log=print if job["progress"] else None,
                       final_enc=final_enc)
    r.update({"variant": v, "digit": d, "profile": job["profile_name"], "schedule": asdict(prof),
              "encoder": job["enc_info"], "final_encoder": job["final_enc_info"], "track": [0, 1, 2], "seed": seed, "threads": torch.get_num_threads(),
              "device": "cpu", "versions": versions()})
    p = Path(job["out"]) / v / f"digit{d}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(r, indent=1))
    print(f"[{v} digit {d}] localised {r['localised_pct']}% (mean IoU {r['mean_iou']}) in {r['wall_time_s']} s",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
