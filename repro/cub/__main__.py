"""``python -m repro.cub``: CUB-200-2011 with user-supplied data and ImageNet BN-Inception weights;
:mod:`repro.cub.recipe` is the recipe."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from repro.cub import recipe
from repro.cub.recipe import MODELS, PROFILES, RUNS, build_experiment, model_name
from repro.harness.cli import main as cli_main, recipe_options, usage_problem
from repro.harness.profile import Experiment


def _pre_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", required=False, help="CUB_200_2011 folder (images.txt, images/, ...)")
    p.add_argument("--weights", default=None, help="ImageNet BN-Inception state dict (see models/inception_bn.py)")
    p.add_argument("--no-pretrained", action="store_true", help="train from scratch (not the paper's setting)")
    p.add_argument("--n-st", type=int, default=None, help="number of transformers: 0 (CNN), 2 or 4")
    p.add_argument("--input", type=int, default=224, help="image size the transformers sample from: 224 | 448")
    p.add_argument("--crop", type=int, default=224, help="crop / stream input size (224; smaller for tests)")
    p.add_argument("--width", type=float, default=1.0, help="BN-Inception width (tests only; 1 = pretrained layout)")
    p.add_argument("--norm", default="caffe", choices=["caffe", "imagenet", "none"])
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    p.add_argument("--out", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)  # checked here, before the data is read; the harness uses it
    return p


MINE_FLAGS = {"--no-pretrained"}
MINE_OPTS = {"--data", "--weights", "--n-st", "--input", "--crop", "--width", "--norm", "--dropout", "--workers"}


def main(argv=None) -> int:
    stub = Experiment(name="cub", models=MODELS, build_model=None, train_data=None, evaluate=None,
                      profiles=PROFILES)
    pre, argv = recipe_options(argv, recipe.__doc__, _pre_parser(), stub, str(RUNS))
    if pre is None:  # --help
        return 0
    problem = usage_problem(MODELS, pre.model, getattr(pre, "device", None), pre.out)
    if problem:  # before any data is read or rendered
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not pre.data:
        print("give --data DIR (the extracted CUB_200_2011 folder)", file=sys.stderr)
        return 2
    if not pre.no_pretrained and not pre.weights:
        print("give --weights FILE (ImageNet BN-Inception state dict; layout in models/inception_bn.py) or "
              "--no-pretrained", file=sys.stderr)
        return 2
    if pre.input not in (pre.crop, 2 * pre.crop):
        print(f"--input must be --crop ({pre.crop}) or twice it, got {pre.input}", file=sys.stderr)
        return 2
    if not pre.no_pretrained:  # fail early, with the key listing, before any training starts
        from stn_triton.models.inception_bn import BNInception, PretrainedLayoutError

        try:
            with torch.device("meta"):
                probe = BNInception(None, width=pre.width)
            probe.load_pretrained(pre.weights, check_only=True)
        except (PretrainedLayoutError, FileNotFoundError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 2
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in MINE_FLAGS:
            continue
        if key in MINE_OPTS:
            skip = "=" not in a
            continue
        rest.append(a)
    if pre.model is None:
        rest += ["--model", model_name(pre.n_st if pre.n_st is not None else 2)]
    out = Path(pre.out) if pre.out else RUNS / f"cub{pre.input}"
    if pre.out is None:
        rest += ["--out", str(out)]
    exp = build_experiment(pre)
    notes = [
        "Error = 100 - accuracy (10-view evaluation). Paper column: main-paper Table 3 accuracies "
        "(CNN 82.3, 2xST-CNN 224 83.1, 2xST-CNN 448 83.9, 4xST-CNN 448 84.1) as errors.",
        f"Init: {'ImageNet BN-Inception from ' + os.path.basename(pre.weights) if not pre.no_pretrained else 'from scratch (--no-pretrained; not the paper)'}; "
        f"norm {pre.norm}; width {pre.width}; crops {pre.crop}px from {pre.input}px images; dropout {pre.dropout} "
        "before the classifier.",
        "The CUB schedule is ours (the supplement gives none); the localisation net (truncated Inception + "
        "conv/fc head) trains at the profile's loc-lr multiplier (see the schedule line).",
    ]
    return cli_main(exp, str(out), rest, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
