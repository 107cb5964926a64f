"""Host time per call of every public op beside the eager composition it replaces:
``python -m bench.host_overhead``.

At the paper's shapes a fused kernel runs for microseconds on a GPU, so an eager training step is
bound by what the host spends per call. This measures that, in one process, at tiny shapes where
compute is negligible:

* **CPU, Triton path** (``TRITON_INTERPRET=1``, set here before triton is imported): every Triton
  kernel is replaced by a no-op stub (:func:`stubbed_kernels`), so what is timed is exactly the
  library's own host work (checks, backend choice, dispatch, autograd, launch plan, allocations,
  the small torch ops a launcher issues). The interpreter never runs.
* **CPU, PyTorch path**: the whole call, compute included (tiny shapes: mostly host work).
* **CUDA**: the real wall time per call (launches queued, the stream drained only once per round)
  and the same with the kernels stubbed; their difference is the Triton launcher's share (argument
  binding, specialisation lookup, the driver launch).

Each row is timed beside its eager composition (``F.affine_grid`` + ``F.grid_sample`` and so on)
in the same rounds, in a fresh random order per round; a round runs each callable ``--inner``
times; the figure is the minimum over ``--rounds`` rounds (the least-disturbed round: host noise
only ever adds). One intra-op thread. Passes: ``infer`` (``no_grad``, inputs without grad),
``train fwd`` (inputs require grad: autograd records the call), ``fwd+bwd`` (forward, then
``torch.autograd.grad`` to every input that requires grad). Ratios are ours / eager.

A last table (:func:`measure_floors`) times the building blocks any Python-level op is made of, at
``grid_sample``'s tiny shape and in the same interleaved way: a bare ``torch.autograd.Function``
that only allocates its output (and its gradients), aten's sampler without ``F.grid_sample``'s
Python wrapper, the non-finite rule's test (one ``aminmax``, two host reads), the backend choice
and the argument checks: the floor under which no op of this library can get, whatever it does.

New public ops slot in as one more :class:`OpCase` in :data:`OP_CASES`.
Not a test; numbers depend on the machine (run it on a quiet one).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the Triton path on CPU tensors needs the interpreter, set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import stn_triton  # noqa: E402
from stn_triton import torch_path  # noqa: E402
from stn_triton.kernels import fixed_point, grid_sample as kg, tps as kt, warp as kw, warp3d as kw3  # noqa: E402
from stn_triton.kernels import warp_flow as kf  # noqa: E402

from bench.train_step import plain_warp  # noqa: E402  (the projective composition lives there)

# every Triton kernel the public ops launch (module, attribute): the stub replaces each
KERNELS = [(kw, "_warp_fwd_kernel"), (kw, "_warp_bwd_kernel"), (kt, "_tps_fwd_kernel"), (kt, "_tps_bwd_kernel"),
           (kw3, "_warp3d_fwd_kernel"), (kw3, "_warp3d_bwd_kernel"),
           (kg, "_grid_sample_fwd_kernel"), (kg, "_grid_sample_bwd_kernel"),
           (kg, "_grid_sample3d_fwd_kernel"), (kg, "_grid_sample3d_bwd_kernel"),
           (kf, "_warp_flow_fwd_kernel"), (kf, "_warp_flow_bwd_kernel"),
           (kf, "_warp_flow3d_fwd_kernel"), (kf, "_warp_flow3d_bwd_kernel"),
           (fixed_point, "_exponent_kernel"), (fixed_point, "_fixed_to_float_kernel")]


class _NoLaunch:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return _no_launch


def _no_launch(*args, **kwargs):
    return None


@contextlib.contextmanager
def stubbed_kernels():
    saved = [(m, name, getattr(m, name)) for m, name in KERNELS]
    try:
        for m, name in KERNELS:
            setattr(m, name, _NoLaunch())
        yield
    finally:
        for m, name, k in saved:
            setattr(m, name, k)


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One public op at a tiny shape: ``make(device)`` -> (inputs, grad_inputs) (the tensors that may
    require grad); ``ours(*inputs)`` and ``eager(*inputs)`` compute the same thing."""
    name: str
    make: Callable
    ours: Callable
    eager: Callable
    eager_label: str


