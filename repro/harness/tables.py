"""The results table of one experiment: ``results.json`` merged and ``results.md`` (paper vs ours)
rewritten from it (:func:`write_results`); ``python -m repro.publish --regenerate`` uses the same
writer, so a published table is a function of its results.json."""
from __future__ import annotations

import json
from pathlib import Path

from .profile import Profile


def _fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def pct(v: float, nd: int = 2) -> str:
    """A published percentage to ``nd`` places, half away from zero on the value as recorded: results.json
    stores means to 3 decimals (3.025 is the mean of 3.15 and 2.90), and the binary float under ``f"{3.025:.2f}"``
    (3.02499...) would print 3.02 where the text, by hand, says 3.03."""
    from decimal import ROUND_HALF_UP, Decimal
    return str(Decimal(repr(float(v))).quantize(Decimal(1).scaleb(-nd), rounding=ROUND_HALF_UP))


def write_results(exp: Experiment, profile_name: str, device: str, model_results: dict, out_dir: Path,
                  profiles: dict[str, Profile], extra_notes: list[str] = ()) -> dict:
    """Merge into ``out_dir/results.json`` and rewrite ``results.md`` (paper vs ours). Holds an
    exclusive lock (a file in the temp folder named after ``out_dir``) so separate processes (one model each) can share
    an output folder."""
    import fcntl
    import hashlib
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"stn_results_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_results(exp, profile_name, device, model_results, out_dir, profiles, extra_notes)


def _write_results(exp, profile_name, device, model_results, out_dir, profiles, extra_notes):
    path = out_dir / "results.json"
    data = {}
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("profile") != profile_name or data.get("experiment") != exp.name:
            data = {}
    data.update({"experiment": exp.name, "profile": profile_name, "device": device})
    models = data.setdefault("models", {})
    models.update(model_results)
    data["models"] = {k: models[k] for k in exp.models if k in models} | {k: v for k, v in models.items() if k not in exp.models}
    path.write_text(json.dumps(data, indent=1) + "\n")

    lines = [f"# {exp.name}: profile `{profile_name}`, device `{device}`", "",
             "| model | paper error % | ours error % | difference | seeds | iterations | params | wall time | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in data["models"].items():
        paper = exp.paper.get(name)
        diff = None if paper is None else r["error"] - paper
        per = r.get("error_per_seed", [])
        ours = pct(r["error"]) + (f" (± {pct(r['error_std'])})" if len(per) > 1 else "")
        wall = r.get("wall_time_s")
        lines.append(f"| {name} | {_fmt(paper, 1)} | {ours} | {'' if diff is None else f'{diff:+.2f}'} | "
                     f"{r.get('seeds')} | {r.get('iterations'):,} | {r.get('params'):,} | "
                     f"{'' if wall is None else f'{wall / 60:.1f} min'} | {_fmt(r.get('images_per_s'), 0)} |")
    lines += ["", "Schedules:", ""]
    notes = []
    for name, r in data["models"].items():
        prof = profiles.get(name) or (Profile(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in r["schedule"].items()})
                                      if "schedule" in r else None)
        if prof is not None:
            lines.append(f"- `{name}`: {prof.describe()}")
            if prof.note and prof.note not in notes:
                notes.append(prof.note)
    if notes:
        lines += ["", *[f"Profile note: {n}." if not n.endswith(".") else f"Profile note: {n}" for n in notes]]
    if extra_notes:
        lines += ["", *extra_notes]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return data
