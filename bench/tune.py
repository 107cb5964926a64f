"""Sweep the launch configuration (BLOCK_P, BLOCK_C, num_warps) of the fused kernels on a GPU.

    python -m bench.tune                  # every kernel x case x dtype x layout below
    python -m bench.tune --quick          # fp32 only, fewer cases
    python -m bench.tune --list           # print the sweep, run nothing (works without a GPU)
    python -m bench.tune --static         # compile every candidate for sm_90 (no GPU): registers,
                                          # spills, occupancy of each tiling
    python -m bench.tune --json out.json  # also write every timing

The default tiling (``kernels.policy.launch_config``) was chosen from registers and load widths
alone (``bench/NOTES.md``); this is the measurement that confirms or replaces it. Every candidate
is first checked against the default configuration's result on the same inputs (a tiling changes
only the order of float atomics and partial sums), then timed with CUDA events
(``bench.timing``: do_bench median, L2 flushed, rotating inputs larger than L2). The report gives,
per (kernel, case, dtype, layout), the default's time, the best candidate and the gain.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from bench.cases import CASES
from bench.timing import rotating_sets, time_ms

TUNE_CASES = ["mnist-add", "svhn64", "svhn-multi-c48", "svhn-multi-c160", "cub448", "large-c64", "large-1024"]
QUICK_CASES = ["mnist-add", "svhn-multi-c160", "large-c64"]
KERNELS = ["warp_fwd", "warp_bwd", "tps_fwd", "tps_bwd"]
TPS_K = 16

# (BLOCK_P, BLOCK_C, num_warps). NCHW: stores are contiguous along pixels, so pixel-wide tiles;
# channels_last: each tap is a contiguous run of channels, so channel-wide tiles.
NCHW_CANDIDATES = [(128, 4, 4), (256, 4, 4), (512, 4, 4), (1024, 4, 8), (256, 1, 4), (256, 2, 4),
                   (256, 8, 4), (512, 2, 4), (512, 8, 8), (128, 4, 2), (256, 4, 8), (1024, 2, 8)]
NHWC_CANDIDATES = [(16, 64, 4), (32, 32, 4), (32, 64, 4), (8, 64, 4), (16, 64, 8), (64, 16, 4),
                   (16, 128, 4), (32, 64, 8), (8, 128, 4), (64, 32, 8), (128, 16, 4), (32, 16, 2)]


def candidates(channels: int, channels_last: bool) -> list[tuple[int, int, int]]:
    """The sweep for one shape: channel blocks wider than the (power-of-two-rounded) channel
    count only add masked lanes, so they are dropped; the default is always included."""
    from stn_triton.kernels.policy import launch_config

    c2 = 1 << max(channels - 1, 0).bit_length()
    pool = NHWC_CANDIDATES if channels_last else NCHW_CANDIDATES
    picked = [cfg for cfg in pool if cfg[1] <= max(c2, 16 if channels_last else 1)]
    default = launch_config(channels, channels_last)
    return [default] + [cfg for cfg in picked if cfg != default]


def make_inputs(case, dtype, channels_last, kernel, seed, device):
    """Launcher arguments for one kernel at one case: everything but the launch config."""
    from stn_triton import _tps_ops, torch_path

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(case.n, case.c, case.h, case.w, device=device, generator=g).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    go = torch.randn(case.n, case.c, case.h_out, case.w_out, device=device, generator=g).to(dtype)
    if kernel.startswith("warp"):
        theta = torch.eye(2, 3, device=device) + 0.1 * torch.randn(case.n, 2, 3, device=device, generator=g)
        return {"x": x, "theta": theta, "go": go}
    m64, c64 = _tps_ops.tps_system(None, TPS_K, torch.device(device))
    points = c64.float() + 0.05 * torch.randn(case.n, TPS_K, 2, device=device, generator=g)
    coef = torch_path.tps_coefficients(points, m64)  # float64, as stn_triton.tps_warp passes it
    return {"x": x, "coef": coef, "ctrl": c64, "go": go}


def launch(kernel, inputs, case, config):
    """Run one kernel with one launch config; returns its outputs (a tuple of tensors)."""
    from stn_triton.kernels import tps as kt
    from stn_triton.kernels import warp as kw

    size = (case.h_out, case.w_out)
    x, go = inputs["x"], inputs["go"]
    if kernel == "warp_fwd":
        return (kw.warp_fwd(x, inputs["theta"], *size, "bilinear", "zeros", False, config=config),)
    if kernel == "warp_bwd":
        return kw.warp_bwd(go, x, inputs["theta"], "bilinear", "zeros", False, True, True, config=config)
    if kernel == "tps_fwd":
        return (kt.tps_fwd(x, inputs["coef"], inputs["ctrl"], *size, "bilinear", "zeros", False, config=config),)
    return kt.tps_bwd(go, x, inputs["coef"], inputs["ctrl"], "bilinear", "zeros", False, True, True, config=config)


def max_relative_error(outputs, reference) -> float:
    """Largest |a - b| / max|b| over the outputs (0 when they are identical)."""
    worst = 0.0
    for a, b in zip(outputs, reference):
        scale = b.float().abs().max().clamp_min(1e-30)
        worst = max(worst, ((a.float() - b.float()).abs().max() / scale).item())
    return worst


def case_named(name: str):
    return next(c for c in CASES if c.name == name)


def sweep(cases, dtypes, kernels, device="cuda", log=print):
    """Time every candidate of every (kernel, case, dtype, layout); returns a list of result rows."""
    from stn_triton.kernels.policy import launch_config

    props = torch.cuda.get_device_properties(0) if device == "cuda" else None
    l2 = getattr(props, "L2_cache_size", None)
    rows = []
    for case in cases:
        for dtype_name in dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            # A wrong tiling is off by O(1). A right one differs only in the order of float sums: the
            # grad-theta reductions over ~1e6 terms of either sign move by ~eps * sqrt(terms) of max.
            tol = 1e-3 if dtype == torch.float32 else 2e-2
            for channels_last in ([False, True] if case.c >= 3 else [False]):
                for kernel in kernels:
                    elem = dtype.itemsize
                    set_bytes = 3 * case.n * case.c * (case.h * case.w + case.h_out * case.w_out) * elem
                    sets = rotating_sets(lambda i: make_inputs(case, dtype, channels_last, kernel, i, device),
                                         set_bytes, l2)
                    default = launch_config(case.c, channels_last)
                    reference = launch(kernel, sets[0], case, default)
                    timings = {}
                    for cfg in candidates(case.c, channels_last):
                        err = max_relative_error(launch(kernel, sets[0], case, cfg), reference)
                        if err > tol:
                            raise AssertionError(f"{kernel} {case.id} {dtype_name} config {cfg}: relative error "
                                                 f"{err:.2e} against the default config {default}")
                        timings[cfg] = time_ms(lambda inp, cfg=cfg: launch(kernel, inp, case, cfg), sets)
                    best = min(timings, key=timings.get)
                    row = dict(kernel=kernel, case=case.id, dtype=dtype_name,
                               layout="nhwc" if channels_last else "nchw", default=list(default),
                               default_ms=timings[default], best=list(best), best_ms=timings[best],
                               gain=timings[default] / timings[best],
                               all={"x".join(map(str, k)): v for k, v in timings.items()})
                    rows.append(row)
                    log(f"{kernel:9s} {case.id:40s} {dtype_name} {row['layout']}  default {default} "
                        f"{row['default_ms']:.4f} ms  best {best} {row['best_ms']:.4f} ms  ({row['gain']:.2f}x)")
    return rows


def static_sweep(kernels, layouts, arch=90, log=print):
    """Compile every candidate tiling ahead of time (no GPU): registers, spills and occupancy per
    (kernel, layout, config), from the bilinear / zeros specialisation of ``bench.aot_configs``."""
    from bench import aot
    from bench.aot_configs import all_configs

    base = {cfg.label: cfg for cfg in all_configs()}
    rows = []
    for kernel in kernels:
        for layout in layouts:
            storage, cl = ("bf16", True) if layout == "nhwc" else ("fp32", False)
            label = f"{kernel}/{'affine' if kernel.startswith('warp') else f'K{TPS_K}'}/bilinear/zeros/{storage}/{layout}"
            cfg0 = base[label]
            for bp, bc, nw in candidates(64, cl):  # C = 64: every channel block is admissible
                cfg = dataclasses.replace(cfg0, label=f"{label} P{bp} C{bc} w{nw}", num_warps=nw,
                                          constexprs=dict(cfg0.constexprs, BLOCK_P=bp, BLOCK_C=bc))
                r = aot.compile_config(cfg, arch).as_dict()
                r.update(kernel_name=kernel, layout=layout, config=[bp, bc, nw])
                rows.append(r)
                log(f"{r['label']:60s} regs {r['registers']:3d}  spill {r['spill_bytes']:4d}  "
                    f"occupancy {r['occupancy'] * 100:3.0f}%")
    return rows


def markdown(rows) -> str:
    lines = ["| kernel | case | dtype | layout | default (P, C, warps) | ms | best | ms | gain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['case']} | {r['dtype']} | {r['layout']} | {tuple(r['default'])} | "
                     f"{r['default_ms']:.4f} | {tuple(r['best'])} | {r['best_ms']:.4f} | {r['gain']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fp32 and three cases only")
    ap.add_argument("--list", action="store_true", help="print the sweep and exit (no GPU needed)")
    ap.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    ap.add_argument("--static", action="store_true", help="AOT-compile every candidate instead (no GPU)")
    ap.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"], choices=["nchw", "nhwc"],
                    help="with --static: which layouts")
    ap.add_argument("--json", help="write every timing (or, with --static, every compile report) to this file")
    args = ap.parse_args(argv)
    if args.static:
        os.environ.pop("TRITON_INTERPRET", None)  # the AOT compiler needs the real JITFunctions
        rows = static_sweep(args.kernels, args.layouts)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 1 if any(r["spill_bytes"] for r in rows) else 0
    case_names = QUICK_CASES if args.quick else TUNE_CASES
    dtypes = ["fp32"] if args.quick else ["fp32", "bf16"]
    if args.list:
        for case in map(case_named, case_names):
            for cl in ([False, True] if case.c >= 3 else [False]):
                print(f"{case.id:40s} {'nhwc' if cl else 'nchw'}: {candidates(case.c, cl)}")
        print(f"kernels {args.kernels}, dtypes {dtypes}")
        return 0
    if not torch.cuda.is_available():
        print("bench.tune: no CUDA device. Launch configurations can only be tuned on a GPU "
              "(use --list to see the sweep).", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    rows = sweep([case_named(n) for n in case_names], dtypes, args.kernels)
    print()
    print(markdown(rows))
    if args.json:
        import triton

        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                    commit=os.environ.get("STN_GIT_COMMIT", "unknown"))
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