def _affine_inputs(device, rows=2):
    x = torch.rand(2, 3, 8, 8, device=device)
    theta = torch.eye(3, device=device)[:rows].expand(2, rows, 3) + 0.05 * torch.randn(2, rows, 3, device=device)
    return (x, theta.contiguous()), (0, 1)


def _volume_inputs(device):
    x = torch.rand(2, 3, 4, 4, 4, device=device)
    theta = torch.eye(4, device=device)[:3].expand(2, 3, 4) + 0.05 * torch.randn(2, 3, 4, device=device)
    return (x, theta.contiguous()), (0, 1)


def _tps_inputs(device):
    x = torch.rand(2, 3, 8, 8, device=device)
    points = torch_path.default_control_points(16, device=device)[None] + 0.05 * torch.randn(2, 16, 2, device=device)
    return (x, points), (0, 1)


def _grid_inputs(device, volume=False):
    x = torch.rand(2, 3, *((4, 4, 4) if volume else (8, 8)), device=device)
    grid = torch.rand(2, *x.shape[2:], 3 if volume else 2, device=device) * 2 - 1
    return (x, grid), (0, 1)


def _grid_sample(x, grid):
    return stn_triton.grid_sample(x, grid)


def _grid_sample_eager(x, grid):
    return F.grid_sample(x, grid, align_corners=False)


def _affine_eager(x, theta):
    return F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)


_TPS_SYSTEM = {}


def _tps_eager(x, points):
    """What a user writes with the TPS system solved once: coef = M @ points (float64), grid = Phi @
    coef, then ``F.grid_sample``. M and Phi are precomputed outside the timed call (kept here)."""
    key = (points.shape[1], x.shape[2:], x.device)
    if key not in _TPS_SYSTEM:
        cp = torch_path.default_control_points(points.shape[1], torch.float64, x.device)
        _TPS_SYSTEM[key] = (torch_path.tps_coefficient_map(cp), torch_path.tps_features(cp, *x.shape[2:], False))
    m, phi = _TPS_SYSTEM[key]
    coef = torch.matmul(m, points.to(torch.float64))
    grid = torch.matmul(phi, coef).view(x.shape[0], *x.shape[2:], 2).to(x.dtype)
    return F.grid_sample(x, grid, align_corners=False)


def _flow_inputs(device, volume=False):
    x = torch.rand(2, 3, *((4, 4, 4) if volume else (8, 8)), device=device)
    flow = torch.randn(2, 3 if volume else 2, *x.shape[2:], device=device)
    return (x, flow), (0, 1)


_IDENTITY = {}


def _flow_eager(x, flow):
    """What a user writes for a displacement warp (MONAI's ``Warp``, VoxelMorph): the identity grid
    built once and kept (outside the timed call), plus the flow scaled to normalised units, then
    ``F.grid_sample``."""
    key = (x.shape[2:], x.device)
    if key not in _IDENTITY:
        dims = x.dim() - 2
        theta = torch.eye(dims + 1, device=x.device)[:dims][None]
        scale = torch.tensor([2.0 / s for s in reversed(x.shape[2:])], device=x.device)
        _IDENTITY[key] = (F.affine_grid(theta, (1, 1, *x.shape[2:]), align_corners=False), scale)
    base, scale = _IDENTITY[key]
    return F.grid_sample(x, base + flow.movedim(1, -1) * scale, align_corners=False)


def _bicubic(x, theta):
    return stn_triton.warp(x, theta, mode="bicubic")


def _bicubic_eager(x, theta):
    return F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), mode="bicubic", align_corners=False)


