"""Provenance of a result: library versions, commit, clean tree, threads (:func:`versions`), and the
per-seed records of a results.json entry with their summary over seeds."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def versions() -> dict:
    """Provenance of a result: library versions, the commit, whether the tree was clean, threads, host."""
    import triton

    import stn_triton

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    from repro.data.sets import VERSIONS as data_versions

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "stn_triton": stn_triton.__version__, "git": commit,
            "git_clean": (status == "") if commit else None,
            "threads": torch.get_num_threads(), "host_cpus": os.cpu_count(), "machine": platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "data_versions": dict(data_versions)}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for provenance: results can differ across CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def seed_record(seed: int, result: dict, versions_: dict) -> dict:
    """One seed's line in a results.json model entry (``runs``): its error, cost and provenance."""
    return {"seed": seed, "error": result["error"], "wall_time_s": result.get("wall_time_s"),
            "images_per_s": result.get("images_per_s"), "final_train_loss": result.get("final_train_loss"),
            "versions": versions_}


def seed_records(entry: dict) -> list[dict]:
    """The per-seed records of a results.json model entry. Entries written before ``runs`` existed
    hold one seed, whose provenance is the entry's own."""
    if "runs" in entry:
        return [dict(r) for r in entry["runs"]]
    if len(entry.get("seeds", [])) != 1:
        raise ValueError(f"a results.json entry without 'runs' must hold one seed, this one holds {entry.get('seeds')}")
    return [seed_record(entry["seeds"][0], {**entry, "final_train_loss": (entry.get("final_train_loss") or [None])[0]},
                        entry.get("versions", {}))]


def summarise_seeds(records: list[dict]) -> dict:
    """A model's result over its seeds, from :func:`seed_record` s: mean error and sample standard
    deviation (0 for one seed), the per-seed lists in seed order, total wall time, mean images/s."""
    records = sorted(records, key=lambda r: r["seed"])
    errs = [r["error"] for r in records]
    mean = sum(errs) / len(errs)
    std = (sum((e - mean) ** 2 for e in errs) / max(len(errs) - 1, 1)) ** 0.5
    ips = [r["images_per_s"] for r in records if r.get("images_per_s")]
    walls = [r["wall_time_s"] for r in records if r.get("wall_time_s") is not None]
    return {"error": round(mean, 3), "error_std": round(std, 3), "error_per_seed": errs,
            "seeds": [r["seed"] for r in records], "wall_time_s": round(sum(walls), 1),
            "images_per_s": round(sum(ips) / len(ips), 1) if ips else None,
            "final_train_loss": [r.get("final_train_loss") for r in records], "runs": records}
