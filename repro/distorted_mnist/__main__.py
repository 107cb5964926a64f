"""``python -m repro.distorted_mnist``: one data set (``--dataset``), the whole grid (``--all``) or
only the table (``--table``); see :mod:`repro.distorted_mnist.recipe` for the recipe."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from repro.distorted_mnist.recipe import DATA_MODES, DATASETS, DEFAULT_OUT, GRID_MODELS, experiment, models_for, notes
from repro.distorted_mnist.table import extra_notes, figure, write_table
from repro.harness.cli import main as cli_main, out_problem


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--x V`` or ``--x=V``), or None."""
    for i, x in enumerate(args):
        if x == name and i + 1 < len(args):
            return args[i + 1]
        if x.startswith(name + "="):
            return x.split("=", 1)[1]
    return None


def jobs_ok(datasets: list[str], sel: str) -> bool:
    """--all with --model: every named model belongs to at least one of the data sets asked for."""
    if sel == "all":
        return True
    names = [m.strip() for m in sel.split(",") if m.strip()]
    missing = [m for m in names if not any(m in models_for(ds) for ds in datasets)]
    if missing:
        print(f"error: model(s) {missing} are in none of the data sets {datasets}", file=sys.stderr)
    return not missing


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
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a generator option of the data set (repeatable; repro/data/options.py), e.g. "
                         "--data-option corners=source for P; recorded in every result.json")
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
    for i, x in enumerate(rest):  # the harness gets --out <out>/<dataset>
        if x == "--out" and i + 1 < len(rest):
            out, rest = rest[i + 1], rest[:i] + rest[i + 2:]
            break
        if x.startswith("--out="):
            out, rest = x.split("=", 1)[1], rest[:i] + rest[i + 1:]
            break
    problem = out_problem(out)
    if not problem and a.data_option:
        try:
            for ds in ([d.strip() for d in a.datasets.split(",") if d.strip()] if a.all else [a.dataset]):
                if ds is not None:
                    experiment(ds, a.data, a.data_option)
        except ValueError as e:
            problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sel = _option(rest, "--model") or "all"
    known = set(models_for(a.dataset)) if a.dataset and not a.all else set(GRID_MODELS)
    bad = [m for m in sel.split(",") if m.strip() and m.strip() not in known] if sel != "all" else []
    if bad and not a.table:  # before anything is trained or written (no table of "not run" cells)
        print(f"error: unknown model(s) {bad}; choose from {sorted(known)} or 'all'", file=sys.stderr)
        return 2
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
        rest = [x for i, x in enumerate(rest) if not (x == "--model" or x.startswith("--model=")
                                                        or (i > 0 and rest[i - 1] == "--model"))]
        if not jobs_ok(want, sel):
            return 2
        jobs = [(ds, m) for ds in want
                for m in (models_for(ds) if sel == "all" else [m for m in sel.split(",") if m in models_for(ds)])]
        for ds, m in (reversed(jobs) if a.reverse else jobs):
            # one harness call per model: a failure (e.g. NaN) does not stop the grid
            t = time.perf_counter()
            c = cli_main(experiment(ds, a.data, a.data_option), str(Path(out) / ds), rest + ["--model", m],
                         notes=notes(a.data))
            print(f"[grid] {ds} {m}: exit {c} ({time.perf_counter() - t:.0f} s)", flush=True)
            code = code or c
            if c == 2:  # a bad command (e.g. a checkpoint in the way): the same for every job, so stop
                return c
            write_table(out, extra_notes(Path(out)))
            if c >= 128:  # interrupted (SIGINT / SIGTERM): stop the grid, its checkpoint is saved
                return c
    else:
        if a.dataset is None:
            print("give --dataset R|RTS|P|E|TC, or --all", file=sys.stderr)
            return 2
        code = cli_main(experiment(a.dataset, a.data, a.data_option), str(Path(out) / a.dataset), rest,
                        notes=notes(a.data))
        if code == 2:  # a bad command: nothing ran, no table to rewrite
            return code
    write_table(out, extra_notes(Path(out)))
    if not a.no_figure:
        try:
            figure(out)
        except Exception as e:  # noqa: BLE001 -- the figure must not fail a finished grid
            print(f"figure failed: {e}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
