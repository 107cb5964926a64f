"""Command line shared by every recipe: ``python -m repro.<recipe> [options]`` or under
``torchrun --nproc_per_node=N -m repro.<recipe> ...`` unchanged.

A bad command stops before anything is trained or written, with one line and a non-zero exit: an
unknown ``--model`` or a malformed ``--seeds`` (exit 2), ``--out`` naming a file (2), ``--device
cuda`` on a torch without CUDA (2), a checkpoint in the way of a run started without ``--resume``
or ``--restart`` (2). Exit codes of a run: 3 non-finite loss, 4 damaged checkpoint, 5 MNIST that
fails its hash (or cannot be found), 128 + N on signal N.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .loop import CheckpointInTheWay, Interrupted, NonFiniteLoss, run
from .profile import Experiment


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]; anything else is an argparse error (one line, exit 2)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, e.g. 0,1,2; got {text!r}")
    return seeds


def device_problem(device: str) -> str | None:
    """Why ``--device`` cannot be used here (one line), or None."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return f"--device {device!r} is not a device ({e})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible")
        return f"--device {device}: {why} (torch {torch.__version__}); use --device cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
    if dev.type not in ("cpu", "cuda"):
        return f"--device {device}: the recipes run on cpu or cuda"
    return None


def model_problem(models: tuple[str, ...], selection: str | None) -> str | None:
    """Why ``--model selection`` names no model of ``models`` (one line), or None (``None`` / ``all``: all)."""
    if selection is None or selection == "all":
        return None
    names = [m.strip() for m in selection.split(",") if m.strip()]
    bad = [m for m in names if m not in models]
    if bad or not names:
        return f"unknown model(s) {bad or [selection]}; choose from {list(models)} or 'all'"
    return None


def out_problem(out: str) -> str | None:
    """Why ``--out`` cannot be the output folder (one line), or None."""
    path = Path(out)
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else f"--out {out}: {p} is a file, not a folder"
    return None


def resume_command() -> str:
    """The command line that was run, with ``--resume`` (for messages)."""
    import shlex

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if not name.startswith("repro."):
        return "the same command with --resume"
    args = [a for a in sys.argv[1:] if a != "--restart"]
    if "--resume" not in args:
        args.append("--resume")
    return f"python -m {name.removesuffix('.__main__')} {shlex.join(args)}"


def parser(exp: Experiment, default_out: str, default_profile: str = "quick") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m repro.{exp.name}", description=f"Train / evaluate {exp.name}.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="profiles:\n" + "\n".join(f"  {k}: {v.describe()}" for k, v in exp.profiles.items()))
    p.add_argument("--profile", default=default_profile, choices=sorted(exp.profiles))
    p.add_argument("--model", default="all", help=f"comma-separated subset of {list(exp.models)} or 'all'")
    p.add_argument("--seed", type=int, default=None, help="a single seed (overrides the profile's seeds)")
    p.add_argument("--seeds", type=seed_list, default=None, help="comma-separated seeds (overrides the profile's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=default_out, help="output folder (results.json, results.md, checkpoints)")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoints / skip finished runs (each run says what it found)")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and results of the runs this command trains, and start them from "
                        "step 0 (the way out of a damaged checkpoint, or past one a rerun without --resume refuses)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: 1 on machines with <= 4 cores -- on shared 2-core "
                        "machines two threads ran ~8x slower than one)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-prefetch", action="store_true",
                   help="draw each batch inline instead of on a background thread (CPU): the run then uses one "
                        "core, e.g. beside another run on a 2-core machine, for a slower step where rendering is costly")
    # schedule overrides (pilots; results then say so through the recorded schedule)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--loc-lr-mult", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--log-every", type=int)
    return p


def print_recipe_help(doc: str, recipe_parser: argparse.ArgumentParser, exp: Experiment, default_out: str) -> None:
    """``--help`` of a recipe with options of its own: its docstring, its options, then the harness's."""
    print(doc)
    print("recipe options:\n" + recipe_parser.format_help().split("\n", 1)[1])
    print("shared harness options:\n" + parser(exp, default_out).format_help().split("\n", 1)[1])


def usage_problem(models: tuple[str, ...], selection: str | None, device: str | None = None,
                  out: str | None = None) -> str | None:
    """The first reason (one line) why ``--model`` / ``--device`` / ``--out`` cannot run, in that
    order, or None: what every recipe checks before any data is read or rendered. ``device`` /
    ``out`` None: not checked (a recipe that leaves them to its defaults)."""
    for problem in (model_problem(models, selection), device and device_problem(device), out and out_problem(out)):
        if problem:
            return problem
    return None


def recipe_options(argv, doc: str, recipe_parser: argparse.ArgumentParser, exp: Experiment, default_out: str):
    """A recipe's own options, parsed ahead of the harness's: ``(options, argv)``, where
    ``argv`` (``None`` means ``sys.argv[1:]``) keeps every argument for the harness to parse too.
    ``--help`` prints the recipe's options and then the harness's, and returns ``(None, argv)``.
    ``exp`` only needs its name, models and profiles there."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_recipe_help(doc, recipe_parser, exp, default_out)
        return None, argv
    options, _ = recipe_parser.parse_known_args(argv)
    if getattr(options, "threads", None):
        torch.set_num_threads(options.threads)
    return options, argv


def main(exp: Experiment, default_out: str, argv=None, notes: list[str] = ()) -> int:
    ap = parser(exp, default_out)
    a = ap.parse_args(argv)
    import os

    models = list(exp.models) if a.model == "all" else [m.strip() for m in a.model.split(",") if m.strip()]
    problem = usage_problem(exp.models, a.model, a.device, a.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    threads = a.threads or (1 if (os.cpu_count() or 1) <= 4 else None)
    if threads:
        torch.set_num_threads(threads)
    seeds = [a.seed] if a.seed is not None else a.seeds
    ov = {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "momentum": a.momentum,
          "optimizer": a.optimizer, "loc_lr_mult": a.loc_lr_mult, "eval_every": a.eval_every,
          "log_every": a.log_every}
    if a.steps is not None:  # keep the schedule's shape: scale milestones with the step count
        ov["_scale_steps"] = a.steps
    from repro.data.mnist import MnistError

    try:
        run(exp, profile=a.profile, models=models, seeds=seeds, out_dir=a.out, device=a.device, resume=a.resume,
            compile=a.compile, overrides=ov, progress=not a.no_progress, notes=list(notes), restart=a.restart,
            prefetch=False if a.no_prefetch else None,
            estimate=a.profile == "paper")
    except CheckpointInTheWay as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 4
    except MnistError as e:
        print(f"\nERROR: MNIST: {e}", file=sys.stderr)
        return 5
    except Interrupted as e:
        print(f"{e}; resume with: {resume_command()}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"interrupted; finished runs and checkpoints are kept; resume with: {resume_command()}", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
