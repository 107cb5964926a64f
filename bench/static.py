"""Static report: compile every kernel for real GPU targets without a GPU and report its resources.

    python -m bench.static            # every registered specialisation, sm_80 and sm_90
    python -m bench.static --quick    # one specialisation per kernel
    python -m bench.static --json     # machine-readable
    python -m bench.static --bytes    # bytes-moved model per benchmark shape (no compile)

Per kernel specialisation and architecture: registers per thread, spilled (local) bytes, shared
memory, theoretical occupancy (``occ``: the share of the SM's warp slots that fit, from registers,
shared memory and warps per block), and the global load / store / atomic instructions in the SASS
with their vector widths. Int64 specialisations (``INDEX_64``, and the fixed-point kernels, which
always index in int64) are also checked on their TTIR for pointer offsets computed in 32-bit
arithmetic (``bench.aot.int32_offset_arithmetic``).
Zero spills and zero 32-bit offsets in int64 kernels are the bar. Runs with the Triton interpreter switched off (the AOT compiler needs the
real ``JITFunction``s), whatever the caller's environment says.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # must happen before triton is imported
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def representatives(configs):
    seen, picked = set(), []
    for cfg in configs:
        if cfg.fn.__name__ not in seen:
            seen.add(cfg.fn.__name__)
            picked.append(cfg)
    return picked


def collect(quick: bool = False, archs=None, match=None) -> list[dict]:
    from bench import aot
    from bench.aot_configs import all_configs

    configs = all_configs()
    if quick:
        configs = representatives(configs)
    if match:
        patterns = [match] if isinstance(match, str) else list(match)
        configs = [c for c in configs if any(m in c.label for m in patterns)]
    rows = []
    for cfg in configs:
        for arch in archs or aot.ARCHS:
            rows.append(aot.compile_config(cfg, arch).as_dict())
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'kernel specialisation':58s} {'arch':>5s} {'regs':>5s} {'spill':>6s} {'smem':>6s} {'occ':>5s} "
            f"{'ld':>4s} {'st':>4s} {'atom':>5s}  load widths")
    lines = [head, "-" * len(head)]
    for r in rows:
        widths = " ".join(f"{k}b x{v}" for k, v in sorted(r["load_widths"].items()))
        lines.append(f"{r['label']:58s} {'sm_' + str(r['arch']):>5s} {r['registers']:5d} {r['spill_bytes']:6d} "
                     f"{r['shared_bytes']:6d} {r['occupancy'] * 100:4.0f}% {r['global_loads']:4d} {r['global_stores']:4d} "
                     f"{r['atomics']:5d}  {widths}")
    spills = sum(r["spill_bytes"] > 0 for r in rows)
    checked = [r for r in rows if r.get("int32_offsets") is not None]
    wide = [r for r in checked if r["int32_offsets"]]
    lines.append(f"{len(rows)} compiled, {spills} with spills; {len(checked)} int64 specialisations checked, "
                 f"{len(wide)} with 32-bit offset arithmetic")
    for r in wide:
        lines += [f"  {r['label']} sm_{r['arch']}: {line}" for line in r["int32_offsets"][:3]]
    return "\n".join(lines)


def bytes_table() -> str:
    """Fused vs unfused (affine_grid + grid_sample) bytes per benchmark shape: the best speedup
    fusion alone can give where both are bandwidth-bound."""
    from bench.cases import CASES, PASSES, VOLUME_CASES, bytes_fused, bytes_unfused

    lines = [f"{'case':44s} {'dtype':5s} {'pass':9s} {'fused MB':>10s} {'unfused MB':>11s} {'ratio':>6s}"]
    for case in CASES:
        for dtype, elem in (("fp32", 4), ("bf16", 2)):
            for pass_ in PASSES:
                f, u = bytes_fused(case, pass_, elem), bytes_unfused(case, pass_, elem)
                lines.append(f"{case.id:44s} {dtype:5s} {pass_:9s} {f / 1e6:10.2f} {u / 1e6:11.2f} {u / f:6.2f}")
    lines.append("3-D warp (theta (N, 3, 4); the grid holds 3 floats per output voxel), each case in its own dtype:")
    for case in VOLUME_CASES:
        elem = 2 if case.dtype == "bf16" else 4
        for pass_ in PASSES:
            f, u = bytes_fused(case, pass_, elem, 12), bytes_unfused(case, pass_, elem, 12)
            lines.append(f"{case.id:60s} {pass_:9s} {f / 1e6:10.2f} {u / 1e6:11.2f} {u / f:6.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    ap.add_argument("--quick", action="store_true", help="one specialisation per kernel")
    ap.add_argument("--arch", type=int, nargs="+", default=None, help="compute capabilities (default 80 90)")
    ap.add_argument("--match", nargs="+", default=None, help="only specialisations whose label contains one of these")
    ap.add_argument("--bytes", action="store_true", help="print the bytes-moved model per benchmark shape and exit")
    args = ap.parse_args(argv)
    if args.bytes:
        print(bytes_table())
        return 0
    rows = collect(args.quick, args.arch, args.match)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 1 if any(r["spill_bytes"] > 0 or r.get("int32_offsets") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
