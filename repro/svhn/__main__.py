"""``python -m repro.svhn``: train on SVHN (``--data DIR``) or the stand-in (``--synthetic``), or time
the three models (``--benchmark``); :mod:`repro.svhn.recipe` is the recipe."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from repro.harness.cli import main as cli_main, recipe_options, usage_problem
from repro.harness.profile import Experiment
from repro.svhn import recipe
from repro.svhn.recipe import (MODELS, PAPER, PROFILE_DROPOUT, PROFILE_SIZE, PROFILE_WIDTH, PROFILES, RUNS, SYNTH_SIZES,
                               build_experiment, load_real, synthetic_splits)


def _pre_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", default=None, help="SVHN format-1 folder (train/, test/ with digitStruct.mat)")
    p.add_argument("--synthetic", action="store_true", help="use the MNIST-built stand-in instead of SVHN")
    p.add_argument("--size", type=int, default=None, help="input size: 64 | 128 (32 for smoke tests)")
    p.add_argument("--width", type=float, default=None, help="channel multiplier (1 = the paper's network)")
    p.add_argument("--dropout", type=float, default=None, help="dropout (default: the profile's; paper 0.5)")
    p.add_argument("--train-split", default=None, choices=["train", "train+extra"],
                   help="SVHN training split (default: train+extra when DIR/extra exists)")
    p.add_argument("--val-size", type=int, default=5000, help="SVHN validation split size (the paper: 5k)")
    p.add_argument("--n-train", type=int, default=None, help="stand-in training images (default per profile)")
    p.add_argument("--n-test", type=int, default=None, help="stand-in test images (default per profile)")
    p.add_argument("--benchmark", action="store_true", help="time per step of the three models, then exit")
    p.add_argument("--bench-batch", type=int, default=None, help="benchmark batch (default 128 on CUDA, 16 on CPU)")
    p.add_argument("--bench-steps", type=int, default=None)
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", default=None)  # checked here, before any data is read; the harness uses it
    return p


def main(argv=None) -> int:
    stub = Experiment(name="svhn", models=MODELS, build_model=None, train_data=None, evaluate=None,
                      profiles=PROFILES)
    pre, argv = recipe_options(argv, recipe.__doc__, _pre_parser(), stub, str(RUNS))
    if pre is None:  # --help
        return 0
    problem = usage_problem(MODELS, pre.model, getattr(pre, "device", None), pre.out)
    if problem:  # before any data is read or rendered
        print(f"error: {problem}", file=sys.stderr)
        return 2
    size = pre.size or PROFILE_SIZE[pre.profile]
    width = pre.width if pre.width is not None else PROFILE_WIDTH[pre.profile]
    synthetic = pre.synthetic or pre.data is None and pre.benchmark
    name = ("svhn_synthetic" if synthetic else "svhn") + str(size)
    out = Path(pre.out) if pre.out else RUNS / name
    if pre.benchmark:
        from repro.svhn.benchmark import benchmark

        cuda = pre.device.startswith("cuda")
        benchmark(out, size=size, width=width, batch=pre.bench_batch or (128 if cuda else 16),
                  steps=pre.bench_steps or (20 if cuda else 5), device=pre.device)
        return 0
    if not pre.synthetic and not pre.data:
        print("give --data DIR (SVHN format 1) or --synthetic (the MNIST-built stand-in)", file=sys.stderr)
        return 2
    rest = []
    skip_next = False
    mine = {"--data", "--dropout", "--train-split", "--val-size", "--synthetic", "--size", "--width", "--n-train",
            "--n-test", "--benchmark", "--bench-batch",
            "--bench-steps"}
    for i, a in enumerate(argv):  # drop this recipe's own options, keep the harness's
        if skip_next:
            skip_next = False
            continue
        key = a.split("=", 1)[0]
        if key in mine:
            skip_next = "=" not in a and key not in ("--synthetic", "--benchmark")
            continue
        rest.append(a)
    if pre.out is None:
        rest += ["--out", str(out)]
    if pre.synthetic:
        n_train, n_val, n_test = SYNTH_SIZES[pre.profile]
        splits = synthetic_splits(size, (pre.n_train or n_train, n_val, pre.n_test or n_test))
    else:
        splits = load_real(pre.data, size, pre.train_split, pre.val_size)
    dropout = pre.dropout if pre.dropout is not None else PROFILE_DROPOUT[pre.profile]
    exp = build_experiment(splits, size=size, width=width, synthetic=pre.synthetic, dropout=dropout)
    notes = [f"Network width x{width} ({'the paper' if width == 1 else 'reduced from the paper'}), dropout {dropout}"
             f"{'' if dropout == 0.5 else ' (the paper: 0.5)'}, input {size}px; "
             f"sequence error = % of images with any of the 5 heads wrong; columns 'error' = test, "
             f"results.json also has val_error (the 5k validation split) and per-head error.",
             "Classifier: the paper's five fc[11] heads (class 10 = no digit), no separate length head."]
    if not pre.synthetic:
        notes.insert(0, f"SVHN format 1 from {pre.data}: trained on `{splits['train_split']}` "
                        f"({len(splits['train'])} images), 5k validation split, test {len(splits['test'])} images.")
    if pre.synthetic:
        notes.insert(0, "**These numbers are on the synthetic SVHN stand-in (1-5 real MNIST digits composed on "
                        "textured backgrounds, repro/svhn/synthetic.py), NOT on SVHN.** For reference only, the "
                        f"paper's SVHN sequence errors at {size}px: {PAPER.get(size, PAPER[64])}.")
    return cli_main(exp, str(out), rest, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