OP_CASES = [
    OpCase("warp affine", _affine_inputs, stn_triton.warp, _affine_eager, "affine_grid + grid_sample"),
    OpCase("warp projective", lambda d: _affine_inputs(d, rows=3), stn_triton.warp, plain_warp,
           "2 x affine_grid, / w, grid_sample"),
    OpCase("warp 3-D", _volume_inputs, stn_triton.warp, _affine_eager, "affine_grid + grid_sample (5-D)"),
    OpCase("tps_warp K=16", _tps_inputs, stn_triton.tps_warp, _tps_eager, "M @ pts, Phi @ coef, grid_sample"),
    OpCase("grid_sample", _grid_inputs, _grid_sample, _grid_sample_eager, "grid_sample"),
    OpCase("grid_sample 3-D", lambda d: _grid_inputs(d, volume=True), _grid_sample, _grid_sample_eager,
           "grid_sample (5-D)"),
    OpCase("warp_flow", _flow_inputs, stn_triton.warp_flow, _flow_eager, "identity (kept) + flow * scale, grid_sample"),
    OpCase("warp_flow 3-D", lambda d: _flow_inputs(d, volume=True), stn_triton.warp_flow, _flow_eager,
           "identity (kept) + flow * scale, grid_sample (5-D)"),
    OpCase("warp affine bicubic", _affine_inputs, _bicubic, _bicubic_eager, "affine_grid + grid_sample bicubic"),
]
PASSES = ("infer", "train fwd", "fwd+bwd")


def _callable(fn, inputs, grad_idx, pass_):
    """A no-argument callable that runs ``fn`` once in ``pass_``."""
    if pass_ == "infer":
        def run():
            with torch.no_grad():
                fn(*inputs)
        return run
    leaves = [t.detach().requires_grad_() if i in grad_idx else t for i, t in enumerate(inputs)]
    if pass_ == "train fwd":
        return lambda: fn(*leaves)
    wrt = [leaves[i] for i in grad_idx]
    go = torch.ones_like(fn(*leaves).detach())
    return lambda: torch.autograd.grad(fn(*leaves), wrt, go)


def time_interleaved(callables: dict, rounds: int, inner: int, sync: Callable = lambda: None) -> dict:
    """µs per call of each callable: the minimum over ``rounds`` rounds of ``inner`` calls each,
    the callables in a fresh seeded random order every round; ``sync`` drains the device per round."""
    for f in callables.values():  # warm-up (first calls compile, allocate, fill caches)
        for _ in range(3):
            f()
    sync()
    best = {k: float("inf") for k in callables}
    order = random.Random(0)
    names = list(callables)
    for _ in range(rounds):
        for k in order.sample(names, len(names)):
            f = callables[k]
            t = time.perf_counter()
            for _ in range(inner):
                f()
            sync()
            best[k] = min(best[k], (time.perf_counter() - t) / inner * 1e6)
    return best


