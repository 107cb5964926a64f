"""First light on a GPU: the compiled kernels against the PyTorch path on the core cases.

    PYTHONPATH=. python -m bench.first_light --json OUT.json

The first thing to run on a lent GPU (``bash bench/run_gpu.sh first-light`` runs this, then the
headline ``pytest bench/ --headline`` table). Every check draws fresh random inputs, runs the
fused Triton kernels (``use_backend("triton")``) and the PyTorch path (``use_backend("torch")``,
``F.grid_sample`` on an explicit grid) on the same CUDA device, and compares the output, grad_x
and the parameter gradient against the tolerances of the data dtype (``testing/tolerances.py``: the
suite's table; grad_x, a sum over many taps, gets 10x), and reports max |a - b| / max |b| of each.
Every element of the outputs and gradients must also be finite.

Cost on an H100 / H200: each check specialises one forward and one backward kernel (2 JIT
compiles of ~1-3 s each); CHECKS has 14, so ~1 minute of compiles, seconds of compute.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import stn_triton
from testing.tolerances import GRAD_PARAM_RTOL, TOL, TPS_TOL  # the suite's one tolerance table

# (transform, dtype, layout, mode, padding_mode, align_corners, (N, C, H, W), (H_out, W_out))
CHECKS = [
    ("affine", "fp32", "nchw", "bilinear", "zeros", False, (256, 1, 28, 28), (28, 28)),
    ("affine", "fp32", "nchw", "bilinear", "border", True, (128, 3, 64, 64), (61, 67)),
    ("affine", "fp32", "nchw", "bilinear", "reflection", False, (128, 3, 64, 64), (64, 64)),
    ("affine", "fp32", "nchw", "nearest", "zeros", False, (128, 3, 64, 64), (64, 64)),
    ("affine", "fp32", "nhwc", "bilinear", "zeros", False, (32, 48, 32, 32), (32, 32)),
    ("affine", "bf16", "nchw", "bilinear", "zeros", False, (128, 3, 64, 64), (64, 64)),
    ("affine", "bf16", "nhwc", "bilinear", "reflection", False, (32, 160, 16, 16), (16, 16)),
    ("affine", "fp16", "nchw", "bilinear", "border", False, (64, 3, 33, 45), (30, 50)),
    ("affine", "fp64", "nchw", "bilinear", "zeros", True, (16, 3, 20, 24), (21, 23)),
    ("projective", "fp32", "nchw", "bilinear", "zeros", False, (128, 3, 64, 64), (64, 64)),
    ("projective", "bf16", "nhwc", "bilinear", "border", False, (32, 64, 32, 32), (32, 32)),
    ("tps16", "fp32", "nchw", "bilinear", "zeros", False, (128, 3, 64, 64), (64, 64)),
    ("tps16", "bf16", "nhwc", "bilinear", "reflection", False, (32, 64, 32, 32), (32, 32)),
    ("tps64", "fp32", "nchw", "bilinear", "border", False, (32, 3, 96, 96), (96, 96)),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _params(transform: str, n: int, device, g):
    if transform == "affine":
        return torch.eye(2, 3, device=device) + 0.15 * torch.randn(n, 2, 3, device=device, generator=g)
    if transform == "projective":
        t = torch.eye(3, device=device) + 0.1 * torch.randn(n, 3, 3, device=device, generator=g)
        t[:, 2, :2] *= 0.3
        return t
    k = int(transform[3:])
    return stn_triton.params.tps(0.05 * torch.randn(n, 2 * k, device=device, generator=g), k)


def _run(transform, x, p, size, mode, padding_mode, align_corners, go):
    x = x.detach().requires_grad_()
    p = p.detach().requires_grad_()
    if transform.startswith("tps"):
        out = stn_triton.tps_warp(x, p, size, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    else:
        out = stn_triton.warp(x, p, size, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    gx, gp = torch.autograd.grad(out, [x, p], go)
    return out.detach(), gx, gp


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def check(spec, seed: int, device: str = "cuda") -> dict:
    transform, dtype_name, layout, mode, padding_mode, align_corners, shape, size = spec
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(*shape, device=device, generator=g).to(dtype)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    p = _params(transform, shape[0], device, g)
    go = torch.randn(shape[0], shape[1], *size, device=device, generator=g).to(dtype)
    t0 = time.perf_counter()
    with stn_triton.use_backend("triton"):
        out, gx, gp = _run(transform, x, p, size, mode, padding_mode, align_corners, go)
    if device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0  # includes the JIT compiles
    with stn_triton.use_backend("torch"):
        r_out, r_gx, r_gp = _run(transform, x, p, size, mode, padding_mode, align_corners, go)
    table = TPS_TOL if transform.startswith("tps") else TOL
    atol, rtol = table[dtype]
    errors = {"out": _rel(out, r_out), "grad_x": _rel(gx, r_gx), "grad_param": _rel(gp, r_gp)}
    # elementwise tolerance of the suite for out / grad_x, relative-to-scale for the parameter
    ok_out = torch.allclose(out.double(), r_out.double(), atol=atol, rtol=rtol)
    ok_gx = torch.allclose(gx.double(), r_gx.double(), atol=atol * 10, rtol=rtol * 10)  # sums of many taps
    ok_gp = errors["grad_param"] <= GRAD_PARAM_RTOL[dtype] * (10 if transform.startswith("tps") else 1)
    finite = bool(torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gp).all())
    return {"transform": transform, "dtype": dtype_name, "layout": layout, "mode": mode, "padding_mode": padding_mode,
            "align_corners": align_corners, "shape": list(shape), "size": list(size), "rel_errors": errors,
            "ok": bool(ok_out and ok_gx and ok_gp and finite), "finite": finite, "first_call_s": first_call_s,
            "layout_kept": out.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")
            or shape[1] == 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the checks here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.first_light needs a CUDA device (it compares the compiled kernels with the PyTorch path)")
        return 2
    import triton

    rows = []
    for i, spec in enumerate(CHECKS):
        try:
            rows.append(check(spec, args.seed + i))
        except Exception as err:  # noqa: BLE001  (one broken specialisation must not hide the others)
            rows.append({"transform": spec[0], "dtype": spec[1], "layout": spec[2], "mode": spec[3],
                         "padding_mode": spec[4], "ok": False, "error": f"{type(err).__name__}: {err}"})
        r = rows[-1]
        errs = r.get("rel_errors", {})
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['transform']:10s} {r['dtype']:4s} {r['layout']:4s} {r['mode']:8s} "
              f"{r['padding_mode']:10s} " + (" ".join(f"{k}={v:.1e}" for k, v in errs.items()) or r.get("error", "")),
              flush=True)
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda}
    if args.json:
        args.json.write_text(json.dumps({"env": env, "checks": rows}, indent=1))
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} checks passed on {env['device']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
