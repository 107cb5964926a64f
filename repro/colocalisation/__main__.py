"""``python -m repro.colocalisation``: localise every (variant, digit) pair, then write table.md and
the steps figures (:mod:`repro.colocalisation.recipe` is the recipe; ``--help`` lists the options,
the paper's setting beside each of ours)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from repro.colocalisation import recipe
from repro.colocalisation.candidates import OPTIMIZERS
from repro.colocalisation.encoder import DESCRIPTORS, cache_file
from repro.colocalisation.recipe import DEFAULT_OUT, PROFILES, VARIANTS, encoder, encoder_spec, run_pairs
from repro.colocalisation.table import figure, write_table


def parser() -> argparse.ArgumentParser:
    doc = recipe.__doc__
    departures = doc[doc.index("Departures from the text"):doc.index("Files: ")].rstrip()
    ap = argparse.ArgumentParser(prog="python -m repro.colocalisation", description=doc.split("\n\n")[0],
                                 epilog=departures + "\n\nprofiles:\n" + "\n".join(f"  {k}: {v}" for k, v in PROFILES.items()),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="both", choices=["T", "TC", "both"])
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES),
                    help="full (default; the supplement gives no schedule, this is ours) or smoke (tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="cpu only (the optimisation is tiny)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--resume", action="store_true", help="skip (variant, digit) pairs already done with this profile")
    ap.add_argument("--restart", action="store_true",
                    help="delete the cached encoder and redo every (variant, digit) pair")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=None,
                    help="(variant, digit) pairs optimised side by side in worker processes, each with --threads "
                         "threads (default: one per CPU core up to 4, one thread each; 1 = in this process)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a generator option of the TC set (repeatable; repro/data/options.py: patch_from, combine; "
                         "default DeepMind's clutter); recorded in every digit*.json")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--descriptor", choices=DESCRIPTORS, help="layer-l2 (default) or concat (the paper's)")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd (the paper's)")
    ap.add_argument("--alpha", type=float, help="the margin of eq. (1) (default 2; the supplement's is 1)")
    ap.add_argument("--tau", type=float, help="soft-min temperature of the relaxation (default 0.3)")
    ap.add_argument("--figure-digit", type=int, default=8, help="digit shown in the steps figure (supplement: 8)")
    ap.add_argument("--diagnose", action="store_true",
                    help="only evaluate eq. (1) at the true boxes / emptiest corners / centre (writes diagnose.json)")
    return ap


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    threads = a.threads or (1 if (os.cpu_count() or 1) <= 4 else None)
    if threads:
        torch.set_num_threads(threads)
    if a.jobs is None:
        a.jobs = min(4, os.cpu_count() or 1) if threads == 1 else 1
    if a.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {a.jobs}")
    try:
        digits = [int(d) for d in a.digits.split(",") if d.strip()]
    except ValueError:
        ap.error(f"--digits must be comma-separated integers 0-9, got {a.digits!r}")
    if not digits or any(not 0 <= d <= 9 for d in digits):
        ap.error(f"--digits must be comma-separated integers 0-9, got {a.digits!r}")
    ov = {k: v for k, v in {"steps": a.steps, "batch": a.batch_size, "lr": a.lr, "descriptor": a.descriptor,
                            "optimizer": a.optimizer, "alpha": a.alpha, "tau": a.tau}.items() if v is not None}
    prof = replace(PROFILES[a.profile], **ov)
    from repro.data.options import resolve

    try:  # resolved once here; T has no options
        a.data_options = {"T": {}, "TC": resolve("coloc-TC", a.data_option)}
    except ValueError as e:
        ap.error(str(e))
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    from repro.data.mnist import MnistError
    from repro.harness.checkpoint import CheckpointError

    if a.restart:
        a.resume = False
        cached = cache_file(encoder_spec(prof, a.seed))
        if cached.exists():
            cached.unlink()
            print(f"--restart: deleted the cached encoder {cached}")
    try:
        enc, enc_info = encoder(prof, a.seed, progress=not a.no_progress)
    except CheckpointError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 4
    except MnistError as e:
        print(f"ERROR: MNIST: {e}", file=sys.stderr)
        return 5
    variants = VARIANTS if a.variant == "both" else (a.variant,)
    if a.diagnose:
        from repro.colocalisation.diagnose import diagnose

        res = diagnose(enc, variants, digits, a.seed, descriptor=prof.descriptor)
        (out / "diagnose.json").write_text(json.dumps({"encoder": enc_info, "alpha": prof.alpha, "losses": res}, indent=1))
        write_table(out)
        return 0
    t0 = time.perf_counter()
    try:
        run_pairs(a, prof, enc, enc_info, out, variants, digits)
    except MnistError as e:
        print(f"ERROR: MNIST: {e}", file=sys.stderr)
        return 5
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


if __name__ == "__main__":
    sys.exit(main())
