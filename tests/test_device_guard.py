"""Every kernel launcher runs on its tensors' CUDA device, not on whichever device is current
(Triton launches on the current one). The multi-GPU check itself is in test_gpu.py."""
import contextlib
import inspect

import torch

from stn_triton.kernels import device, fixed_point, tps, warp


def test_every_launcher_is_guarded():
    launchers = [fn for mod in (warp, tps, fixed_point) for _, fn in inspect.getmembers(mod, inspect.isfunction)
                 if fn.__module__ == mod.__name__ and "_kernel[" in inspect.getsource(inspect.unwrap(fn))]
    assert {fn.__name__ for fn in launchers} >= {"warp_fwd", "warp_bwd", "tps_fwd", "tps_bwd", "fixed_to_float"}
    assert all(getattr(fn, "on_tensor_device", False) for fn in launchers)


class _OnCuda1(torch.Tensor):
    """A CPU tensor that reports itself as living on cuda:1."""

    @property
    def is_cuda(self):
        return True

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_guard_makes_the_tensor_device_current(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    seen = []
    launcher = device.on_tensor_device(lambda *a, **k: seen.append(len(entered)) or "ran")
    t = torch.Tensor._make_subclass(_OnCuda1, torch.zeros(2))
    assert launcher(3, t, flag=True) == "ran"
    assert entered == [torch.device("cuda", 1)] and seen == [1]  # launched inside the guard
    assert launcher(torch.zeros(2)) == "ran" and len(entered) == 1  # CPU tensors: no guard
