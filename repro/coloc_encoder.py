"""The co-localisation encoder e(.): the section-4.1 CNN trained for digit classification, once.

The supplement (section 1.2) uses "the CNN trained for digit classification from Sect. 4.1 of the
main paper" as the encoder of eq. (1). This module trains that network (the distorted-MNIST
recipe's ``cnn`` at 28 px: conv 9x9 - max 2 - conv 7x7 - max 2 - linear, ~400k parameters) on the
60k MNIST *training* digits, each shifted by a uniform random -2..+2 px in x and y per step (so
that it sees digits that are not exactly centred, as a localised window is), with Adam lr 1e-3,
batch 128, for ``EncoderSpec.steps`` steps, and evaluates it on the 10k MNIST test digits. The
co-localisation images are rendered from MNIST *test* digits, so the encoder has never seen them.

Trained once and cached by hash, like the data sets: the file name carries the sha256 of the spec
(architecture, schedule, seed, the MNIST arrays' own hash), so a changed recipe can never load a
stale encoder, and the file itself is a hashed checkpoint (:mod:`repro.harness.checkpoint`), so a
damaged one is refused with the way out. Measured (default spec, seed 0): 1.75 % error on the full-size test digits in
5.5 min on one core of this loaded machine (1.0 % for the "shift" spec in ~4 min).
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

from repro.colocalisation import CROP, window_theta

DATASET = "R"  # any 28 px distorted-MNIST set: it only fixes the CNN's input size (28) and width


@dataclass(frozen=True)
class EncoderSpec:
    steps: int = 2000
    batch: int = 128
    lr: float = 1e-3
    shift: int = 2  # max |shift| in px, uniform integer per image and axis ("shift"); the jitter ("scale")
    augment: str = "scale"  # "scale" | "shift" | "tc-window", see the module docstring
    scale_min: float = 1 / 3  # "scale": the smallest digit size, as a fraction of the 28 px frame
    seed: int = 0
    version: int = 2  # bump when the training code changes what a spec produces

    def __post_init__(self):  # a bad spec is refused where it is made, before it names a cache file
        if self.augment not in AUGMENTS:
            raise ValueError(f"EncoderSpec.augment must be one of {AUGMENTS}, got {self.augment!r}")
        if not 0 < self.scale_min <= 1:
            raise ValueError(f"EncoderSpec.scale_min must be in (0, 1], got {self.scale_min}")


AUGMENTS = ("scale", "shift", "tc-window")


def spec_hash(spec: EncoderSpec) -> str:
    from repro.data.mnist import ARRAYS_SHA256

    key = json.dumps({"spec": asdict(spec), "arch": f"distorted_mnist cnn {DATASET}", "mnist": ARRAYS_SHA256},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_file(spec: EncoderSpec, cache_dir=None) -> Path:
    from repro.data.mnist import data_dir

    return data_dir(cache_dir) / "encoders" / f"coloc_cnn_{spec_hash(spec)}.pt"


def build() -> nn.Module:
    from repro import distorted_mnist as dm

    return dm.build_model(DATASET, "cnn")


def shifted(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` (B, 1, 28, 28) with image b moved by ``shifts[b] - pad`` px (x, y), zero filled."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 1:2] + torch.arange(h))[:, :, None].expand(b, h, w)
    cols = (shifts[:, 0:1] + torch.arange(w))[:, None, :].expand(b, h, w)
    return xp[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


def rescaled(x: torch.Tensor, size: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``x`` (B, 1, 28, 28) with digit b shrunk to ``size[b]`` (a fraction of the frame, 0 < size <= 1)
    and its centre moved to ``centre[b]`` (x, y) in normalised [-1, 1] coordinates; bilinear, zero fill.

    The sampling theta maps an output point p to the input point (p - centre) / size, so the input's
    [-1, 1] square lands on centre +- size."""
    inv = 1.0 / size
    theta = window_theta(inv, -centre * inv[:, None])
    grid = F.affine_grid(theta, tuple(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def digit_sizes(b: int, spec: EncoderSpec, g: torch.Generator) -> torch.Tensor:
    """A digit's size in the 28 px frame, uniform in [scale_min, 1] (the sizes the schedule shows)."""
    return spec.scale_min + torch.rand(b, generator=g) * (1 - spec.scale_min)


def tc_windows(images: torch.Tensor, boxes: torch.Tensor, spec: EncoderSpec, g: torch.Generator) -> torch.Tensor:
    """28x28 windows of cluttered 84x84 co-localisation canvases (``images`` (B, 1, 84, 84), digit
    ``boxes`` (B, 4) pixel edges), centred on the digit up to a +-``spec.shift`` px jitter (in the
    window's pixels), of the scale at which the digit fills a random 1/3-1 of the window: what the
    localiser's windows hold on TC while the scale shrinks, clutter included (bilinear, zero fill)."""
    b, _, h, w = images.shape
    scale = (boxes[:, 2] - boxes[:, 0]) / w / digit_sizes(b, spec, g)  # window side / canvas side
    jitter = (torch.rand(b, 2, generator=g) * 2 - 1) * (2 * spec.shift / CROP) * scale[:, None]
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / w - 1, (boxes[:, 1] + boxes[:, 3]) / h - 1], 1) + jitter
    theta = window_theta(scale, centre)
    grid = F.affine_grid(theta, (b, 1, CROP, CROP), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def augmented(x: torch.Tensor, spec: EncoderSpec, g: torch.Generator) -> torch.Tensor:
    """One training batch under ``spec.augment`` (random numbers from ``g`` only)."""
    b = x.shape[0]
    if spec.augment == "shift":
        return shifted(x, torch.randint(0, 2 * spec.shift + 1, (b, 2), generator=g), spec.shift)
    size = digit_sizes(b, spec, g)
    room = (1 - size)[:, None]  # the centre may move this far and keep the digit inside the frame
    jitter = 2 * spec.shift / x.shape[-1]  # px -> normalised units
    centre = (torch.rand(b, 2, generator=g) * 2 - 1) * room + (torch.rand(b, 2, generator=g) * 2 - 1) * jitter
    return rescaled(x, size, centre)


@torch.no_grad()
def test_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    wrong = 0
    for k in range(0, images.shape[0], batch):
        wrong += (model(images[k:k + batch]).argmax(1) != labels[k:k + batch]).sum().item()
    return 100.0 * wrong / images.shape[0]


def _batches(spec: EncoderSpec, g: torch.Generator, split: str, seed: int):
    """``batch(step) -> (images (B, 1, 28, 28), labels)`` under ``spec.augment``."""
    if spec.augment == "tc-window":  # fresh cluttered canvases of this split's digits, then windows on them
        from repro.data.sets import OnlineStream

        stream = OnlineStream("coloc-TC", spec.batch if split == "train" else 1000, seed=seed, split=split)

        def batch(step):
            bt = stream.batch(step)
            return tc_windows(bt.images, bt.boxes, spec, g), bt.labels
        return batch
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
    batch = _batches(spec, g, "train", spec.seed)
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
    data = {"shift": f"MNIST train (60k), random shifts of up to ±{spec.shift} px",
            "scale": f"MNIST train (60k), each digit shrunk to a random {spec.scale_min:.3g}-1 of the 28 px frame at a "
                     f"random position inside it, ±{spec.shift} px jitter",
            "tc-window": f"fresh coloc-TC canvases (84 px, 16 clutter patches) of MNIST train digits; 28 px windows "
                         f"centred on the digit ±{spec.shift} px, the digit filling a random {spec.scale_min:.3g}-1 "
                         "of the window"}[spec.augment]
    gt = torch.Generator().manual_seed(10_000 + spec.seed)  # a fixed augmented copy of the test digits
    test_batch = _batches(spec, gt, "test", 10_000 + spec.seed)
    aug = [test_batch(k) for k in range(10)]
    aug_err = test_error(model, torch.cat([a for a, _ in aug]), torch.cat([b for _, b in aug]))
    info = {"data": data, **asdict(spec),
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
