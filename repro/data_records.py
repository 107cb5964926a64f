"""Data records for results made before they existed: ``python -m repro.data_records [DIR]``.

Every result now records its data (``"data": {"set", "version", "options"}``, issue #29). Results
trained earlier record only their commit (each seed's ``versions.git``); the data version of a set is
what ``repro/data/sets.py`` said at that commit, and its options are the readings that version had
(:func:`repro.data.options.readings`; version 1 had version 2's readings, rendered per machine). This
writes that record, marked ``"inferred"`` with the commit it came from, into every model entry of a
``results.json`` under DIR (default ``repro/results``) that has none, and into the entry's per-seed
``result.json`` files; recorded entries are left alone. Then rebuild the tables
(``python -m repro.publish --regenerate DIR``) and review with ``git diff``.

Only the distorted-MNIST sets and MNIST addition carry data versions; other experiments are skipped.
A model entry whose seeds were trained at commits with different data versions stops the command.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from repro.paths import PUBLISHED_DIR


def data_set_of(experiment: str) -> str | None:
    """The data set an experiment trains on (``distorted_mnist_P`` -> ``P``), None for one without versions."""
    if experiment.startswith("distorted_mnist_"):
        return experiment[len("distorted_mnist_"):]
    return {"mnist_addition": "addition"}.get(experiment)


def versions_in(sets_py: str) -> dict[str, int] | int:
    """The data versions a ``repro/data/sets.py`` source declares: ``VERSIONS = {...}`` (per set) or, before
    per-set versions, ``VERSION = n`` (every set)."""
    m = re.search(r"^VERSIONS = (\{.*?\})", sets_py, re.M | re.S)
    if m:
        return ast.literal_eval(m.group(1))
    m = re.search(r"^VERSION = (\d+)", sets_py, re.M)
    if m:
        return int(m.group(1))
    raise ValueError("no VERSIONS / VERSION in this repro/data/sets.py")


def _sets_py_at(commit: str, root: Path) -> str:
    proc = subprocess.run(["git", "show", f"{commit}:repro/data/sets.py"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"cannot read repro/data/sets.py at commit {commit}: {proc.stderr.strip()[:200]}")
    return proc.stdout


def inferred_record(name: str, commit: str, sets_py: str) -> dict:
    """The data record of a run of set ``name`` trained at ``commit``, whose ``repro/data/sets.py`` is ``sets_py``."""
    from repro.data.options import readings

    declared = versions_in(sets_py)
    version = declared if isinstance(declared, int) else declared[name]
    return {"set": name, "version": version, "options": readings(name, version),
            "inferred": f"from commit {commit} (repro/data/sets.py there): the run predates data records"}


def backfill(root: Path, sets_py_at=None) -> list[Path]:
    """Write inferred data records under ``root`` (module docstring); returns the files changed.
    ``sets_py_at(commit)``: the source of ``repro/data/sets.py`` at a commit (default: from git)."""
    from repro.harness.provenance import seed_records

    repo = Path(__file__).resolve().parents[1]
    cache: dict[str, str] = {}

    def source(commit):
        if commit not in cache:
            cache[commit] = (sets_py_at or (lambda c: _sets_py_at(c, repo)))(commit)
        return cache[commit]

    changed = []
    for rj in sorted(root.rglob("results.json")):
        doc = json.loads(rj.read_text())
        name = data_set_of(doc.get("experiment", "")) if isinstance(doc, dict) else None
        if name is None:
            continue
        touched = False
        for model, entry in doc.get("models", {}).items():
            if entry.get("data"):
                continue
            records = {}
            for s in seed_records(entry):
                commit = s.get("versions", {}).get("git")
                if not commit:
                    raise SystemExit(f"error: {rj} {model} seed {s['seed']} records no commit: no data record inferred")
                records[s["seed"]] = inferred_record(name, commit, source(commit))
            kinds = {(r["version"], json.dumps(r["options"], sort_keys=True)) for r in records.values()}
            if len(kinds) != 1:
                raise SystemExit(f"error: {rj} {model}: its seeds were trained on different data versions "
                                 f"({sorted(kinds)}); not recorded")
            entry["data"] = next(iter(records.values()))
            touched = True
            for seed, record in records.items():
                per_seed = rj.parent / model / f"seed{seed}" / "result.json"
                if per_seed.is_file():
                    text = per_seed.read_text()
                    result = json.loads(text)
                    if not result.get("data"):
                        _write_like(per_seed, text, {**result, "data": record})
                        changed.append(per_seed)
        if touched:
            _write_like(rj, rj.read_text(), doc)
            changed.append(rj)
    return changed


def _write_like(path: Path, old_text: str, doc: dict) -> None:
    """``doc`` as JSON in the format of the file it replaces (indent 1; a final newline where it had one)."""
    path.write_text(json.dumps(doc, indent=1) + ("\n" if old_text.endswith("\n") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repro.data_records", description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(PUBLISHED_DIR), help="published results (default repro/results)")
    a = ap.parse_args(argv)
    root = Path(a.dir)
    if not root.is_dir():
        ap.error(f"{root} is not a folder")
    changed = backfill(root)
    for path in changed:
        print(f"recorded {path}")
    print(f"{len(changed)} file(s) given an inferred data record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
