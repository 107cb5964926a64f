"""Work per call outside the kernels: on a GPU every torch op in a launcher is one more launch,
which is most of the cost at MNIST sizes (a 28x28 batch moves ~1 MB). The Triton kernels are
replaced by stubs and the profiler lists the aten ops that do device work (leaves, minus
allocation and views): the warp forward must need none (one launch in all), the backward only
the grad_x zero-fill and the grad-theta partial sum (three launches in all)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import stn_triton
from conftest import DEVICE
from stn_triton.kernels import warp as kw

NO_DEVICE_WORK = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::view",
                  "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::as_strided", "aten::slice",
                  "aten::select", "aten::detach", "aten::alias", "aten::lift_fresh", "aten::t", "aten::expand",
                  "aten::unsqueeze", "aten::resolve_conj", "aten::resolve_neg",
                  "aten::to", "aten::contiguous"}  # as leaves these are no-ops (a real copy has a copy_ child)


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def device_ops(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return [e.name for e in events
            if e.name not in NO_DEVICE_WORK and not any(c.name.startswith("aten::") for c in e.cpu_children)]


@pytest.mark.skipif(DEVICE == "cuda", reason="host-side property; runs with the interpreter's CPU tensors")
@pytest.mark.parametrize("projective", [False, True])
@pytest.mark.parametrize("theta_dtype", [torch.float32, torch.float64])
def test_warp_launches(monkeypatch, projective, theta_dtype):
    monkeypatch.setattr(kw, "_warp_fwd_kernel", _NoLaunch())
    monkeypatch.setattr(kw, "_warp_bwd_kernel", _NoLaunch())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    rows = 3 if projective else 2
    theta = (torch.eye(3)[:rows] + 0.05 * torch.randn(2, rows, 3)).to(theta_dtype).requires_grad_()
    with stn_triton.use_backend("triton"):
        assert device_ops(lambda: stn_triton.warp(x.detach(), theta.detach())) == []
        out = stn_triton.warp(x, theta)
        go = torch.randn_like(out)
        ops = device_ops(lambda: torch.autograd.grad(out, [x, theta], go, retain_graph=True))
    # zero-fill of the grad_x buffer, the partial-row sum (+ its cast when theta is not fp32)
    assert ops[0] == "aten::zero_" and len(ops) == (2 if theta_dtype == torch.float32 else 3), ops
