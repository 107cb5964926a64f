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
damaged one is refused with the way out. Measured: 1,500 steps reach 1.15 % test error (seed 0) in
~2.5 min on one core of this machine.
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


@dataclass(frozen=True)
class EncoderSpec:
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3
    shift: int = 2  # max |shift| in px, uniform integer per image and axis
    seed: int = 0
    version: int = 1  # bump when the training code changes what a spec produces


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


@torch.no_grad()
def test_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    wrong = 0
    for k in range(0, images.shape[0], batch):
        wrong += (model(images[k:k + batch]).argmax(1) != labels[k:k + batch]).sum().item()
    return 100.0 * wrong / images.shape[0]


def train(spec: EncoderSpec, progress: bool = True) -> tuple[nn.Module, dict]:
    from repro.data.sets import digit_pool

    x, y = digit_pool("train")
    xt, yt = digit_pool("test")
    x, xt = x.float().div(255)[:, None], xt.float().div(255)[:, None]
    torch.manual_seed(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), spec.lr)
    model.train()
    t0 = time.perf_counter()
    for step in range(spec.steps):
        i = torch.randint(0, x.shape[0], (spec.batch,), generator=g)
        sh = torch.randint(0, 2 * spec.shift + 1, (spec.batch, 2), generator=g)
        loss = F.cross_entropy(model(shifted(x[i], sh, spec.shift)), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % 250 == 0:
            print(f"[encoder] step {step + 1}/{spec.steps} loss {loss.item():.3f}", flush=True)
    wall = time.perf_counter() - t0
    info = {"data": f"MNIST train (60k), random shifts of up to ±{spec.shift} px", **asdict(spec),
            "optimizer": f"adam {spec.lr}", "test_error_pct": round(test_error(model, xt, yt), 2),
            "test_set": "MNIST test (10k)", "wall_time_s": round(wall, 1),
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
