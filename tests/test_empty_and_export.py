"""Issue #30 item 5: sizes as 0-d integer tensors (as MONAI passes them, as ``F.affine_grid``
accepts), empty output grids and C = 0 (an empty result with zero gradients, on both backends and
for TPS too: one rule, ``kernels.layout.nothing_to_sample``, with the N = 0 case), and
``torch.export`` of a small model that uses the ops."""
import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from stn_triton import torch_path

BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]


def test_sizes_accept_0d_integer_tensors_and_reject_float_ones():
    x, theta = torch.rand(1, 2, 4, 4), torch.eye(2, 3)[None]
    size = (torch.tensor(3), torch.tensor(5, dtype=torch.int32))
    assert stn_triton.warp(x, theta, size).shape == (1, 2, 3, 5)
    torch.testing.assert_close(stn_triton.warp(x, theta, size), stn_triton.warp(x, theta, (3, 5)), rtol=0, atol=0)
    v, theta3 = torch.rand(1, 1, 3, 4, 4), torch.eye(3, 4)[None]
    assert stn_triton.warp(v, theta3, (torch.tensor(2), torch.tensor(3), torch.tensor(4))).shape == (1, 1, 2, 3, 4)
    pts = torch_path.default_control_points(4)[None]
    assert stn_triton.tps_warp(x, pts, (torch.tensor(3), torch.tensor(2))).shape == (1, 2, 3, 2)
    assert stn_triton.tps_grid(pts, (torch.tensor(3), 2)).shape == (1, 3, 2, 2)
    for bad in ((torch.tensor(3.0), 5), (torch.tensor(True), 5), (torch.tensor([3]), 5), (3, torch.tensor(2.5))):
        with pytest.raises(ValueError, match="size"):
            stn_triton.warp(x, theta, bad)
        with pytest.raises(ValueError, match="size"):
            stn_triton.tps_warp(x, pts, bad)


def _check_empty(out, expected_shape, x, param, reference_shape=None):
    assert out.shape == expected_shape
    if reference_shape is not None:  # PyTorch's own composition gives the same shape
        assert tuple(reference_shape) == expected_shape
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(x.grad) == 0
    assert param.grad.shape == param.shape and torch.count_nonzero(param.grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c,size", [(3, (0, 4)), (3, (4, 0)), (0, (4, 5)), (0, (0, 0))])
def test_empty_output_grid_or_no_channels(device, backend, channels_last, c, size):
    x = torch.randn(2, c, 5, 6, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    theta = (torch.eye(3, device=device)[:2] + 0.1 * torch.randn(2, 2, 3, device=device)).requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.warp(x, theta, size)
        # F.affine_grid refuses a zero size; F.grid_sample of an empty grid gives PyTorch's shape
        ref = F.grid_sample(x.detach(), torch.zeros(2, *size, 2, device=device), align_corners=False) \
            if c > 0 else None
        _check_empty(out, (2, c, *size), x, theta, None if ref is None else ref.shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c,size", [(2, (0, 3, 4)), (2, (2, 0, 4)), (0, (2, 3, 4))])
def test_empty_volume_output(device, backend, c, size):
    x = torch.randn(2, c, 3, 4, 5, device=device, requires_grad=True)
    theta = (torch.eye(4, device=device)[:3] + 0.1 * torch.randn(2, 3, 4, device=device)).requires_grad_()
    with stn_triton.use_backend(backend):
        _check_empty(stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=0.5), (2, c, *size), x, theta)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c,size", [(2, (0, 3)), (0, (3, 3))])
def test_empty_tps_output(device, backend, c, size):
    x = torch.randn(2, c, 4, 4, device=device, requires_grad=True)
    pts = (torch_path.default_control_points(4, device=device)[None] + 0.05 * torch.randn(2, 4, 2, device=device))
    pts.requires_grad_()
    with stn_triton.use_backend(backend):
        _check_empty(stn_triton.tps_warp(x, pts, size), (2, c, *size), x, pts)


class _TwoWarps(torch.nn.Module):
    """A spatial transformer (affine, via ``SpatialTransformer``) followed by a fixed-grid TPS warp."""

    def __init__(self):
        super().__init__()
        loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 6))
        torch.nn.init.zeros_(loc[1].weight)
        torch.nn.init.zeros_(loc[1].bias)
        self.st = stn_triton.SpatialTransformer(loc, "affine", (6, 6))
        self.register_buffer("points", torch_path.default_control_points(4)[None] * 0.9)

    def forward(self, x):
        y, _ = self.st(x)
        return stn_triton.tps_warp(y, self.points.expand(x.shape[0], -1, -1), (5, 5))


def test_torch_export_of_a_model_using_warp_and_tps_warp():
    model = _TwoWarps()
    x = torch.rand(3, 2, 8, 8)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("stn_triton.warp" in t for t in targets) and any("stn_triton.tps_warp" in t for t in targets)
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)
    x2 = torch.rand(3, 2, 8, 8)
    torch.testing.assert_close(exported.module()(x2), model(x2), rtol=0, atol=0)
