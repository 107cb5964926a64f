"""Where the recipes write.

* ``RUNS_DIR`` = ``<repository root>/runs`` (git-ignored): every recipe's default ``--out`` is
  ``runs/<recipe>/`` (checkpoints, results.json / results.md, figures). Training never touches the
  committed results.
* ``PUBLISHED_DIR`` = ``repro/results`` (tracked): the published results. Copying a finished run
  there is a deliberate step: ``python -m repro.publish runs/<recipe> repro/results/<recipe>``.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = REPO_ROOT / "runs"
PUBLISHED_DIR = Path(__file__).resolve().parent / "results"


def default_out(recipe: str) -> str:
    """The default output folder of ``recipe``: ``runs/<recipe>`` at the repository root."""
    return str(RUNS_DIR / recipe)
