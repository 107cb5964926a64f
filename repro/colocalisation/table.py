"""Co-localisation outputs: ``table.md`` (supplement Table 2 shape: % localised per class, the ink
reference beside it, provenance, then findings.md) and the steps figure (supplement Figure 1), both
rebuilt from the per-digit results on disk (``python -m repro.publish --regenerate``)."""
from __future__ import annotations

import json
from pathlib import Path

from repro.colocalisation.geometry import ink_centroid_boxes, iou
from repro.colocalisation.recipe import VARIANTS
from repro.harness.figures import save_figure

# the schedule fields the table's header lists, when a result records them
TABLE_KEYS = ("localiser", "steps", "refine_steps", "batch", "optimizer", "lr", "cand_stride", "tau", "pca_dims",
              "encoder_augment", "encoder_steps", "descriptor", "alpha")


def figure(out: Path, variant: str, digit: int, seed: int = 0, n_cols: int = 6) -> Path | None:
    """Supplement Figure 1: the predicted boxes of three images over the optimisation steps."""
    p = out / variant / f"digit{digit}.json"
    if not p.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from repro.data import colocalisation_set
    from repro.data.options import of_result

    r = json.loads(p.read_text())
    ds = colocalisation_set(variant, digit, seed=seed, options=of_result(f"coloc-{variant}", r))
    snaps = r["snapshots"]
    pick = [snaps[round(k * (len(snaps) - 1) / (n_cols - 1))] for k in range(n_cols)] if len(snaps) >= n_cols else snaps
    track = r.get("track", [0, 1, 2])
    fig, axes = plt.subplots(len(track), len(pick), figsize=(1.6 * len(pick), 1.7 * len(track) + 0.4), squeeze=False)
    for a, idx in enumerate(track):
        gt = ds.boxes[idx].tolist()
        for c, s in enumerate(pick):
            ax = axes[a, c]
            ax.imshow(ds.images[idx, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.add_patch(Rectangle((gt[0] - .5, gt[1] - .5), gt[2] - gt[0], gt[3] - gt[1], fill=False, ec="lime",
                                   lw=1, ls="--"))
            b = s["boxes"][a]
            ax.add_patch(Rectangle((b[0] - .5, b[1] - .5), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if a == len(track) - 1:
                ax.set_xlabel(f"step {s['step']}\n({100 * s['localised']:.0f}% of 100)", fontsize=8)
    opt = r.get("schedule", {}).get("optimizer", "sgd")
    opt = opt.upper() if opt == "sgd" else opt.capitalize()
    fig.suptitle(f"Co-localisation {variant}, digit {digit}: predicted box (red) over {opt} steps; "
                 f"true box dashed green", fontsize=9)
    return save_figure(fig, out / f"steps_{variant}_digit{digit}.png", dpi=90)


def ink_reference_pct(variant: str, result: dict) -> float:
    """% of a run's images (the same ones: its variant, digit, seed and count) that
    :func:`ink_centroid_boxes` localises (IoU > 0.5)."""
    from repro.data import colocalisation_set
    from repro.data.options import of_result

    ds = colocalisation_set(variant, result["digit"], seed=result.get("seed", 0), n=len(result["final_boxes"]),
                            options=of_result(f"coloc-{variant}", result))
    return 100.0 * (iou(ink_centroid_boxes(ds.images), ds.boxes) > 0.5).float().mean().item()


def _provenance(res: dict) -> str:
    """Where each variant's results come from (they may be from different runs): commit, tree, data
    set version and options, the encoder's test error."""
    parts = []
    for v in VARIANTS:
        if not res[v]:
            continue
        r = next(iter(res[v].values()))
        ver, data, enc = r.get("versions", {}), r.get("data"), r.get("encoder") or {}
        data_txt = (f"data v{data['version']}" + (f" ({', '.join(f'{k}={x}' for k, x in sorted(data['options'].items()))})"
                                                   if data["options"] else "")) if data else "data not recorded (version 2)"
        parts.append(f"{v}: commit {ver.get('git', '?')} ({'clean' if ver.get('git_clean') else 'dirty or unknown'} "
                     f"tree), {data_txt}, encoder test error {enc.get('test_error_pct', '?')} %")
    return "; ".join(parts) or "no results"


def write_table(out: Path) -> Path:
    res = {v: {} for v in VARIANTS}
    meta = {}
    for v in VARIANTS:
        for d in range(10):
            p = out / v / f"digit{d}.json"
            if p.exists():
                r = json.loads(p.read_text())
                res[v][d] = r
                meta.setdefault("profile", r.get("profile"))
                meta.setdefault("encoder", r.get("encoder"))
                meta.setdefault("final_encoder", r.get("final_encoder"))
    ref = {v: {d: ink_reference_pct(v, r) for d, r in res[v].items()} for v in VARIANTS}
    sched = next((r["schedule"] for v in VARIANTS for r in res[v].values() if "schedule" in r), {})
    prov = next((r["versions"] for v in VARIANTS for r in res[v].values() if "versions" in r), {})
    keys = TABLE_KEYS
    opts = ", ".join(f"{k} {sched[k]}" for k in keys if k in sched)
    lines = ["# Co-localisation (supplement Table 2): % of the 100 images whose box has IoU > 0.5", "",
             f"Profile `{meta.get('profile')}` ({opts}); device `cpu`, "
             f"{prov.get('threads', 1)} thread; {_provenance(res)}; one optimisation per digit "
             "class on its first 100 test images, seed 0. Paper: T 100 % for every class, TC 75–93 % "
             "depending on the class (per-class values not in our copy of the supplement). The options that "
             "depart from the supplement are listed in `python -m repro.colocalisation --help` and the module "
             "docstring. *Ink reference*: the same images boxed by :func:`ink_centroid_boxes`, with no encoder "
             "and no learning (the ink's centroid, then a mean shift): what the metric gives for ink statistics "
             "alone on these images, not a co-localisation result.", "",
             "| digit | T paper | T ours | T mean IoU | T ink reference | TC paper | TC ours | TC mean IoU | "
             "TC ink reference | wall time T / TC (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d in range(10):
        t, tc = res["T"].get(d), res["TC"].get(d)
        f = lambda r, k: "not run" if r is None else f"{r[k]}"  # noqa: E731
        rf = lambda v: f"{ref[v][d]:.0f}" if d in ref[v] else "not run"  # noqa: E731
        lines.append(f"| {d} | 100 | {f(t, 'localised_pct')} | {f(t, 'mean_iou')} | {rf('T')} | 75–93 | "
                     f"{f(tc, 'localised_pct')} | {f(tc, 'mean_iou')} | {rf('TC')} | {f(t, 'wall_time_s')} / {f(tc, 'wall_time_s')} |")
    for v in VARIANTS:
        if res[v]:
            vals = [r["localised_pct"] for r in res[v].values()]
            refs = list(ref[v].values())
            lines.append(f"\n{v}: mean over {len(vals)} classes {sum(vals) / len(vals):.1f} %, range "
                         f"{min(vals):.0f}–{max(vals):.0f} % (ink reference: mean {sum(refs) / len(refs):.1f} %, "
                         f"range {min(refs):.0f}–{max(refs):.0f} %).")
    run = out / "run.json"
    if run.exists():
        r = json.loads(run.read_text())
        lines.append(f"\nThe last command (variants {', '.join(r['variants'])}, digits {min(r['digits'])}–{max(r['digits'])}"
                     f"{', resumed' if r.get('resume') else ''}) took {r['wall_time_s'] / 60:.1f} min with {r['jobs']} "
                     f"worker process(es) of {r['threads']} thread(s), encoder cached.")
    if meta.get("encoder"):
        lines += ["", f"Encoder: {json.dumps(meta['encoder'])}"]
    if meta.get("final_encoder"):
        lines += ["", f"Final-phase encoder: {json.dumps(meta['final_encoder'])}"]
    f = out / "findings.md"
    if f.exists():
        lines += ["", f.read_text()]
    path = out / "table.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path
