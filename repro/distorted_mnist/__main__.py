"""``python -m repro.distorted_mnist``: one data set (``--dataset``), the whole grid (``--all``) or
only the table (``--table``); see :mod:`repro.distorted_mnist.recipe` for the recipe."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from repro.distorted_mnist.recipe import DATA_MODES, DATASETS, DEFAULT_OUT, experiment, models_for, notes
from repro.distorted_mnist.table import extra_notes, figure, write_table
from repro.harness.cli import main as cli_main


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m repro.distorted_mnist", add_help=False)
    ap.add_argument("--dataset", choices=DATASETS)
    ap.add_argument("--all", action="store_true", help="the whole Table-1 grid + TC (implies --resume)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="with --all: comma-separated subset")
    ap.add_argument("--reverse", action="store_true",
                    help="with --all: walk the grid backwards (a second process can then share a grid: "
                         "finished runs are skipped)")
    ap.add_argument("--data", choices=DATA_MODES, default="online", help="training data mode")
    ap.add_argument("--table", action="store_true", help="only rebuild table.md and the figure")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("-h", "--help", action="store_true")
    a, rest = ap.parse_known_args(argv)
    if a.help:
        ap.print_help()
        print("\nremaining options are the harness's:")
        from repro.harness.cli import parser

        parser(experiment("R"), DEFAULT_OUT).print_help()
        return 0
    out = DEFAULT_OUT
    if "--out" in rest:  # the harness gets --out <out>/<dataset>
        i = rest.index("--out")
        out = rest[i + 1]
        rest = rest[:i] + rest[i + 2:]
    code = 0
    if a.table:
        pass
    elif a.all:
        want = [d.strip() for d in a.datasets.split(",") if d.strip()]
        bad = [d for d in want if d not in DATASETS]
        if bad:
            print(f"unknown data set(s) {bad}; choose from {list(DATASETS)}", file=sys.stderr)
            return 2
        rest = [x for x in rest if x != "--resume"] + ["--resume"]
        if "--model" in rest:
            i = rest.index("--model")
            sel = rest[i + 1]
            rest = rest[:i] + rest[i + 2:]
        else:
            sel = "all"
        jobs = [(ds, m) for ds in want
                for m in (models_for(ds) if sel == "all" else [m for m in sel.split(",") if m in models_for(ds)])]
        for ds, m in (reversed(jobs) if a.reverse else jobs):
            # one harness call per model: a failure (e.g. NaN) does not stop the grid
            t = time.perf_counter()
            c = cli_main(experiment(ds, a.data), str(Path(out) / ds), rest + ["--model", m], notes=notes(a.data))
            print(f"[grid] {ds} {m}: exit {c} ({time.perf_counter() - t:.0f} s)", flush=True)
            code = code or c
            write_table(out, extra_notes(Path(out)))
            if c >= 128:  # interrupted (SIGINT / SIGTERM): stop the grid, its checkpoint is saved
                return c
    else:
        if a.dataset is None:
            print("give --dataset R|RTS|P|E|TC, or --all", file=sys.stderr)
            return 2
        code = cli_main(experiment(a.dataset, a.data), str(Path(out) / a.dataset), rest, notes=notes(a.data))
    write_table(out, extra_notes(Path(out)))
    if not a.no_figure:
        try:
            figure(out)
        except Exception as e:  # noqa: BLE001 -- the figure must not fail a finished grid
            print(f"figure failed: {e}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
