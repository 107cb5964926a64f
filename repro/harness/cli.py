"""Command line shared by every recipe: ``python -m repro.<recipe> [options]`` or under
``torchrun --nproc_per_node=N -m repro.<recipe> ...`` unchanged."""
from __future__ import annotations

import argparse
import sys

import torch

from .checkpoint import CheckpointError
from .loop import Interrupted, NonFiniteLoss, run
from .profile import Experiment


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
    p.add_argument("--seeds", type=str, default=None, help="comma-separated seeds (overrides the profile's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=default_out, help="output folder (results.json, results.md, checkpoints)")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoints / skip finished runs (each run says what it found)")
    p.add_argument("--restart", action="store_true",
                   help="delete the checkpoints and results of the runs this command trains, and start them from "
                        "step 0 (the way out of a damaged checkpoint)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: 1 on machines with <= 4 cores -- on shared 2-core "
                        "machines two threads ran ~8x slower than one)")
    p.add_argument("--no-progress", action="store_true")
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
    a = parser(exp, default_out).parse_args(argv)
    import os

    threads = a.threads or (1 if (os.cpu_count() or 1) <= 4 else None)
    if threads:
        torch.set_num_threads(threads)
    models = list(exp.models) if a.model == "all" else [m.strip() for m in a.model.split(",") if m.strip()]
    bad = [m for m in models if m not in exp.models]
    if bad:
        print(f"unknown model(s) {bad}; choose from {list(exp.models)}", file=sys.stderr)
        return 2
    seeds = [a.seed] if a.seed is not None else ([int(s) for s in a.seeds.split(",")] if a.seeds else None)
    ov = {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "momentum": a.momentum,
          "optimizer": a.optimizer, "loc_lr_mult": a.loc_lr_mult, "eval_every": a.eval_every,
          "log_every": a.log_every}
    if a.steps is not None:  # keep the schedule's shape: scale milestones with the step count
        ov["_scale_steps"] = a.steps
    try:
        run(exp, profile=a.profile, models=models, seeds=seeds, out_dir=a.out, device=a.device, resume=a.resume,
            compile=a.compile, overrides=ov, progress=not a.no_progress, notes=list(notes), restart=a.restart)
    except NonFiniteLoss as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 4
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
