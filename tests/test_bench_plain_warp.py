"""bench.train_step's 'plain' variant swaps SpatialTransformer's warp for the PyTorch composition:
it must accept every keyword the module passes (fill_value came later and broke it) and match
F.affine_grid + F.grid_sample exactly."""
import pytest
import torch
import torch.nn.functional as F

from bench.train_step import plain_warp, warp_impl
from stn_triton import SpatialTransformer


def test_plain_warp_is_the_composition():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 7, 9, generator=g)
    theta = torch.eye(2, 3).expand(3, 2, 3) + 0.1 * torch.randn(3, 2, 3, generator=g)
    ref = F.grid_sample(x, F.affine_grid(theta, (3, 2, 5, 6), align_corners=False), align_corners=False)
    assert torch.equal(plain_warp(x, theta, (5, 6), fill_value=None), ref)
    with pytest.raises(ValueError, match="fill_value"):
        plain_warp(x, theta, fill_value=0.5)


def test_spatial_transformer_runs_under_the_plain_variant():
    loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 8 * 8, 6))
    st = SpatialTransformer(loc)
    x = torch.rand(2, 1, 8, 8)
    with warp_impl("plain"):
        y, _ = st(x)
    assert y.shape == (2, 1, 8, 8) and torch.isfinite(y).all()


def test_plain_projective_and_tps_match_the_library():
    # the plain variant must compute the same warp (so warp / plain compares implementations only)
    import stn_triton
    from bench.train_step import plain_tps_warp

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 7, 9, generator=g, dtype=torch.float64)
    theta = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) + 0.05 * torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(plain_warp(x, theta, (5, 6)), stn_triton.warp(x, theta, (5, 6)), atol=1e-12, rtol=0)
    pts = stn_triton.torch_path.default_control_points(16, torch.float64).expand(3, 16, 2)
    pts = pts + 0.05 * torch.randn(3, 16, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(plain_tps_warp(x, pts, (5, 6)), stn_triton.tps_warp(x, pts, (5, 6)), atol=1e-12, rtol=0)


def test_tps_spatial_transformer_runs_under_the_plain_variant():
    loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 8 * 8, 32))
    st = SpatialTransformer(loc, "tps")
    x = torch.rand(2, 1, 8, 8)
    with warp_impl("plain"):
        y, _ = st(x)
    assert y.shape == (2, 1, 8, 8)
    torch.testing.assert_close(y, st(x)[0], atol=1e-5, rtol=0)  # identity-initialised: both the identity
