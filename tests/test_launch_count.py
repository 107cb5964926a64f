"""Work per call outside the kernels: on a GPU every torch op in a launcher is one more launch,
which is most of the cost at MNIST sizes (a 28x28 batch moves ~1 MB). The Triton kernels are
replaced by stubs and the profiler lists the aten ops that do device work (leaves, minus
allocation and views). Per case (README, "Launches per call"):

* affine / projective forward: the kernel only (1 launch), any theta dtype;
* backward, fp32 / fp64 x: the grad_x zero-fill, the kernel, the partial-row sum (its cast to
  theta's dtype happens inside the reduction): 3 launches;
* backward, fp16 / bf16 x: + the cast of the fp32 grad_x buffer to x's dtype: 4;
* deterministic backward: + the fixed-point exponent kernel, and the conversion kernel replaces
  the cast: 5 for every dtype (+4 fills PyTorch adds to every uninitialised allocation while
  ``torch.utils.deterministic.fill_uninitialized_memory`` is on, its default);
* TPS forward: points -> float64 (none for fp64 points) and the coefficient product (a bmm), then the
  kernel: 3; TPS backward: zero-fill, kernel, partial sum, then autograd's bmm back to the
  points and the cast to their dtype: 5 (+1 for half x, +1 more deterministic).
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import stn_triton
from conftest import DEVICE
from stn_triton.kernels import fixed_point, tps as kt, warp as kw, warp3d as kw3

NO_DEVICE_WORK = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::view",
                  "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::as_strided", "aten::slice",
                  "aten::select", "aten::detach", "aten::alias", "aten::lift_fresh", "aten::t", "aten::expand",
                  "aten::unsqueeze", "aten::resolve_conj", "aten::resolve_neg", "aten::transpose",
                  "aten::to", "aten::contiguous"}  # as leaves these are no-ops (a real copy has a copy_ child)
KERNELS = [(kw, "_warp_fwd_kernel"), (kw, "_warp_bwd_kernel"), (kt, "_tps_fwd_kernel"), (kt, "_tps_bwd_kernel"),
           (kw3, "_warp3d_fwd_kernel"), (kw3, "_warp3d_bwd_kernel"),
           (fixed_point, "_exponent_kernel"), (fixed_point, "_fixed_to_float_kernel")]
pytestmark = pytest.mark.skipif(DEVICE == "cuda", reason="host-side property; runs with the interpreter's CPU tensors")


class _CountingStub:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append("kernel")


@pytest.fixture
def launches(monkeypatch):
    """Stub every Triton kernel; ``launches(fn)`` returns the device work of ``fn()``: the aten
    ops that do device work, and one "kernel" per Triton launch, in order of appearance by kind."""
    log = []
    for module, name in KERNELS:
        monkeypatch.setattr(module, name, _CountingStub(log))

    def device_work(fn):
        """(torch ops called from Python that do device work, Triton launches). An op counts
        when it, or an aten op beneath it, is a leaf that does work: ``to`` that copies counts
        once (as ``aten::to``), ``sum(dtype=...)`` once however the CPU implements the cast."""
        log.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = [e for e in prof.events() if e.name.startswith("aten::")]

        def works(e):
            return e.name not in NO_DEVICE_WORK or any(works(c) for c in e.cpu_children if c.name.startswith("aten::"))

        roots = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return [e.name for e in roots if works(e)], len(log)
    return device_work


def _warp_case(projective, x_dtype, theta_dtype):
    x = torch.randn(2, 3, 8, 8).to(x_dtype).requires_grad_()
    rows = 3 if projective else 2
    theta = (torch.eye(3)[:rows] + 0.05 * torch.randn(2, rows, 3)).to(theta_dtype).requires_grad_()
    return x, theta


@pytest.mark.parametrize("projective", [False, True])
@pytest.mark.parametrize("theta_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_warp_launches_fp32(launches, projective, theta_dtype):
    x, theta = _warp_case(projective, torch.float32, theta_dtype)
    with stn_triton.use_backend("triton"):
        assert launches(lambda: stn_triton.warp(x.detach(), theta.detach())) == ([], 1)
        out = stn_triton.warp(x, theta)
        go = torch.randn_like(out)
        ops, kernels = launches(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    assert (ops, kernels) == (["aten::zero_", "aten::sum"], 1)  # 3 launches


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
def test_warp_launches_half(launches, x_dtype):
    x, theta = _warp_case(False, x_dtype, torch.float32)
    with stn_triton.use_backend("triton"):
        assert launches(lambda: stn_triton.warp(x.detach(), theta.detach())) == ([], 1)
        out = stn_triton.warp(x, theta)
        go = torch.randn_like(out)
        ops, kernels = launches(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    assert (sorted(ops), kernels) == (sorted(["aten::zero_", "aten::to", "aten::sum"]), 1)  # 4 launches


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fill_uninitialized", [False, True])
def test_warp_launches_deterministic(launches, deterministic, monkeypatch, x_dtype, fill_uninitialized):
    """5 launches of ours; with PyTorch's default ``fill_uninitialized_memory`` (deterministic mode
    fills every ``torch.empty``) also its fill of our four allocations (the grad_x buffer before
    its zero-fill, the exponents, the partial rows, the output)."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", fill_uninitialized)
    x, theta = _warp_case(False, x_dtype, torch.float32)
    with stn_triton.use_backend("triton"):
        out = stn_triton.warp(x, theta)
        go = torch.randn_like(out)
        ops, kernels = launches(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    # zero-fill, exponent kernel, backward kernel, conversion kernel, partial sum
    fills = ["aten::empty"] * 3 + ["aten::empty_like"] if fill_uninitialized else []
    assert (sorted(ops), kernels) == (sorted(["aten::sum", "aten::zero_"] + fills), 3)


@pytest.mark.parametrize("points_dtype", [torch.float32, torch.float64])
def test_tps_launches(launches, points_dtype):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    points = (stn_triton.torch_path.default_control_points(16)[None] + 0.05 * torch.randn(2, 16, 2)).to(points_dtype)
    points.requires_grad_()
    cast = [] if points_dtype == torch.float64 else ["aten::to"]
    with stn_triton.use_backend("triton"):
        stn_triton.tps_warp(x.detach(), points.detach())  # solves the default grid's system once
        ops, kernels = launches(lambda: stn_triton.tps_warp(x.detach(), points.detach()))
        assert (sorted(ops), kernels) == (sorted(cast + ["aten::bmm"]), 1)  # M (expanded, a view) @ points
        out = stn_triton.tps_warp(x, points)
        go = torch.randn_like(out)
        ops, kernels = launches(lambda: torch.autograd.grad(out, [x, points], go, retain_graph=True))
    # zero-fill, kernel, partial sum, M^T @ grad_coef, cast to the points' dtype
    assert (sorted(ops), kernels) == (sorted(["aten::zero_", "aten::sum", "aten::bmm"] + cast), 1)


@pytest.mark.parametrize("fill_value", [0.5, [0.1, 0.2, 0.3]])
def test_fill_padding_launches(launches, fill_value):
    """A Python fill value adds one small op (building the (C,) fill tensor the kernel reads: a fill
    for a float, a host-to-device copy for a list on CUDA), nothing else: 1 + 1 forward, 3 backward."""
    x, theta = _warp_case(False, torch.float32, torch.float32)
    with stn_triton.use_backend("triton"):
        ops, kernels = launches(lambda: stn_triton.warp(x.detach(), theta.detach(), padding_mode="fill",
                                                        fill_value=fill_value))
        out = stn_triton.warp(x, theta, padding_mode="fill", fill_value=fill_value)
        go = torch.randn_like(out)
        bops, bkernels = launches(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    assert kernels == 1 and bkernels == 1
    assert ops == (["aten::full"] if isinstance(fill_value, float) else ["aten::detach_"]), ops
    assert (sorted(bops)) == ["aten::sum", "aten::zero_"]


def test_volume_launches(launches):
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    theta = (torch.eye(3, 4) + 0.05 * torch.randn(2, 3, 4)).requires_grad_()
    with stn_triton.use_backend("triton"):
        out = stn_triton.warp(x, theta)
        go = torch.randn_like(out)
        fwd = launches(lambda: stn_triton.warp(x.detach(), theta.detach()))
        bwd = launches(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    assert fwd == ([], 1) and (sorted(bwd[0]), bwd[1]) == (["aten::sum", "aten::zero_"], 1), (fwd, bwd)
