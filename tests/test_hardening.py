"""Non-finite coordinates and singular splines: the documented result on both backends, finite
gradients, no crash (PyTorch's CPU grid-sampler backward reads out of bounds on NaN grids with
border / reflection padding, so those checks run in a child process)."""
import subprocess
import sys

import pytest
import torch

import stn_triton
from conftest import DEVICE
from stn_triton import torch_path
from testing.compiler import ROOT

PADDINGS = ["zeros", "border", "reflection"]
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("padding_mode", ["border", "reflection"])
def test_cpu_backward_with_nan_theta_does_not_crash(padding_mode):
    """The issue's reproducer: SIGSEGV / heap corruption in the default CPU path before the fix."""
    code = f"""
import torch, stn_triton
torch.manual_seed(0)
for _ in range(20):
    x = torch.rand(3, 2, 9, 11, requires_grad=True)
    th = torch.tensor([[[1., 0, float('nan')], [0, 1, 0]], [[float('inf'), 0, 0], [0, 1, 0]],
                       [[1., 0.1, 0], [0, 1, 0]]], requires_grad=True)
    out = stn_triton.warp(x, th, padding_mode={padding_mode!r})
    out.sum().backward()
    assert torch.isfinite(out).all() and (out[:2] == 0).all(), out
    assert torch.isfinite(x.grad).all() and torch.isfinite(th.grad).all()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def _theta_batch():
    """Affine and projective thetas whose coordinates are NaN, +-inf, huge, or fine. Finite
    coordinates are kept off the pixel centres and off rounding ties: there bilinear sampling has
    a kink (and nearest a tie), where the two backends may legitimately take either side."""
    aff = torch.tensor([
        [[NAN, 0, 0], [0, 1, 0.013]],
        [[1, 0, 0.013], [0, INF, 0]],
        [[1, 0, -INF], [0, 1, 0.013]],
        [[1e30, 0, 0], [0, 1e30, -1e30]],
        [[1, 0, 3e9], [0, 1, 0.013]],
        [[0.9, 0.2, 0.1], [-0.1, 1.1, -0.2]],
    ], dtype=torch.float64)
    proj = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    proj[:, :2, 2] = torch.tensor([0.013, -0.021], dtype=torch.float64)
    proj[0, 2] = torch.tensor([0.0, 0.0, 0.0])  # w = 0 everywhere: u / 0
    proj[1, 2] = torch.tensor([1.0, 0.0, 0.0])  # w = x_t: huge coordinates near the middle column
    proj[2, 0, 0] = NAN
    proj[3, 2] = torch.tensor([0.1, -0.05, 1.0])
    return aff, proj


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
# the interpreter evaluates the kernels' float ops in numpy, which warns on the inf / NaN coordinates
# these tests feed on purpose (w = 0 divides by zero); the compiled kernels do not warn
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_non_finite_coordinates_same_on_both_backends(device, padding_mode, mode, kind):
    aff, proj = _theta_batch()
    theta = (aff if kind == "affine" else proj).to(device)
    x = torch.rand(theta.shape[0], 2, 6, 8, dtype=torch.float64, device=device)
    go = torch.randn(theta.shape[0], 2, 6, 8, dtype=torch.float64, device=device)
    results = {}
    for backend in ("torch", "triton"):
        xi, ti = x.clone().requires_grad_(), theta.clone().requires_grad_()
        with stn_triton.use_backend(backend):
            out = stn_triton.warp(xi, ti, mode=mode, padding_mode=padding_mode)
            gx, gt = torch.autograd.grad(out, [xi, ti], go)
        for name, t in (("out", out), ("grad_x", gx), ("grad_theta", gt)):
            assert torch.isfinite(t).all(), f"{backend} {name} not finite"
        results[backend] = (out.detach(), gx, gt)
    for a, b, name in zip(results["triton"], results["torch"], ("out", "grad_x", "grad_theta")):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m: f"{name}: {m}")
    out = results["torch"][0]
    if kind == "affine":  # NaN / +-inf coordinates: 0 in every padding mode
        assert (out[:3] == 0).all()
    else:
        assert (out[[0, 2]] == 0).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN points, on purpose
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_non_finite_tps_points_same_on_both_backends(device, padding_mode):
    k = 4
    pts = torch_path.default_control_points(k, torch.float64, device)[None].repeat(3, 1, 1) * 0.9
    pts[0, 1, 0] = NAN
    pts[1, 2, 1] = INF
    x = torch.rand(3, 2, 6, 7, dtype=torch.float64, device=device)
    res = {}
    for backend in ("torch", "triton"):
        xi, pi = x.clone().requires_grad_(), pts.clone().requires_grad_()
        with stn_triton.use_backend(backend):
            out = stn_triton.tps_warp(xi, pi, padding_mode=padding_mode)
            gx, gp = torch.autograd.grad(out.sum(), [xi, pi])
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gp).all()
        assert (out[:2] == 0).all()
        res[backend] = (out.detach(), gx, gp)
    for a, b in zip(res["triton"], res["torch"]):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------- singular splines


@pytest.mark.parametrize("layout", ["collinear", "duplicate", "near-duplicate", "all-same"])
def test_singular_tps_control_points_are_a_clear_error(layout):
    xs = torch.linspace(-0.9, 0.9, 6, dtype=torch.float64)
    if layout == "collinear":  # y = 0.3 x + 0.1: cond ~ 7e17, passed LAPACK before
        cps = torch.stack([xs, 0.3 * xs + 0.1], 1)
    elif layout == "duplicate":
        cps = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5], [0.5, -0.5], [-0.3, 0.2]], dtype=torch.float64)
    elif layout == "near-duplicate":
        cps = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5], [0.5, -0.5 + 1e-13], [-0.3, 0.2]],
                           dtype=torch.float64)
    else:
        cps = torch.full((5, 2), 0.25, dtype=torch.float64)
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular"):
        stn_triton.tps_warp(x, cps[None] + 0.01, control_points=cps)
    with pytest.raises(ValueError, match="singular"):
        stn_triton.tps_grid(cps[None] + 0.01, (5, 5), control_points=cps)


@pytest.mark.parametrize("k", [4, 9, 16, 64])
def test_default_and_random_layouts_are_well_conditioned(k):
    from stn_triton._tps_ops import MAX_CONDITION, check_conditioning

    check_conditioning(torch_path.default_control_points(k, torch.float64))
    g = torch.Generator().manual_seed(k)
    check_conditioning(torch.rand(k, 2, generator=g, dtype=torch.float64) * 2 - 1)
    s = torch.linalg.svdvals(torch_path.tps_system(torch_path.default_control_points(k, torch.float64)))
    assert (s[0] / s[-1]).item() < MAX_CONDITION / 1e6


# ----------------------------------------------------------------------------- small argument checks


def test_align_corners_must_be_a_bool_or_none():
    """A bool, or None read as False (as F.grid_sample / F.affine_grid read it: a drop-in accepts
    what they accept); anything else is a TypeError."""
    x, theta = torch.rand(1, 1, 4, 4), torch.eye(2, 3)[None] + 0.1
    with pytest.raises(TypeError, match="align_corners"):
        stn_triton.warp(x, theta, align_corners="yes")
    with pytest.raises(TypeError, match="align_corners"):
        stn_triton.tps_warp(x, torch_path.default_control_points(4)[None], align_corners=1)
    grid = torch.rand(1, 3, 3, 2) * 2 - 1
    assert torch.equal(stn_triton.grid_sample(x, grid, align_corners=None),
                       torch.nn.functional.grid_sample(x, grid, align_corners=False))
    assert torch.equal(stn_triton.warp(x, theta, align_corners=None), stn_triton.warp(x, theta, align_corners=False))


def test_grid_sample_device_error_names_input():
    x, grid = torch.rand(1, 1, 4, 4), torch.rand(1, 3, 3, 2, device="meta")
    with pytest.raises(ValueError, match="grid is on meta but input is on cpu"):
        stn_triton.grid_sample(x, grid)


def test_sizes_accept_numpy_ints_and_reject_floats():
    import numpy as np

    x, theta = torch.rand(1, 1, 4, 4), torch.eye(2, 3)[None]
    assert stn_triton.warp(x, theta, (np.int64(3), np.int32(5))).shape == (1, 1, 3, 5)
    pts = torch_path.default_control_points(4)[None]
    assert stn_triton.tps_grid(pts, (np.int64(3), 2)).shape == (1, 3, 2, 2)
    for bad in ((3.0, 5), (3.7, 2), (True, 2)):
        with pytest.raises(ValueError, match="size"):
            stn_triton.warp(x, theta, bad)
        with pytest.raises(ValueError, match="size"):
            stn_triton.tps_grid(pts, bad)
