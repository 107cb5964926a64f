"""SVHN multi-digit recognition (main paper Table 2, supplement 1.4): CNN, ST-CNN Single, ST-CNN Multi.

    python -m repro.svhn --data DIR --size 64 --model cnn|st-single|st-multi --profile paper --device cuda
    torchrun --nproc_per_node=8 -m repro.svhn --data DIR --size 128 --model st-multi --profile paper
    python -m repro.svhn --synthetic --profile quick          # no SVHN: the MNIST-built stand-in
    python -m repro.svhn --synthetic --benchmark               # time per step, ST-CNN Multi vs CNN

Data
----
* ``--data DIR``: SVHN format 1 (``train/``, ``test/`` with ``digitStruct.mat``; ``extra/`` if the
  loader uses it) read by ``repro.data.svhn`` (64 / 128 px crops around the digits' union box,
  up-to-5-digit labels, the 5k validation split). See :func:`load_real`.
* ``--synthetic``: :mod:`repro.svhn.synthetic`, 1-5 real MNIST digits composed, scaled and
  jittered on textured backgrounds, in the same format. **Its numbers are the stand-in's, not
  SVHN's**: the experiment is named ``svhn_synthetic``, its results table carries no paper column
  and its notes say so.

Labels are (N, 5) digit indices with 10 = "no digit"; the metric is the sequence error (an image
is right only when all five heads are right). Models: :mod:`stn_triton.models.svhn`.

Profiles
--------
* ``paper`` -- the supplement: SGD, 400k iterations, batch 128, lr 0.01 divided by 10 every 80k,
  weight decay 5e-4, dropout 0.5 (all layers but the first conv and the localisation nets),
  localisation lr x0.1, identity init, full width (``--width 1``). Momentum is not stated;
  0.9 is assumed. The paper reports the mean of 2 seeds: seeds (0, 1).
* ``quick`` -- a 2-core-CPU-sized pilot (deviations: width 0.125, no dropout, Adam lr 1e-3, 1,500
  iterations, batch 32, a 20k-image training set for the stand-in); for checking the pipeline and
  the trend only.
* ``smoke`` -- seconds (32 px, width 0.125, 20 iterations), for the tests.

``--width`` overrides the profile's width, ``--size`` picks the input size (64 / 128; 32 only for
smoke tests). All other options are the shared harness CLI's (``--resume``, ``--seeds``,
``--steps``, ``--device``, ``--out`` ...). ``--benchmark`` times forward + backward + SGD step
of the three models (the paper: ST-CNN Multi only 6% slower than the CNN) and writes
``timing.json`` / ``timing.md`` into the output folder (:mod:`repro.svhn.benchmark`).

Departures from the paper
-------------------------

===============  ==========================  ==========================  ================================
option           paper                       ours                        why
===============  ==========================  ==========================  ================================
SGD momentum     not stated                  0.9 (``paper``)             the usual value
classifier       five fc[11] heads (+ a      five fc[11] heads, class    the length head is not needed
                 length head in Goodfellow)  10 = no digit               for the sequence error
quick profile    width 1, dropout 0.5, SGD   width 0.125, no dropout,    CPU budget; dropout 0.5 stalls
                 400k steps                  Adam 1,500 steps            the tiny network (loss flat at
                                                                         ~7.6 after 1,000 steps)
data             SVHN                        SVHN (``--data``) or the    no SVHN here; the stand-in's
                                             MNIST-built stand-in        numbers are labelled as such
===============  ==========================  ==========================  ================================
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from repro.harness import Experiment, FixedSource, Profile
from repro.harness.figures import save_figure
from repro.paths import RUNS_DIR

MODELS = ("cnn", "st-single", "st-multi")
PAPER = {64: {"cnn": 4.0, "st-single": 3.7, "st-multi": 3.6}, 128: {"cnn": 5.6, "st-single": 3.9, "st-multi": 3.9}}
RUNS = RUNS_DIR  # default --out: runs/<svhn|svhn_synthetic><size> (untracked)

QUICK_NOTE = ("quick profile (deviation from the paper, for a 2-core CPU): width 0.125, no dropout, Adam lr 1e-3, "
              "1,500 iterations of batch 32; not comparable with the paper's numbers")
PROFILES = {
    "paper": Profile("paper", steps=400_000, batch_size=128, lr=0.01,
                     milestones=(80_000, 160_000, 240_000, 320_000), gamma=0.1, optimizer="sgd", momentum=0.9,
                     weight_decay=5e-4, loc_lr_mult=0.1, seeds=(0, 1), log_every=200, ckpt_every=5000,
                     eval_every=20_000, eval_limit=5000,
                     note="supplement 1.4 schedule; momentum 0.9 assumed"),
    "quick": Profile("quick", steps=1500, batch_size=32, lr=1e-3, milestones=(1200,), gamma=0.1, optimizer="adam",
                     weight_decay=0.0, loc_lr_mult=0.1, seeds=(0,), log_every=50, ckpt_every=250,
                     eval_every=500, eval_limit=1000, note=QUICK_NOTE),
    "smoke": Profile("smoke", steps=20, batch_size=16, lr=1e-3, optimizer="adam", loc_lr_mult=0.1, seeds=(0,),
                     log_every=10, ckpt_every=10, final_eval_limit=128, note="seconds; for tests"),
}
PROFILE_WIDTH = {"paper": 1.0, "quick": 0.125, "smoke": 0.125}
# dropout 0.5 on the tiny-width quick networks stalls training (loss flat at ~7.6 after 1,000 steps
# at width 0.125; without dropout it falls to ~6.1 in 400), so the pilot turns it off
PROFILE_DROPOUT = {"paper": 0.5, "quick": 0.0, "smoke": 0.5}
PROFILE_SIZE = {"paper": 64, "quick": 64, "smoke": 32}
# synthetic stand-in sizes per profile: (train, val, test)
SYNTH_SIZES = {"paper": (100_000, 5_000, 10_000), "quick": (20_000, 5_000, 2_000), "smoke": (256, 64, 128)}


# ----------------------------------------------------------------------------------------------- data
def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float in [-1, 1] (zero padding of a warp is mid-grey)."""
    return x.float().div_(127.5).sub_(1.0)


