"""Summarise a pytest-benchmark JSON from a GPU run as the Markdown table of bench/README.md.

    python -m bench.summarize bench/results/<run>.json

One row per (transform, case, pass, dtype, layout): median time of each provider (CUDA-event
median from ``triton.testing.do_bench``), stn_triton's GB/s and fraction of the measured copy
bandwidth, and its speedup over torch eager and over torch.compile, all from the same run.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarize(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    e2e = defaultdict(dict)
    det = {}
    env = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if "median_ms" not in e:
            continue
        if "model" in e:  # end-to-end training step
            e2e[e["model"]][e["backend"]] = e
            continue
        if "deterministic_cost" in e:  # deterministic vs atomic backward, same test
            det[(e["case"], e["dtype"], e["layout"])] = e
            continue
        env = {k: e.get(k) for k in ("device", "driver", "cuda", "torch", "triton", "commit", "copy_bandwidth_gbps")}
        key = (e["transform"], e["case"], e["pass_"], e["dtype"], e["layout"])
        rows[key][e["provider"]] = e
    lines = [f"Device: {env.get('device')} (driver {env.get('driver')}, CUDA {env.get('cuda')}), torch {env.get('torch')}, "
             f"triton {env.get('triton')}, commit {env.get('commit')}; measured copy bandwidth "
             f"{(env.get('copy_bandwidth_gbps') or 0):.0f} GB/s.", "",
             *(["**CPU run: both columns are the PyTorch path on the CPU (smoke numbers, not a performance "
                "claim; the Triton kernels and torch.compile run on a GPU only).**", ""]
               if env.get("device") == "cpu" else []),
             "| transform | case | pass | dtype | layout | stn_triton ms | eager ms | compile ms | GB/s | of copy BW | vs eager | vs compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows):
        r = rows[key]
        ours = r.get("stn_triton")
        if not ours:
            continue
        comp = r.get("torch_compile")
        frac = ours.get("copy_bw_fraction")
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {ours['median_ms']:.4f} | {ours['torch_eager_ms']:.4f} | "
            f"{comp['median_ms']:.4f} | " if comp else
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {ours['median_ms']:.4f} | {ours['torch_eager_ms']:.4f} | - | "
        )
        lines[-1] += (f"{ours['gbps']:.0f} | {frac * 100:.0f}% | " if frac else f"{ours['gbps']:.1f} | - | ")
        lines[-1] += f"{ours['speedup_vs_eager']:.2f}x | " + (f"{comp['median_ms'] / ours['median_ms']:.2f}x |" if comp else "- |")
    if det:
        lines += ["", "| deterministic fwd+bwd (affine) | dtype | layout | deterministic ms | atomic ms | cost |",
                  "|---|---|---|---|---|---|"]
        for key in sorted(det):
            e = det[key]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {e['median_ms']:.4f} | {e['atomic_ms']:.4f} | "
                         f"{e['deterministic_cost']:.2f}x |")
    if e2e:
        lines += ["", "| model (training step) | Triton path steps/s | torch path steps/s | speedup |", "|---|---|---|---|"]
        for model, r in sorted(e2e.items()):
            if "triton" in r and "torch" in r:
                t, p = r["triton"]["steps_per_s"], r["torch"]["steps_per_s"]
                lines.append(f"| {model} | {t:.1f} | {p:.1f} | {t / p:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
