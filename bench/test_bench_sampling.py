"""Throughput of the any-grid ops (issue #26): ``grid_sample``, ``warp_flow`` and bicubic sampling
against the PyTorch compositions they replace, in one run.

Providers: ``stn_triton`` (the fused kernels, atomic grad_x), ``stn_triton_det`` (the same under
``torch.use_deterministic_algorithms(True)``: int64 fixed-point grad_x), ``torch_eager``
(``F.grid_sample`` on the grid; for ``warp_flow`` the identity grid + flow scaled, then
``F.grid_sample``), ``torch_compile`` (``torch.compile`` of the eager composition). PyTorch's CUDA
grid-sampler backward has no deterministic mode (it raises), so there is no ``torch_det`` row.
Passes: ``fwd``, ``fwd_bwd`` (grads of the input and of the grid / flow).

Cases (the issue's): 2-D 256x1x28x28 (MNIST), 32x64x128x128 channels_last, 3-D 2x1x128³ (a
dense displacement field); bicubic on the two 2-D shapes. Without a GPU only the MNIST shape runs,
on the PyTorch path (smoke numbers, not benchmarks).
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton

from .conftest import HAS_CUDA
from .test_bench_warp import compiled
from .timing import rotating_sets, time_ms

DEVICE = "cuda" if HAS_CUDA else "cpu"


@dataclasses.dataclass(frozen=True)
class SamplingCase:
    name: str
    n: int
    c: int
    spatial: tuple
    channels_last: bool = False
    gpu_only: bool = True

    @property
    def id(self) -> str:
        return f"{self.name}-{self.n}x{self.c}x{'x'.join(map(str, self.spatial))}{'-cl' if self.channels_last else ''}"


CASES = [SamplingCase("mnist", 256, 1, (28, 28), gpu_only=False),
         SamplingCase("large-c64", 32, 64, (128, 128), channels_last=True),
         SamplingCase("ddf3d", 2, 1, (128, 128, 128))]
BICUBIC_CASES = CASES[:2]
PROVIDERS = ["stn_triton", "stn_triton_det", "torch_eager", "torch_compile"]


def _scale(spatial, align_corners=False):
    return torch.tensor([2.0 / max(s - 1, 1) if align_corners else 2.0 / s for s in reversed(spatial)], device=DEVICE)


def torch_grid_sample(x, grid, mode):
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def torch_warp_flow(x, flow, mode):
    """What a user writes: the identity grid, plus the flow in normalised units, then grid_sample."""
    n, dims = x.shape[0], x.dim() - 2
    theta = torch.eye(dims, dims + 1, device=x.device, dtype=flow.dtype).expand(n, dims, dims + 1)
    base = F.affine_grid(theta, (n, 1, *flow.shape[2:]), align_corners=False)
    return F.grid_sample(x, base + flow.movedim(1, -1) * _scale(x.shape[2:]).to(flow.dtype), mode=mode,
                         align_corners=False)


FUNCS = {
    ("grid_sample", "stn_triton"): lambda x, g, m: stn_triton.grid_sample(x, g, m),
    ("grid_sample", "torch_eager"): torch_grid_sample,
    ("grid_sample", "torch_compile"): lambda x, g, m: compiled(torch_grid_sample)(x, g, m),
    ("warp_flow", "stn_triton"): lambda x, f, m: stn_triton.warp_flow(x, f, mode=m),
    ("warp_flow", "torch_eager"): torch_warp_flow,
    ("warp_flow", "torch_compile"): lambda x, f, m: compiled(torch_warp_flow)(x, f, m),
}
FUNCS.update({(op, "stn_triton_det"): FUNCS[(op, "stn_triton")] for op in ("grid_sample", "warp_flow")})


def make_inputs(case, op, pass_, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.rand(case.n, case.c, *case.spatial, device=DEVICE, generator=g)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    dims = len(case.spatial)
    if op == "grid_sample":  # a smooth random grid: the identity plus a few pixels of displacement
        theta = torch.eye(dims, dims + 1, device=DEVICE).expand(case.n, dims, dims + 1)
        p = F.affine_grid(theta, (case.n, 1, *case.spatial), align_corners=False)
        p = p + 0.02 * torch.randn(p.shape, device=DEVICE, generator=g)
    else:
        p = 2.0 * torch.randn(case.n, dims, *case.spatial, device=DEVICE, generator=g)
    x.requires_grad_(pass_ == "fwd_bwd")
    p.requires_grad_(pass_ == "fwd_bwd")
    go = torch.randn(case.n, case.c, *case.spatial, device=DEVICE, generator=g)
    return x, p, go


def bench_sampling(benchmark, env_info, case, op, mode, provider, pass_):
    if case.gpu_only and not HAS_CUDA:
        pytest.skip("no CUDA device: GPU-sized shape skipped")
    if provider != "torch_eager" and not HAS_CUDA:
        pytest.skip("no CUDA device: GPU comparison skipped")
    fn = FUNCS[(op, provider)]
    set_bytes = 4 * case.n * case.c * 2 * int(torch.tensor(case.spatial).prod()) * (3 if pass_ == "fwd_bwd" else 1)
    sets = rotating_sets(lambda i: make_inputs(case, op, pass_, i), set_bytes, env_info.get("l2_bytes"))
    det = provider == "stn_triton_det"

    def run(inputs):
        x, p, go = inputs
        if pass_ == "fwd":
            with torch.no_grad():
                return fn(x, p, mode)
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(det)
        try:
            return torch.autograd.grad(fn(x, p, mode), [x, p], go)
        finally:
            torch.use_deterministic_algorithms(prev)

    ms = time_ms(run, sets)
    eager_fn = FUNCS[(op, "torch_eager")]

    def run_eager(inputs):
        x, p, go = inputs
        if pass_ == "fwd":
            with torch.no_grad():
                return eager_fn(x, p, mode)
        return torch.autograd.grad(eager_fn(x, p, mode), [x, p], go)

    eager_ms = ms if provider == "torch_eager" else time_ms(run_eager, sets)
    benchmark.extra_info.update(env_info)
    benchmark.extra_info.update(case=case.id, op=op, mode=mode, provider=provider, pass_=pass_, median_ms=ms,
                                torch_eager_ms=eager_ms, speedup_vs_eager=eager_ms / ms)
    it = itertools.cycle(sets)

    def timed():
        run(next(it))
        if HAS_CUDA:
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 0)


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", ["grid_sample", "warp_flow"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sampling(benchmark, env_info, case, op, provider, pass_):
    benchmark.group = f"{op}/{case.id}/{pass_}"
    bench_sampling(benchmark, env_info, case, op, "bilinear", provider, pass_)


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", BICUBIC_CASES, ids=lambda c: c.id)
def test_bicubic(benchmark, env_info, case, provider, pass_):
    benchmark.group = f"bicubic/{case.id}/{pass_}"
    bench_sampling(benchmark, env_info, case, "grid_sample", "bicubic", provider, pass_)
