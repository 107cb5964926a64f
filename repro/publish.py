"""Publish a finished run: ``python -m repro.publish SRC DST``.

Recipes write into the untracked ``runs/<recipe>/`` (see :mod:`repro.paths`); the committed
results live in ``repro/results/``. This copies the results of ``SRC`` into ``DST`` -- every file
(results.json / .md, table.md, per-run result.json, figures, logs, notes) except checkpoints
(``*.pt``), temporary files (``*.tmp``) and lock files -- keeping the folder layout, then lists what
it copied. Files in ``DST`` that ``SRC`` lacks are left alone. A ``results.json`` in ``DST`` that
lists models its replacement lacks (a one-model run published over the full table) stops the
copy, naming them, unless ``--merge`` or ``--force`` (replace). ``--merge`` merges every
results.json that ``DST`` already has: this run's models are added, the others kept, and a model
already published under the same schedule gains this run's seeds (a seed-1 run published onto a
seed-0 row makes it a two-seed row: mean, spread and each seed's provenance); results.md is
rewritten from the merged table. Review with ``git diff`` / ``git status`` and commit.

``--regenerate [DIR]`` (default ``repro/results``) rebuilds every published table under DIR from
the results beside it, with the same writers the recipes use: ``results.md`` from its
``results.json``, a distorted-MNIST or co-localisation ``table.md`` from its folder's results, an
SVHN ``timing.md`` from its ``timing.json``. ``--check`` rebuilds them into a scratch copy instead
and lists every table that differs byte for byte (exit 1 if any). The few tables written by an
earlier format of a writer (:data:`LEGACY_TABLES`) are left as they are.

    python -m repro.publish runs/mnist_addition repro/results/mnist_addition
    python -m repro.publish runs/mnist_addition repro/results/mnist_addition --dry-run
    python -m repro.publish runs/s1/P repro/results/distorted_mnist/paper/P --merge   # add a seed
    python -m repro.publish --regenerate --check                                      # tables == their results
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path

from repro.paths import PUBLISHED_DIR

SKIP_SUFFIXES = (".pt", ".tmp", ".lock")

# Published tables written by an earlier format of their writer (the schedule note on each schedule
# line, the notes without "Profile note:", the grid tables before the "(stale: ...)" marker and the
# per-seed wall-time column): the current writers would rewrite them, so --regenerate leaves them
# alone. Relative to repro/results; tests/test_publish_regenerate.py pins the list.
LEGACY_TABLES = (
    "distorted_mnist/E/results.md",
    "distorted_mnist/R/results.md",
    "distorted_mnist/ablations/fixed_data/table.md",
    "distorted_mnist/ablations/steps_x16_fcn/table.md",
    "distorted_mnist/ablations/steps_x16_st-fcn-aff/table.md",
    "distorted_mnist/ablations/steps_x4/table.md",
    "svhn_synthetic64_quick/results.md",
)


def files_to_publish(src: Path) -> list[Path]:
    """The files under ``src`` that are published (relative paths, sorted)."""
    out = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.name.endswith(SKIP_SUFFIXES) and not p.name.startswith(".results.lock"):
            out.append(p.relative_to(src))
    return out


def dropped_models(src: Path, dst: Path, files: list[Path]) -> dict[Path, list[str]]:
    """For each ``results.json`` to publish: the models ``DST``'s copy lists and ``SRC``'s lacks."""
    out = {}
    for rel in files:
        if rel.name != "results.json" or not (dst / rel).is_file():
            continue
        try:
            old = json.loads((dst / rel).read_text()).get("models", {})
            new = json.loads((src / rel).read_text()).get("models", {})
        except (ValueError, AttributeError):
            continue
        missing = [m for m in old if m not in new]
        if missing:
            out[rel] = missing
    return out


def _notes_of(md: str) -> list[str]:
    """The paragraphs a recipe appends to ``results.md`` after the table, schedules and profile notes."""
    lines = md.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("Profile note:")), None)
    if start is None:
        return []
    rest = lines[start + 1:]
    while rest and (not rest[0].strip() or rest[0].startswith("Profile note:")):
        rest = rest[1:]
    return [line for line in rest if line.strip()]


def _same_schedule(a: dict, b: dict) -> bool:
    """Two results.json entries of one model trained alike (schedule, iterations, parameters) but
    for their seeds, so that their seeds may be pooled."""
    def key(e):
        return ({k: v for k, v in e.get("schedule", {}).items() if k != "seeds"}, e.get("iterations"), e.get("params"))
    return "schedule" in a and "schedule" in b and key(a) == key(b)


def merge_seeds(old: dict, new: dict) -> dict:
    """One model's entry from a published one and a new run of it under the same schedule: the
    union of their seeds (the new run's record wins for a seed both hold), summarised again by
    :func:`repro.harness.provenance.summarise_seeds`; ``versions`` is the new run's, every seed's own is
    in ``runs``."""
    from repro.harness.provenance import seed_records, summarise_seeds

    by_seed = {r["seed"]: r for r in seed_records(old)} | {r["seed"]: r for r in seed_records(new)}
    summary = summarise_seeds(list(by_seed.values()))
    return {**new, **summary, "schedule": {**new["schedule"], "seeds": summary["seeds"]}}


def _published_experiment(models: dict, name: str):
    """What :func:`repro.harness.tables.write_results` reads of an Experiment, from a results.json's models
    (the paper numbers are in each model's ``paper_error``)."""
    class _Published:
        pass

    _Published.name = name
    _Published.paper = {m: r.get("paper_error") for m, r in models.items()}
    _Published.models = tuple(models)
    return _Published


def merge_results(src: Path, dst: Path, rel: Path) -> list[str]:
    """Merge ``SRC/rel`` (a results.json) into ``DST/rel``: SRC's models are added to DST's; one
    that DST already holds under the same schedule gains SRC's seeds (:func:`merge_seeds`), under
    another schedule SRC's entry replaces it; ``results.md`` beside it is rewritten from the merged
    models (the paper numbers are in each model's ``paper_error``). Returns the merged model names."""
    from repro.harness.tables import write_results

    old = json.loads((dst / rel).read_text())
    new = json.loads((src / rel).read_text())
    if (old.get("experiment"), old.get("profile")) != (new.get("experiment"), new.get("profile")):
        raise SystemExit(f"error: {dst / rel} is {old.get('experiment')} / {old.get('profile')}, {src / rel} is "
                         f"{new.get('experiment')} / {new.get('profile')}: not merged")
    models = dict(old.get("models", {}))
    for m, r in new.get("models", {}).items():
        models[m] = merge_seeds(models[m], r) if m in models and _same_schedule(models[m], r) else r

    md = src / rel.parent / "results.md"
    notes = _notes_of(md.read_text()) if md.is_file() else []
    (dst / rel).write_text(json.dumps({**old, "models": {}}, indent=1))  # write_results merges into it
    write_results(_published_experiment(models, new["experiment"]), new["profile"], new.get("device", "?"), models,
                  dst / rel.parent, {}, notes)
    return list(models)


def regenerate(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Rewrite every published table under ``root`` from the results beside it (module docstring);
    ``skip``: paths relative to ``root`` left alone. Returns the tables written, relative to ``root``."""
    from repro.harness.tables import write_results

    written = []

    def todo(path: Path) -> bool:
        return path.relative_to(root).as_posix() not in skip

    for rj in sorted(root.rglob("results.json")):
        md = rj.parent / "results.md"
        if not md.is_file() or not todo(md):
            continue
        data = json.loads(rj.read_text())
        models = data.get("models", {})
        write_results(_published_experiment(models, data["experiment"]), data["profile"], data.get("device", "?"),
                      models, rj.parent, {}, _notes_of(md.read_text()))
        written.append(md)
    for table in sorted(root.rglob("table.md")):
        out = table.parent
        if not todo(table):
            continue
        if any((out / v).is_dir() and any((out / v).glob("digit*.json")) for v in ("T", "TC")):
            from repro.colocalisation.table import write_table as coloc_table

            coloc_table(out)
        elif any(json.loads(r.read_text()).get("experiment", "").startswith("distorted_mnist_")
                 for r in out.glob("*/results.json")):
            from repro.distorted_mnist.table import extra_notes, write_table as distorted_table

            distorted_table(out, extra_notes(out))
        else:
            continue
        written.append(table)
    for tj in sorted(root.rglob("timing.json")):
        md = tj.parent / "timing.md"
        if md.is_file() and todo(md):
            from repro.svhn.benchmark import render_timing

            md.write_text(render_timing(json.loads(tj.read_text())))
            written.append(md)
    return [w.relative_to(root) for w in written]


def check_regenerated(root: Path, skip: tuple[str, ...] = ()) -> tuple[list[Path], list[Path]]:
    """Regenerate the tables of a scratch copy of ``root``: (tables identical byte for byte, tables that differ)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "results"
        shutil.copytree(root, copy)
        rels = regenerate(copy, skip)
        same = [r for r in rels if filecmp.cmp(copy / r, root / r, shallow=False)]
        return same, [r for r in rels if r not in same]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repro.publish", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("src", metavar="SRC", nargs="?", help="a run's output folder, e.g. runs/mnist_addition")
    ap.add_argument("dst", metavar="DST", nargs="?", help="where to publish it, e.g. repro/results/mnist_addition")
    ap.add_argument("--regenerate", nargs="?", const=str(PUBLISHED_DIR), metavar="DIR",
                    help="rebuild every published table under DIR (default repro/results) from its results")
    ap.add_argument("--check", action="store_true",
                    help="with --regenerate: rebuild into a scratch copy and list the tables that differ (exit 1 if any)")
    ap.add_argument("--dry-run", action="store_true", help="only list what would be copied")
    ap.add_argument("--force", action="store_true", help="publish even if it drops models from a published results.json")
    ap.add_argument("--merge", action="store_true",
                    help="merge a run's models into a published results.json (a row or a seed at a time) instead of replacing it")
    a = ap.parse_args(argv)
    if a.regenerate is not None:
        root = Path(a.regenerate)
        if a.src or a.dst or not root.is_dir():
            ap.error("--regenerate [DIR] takes no SRC / DST; DIR must be a folder of published results")
        skip = LEGACY_TABLES if root.resolve() == PUBLISHED_DIR.resolve() else ()
        if a.check:
            same, differ = check_regenerated(root, skip)
            for r in differ:
                print(f"differs: {root / r}", file=sys.stderr)
            print(f"{len(same)} table(s) regenerate byte for byte, {len(differ)} differ"
                  f"{f'; {len(skip)} legacy table(s) not regenerated' if skip else ''}")
            return 1 if differ else 0
        for r in regenerate(root, skip):
            print(f"regenerated {root / r}")
        return 0
    if not a.src or not a.dst:
        ap.error("give SRC and DST (or --regenerate)")
    src, dst = Path(a.src), Path(a.dst)
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    if src.resolve() == dst.resolve():
        print(f"error: SRC and DST are the same folder ({src})", file=sys.stderr)
        return 2
    files = files_to_publish(src)
    if not files:
        print(f"error: nothing to publish in {src}", file=sys.stderr)
        return 2
    lost = {} if a.merge else dropped_models(src, dst, files)  # --merge keeps every published model
    if a.merge:
        merged = [rel for rel in files if rel.name == "results.json" and (dst / rel).is_file()]
        for rel in merged:
            if not a.dry_run:
                print(f"merge {src / rel} into {dst / rel}: {', '.join(merge_results(src, dst, rel))}")
            else:
                print(f"would merge {src / rel} into {dst / rel}")
        files = [rel for rel in files if rel not in merged and not (rel.name == "results.md" and rel.parent / "results.json" in merged)]
    if lost and not a.force:
        for rel, models in lost.items():
            print(f"error: {dst / rel} lists {', '.join(models)}, which {src / rel} lacks; publishing would drop them "
                  f"(publish a run with every model, pass --merge to add this run's models, or --force)", file=sys.stderr)
        return 2
    for rel in files:
        print(f"{'would copy' if a.dry_run else 'copy'} {src / rel} -> {dst / rel}")
        if not a.dry_run:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    print(f"{len(files)} file(s) {'to publish' if a.dry_run else 'published'} from {src} to {dst}"
          f"{'' if a.dry_run else '; review with git status / git diff, then commit'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
