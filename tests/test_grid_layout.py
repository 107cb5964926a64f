"""The PyTorch path's two grid layouts (``torch_path.coordinate_axis``): batch-major below
``PLANAR_MIN_POINTS`` coordinates (F.affine_grid's product: its bits), planar from there on (a view
of (N, dims, P)); in both, the written-out parameter gradients give autograd's bits, which the eager
path's recorded calls rely on."""
import pytest
import torch
import torch.nn.functional as F

from stn_triton import torch_path
from stn_triton._warp_ops import _theta_grad
from stn_triton._warp3d_ops import _theta_grad as _theta_grad_3d

SMALL, LARGE = (2, 8, 8), (4, 16, 16)  # 128 and 1024 coordinates: either side of the threshold
ONE = (1, 32, 32)  # planar with one image: the (N·rows, P) views are column-major there


def test_threshold_splits_the_shapes_used_here():
    assert torch_path.coordinate_axis(SMALL[0], SMALL[1] * SMALL[2]) == -1
    assert torch_path.coordinate_axis(LARGE[0], LARGE[1] * LARGE[2]) == 1 == \
        torch_path.coordinate_axis(1, torch_path.PLANAR_MIN_POINTS)


@pytest.mark.parametrize("shape", [SMALL, LARGE, ONE])
@pytest.mark.parametrize("rows", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_and_theta_grad(shape, rows, dtype):
    n, h, w = shape
    theta = torch.eye(3, dtype=dtype)[:rows].repeat(n, 1, 1) + 0.1 * torch.randn(n, rows, 3, dtype=dtype)
    leaf = theta.clone().requires_grad_()
    grid = torch_path.transform_grid(leaf, h, w, False)
    planar = shape != SMALL
    assert grid.is_contiguous() != planar
    if rows == 2:
        ref = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
        assert torch.equal(grid, ref) if not planar else torch.allclose(grid, ref, atol=4 * torch.finfo(dtype).eps)
    gg = torch.randn(n, h, w, 2, dtype=dtype)
    grid.backward(gg)
    assert torch.equal(_theta_grad(gg, grid.detach(), theta, (), (h, w), False), leaf.grad)


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (2, 8, 8, 8), (1, 16, 8, 8)])
def test_grid_3d_and_theta_grad(shape):
    n, d, h, w = shape
    theta = torch.eye(4)[:3].repeat(n, 1, 1) + 0.1 * torch.randn(n, 3, 4)
    leaf = theta.clone().requires_grad_()
    grid = torch_path.transform_grid_3d(leaf, d, h, w, True)
    assert torch.allclose(grid, F.affine_grid(theta, (n, 1, d, h, w), align_corners=True), atol=1e-6)
    gg = torch.randn(n, d, h, w, 3)
    grid.backward(gg)
    assert torch.equal(_theta_grad_3d(gg, grid.detach(), theta, (), (d, h, w), True), leaf.grad)


@pytest.mark.parametrize("shape", [SMALL, LARGE, ONE])
def test_tps_grid_and_coef_grad(shape):
    n, h, w = shape
    phi = torch_path.tps_features(torch_path.default_control_points(16, torch.float64), h, w, False)
    coef = torch.randn(n, 19, 2).requires_grad_()
    grid = torch_path.tps_grid_from_features(phi, coef, h, w, torch.float32)
    ref = phi.expand(n, -1, -1).bmm(coef.detach().double()).reshape(n, h, w, 2)
    # float64 products, rounded once to float32: the float64 reference's values to float32 rounding
    assert torch.allclose(grid.double(), ref, rtol=2 ** -23, atol=1e-12)
    gg = torch.randn(n, h, w, 2)
    grid.backward(gg)
    assert torch.equal(torch_path.tps_grid_to_coef_grad(phi, gg).float(), coef.grad)


def test_inside_test_reads_a_planar_grid_through_its_base():
    n, h, w = LARGE
    grid = torch_path.transform_grid(torch.eye(3)[:2].repeat(n, 1, 1), h, w, False)
    assert not grid.is_contiguous() and torch_path.coordinates_inside(grid)
    planar = grid._base.clone().view(n, 2, h * w)
    planar[1, 0, 7] = float("nan")
    assert not torch_path.coordinates_inside(planar.view(n, 2, h, w).permute(0, 2, 3, 1))