def load_real(data_dir: str, size: int, train_split: str | None = None, val_size: int = 5000) -> dict:
    """SVHN format 1 through ``repro.data.svhn.SVHN``: {'train', 'val', 'test'} with ``.images``
    uint8 (N, 3, S, S), ``.labels`` int64 (N, 5) (10 = blank), ``.lengths``. The training split is
    ``train+extra`` when ``DIR/extra/`` exists (as Goodfellow et al., whom the paper follows), else
    ``train``; ``val`` is the 5k validation split carved out of ``train``."""
    try:
        from repro.data.svhn import SVHN
    except ImportError as e:
        raise SystemExit(f"repro.data.svhn is not available ({e}); use --synthetic for the stand-in") from e
    if train_split is None:
        train_split = "train+extra" if (Path(data_dir) / "extra").is_dir() else "train"
    return {"train": SVHN(data_dir, train_split, size, val_size=val_size),
            "val": SVHN(data_dir, "val", size, val_size=val_size),
            "test": SVHN(data_dir, "test", size), "train_split": train_split}


def synthetic_splits(size: int, sizes: tuple[int, int, int], seed: int = 0) -> dict:
    """The stand-in's splits, cached under $STN_DATA_DIR/svhn_synthetic (rendered once)."""
    from repro.svhn import synthetic as ss
    from repro.data.mnist import data_dir

    n_train, n_val, n_test = sizes
    path = Path(data_dir()) / "svhn_synthetic" / f"s{size}_n{n_train}_{n_val}_{n_test}_seed{seed}_v1.pt"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and rank != 0:  # under torchrun rank 0 renders and caches; the others wait for the file
        deadline = time.time() + 3600
        while not path.exists() and time.time() < deadline:
            time.sleep(2)
    if path.exists():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return {k: ss.SVHNSet(*d[k]) for k in ("train", "val", "test")}
    t = time.perf_counter()
    sp = ss.make_splits(size, n_train, n_val, n_test, seed)
    print(f"rendered the synthetic SVHN stand-in ({n_train}+{n_val}+{n_test} images, {size}px) in "
          f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({k: (v.images, v.labels, v.lengths) for k, v in sp.items()}, tmp)
        os.replace(tmp, path)
    except OSError as e:  # caching is an optimisation only
        print(f"(could not cache the stand-in: {e})", file=sys.stderr)
    return sp


class SeqSource:
    """:class:`FixedSource` over uint8 images, converted to the network's input on the device."""

    def __init__(self, ds, batch_size, seed, rank, world_size, device):
        self.src = FixedSource(ds.images, ds.labels, batch_size, seed=seed, rank=rank, world_size=world_size,
                               device=device)

    def batch(self, step):
        x, y = self.src.batch(step)
        return to_input(x), y


# ----------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def sequence_error(model, ds, device, limit=None, batch_size=256) -> dict:
    from stn_triton.models.svhn import sequence_correct

    was = model.training
    model.eval()
    n = len(ds.labels) if limit is None else min(limit, len(ds.labels))
    right = torch.zeros((), dtype=torch.long, device=device)
    digit_right = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, n, batch_size):
        x = to_input(ds.images[i:i + batch_size].to(device))
        y = ds.labels[i:i + batch_size].to(device)
        out = model(x)
        right += sequence_correct(out, y).sum()
        d = out[0] if isinstance(out, tuple) else out
        digit_right += (d.argmax(-1) == y).sum()
    model.train(was)
    return {"error": 100.0 * (1 - right.item() / n), "head_error": 100.0 * (1 - digit_right.item() / (n * y.shape[1])),
            "n": n}


