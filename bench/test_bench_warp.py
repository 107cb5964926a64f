"""Throughput of the warp (affine) and TPS warp against the PyTorch paths.

Providers: ``stn_triton`` (the fused kernels), ``torch_eager`` (``affine_grid`` + ``grid_sample``;
for TPS the torch-op composition kornia uses: solve, O(H*W*K) radial features, matmul,
``grid_sample``), ``torch_compile`` (``torch.compile`` of the torch path), ``kornia`` (TPS, when
installed). Passes: ``fwd``; ``fwd_bwd`` (grads of x and theta); ``bwd_theta`` (forward + grad
of theta only, x frozen: the localisation-net case).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from stn_triton import torch_path

from .cases import CASES, PASSES, VOLUME_CASES, bytes_fused, bytes_unfused
from .conftest import HAS_CUDA
from .timing import rotating_sets, time_ms

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GPU_ONLY = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: GPU comparison skipped")


# ----------------------------------------------------------------------------- the computations


def torch_affine(x, theta, size):
    grid = F.affine_grid(theta.to(x.dtype), (x.shape[0], x.shape[1], *size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def torch_tps(x, points, size):
    cps = torch_path.default_control_points(points.shape[1], points.dtype, points.device)
    grid = torch_path.tps_grid(points, cps, *size, False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def stn_affine(x, theta, size):
    return stn_triton.warp(x, theta, size)  # images (N, 2, 3) and volumes (N, 3, 4) alike


def stn_tps(x, points, size):
    return stn_triton.tps_warp(x, points, size)


_compiled = {}


def compiled(fn):
    """``torch.compile`` of the torch path, one static-shape specialisation per benchmark case.

    Dynamo keys its cache on the function's code object and by default gives up after 8
    recompiles (falling back to eager *silently*), which would turn later "torch_compile" rows
    into eager timings: the limits are raised so every case gets its own compiled graph.
    """
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4096))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 65536)
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def kornia_tps(x, points, size):
    kornia = pytest.importorskip("kornia")
    k = points.shape[1]
    src = torch_path.default_control_points(k, points.dtype, points.device).expand_as(points)
    # kornia's TPS maps destination -> source points; weights solved per call, as a user would
    kw, aw = kornia.geometry.transform.get_tps_transform(src, points)
    return kornia.geometry.transform.warp_image_tps(x, src, kw, aw, align_corners=False)


FUNCS = {
    ("affine", "stn_triton"): stn_affine,
    ("affine", "torch_eager"): torch_affine,
    ("affine", "torch_compile"): lambda x, t, s: compiled(torch_affine)(x, t, s),
    ("affine3d", "stn_triton"): stn_affine,
    ("affine3d", "torch_eager"): torch_affine,  # F.affine_grid / F.grid_sample take 5-D sizes as they are
    ("affine3d", "torch_compile"): lambda x, t, s: compiled(torch_affine)(x, t, s),
    ("tps", "stn_triton"): stn_tps,
    ("tps", "torch_eager"): torch_tps,
    ("tps", "torch_compile"): lambda x, t, s: compiled(torch_tps)(x, t, s),
    ("tps", "kornia"): kornia_tps,
}


# ----------------------------------------------------------------------------- inputs and timing


def make_inputs(case, dtype, channels_last, transform, k, pass_, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    volume = transform == "affine3d"
    spatial = (case.d, case.h, case.w) if volume else (case.h, case.w)
    out_size = (case.d_out, case.h_out, case.w_out) if volume else (case.h_out, case.w_out)
    x = torch.rand(case.n, case.c, *spatial, device=DEVICE, generator=g).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d if volume else torch.channels_last)
    if volume:
        p = torch.eye(3, 4, device=DEVICE).expand(case.n, 3, 4) + 0.1 * torch.randn(case.n, 3, 4, device=DEVICE, generator=g)
    elif transform == "affine":
        p = torch.eye(2, 3, device=DEVICE).expand(case.n, 2, 3) + 0.1 * torch.randn(case.n, 2, 3, device=DEVICE, generator=g)
    else:
        p = stn_triton.params.tps(0.05 * torch.randn(case.n, 2 * k, device=DEVICE, generator=g), k)
    x.requires_grad_(pass_ == "fwd_bwd")
    p.requires_grad_(pass_ != "fwd")
    go = torch.randn(case.n, case.c, *out_size, device=DEVICE, generator=g).to(dtype)
    return x, p.contiguous().detach().requires_grad_(pass_ != "fwd"), go


def step_fn(fn, pass_, size):
    def run(inputs):
        x, p, go = inputs
        if pass_ == "fwd":
            with torch.no_grad():
                return fn(x, p, size)
        out = fn(x, p, size)
        wrt = [x, p] if pass_ == "fwd_bwd" else [p]
        return torch.autograd.grad(out, wrt, go)
    return run


# ----------------------------------------------------------------------------- the benchmark


def bench_case(benchmark, env_info, copy_bandwidth, case, transform, k, provider, pass_, dtype_name, channels_last):
    if case.gpu_only and not HAS_CUDA:
        pytest.skip("no CUDA device: GPU-sized shape skipped")
    if provider != "torch_eager" and provider != "stn_triton" and not HAS_CUDA:
        pytest.skip("no CUDA device: GPU comparison skipped")
    if channels_last and case.c < 3:
        pytest.skip("channels_last is the same layout as NCHW for C < 3")
    dtype = DTYPES[dtype_name]
    size = (case.d_out, case.h_out, case.w_out) if transform == "affine3d" else (case.h_out, case.w_out)
    fn = FUNCS[(transform, provider)]
    elem = torch.finfo(dtype).bits // 8
    params = {"affine": 6, "affine3d": 12}.get(transform, 2 * k)
    set_bytes = bytes_fused(case, pass_, elem, params)
    sets = rotating_sets(lambda i: make_inputs(case, dtype, channels_last, transform, k, pass_, i),
                         set_bytes, env_info.get("l2_bytes"))
    run = step_fn(fn, pass_, size)
    ms = time_ms(run, sets)
    eager_ms = ms if provider == "torch_eager" else time_ms(step_fn(FUNCS[(transform, "torch_eager")], pass_, size), sets)
    gbps = set_bytes / (ms * 1e-3) / 1e9
    benchmark.extra_info.update(env_info)
    benchmark.extra_info.update(
        case=case.id, transform=f"{transform}{k if transform == 'tps' else ''}", provider=provider, pass_=pass_,
        dtype=dtype_name, layout=("ndhwc" if transform == "affine3d" else "nhwc") if channels_last else "nchw",
        median_ms=ms, torch_eager_ms=eager_ms,
        speedup_vs_eager=eager_ms / ms, gbps=gbps,
        copy_bw_fraction=(gbps / copy_bandwidth) if copy_bandwidth else None, copy_bandwidth_gbps=copy_bandwidth,
        bytes_fused=set_bytes,
        bytes_unfused=bytes_unfused(case, pass_, elem, params) if transform in ("affine", "affine3d") else None,
    )
    it = itertools.cycle(sets)

    def timed():
        run(next(it))
        if HAS_CUDA:
            torch.cuda.synchronize()  # the device work is inside the timed call

    benchmark.pedantic(timed, rounds=10 if HAS_CUDA else 2, warmup_rounds=2 if HAS_CUDA else 0)


PROVIDERS = ["stn_triton", "torch_eager", "torch_compile"]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_affine(benchmark, env_info, copy_bandwidth, case, provider, pass_, dtype_name, channels_last):
    if not HAS_CUDA and dtype_name != "fp32":
        pytest.skip("CPU run: fp32 only")
    benchmark.group = f"affine/{case.id}/{pass_}/{dtype_name}"
    bench_case(benchmark, env_info, copy_bandwidth, case, "affine", 0, provider, pass_, dtype_name, channels_last)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", VOLUME_CASES, ids=lambda c: c.id)
def test_affine3d(benchmark, env_info, copy_bandwidth, case, provider, pass_):
    """Volumes, each case in its own dtype and layout (bf16 channels_last_3d for the multi-channel MRI)."""
    benchmark.group = f"affine3d/{case.id}/{pass_}"
    bench_case(benchmark, env_info, copy_bandwidth, case, "affine3d", 0, provider, pass_, case.dtype,
               case.channels_last)


TPS_CASES = [c for c in CASES if c.name in ("mnist", "svhn64", "cub448", "large-c64")]


@pytest.mark.parametrize("k", [16, 64])
@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", PROVIDERS + ["kornia"])
@pytest.mark.parametrize("case", TPS_CASES, ids=lambda c: c.id)
def test_tps(benchmark, env_info, copy_bandwidth, case, provider, pass_, k):
    benchmark.group = f"tps{k}/{case.id}/{pass_}"
    bench_case(benchmark, env_info, copy_bandwidth, case, "tps", k, provider, pass_, "fp32", False)


# ----------------------------------------------------------------------------- deterministic backward


def deterministic(run):
    """``run`` with torch's deterministic algorithms on: the warp backward then scatters grad_x in
    int64 fixed point (bit-identical run to run) instead of float atomics."""
    def wrapped(inputs):
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return run(inputs)
        finally:
            torch.use_deterministic_algorithms(previous)
    return wrapped


DET_CASES = [c for c in CASES if c.name in ("mnist-add", "svhn64", "svhn-multi-c160", "cub448", "large-c64")]


@GPU_ONLY
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", DET_CASES, ids=lambda c: c.id)
def test_affine_deterministic(benchmark, env_info, copy_bandwidth, case, dtype_name, channels_last):
    """Cost of the deterministic fwd + bwd relative to the atomic one, measured in the same test
    (torch eager has no deterministic grid_sample backward on CUDA: it raises)."""
    if channels_last and case.c < 3:
        pytest.skip("channels_last is the same layout as NCHW for C < 3")
    benchmark.group = f"affine-deterministic/{case.id}/{dtype_name}"
    dtype = DTYPES[dtype_name]
    size = (case.h_out, case.w_out)
    elem = torch.finfo(dtype).bits // 8
    set_bytes = bytes_fused(case, "fwd_bwd", elem)
    sets = rotating_sets(lambda i: make_inputs(case, dtype, channels_last, "affine", 0, "fwd_bwd", i),
                         set_bytes, env_info.get("l2_bytes"))
    atomic = step_fn(stn_affine, "fwd_bwd", size)
    det = deterministic(atomic)
    ms, atomic_ms = time_ms(det, sets), time_ms(atomic, sets)
    benchmark.extra_info.update(env_info)
    benchmark.extra_info.update(
        case=case.id, transform="affine", provider="stn_triton_deterministic", pass_="fwd_bwd", dtype=dtype_name,
        layout="nhwc" if channels_last else "nchw", median_ms=ms, atomic_ms=atomic_ms,
        deterministic_cost=ms / atomic_ms, gbps=set_bytes / (ms * 1e-3) / 1e9,
    )
    it = itertools.cycle(sets)

    def timed():
        det(next(it))
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=10, warmup_rounds=2)
