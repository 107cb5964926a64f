"""What aten's own sampler does with a non-finite coordinate: ``python -m bench.aten_non_finite``.

The library's rule (a NaN / inf coordinate samples 0, or the fill value, and gets zero gradient)
costs the PyTorch path one reduction per call (``torch_path.coordinates_inside``): the reason the
host cost of ``stn_triton.grid_sample`` cannot reach one bare ``F.grid_sample`` call's. This shows
what the rule buys: for each mode, padding and non-finite value, ``F.grid_sample`` on the CPU
(forward at one bad coordinate among good ones, then the backward) run in a child process, since
some cases crash the process. Prints a Markdown table; each cell says what aten gave for the bad
coordinate (``0`` = the rule's answer, ``NaN``, ``a pixel`` = some input value) and what its backward
did (``grad 0``, ``grad NaN``, ``crash (signal N)``).
"""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch, torch.nn.functional as F
mode, pad, v = sys.argv[1], sys.argv[2], float(sys.argv[3])
torch.manual_seed(0)
x = torch.rand(1, 2, 5, 5, requires_grad=True)
g = torch.zeros(1, 1, 2, 2)
g[0, 0, 1, 0] = v
g.requires_grad_(True)
out = F.grid_sample(x, g, mode=mode, padding_mode=pad, align_corners=False)
bad = out[0, :, 0, 1]
fwd = "NaN" if bad.isnan().any() else ("0" if (bad == 0).all() else "a pixel")
print(json.dumps({"fwd": fwd}), flush=True)
out.sum().backward()
gg = g.grad[0, 0, 1]
print(json.dumps({"bwd": "grad NaN" if gg.isnan().any() else ("grad 0" if (gg == 0).all() else "grad != 0")}))
"""

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
VALUES = ("nan", "inf", "-inf")


def case(mode: str, padding: str, value: str) -> str:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, padding, value], capture_output=True, text=True,
                          timeout=120)
    seen = {}
    for line in proc.stdout.splitlines():
        seen.update(json.loads(line))
    bwd = seen.get("bwd") or (f"crash (signal {-proc.returncode})" if proc.returncode < 0
                              else f"error (exit {proc.returncode})")
    return f"{seen.get('fwd', 'crash')}, {bwd}"


def main() -> int:
    import torch

    print(f"F.grid_sample at a non-finite coordinate, CPU, torch {torch.__version__} (the rule: 0, grad 0)\n")
    print("| mode | padding | " + " | ".join(VALUES) + " |")
    print("|---|---|" + "---|" * len(VALUES))
    for mode in MODES:
        for padding in PADDINGS:
            print(f"| {mode} | {padding} | " + " | ".join(case(mode, padding, v) for v in VALUES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