# ----------------------------------------------------------------------------------------------- figures
def composite_boxes(thetas: list[torch.Tensor]) -> list[torch.Tensor]:
    """Image-space quadrilaterals (N, 4, 2) of each transformer's sampling window, composing the
    earlier transformers (feature maps keep the image's normalised coordinate frame)."""
    out, acc = [], None
    corners = torch.tensor([[-1.0, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]])
    for th in thetas:
        m = torch.cat([th.float().cpu(), torch.tensor([0.0, 0, 1]).expand(th.shape[0], 1, 3)], 1)
        acc = m if acc is None else acc @ m
        out.append((corners @ acc.transpose(1, 2))[..., :2])
    return out


def make_visualise(splits: dict, label: str):
    def visualise(models: dict, out_dir: Path, device, n: int = 8):
        st = {k: m for k, m in models.items() if getattr(m, "sts", None) is not None and len(m.sts)}
        if not st:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ds = splits["test"]
        n = min(n, len(ds.labels))
        x = to_input(ds.images[:n].to(device))
        size = x.shape[-1]
        fig, axes = plt.subplots(len(st) * 2, n, figsize=(1.6 * n, 3.4 * len(st)), squeeze=False)
        colours = ["#ff3030", "#30c0ff", "#ffd000", "#40ff40"]
        for r, (name, m) in enumerate(st.items()):
            m.eval()
            with torch.no_grad():
                out = m(x)
                warped = m.sts[sorted(m.sts, key=int)[0]](x)[0]  # the first transformer acts on the image
            pred = (out[0] if isinstance(out, tuple) else out).argmax(-1).cpu()
            boxes = composite_boxes(m.last_thetas)
            for i in range(n):
                ax = axes[2 * r, i]
                ax.imshow(((x[i].cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())
                for j, b in enumerate(boxes):
                    q = (b[i] + 1) / 2 * size - 0.5
                    q = torch.cat([q, q[:1]])
                    ax.plot(q[:, 0], q[:, 1], color=colours[j % 4], lw=1.2)
                s = "".join(str(int(v)) for v in pred[i] if v < 10)
                t = "".join(str(int(v)) for v in ds.labels[i] if v < 10)
                ax.set_title(f"{s} ({t})", fontsize=7, color="k" if s == t else "r")
                axes[2 * r + 1, i].imshow(((warped[i].cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())
            axes[2 * r, 0].set_ylabel(name, fontsize=8)
            axes[2 * r + 1, 0].set_ylabel(f"{name}\nST1 output", fontsize=8)
        for a in axes.flat:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(f"{label}: transformer windows on test images (red = ST1, blue/yellow/green = ST2-4 "
                     f"composed); prediction (truth)", fontsize=8)
        return save_figure(fig, Path(out_dir) / "transformers.png")

    return visualise


# ----------------------------------------------------------------------------------------------- experiment
def build_experiment(splits: dict, *, size: int, width: float, synthetic: bool, dropout: float = 0.5) -> Experiment:
    from stn_triton.models.svhn import SVHNNet, sequence_correct, svhn_loss

    def build_model(name):
        return SVHNNet(name, in_size=size, width=width, dropout=dropout)

    def train_data(model_name, *, seed, rank, world_size, device, batch_size):
        return SeqSource(splits["train"], batch_size, seed, rank, world_size, device)

    def evaluate(model, device, limit=None):
        res = sequence_error(model, splits["test"], device, limit)
        val = sequence_error(model, splits["val"], device, limit)
        res.update({"val_error": val["error"], "val_head_error": val["head_error"]})
        return res

    label = "synthetic SVHN stand-in (MNIST digits; not SVHN)" if synthetic else "SVHN"
    return Experiment(name=("svhn_synthetic" if synthetic else "svhn") + str(size), models=MODELS,
                      build_model=build_model, train_data=train_data, evaluate=evaluate, profiles=PROFILES,
                      paper={} if synthetic else PAPER.get(size, {}), loss_fn=svhn_loss,
                      metric_fn=lambda out, y: sequence_correct(out, y).sum(),
                      visualise=make_visualise(splits, label), metric_name="sequence error")
