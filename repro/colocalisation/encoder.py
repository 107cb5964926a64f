"""The co-localisation encoder e(.) and eq. (1) on its descriptors.

The supplement (section 1.2) uses "the CNN trained for digit classification from Sect. 4.1 of the
main paper" as the encoder of eq. (1). :func:`digit_encoder` trains that network (the
distorted-MNIST recipe's ``cnn`` at 28 px: conv 9x9 - max 2 - conv 7x7 - max 2 - linear, ~400k
parameters) on the 60k MNIST *training* digits, each shifted by a uniform random -2..+2 px in x and
y per step (so that it sees digits that are not exactly centred, as a localised window is), with
Adam lr 1e-3, batch 128, for ``EncoderSpec.steps`` steps, and evaluates it on the 10k MNIST test
digits (0.99 % error, ~4 min on one core). The co-localisation images are rendered from MNIST *test*
digits, so the encoder has never seen them.

Trained once and cached by hash, like the data sets: the file name carries the sha256 of the spec
(architecture, schedule, seed, the MNIST arrays' own hash), so a changed recipe can never load a
stale encoder, and the file itself is a hashed checkpoint (:mod:`repro.harness.checkpoint`), so a
damaged one is refused with the way out. The hash keeps the fields of the specs that earlier
commits offered (``augment``, ``scale_min``), so encoders cached before their retirement still load.

:class:`Descriptor` is e(.) as eq. (1) reads it: the two hidden layers' activations (after ReLU +
max-pool, flattened) and the logits, concatenated (``concat``, the paper's) or each block
L2-normalised first (``layer-l2``, ours); :func:`triplet_loss` is eq. (1).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DATASET = "R"  # any 28 px distorted-MNIST set: it only fixes the CNN's input size (28) and width
DESCRIPTORS = ("layer-l2", "concat")  # ours (default) | the paper's


@dataclass(frozen=True)
class EncoderSpec:
    steps: int = 2000
    batch: int = 128
    lr: float = 1e-3
    shift: int = 2  # max |shift| in px, uniform integer per image and axis
    seed: int = 0
    version: int = 2  # bump when the training code changes what a spec produces


# The fields of the earlier, retired specs (at 6db501a: ``augment`` scale | shift | tc-window and its
# ``scale_min``), at the values of the one kept: part of the hash, so the cached encoders stay valid.
_HASHED_AS = {"augment": "shift", "scale_min": 1 / 3}


def spec_hash(spec: EncoderSpec) -> str:
    from repro.data.mnist import ARRAYS_SHA256

    key = json.dumps({"spec": {**asdict(spec), **_HASHED_AS}, "arch": f"distorted_mnist cnn {DATASET}",
                      "mnist": ARRAYS_SHA256}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_file(spec: EncoderSpec, cache_dir=None) -> Path:
    from repro.data.mnist import data_dir

    return data_dir(cache_dir) / "encoders" / f"coloc_cnn_{spec_hash(spec)}.pt"


def build() -> nn.Module:
    from repro.distorted_mnist.recipe import build_model

    return build_model(DATASET, "cnn")


def shifted(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` (B, 1, 28, 28) with image b moved by ``shifts[b] - pad`` px (x, y), zero filled."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 1:2] + torch.arange(h))[:, :, None].expand(b, h, w)
    cols = (shifts[:, 0:1] + torch.arange(w))[:, None, :].expand(b, h, w)
    return xp[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


def augmented(x: torch.Tensor, spec: EncoderSpec, g: torch.Generator) -> torch.Tensor:
    """One training batch: every digit shifted by -shift..+shift px (random numbers from ``g`` only)."""
    return shifted(x, torch.randint(0, 2 * spec.shift + 1, (x.shape[0], 2), generator=g), spec.shift)


@torch.no_grad()
def test_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    wrong = 0
    for k in range(0, images.shape[0], batch):
        wrong += (model(images[k:k + batch]).argmax(1) != labels[k:k + batch]).sum().item()
    return 100.0 * wrong / images.shape[0]


def _batches(spec: EncoderSpec, g: torch.Generator, split: str):
    """``batch(step) -> (images (B, 1, 28, 28), labels)``, shifted digits of ``split``."""
    from repro.data.sets import digit_pool

    x, y = digit_pool(split)
    x = x.float().div(255)[:, None]
    if split == "test":  # a fixed augmented copy of the test digits, in blocks of 1000
        return lambda step: (augmented(x[1000 * step:1000 * (step + 1)], spec, g), y[1000 * step:1000 * (step + 1)])

    def batch(step):
        i = torch.randint(0, x.shape[0], (spec.batch,), generator=g)
        return augmented(x[i], spec, g), y[i]
    return batch


def train(spec: EncoderSpec, progress: bool = True) -> tuple[nn.Module, dict]:
    from repro.data.sets import digit_pool

    xt, yt = digit_pool("test")
    xt = xt.float().div(255)[:, None]
    torch.manual_seed(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    batch = _batches(spec, g, "train")
    model = build()
    opt = torch.optim.Adam(model.parameters(), spec.lr)
    model.train()
    t0 = time.perf_counter()
    for step in range(spec.steps):
        xb, yb = batch(step)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % 250 == 0:
            print(f"[encoder] step {step + 1}/{spec.steps} loss {loss.item():.3f}", flush=True)
    wall = time.perf_counter() - t0
    data = f"MNIST train (60k), random shifts of up to ±{spec.shift} px"
    gt = torch.Generator().manual_seed(10_000 + spec.seed)  # a fixed augmented copy of the test digits
    test_batch = _batches(spec, gt, "test")
    aug = [test_batch(k) for k in range(10)]
    aug_err = test_error(model, torch.cat([a for a, _ in aug]), torch.cat([b for _, b in aug]))
    info = {"data": data, **asdict(spec), **_HASHED_AS,
            "optimizer": f"adam {spec.lr}", "test_error_pct": round(test_error(model, xt, yt), 2),
            "augmented_test_error_pct": round(aug_err, 2),
            "test_set": "MNIST test (10k); augmented: 10k test digits under the training augmentation, seeded",
            "wall_time_s": round(wall, 1),
            "params": sum(p.numel() for p in model.parameters()), "spec_sha256": spec_hash(spec)}
    return model.eval(), info


def digit_encoder(spec: EncoderSpec = EncoderSpec(), cache_dir=None, cache: bool = True,
                  progress: bool = True) -> tuple[nn.Module, dict]:
    """The trained encoder and its info (test error, wall time, ...); from the cache when there."""
    from repro.harness.checkpoint import load_checkpoint, save_checkpoint

    path = cache_file(spec, cache_dir)
    if cache and path.is_file():
        ck = load_checkpoint(path)  # hash-verified; CheckpointError names the file and the way out
        model = build()
        model.load_state_dict(ck["model"])
        return model.eval(), {**ck["info"], "cache": str(path)}
    model, info = train(spec, progress)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint({"model": model.state_dict(), "info": info}, path)
        print(f"[encoder] trained: {info['test_error_pct']} % test error in {info['wall_time_s']} s; cached {path}",
              flush=True)
    return model, {**info, "cache": str(path) if cache else None}


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
