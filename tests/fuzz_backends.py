"""Differential fuzzing of the two backends, one child process per batch so crashes are counted.

    python tests/fuzz_backends.py --examples 2000 --per-process 50 [--seed 0] [--json out.json]

Each example draws a random case -- transform (affine, projective, TPS with K = 4 or 9, a sampling
grid for ``grid_sample``, a displacement field for ``warp_flow``), dtype (fp32, fp64, bf16, fp16),
layout (NCHW, channels_last, strided), mode (bicubic too, except for TPS), padding, align_corners, odd
sizes, and parameters that are fine, huge, or NaN / +-inf in some entries -- and runs forward and
backward on the Triton kernels (interpreter) and on the PyTorch path. Counted: crashes (a child
killed by a signal), exceptions, non-finite outputs or gradients (never allowed: the documented
result of a non-finite coordinate is 0 with zero gradient), and disagreements beyond the dtype's
tolerance (reported, split by whether the case had non-finite or huge parameters; bilinear kinks and
nearest-mode ties at exact pixel positions can legitimately differ).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_batch(seed: int, count: int, only: int | None = None) -> dict:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import warnings

    import torch

    import stn_triton
    from stn_triton import torch_path

    warnings.filterwarnings("ignore")
    tol = {torch.float64: 1e-8, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    stats = {"examples": 0, "exceptions": [], "non_finite": [], "disagree_clean": 0, "disagree_special": 0}
    for i in range(count):
        if only is not None and i != only:  # replaying one example of a crashed batch
            continue
        g.manual_seed(seed * 10_000 + i)  # each example replays alone from its own seed
        transform = pick(["affine", "projective", "tps", "grid", "flow"])
        dtype = pick([torch.float32, torch.float64, torch.bfloat16, torch.float16])
        layout = pick(["nchw", "nhwc", "strided"])
        mode = pick(["bilinear", "nearest"] + ([] if transform == "tps" else ["bicubic"]))
        padding, ac = pick(["zeros", "border", "reflection"]), bool(pick([False, True]))
        n, c = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        h, w, ho, wo = (int(v) for v in torch.randint(1, 10, (4,), generator=g))
        x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)
        if layout == "nhwc":
            x = x.to(memory_format=torch.channels_last)
        elif layout == "strided":
            x = torch.rand(n, c, h, 2 * w, generator=g, dtype=torch.float64).to(dtype)[..., ::2]
        if transform == "grid":
            p = 1.5 * (2 * torch.rand(n, ho, wo, 2, generator=g, dtype=torch.float64) - 1)
        elif transform == "flow":
            p = 3.0 * torch.randn(n, 2, ho, wo, generator=g, dtype=torch.float64)
        elif transform == "tps":
            k = pick([4, 9])
            p = torch_path.default_control_points(k, torch.float64)[None] + 0.3 * torch.randn(n, k, 2, generator=g,
                                                                                                dtype=torch.float64)
        else:
            rows = 2 if transform == "affine" else 3
            p = torch.eye(3, dtype=torch.float64)[:rows] + 0.5 * torch.randn(n, rows, 3, generator=g, dtype=torch.float64)
        special = False
        r = float(torch.rand((), generator=g))
        if r < 0.3:  # poison some entries
            special = True
            mask = torch.rand(p.shape, generator=g) < 0.2
            p = torch.where(mask, torch.tensor(pick([float("nan"), float("inf"), float("-inf"), 1e30, -3e9])), p)
        elif r < 0.4 and transform == "projective":  # w = 0 somewhere
            special = True
            p[:, 2] = torch.tensor([1.0, 0.0, 0.0])
        p = p.to(pick([torch.float32, torch.float64]))
        go = torch.randn(n, c, ho, wo, generator=g, dtype=torch.float64).to(dtype)
        results = {}
        try:
            for backend in ("triton", "torch"):
                xi, pi = x.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
                with stn_triton.use_backend(backend):
                    if transform == "grid":
                        out = stn_triton.grid_sample(xi, pi, mode, padding, ac)
                    elif transform == "flow":
                        out = stn_triton.warp_flow(xi, pi, mode=mode, padding_mode=padding, align_corners=ac)
                    elif transform == "tps":
                        out = stn_triton.tps_warp(xi, pi, (ho, wo), mode=mode, padding_mode=padding, align_corners=ac)
                    else:
                        out = stn_triton.warp(xi, pi, (ho, wo), mode=mode, padding_mode=padding, align_corners=ac)
                    gx, gp = torch.autograd.grad(out, [xi, pi], go)
                for name, t in (("out", out), ("grad_x", gx), ("grad_param", gp)):
                    if not torch.isfinite(t).all():
                        stats["non_finite"].append(f"seed {seed} #{i} {backend} {name} {transform} {dtype} {padding}")
                results[backend] = (out.detach().double(), gx.double(), gp.double())
        except Exception as err:  # noqa: BLE001
            stats["exceptions"].append(f"seed {seed} #{i} {transform} {dtype} {padding}: {type(err).__name__}: {err}"[:300])
            stats["examples"] += 1
            continue
        a, b = results["triton"], results["torch"]
        bad = False
        for u, v in zip(a, b):
            scale = max(v.abs().max().item() if v.numel() else 0.0, 1.0)
            if v.numel() and ((u - v).abs().max().item() > tol[dtype] * scale * (50 if transform == "tps" else 1)):
                bad = True
        if bad:
            stats["disagree_special" if special else "disagree_clean"] += 1
            if not special:
                stats.setdefault("clean_cases", []).append(
                    f"seed {seed} #{i} {transform} {dtype} {layout} {mode} {padding} ac={ac} {n}x{c}x{h}x{w}->{ho}x{wo}")
        stats["examples"] += 1
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--per-process", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--batch", nargs=2, type=int, help=argparse.SUPPRESS)  # child mode: seed, count
    ap.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # child mode: one example
    args = ap.parse_args(argv)
    if args.batch:
        print(json.dumps(run_batch(*args.batch, only=args.only)))
        return 0
    total = {"examples": 0, "crashes": [], "exceptions": [], "non_finite": [], "disagree_clean": 0,
             "disagree_special": 0, "clean_cases": []}

    def child(seed, count, only=None):
        cmd = [sys.executable, __file__, "--batch", str(seed), str(count)] + ([] if only is None else ["--only", str(only)])
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})

    def add(part):
        for key in ("examples", "disagree_clean", "disagree_special"):
            total[key] += part[key]
        for key in ("exceptions", "non_finite", "clean_cases"):
            total[key] += part.get(key, [])

    batches = -(-args.examples // args.per_process)
    for b in range(batches):
        seed = args.seed * 100_000 + b
        count = min(args.per_process, args.examples - b * args.per_process)
        proc = child(seed, count)
        if proc.returncode == 0:
            add(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:  # a crash: replay the batch one example per process, so each crash is counted
            for i in range(count):
                one = child(seed, count, i)
                if one.returncode == 0:
                    add(json.loads(one.stdout.strip().splitlines()[-1]))
                else:
                    total["examples"] += 1
                    total["crashes"].append(f"seed {seed} #{i}: return code {one.returncode}")
        print(f"batch {b + 1}/{batches}: {total['examples']} examples, {len(total['crashes'])} crashes, "
              f"{len(total['exceptions'])} exceptions, {len(total['non_finite'])} non-finite, "
              f"{total['disagree_clean']} + {total['disagree_special']} disagreements", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(total, f, indent=1)
    return 1 if (total["crashes"] or total["exceptions"] or total["non_finite"]) else 0


if __name__ == "__main__":
    sys.exit(main())
