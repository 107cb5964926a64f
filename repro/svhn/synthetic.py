"""A house-number-like stand-in for SVHN (format 1) built from real MNIST digits.

**Not SVHN.** Numbers measured on it are the stand-in's and must be labelled so; it exists so
that ``python -m repro.svhn --synthetic`` runs end to end without the SVHN download.

Each image: a textured, coloured background (random base colour, smooth low-frequency colour
noise, a linear gradient, pixel noise, and with probability 1/2 a "plate" rectangle behind the
number); a sequence of 1-5 real MNIST digits (length distribution roughly SVHN's) laid out left
to right, each in a box of height ``h`` (a random fraction of the image, shrunk so that the
sequence fits) with per-digit horizontal / vertical jitter; the whole sequence scaled, rotated by
a small random angle and placed at a random position (so, unlike SVHN's centred crops, where the
number is must be found -- the transformers' job); digit colour contrasting with the local
background. Digits are composed with :func:`stn_triton.warp` (one batched warp per digit slot).

Format (what :mod:`repro.svhn` consumes; the same as the SVHN loader's):
``SVHNSet(images uint8 (N, 3, S, S), labels int64 (N, 5) -- digits 0..9 left-aligned, 10 =
no digit --, lengths int64 (N,))``. Training/validation draw digits from MNIST's training set
(validation: the last 5k images of the generated training set, as the paper's 5k split), the test
split from MNIST's test set. Fully determined by (split, n, size, seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import stn_triton

N_DIGITS = 5
BLANK = 10
LENGTH_PROBS = (0.15, 0.40, 0.30, 0.10, 0.05)   # P(length = 1..5)


@dataclass
class SVHNSet:
    images: torch.Tensor    # uint8 (N, 3, S, S)
    labels: torch.Tensor    # int64 (N, 5), BLANK padded
    lengths: torch.Tensor   # int64 (N,)
    name: str = "synthetic-svhn"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, sl) -> "SVHNSet":
        return SVHNSet(self.images[sl], self.labels[sl], self.lengths[sl], self.name)


def _smooth_noise(g, n, size, cells, amp):
    z = torch.rand(n, 3, cells, cells, generator=g) * 2 - 1
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False) * amp


def render(n: int, size: int = 64, *, digits: torch.Tensor, digit_labels: torch.Tensor,
           g: torch.Generator, chunk: int = 2048) -> SVHNSet:
    """Render ``n`` images from the MNIST pool (``digits`` uint8 (M, 28, 28), ``digit_labels``)."""
    outs = [_render_chunk(min(chunk, n - i), size, digits, digit_labels, g) for i in range(0, n, chunk)]
    return SVHNSet(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), torch.cat([o[2] for o in outs]))


def _render_chunk(n, size, digits, digit_labels, g):
    lengths = torch.multinomial(torch.tensor(LENGTH_PROBS), n, replacement=True, generator=g) + 1
    idx = torch.randint(0, digits.shape[0], (n, N_DIGITS), generator=g)
    labels = digit_labels[idx].clone()
    slot = torch.arange(N_DIGITS).expand(n, N_DIGITS)
    present = slot < lengths[:, None]
    labels[~present] = BLANK

    # geometry, in normalised coordinates ([-1, 1] across the image)
    box_h = torch.empty(n).uniform_(0.7, 1.2, generator=g)                 # digit box height (of 2)
    box_w_ratio = 0.72                                                     # MNIST box width / height used
    max_h = 1.9 / (lengths.float() * box_w_ratio)                          # the sequence must fit
    box_h = torch.minimum(box_h, max_h)
    box_w = box_h * box_w_ratio
    total_w = box_w * lengths.float()
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12)
    half_w, half_h = total_w / 2, box_h / 2
    # keep the (rotated) bounding box inside the image
    ext_x = half_w * angle.cos().abs() + half_h * angle.sin().abs()
    ext_y = half_w * angle.sin().abs() + half_h * angle.cos().abs()
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - ext_x).clamp(min=0)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - ext_y).clamp(min=0)

    # background
    base = torch.rand(n, 3, 1, 1, generator=g)
    bg = base + _smooth_noise(g, n, size, 4, 0.25) + _smooth_noise(g, n, size, 12, 0.08)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    grad = torch.rand(n, 2, generator=g) * 0.4 - 0.2
    bg = bg + (grad[:, 0, None, None] * xx + grad[:, 1, None, None] * yy)[:, None]
    plate = torch.rand(n, generator=g) < 0.5
    plate_col = torch.rand(n, 3, 1, 1, generator=g)
    px = half_w * 1.25 + 0.05
    py = half_h * 1.3 + 0.05
    pm = ((xx[None] - cx[:, None, None]).abs() < px[:, None, None]) & \
         ((yy[None] - cy[:, None, None]).abs() < py[:, None, None]) & plate[:, None, None]
    bg = torch.where(pm[:, None], plate_col + 0.3 * (bg - base), bg)
    bg = bg.clamp(0, 1)

    # digits: one batched warp per slot, canvas -> 28x28 digit box
    mask = torch.zeros(n, 1, size, size)
    cos, sin = angle.cos(), angle.sin()
    src = digits.float().div(255)[:, None]
    for k in range(N_DIGITS):
        # centre of slot k in the sequence frame, with jitter
        jx = (torch.rand(n, generator=g) * 2 - 1) * 0.08 * box_w
        jy = (torch.rand(n, generator=g) * 2 - 1) * 0.10 * box_h
        ox = -half_w + box_w * (k + 0.5) + jx
        oy = jy
        dcx = cx + cos * ox - sin * oy
        dcy = cy + sin * ox + cos * oy
        # source = S^-1 R^-1 (p - c): S = diag(box_w/2, box_h/2) maps [-1,1]^2 onto the box
        sx, sy = 2.0 / box_w, 2.0 / box_h
        a = torch.stack([torch.stack([sx * cos, sx * sin], 1), torch.stack([-sy * sin, sy * cos], 1)], 1)  # (n,2,2)
        c = torch.stack([dcx, dcy], 1)[:, :, None]
        theta = torch.cat([a, -(a @ c)], 2)
        m = stn_triton.warp(src[idx[:, k]], theta, (size, size))
        m = m * present[:, k, None, None, None]
        mask = torch.maximum(mask, m)

    # foreground colour contrasting with the background under the number
    lum = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])  # noqa: E731
    under = (bg * (mask > 0.2)).sum((2, 3)) / (mask > 0.2).sum((2, 3)).clamp(min=1)  # (n, 3)
    fg = torch.rand(n, 3, generator=g)
    dark = lum(under[:, :, None, None])[:, 0, 0] > 0.5
    shift = torch.where(dark, -1.0, 1.0)[:, None] * (0.35 + 0.3 * torch.rand(n, 1, generator=g))
    fg = (under + shift + (fg - 0.5) * 0.3).clamp(0, 1)
    img = bg * (1 - mask) + fg[:, :, None, None] * mask
    img = img + torch.randn(img.shape, generator=g) * 0.03
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return img, labels, lengths


def make(split: str, n: int, size: int = 64, seed: int = 0, *, mnist=None) -> SVHNSet:
    """The stand-in's ``split`` ('train' | 'test'); ``mnist``: (images, labels) to override the pool."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if mnist is None:
        from repro.data import load_mnist
        mnist = load_mnist(split)
    g = torch.Generator().manual_seed(seed * 1_000_003 + (0 if split == "train" else 7919) + size)
    return render(n, size, digits=mnist[0], digit_labels=mnist[1], g=g)


def make_splits(size: int = 64, n_train: int = 50_000, n_val: int = 5_000, n_test: int = 10_000, seed: int = 0,
                mnist_train=None, mnist_test=None) -> dict[str, SVHNSet]:
    """{'train', 'val', 'test'}: the last ``n_val`` of ``n_train + n_val`` training images are the
    validation split (the paper's 5k split)."""
    full = make("train", n_train + n_val, size, seed, mnist=mnist_train)
    return {"train": full.subset(slice(0, n_train)), "val": full.subset(slice(n_train, None)),
            "test": make("test", n_test, size, seed, mnist=mnist_test)}
