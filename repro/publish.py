"""Publish a finished run: ``python -m repro.publish SRC DST``.

Recipes write into the untracked ``runs/<recipe>/`` (see :mod:`repro.paths`); the committed
results live in ``repro/results/``. This copies the results of ``SRC`` into ``DST`` -- every file
(results.json / .md, table.md, per-run result.json, figures, logs, notes) except checkpoints
(``*.pt``), temporary files (``*.tmp``) and lock files -- keeping the folder layout, then lists what
it copied. Files in ``DST`` that ``SRC`` lacks are left alone. A ``results.json`` in ``DST`` that
lists models its replacement lacks (a one-model run published over the full table) stops the
copy, naming them, unless ``--force``. Review with ``git diff`` / ``git status`` and commit.

    python -m repro.publish runs/mnist_addition repro/results/mnist_addition
    python -m repro.publish runs/mnist_addition repro/results/mnist_addition --dry-run
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SKIP_SUFFIXES = (".pt", ".tmp", ".lock")


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repro.publish", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("src", metavar="SRC", help="a run's output folder, e.g. runs/mnist_addition")
    ap.add_argument("dst", metavar="DST", help="where to publish it, e.g. repro/results/mnist_addition")
    ap.add_argument("--dry-run", action="store_true", help="only list what would be copied")
    ap.add_argument("--force", action="store_true", help="publish even if it drops models from a published results.json")
    a = ap.parse_args(argv)
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
    lost = dropped_models(src, dst, files)
    if lost and not a.force:
        for rel, models in lost.items():
            print(f"error: {dst / rel} lists {', '.join(models)}, which {src / rel} lacks; publishing would drop them "
                  f"(publish a run with every model, or pass --force)", file=sys.stderr)
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
