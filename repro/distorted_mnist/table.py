"""Distorted MNIST outputs: ``table.md`` (the paper's Table 1 shape, ours beside each of the
paper's numbers, with every run's provenance) and ``transformers.png``, both rebuilt from the
results on disk (``python -m repro.distorted_mnist --table``, ``python -m repro.publish --regenerate``)."""
from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import torch

from repro.distorted_mnist.recipe import (DATASETS, GRID_MODELS, LABEL, PAPER, PROFILES, TABLE1_DATASETS, TC_MODELS,
                                          build_model, experiment, models_for, test_set)
from repro.harness.figures import save_figure
from repro.harness.provenance import seed_records
from repro.harness.tables import pct
from repro.paths import REPO_ROOT


def load_trained(dataset: str, model: str, out: Path, seed: int = 0) -> torch.nn.Module | None:
    ck = Path(out) / dataset / model / f"seed{seed}" / "checkpoint.pt"
    if not ck.exists():
        return None
    torch.manual_seed(seed)
    m = build_model(dataset, model)
    from repro.harness.checkpoint import load_checkpoint

    m.load_state_dict(load_checkpoint(ck)["model"])
    return m.eval()


def figure(out: str | Path, n: int = 5, datasets=DATASETS, prefix: str = "st-") -> Path | None:
    """For each data set: ``n`` test inputs, then each trained spatial transformer's output (ST-FCNs and
    ST-CNNs; ``prefix="st-cnn"`` for the ST-CNNs only), i.e. the distortion as the network undoes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = []
    for ds in datasets:
        sts = [(m, load_trained(ds, m, out)) for m in models_for(ds) if m.startswith(prefix)]
        sts = [(m, net) for m, net in sts if net is not None]
        if sts:
            rows.append((ds, sts))
    if not rows:
        return None
    cols = 1 + max(len(s) for _, s in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.75 * n * cols + 0.5, 1.0 * len(rows) + 0.7),
                             squeeze=False)
    for r, (ds, sts) in enumerate(rows):
        x = test_set(ds).images[:n]
        strip = lambda t: torch.cat(list(t[:, 0].clamp(0, 1)), 1).numpy()  # noqa: E731
        axes[r, 0].imshow(strip(x), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(ds, rotation=0, labelpad=18, fontsize=10)
        if r == 0:
            axes[r, 0].set_title("test inputs", fontsize=9)
        for j, (m, net) in enumerate(sts):
            with torch.no_grad():
                y = net.transformed(x)[0]
            axes[r, j + 1].imshow(strip(y), cmap="gray", vmin=0, vmax=1)
            axes[r, j + 1].set_title(LABEL[m], fontsize=8)
        for j in range(len(sts) + 1, cols):
            axes[r, j].axis("off")
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Distorted MNIST: test inputs and the spatial transformers' outputs (ST-FCN, ST-CNN)", fontsize=10)
    return save_figure(fig, out / "transformers.png", dpi=90)


def _load_results(out: Path, ds: str) -> dict:
    p = out / ds / "results.json"
    return json.loads(p.read_text()) if p.exists() else {}


RECIPE_COMMIT = "5d7d164"  # the commit that added repro/distorted_mnist.py (now this package); a result recording an
# older commit came from the script it replaced


@functools.lru_cache(maxsize=None)  # a commit's ancestry never changes; a table asks once per cell and per run
def predates_recipe(commit: str | None) -> bool | None:
    """Whether a result's recorded ``commit`` is older than this recipe file (:data:`RECIPE_COMMIT`):
    such a run was trained by the script this file replaced. None when git cannot tell (no commit
    recorded, no git, a shallow clone)."""
    if not commit or commit == "?":
        return None
    try:
        r = subprocess.run(["git", "merge-base", "--is-ancestor", RECIPE_COMMIT, commit], cwd=REPO_ROOT,
                           capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(r.returncode)


def write_table(out: str | Path, extra: list[str] = ()) -> Path:
    """``table.md``: the paper's Table 1 (R, RTS, P, E x 8 models) and TC row, ours beside the paper's."""
    out = Path(out)
    res = {ds: _load_results(out, ds) for ds in DATASETS}
    profiles = sorted({r.get("profile") for r in res.values() if r})
    devices = sorted({r.get("device") for r in res.values() if r})

    def cell(ds, m):
        r = res[ds].get("models", {}).get(m)
        paper = PAPER[ds].get(m)
        if r is None:
            return f"{paper} / not run"
        stale = ""
        prof = res[ds].get("profile")
        if prof in PROFILES and r.get("iterations") != experiment(ds).profile(prof, m).steps:
            stale = f" (stale: {r.get('iterations')} it.)"  # trained under an older step count of this profile
        spread = f" ± {pct(r['error_std'])} ({len(r['seeds'])} seeds)" if len(r.get("seeds", [])) > 1 else ""
        old = " ‡" if older_than_recipe(r) else ""
        return f"{paper} / **{pct(r['error'])}**{spread}{stale}{old}"

    def older_than_recipe(r):
        return any(predates_recipe(s.get("versions", {}).get("git")) for s in seed_records(r))

    def wall(ds, m):
        r = res[ds].get("models", {}).get(m)
        return "–" if r is None else f"{r['wall_time_s'] / 60 / max(len(r.get('seeds', [])), 1):.1f}"  # mean per seed

    seeds = sorted({s for ds in DATASETS for r in res[ds].get("models", {}).values() for s in r.get("seeds", [])})
    lines = ["# Distorted MNIST (main paper Table 1): % test error, paper / ours", "",
             f"Profile: `{', '.join(p for p in profiles if p) or 'none'}`; device: `{', '.join(d for d in devices if d) or '–'}`. "
             f"Ours: seeds {seeds or '?'} (mean where several); the paper: mean of 3 seeds after 150k SGD iterations.", "",
             "| model | " + " | ".join(TABLE1_DATASETS) + " |", "|---|" + "---|" * len(TABLE1_DATASETS)]
    for m in GRID_MODELS:
        lines.append(f"| {LABEL[m]} | " + " | ".join(cell(ds, m) for ds in TABLE1_DATASETS) + " |")
    lines += ["", "Translated + cluttered MNIST (TC, 60×60), paper / ours:", "",
              "| model | TC |", "|---|---|"]
    for m in TC_MODELS:
        lines.append(f"| {LABEL[m]} | {cell('TC', m)} |")
    if any(older_than_recipe(r) for ds in DATASETS for r in res[ds].get("models", {}).values()):
        lines += ["", f"‡ trained at a commit older than `repro/distorted_mnist.py` ({RECIPE_COMMIT}), i.e. by the "
                      "script it replaced (the provenance table names the commit); rerun the row for a result of "
                      "this recipe."]
    lines += ["", "Training wall time per run (minutes, the mean over seeds) / iterations × batch / test images:", "",
              "| model | " + " | ".join(DATASETS) + " |", "|---|" + "---|" * len(DATASETS)]
    for m in GRID_MODELS:
        cells = []
        for ds in DATASETS:
            r = res[ds].get("models", {}).get(m)
            if m not in models_for(ds):
                cells.append("")
            elif r is None:
                cells.append("not run")
            else:
                sch = r.get("schedule", {})
                cells.append(f"{wall(ds, m)} min / {r['iterations']}×{sch.get('batch_size')} / "
                             f"{_n_test(out, ds, m) or '?'}")
        lines.append(f"| {LABEL[m]} | " + " | ".join(cells) + " |")
    total = sum(r.get("wall_time_s", 0) for ds in DATASETS for r in res[ds].get("models", {}).values())
    lines += ["", f"Total training wall time: {total / 60:.1f} min.", ""]
    runs = [(ds, m, r) for ds in DATASETS for m, r in res[ds].get("models", {}).items()]
    if runs:  # provenance of every cell: where it ran, from which revision, how fast
        lines += ["Provenance per run (seed, error, data version and generator options, commit, clean tree, device, "
                  "threads, steps/s, wall time):", "",
                  "| data set | model | seed | error % | data | commit | tree | device | threads | steps/s | minutes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for ds, m, r in runs:
            batch = r.get("schedule", {}).get("batch_size")
            for s in seed_records(r):
                v = s.get("versions", {})
                clean = {True: "clean", False: "**dirty**"}.get(v.get("git_clean"), "not recorded")
                steps_s = (s["images_per_s"] / batch) if s.get("images_per_s") and batch else None
                wall = s.get("wall_time_s")
                older = " ‡" if predates_recipe(v.get("git")) else ""
                lines.append(f"| {ds} | {LABEL[m]} | {s['seed']} | {pct(s['error'])} | {_data_cell(r.get('data'))} | "
                             f"{v.get('git') or '?'}{older} | {clean} | "
                             f"{res[ds].get('device', '?')} | {v.get('threads', 'not recorded')} | "
                             f"{'–' if steps_s is None else f'{steps_s:.1f}'} | {'–' if wall is None else f'{wall / 60:.1f}'} |")
        lines.append("")
    lines += list(extra)
    path = out / "table.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def _data_cell(data: dict | None) -> str:
    """A result's data record as a table cell: version and options; 'inferred' where the record was
    derived from the run's commit (:mod:`repro.data_records`), 'not recorded' where there is none."""
    if not data:
        return "not recorded"
    opts = ", ".join(f"{k}={v}" for k, v in sorted(data.get("options", {}).items()))
    return f"v{data.get('version')}" + (f" ({opts})" if opts else "") + (", inferred" if data.get("inferred") else "")


def _n_test(out: Path, ds: str, m: str):
    p = out / ds / m / "seed0" / "result.json"
    if p.exists():
        return json.loads(p.read_text()).get("n_test")
    return None


FINDINGS_FILE = "findings.md"


def extra_notes(out: Path) -> list[str]:
    f = out / FINDINGS_FILE
    return [f.read_text()] if f.exists() else []