def measure(device: str, backend: str, stub: bool, rounds: int, inner: int, cases=OP_CASES) -> list[dict]:
    """One row per (case, pass): ours and eager µs per call, measured together."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    with stn_triton.use_backend(backend), (stubbed_kernels() if stub else contextlib.nullcontext()):
        for case in cases:
            inputs, grad_idx = case.make(device)
            calls = {}
            for p in PASSES:
                calls[("ours", p)] = _callable(case.ours, inputs, grad_idx, p)
                calls[("eager", p)] = _callable(case.eager, inputs, grad_idx, p)
            t = time_interleaved(calls, rounds, inner, sync)
            for p in PASSES:
                rows.append({"case": case.name, "pass": p, "ours": t[("ours", p)], "eager": t[("eager", p)],
                             "eager_label": case.eager_label})
    return rows


class _Bare(torch.autograd.Function):
    """The cheapest Python-level differentiable op: allocates its output, and its gradients, nothing else."""

    @staticmethod
    def forward(ctx, x, grid):
        ctx.shapes = (x.shape, grid.shape)
        return torch.empty(x.shape[0], x.shape[1], *grid.shape[1:-1], dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out.new_empty(ctx.shapes[0]), grad_out.new_empty(ctx.shapes[1])


def _bare(x, grid):
    return _Bare.apply(x, grid)


def _rule_test(grid):
    lo, hi = torch.aminmax(grid)
    return -torch_path.COORD_LIMIT < lo.item() and hi.item() < torch_path.COORD_LIMIT


def measure_floors(device: str, rounds: int, inner: int) -> list[dict]:
    """µs per call of the building blocks (module docstring), at grid_sample's shape, interleaved."""
    from stn_triton import _checks, backend as stn_backend
    from stn_triton.grid_sample_api import check_grid

    (x, grid), _ = _grid_inputs(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    xs, gs = x.detach().requires_grad_(), grid.detach().requires_grad_()
    go = torch.ones(x.shape[0], x.shape[1], *grid.shape[1:-1], device=device)

    def checks():
        _checks.check_image(x, "input", volumes=True)
        check_grid(x, grid)
        _checks.check_sampling_modes(x, "bilinear", "zeros", "input")
        _checks.check_align_corners(False)
        _checks.fill_tensor(x, "zeros", None)

    calls = {
        ("F.grid_sample", "train fwd"): lambda: F.grid_sample(xs, gs, align_corners=False),
        ("F.grid_sample", "fwd+bwd"): lambda: torch.autograd.grad(F.grid_sample(xs, gs, align_corners=False),
                                                                  [xs, gs], go),
        ("bare autograd.Function (allocates its output)", "train fwd"): lambda: _bare(xs, gs),
        ("bare autograd.Function (allocates its output)", "fwd+bwd"): lambda: torch.autograd.grad(
            _bare(xs, gs), [xs, gs], go),
        ("torch.grid_sampler (aten, no Python wrapper)", "infer"): lambda: torch.grid_sampler(x, grid, 0, 0, False),
        ("non-finite rule's test: aminmax + 2 host reads", "infer"): lambda: _rule_test(grid),
        ("backend choice (resolve_backend)", "infer"): lambda: stn_backend.resolve_backend(x.device),
        ("grid_sample's argument checks", "infer"): checks,
    }
    t = time_interleaved(calls, rounds, inner, sync)
    return [{"block": k[0], "pass": k[1], "us": v} for k, v in t.items()]


def print_floors(rows: list[dict]) -> None:
    print("\nBuilding blocks at grid_sample's shape (the floor of any Python-level op), µs per call\n")
    print("| block | pass | µs |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['block']} | {r['pass']} | {r['us']:.1f} |")


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n")
    print("| op | pass | stn_triton µs | eager µs | ratio | eager composition |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['pass']} | {r['ours']:.1f} | {r['eager']:.1f} | {r['ours'] / r['eager']:.2f} "
              f"| {r['eager_label']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=200)
    ap.add_argument("--paths", default="triton,torch", help="comma-separated: triton (stubbed on CPU), torch")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"bench.host_overhead: {device}, torch {torch.__version__}, 1 thread, min of {a.rounds} rounds x "
          f"{a.inner} calls, interleaved")
    paths = [p for p in a.paths.split(",") if p]
    if device == "cpu":
        if "triton" in paths:
            print_table("Triton path, kernel launches stubbed (the library's host work only), µs per call",
                        measure("cpu", "triton", True, a.rounds, a.inner))
        if "torch" in paths:
            print_table("PyTorch path (CPU), whole call, µs per call",
                        measure("cpu", "torch", False, a.rounds, a.inner))
        print_floors(measure_floors("cpu", a.rounds, a.inner))
        return 0
    real = measure("cuda", "triton", False, a.rounds, a.inner)
    stubbed = measure("cuda", "triton", True, a.rounds, a.inner)
    print_table("CUDA, Triton path, real wall time per call (launches queued)", real)
    print_table("CUDA, Triton path, kernels stubbed (host work without the Triton launcher)", stubbed)
    print("\nTriton launcher's share of the real call: (real - stubbed) / real\n")
    print("| op | pass | real µs | stubbed µs | launcher µs | share |")
    print("|---|---|---|---|---|---|")
    for r, s in zip(real, stubbed):
        d = r["ours"] - s["ours"]
        print(f"| {r['case']} | {r['pass']} | {r['ours']:.1f} | {s['ours']:.1f} | {d:.1f} | {d / r['ours']:.0%} |")
    if "torch" in paths:
        print_table("PyTorch path (CUDA), whole call", measure("cuda", "torch", False, a.rounds, a.inner))
    print_floors(measure_floors("cuda", a.rounds, a.inner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
