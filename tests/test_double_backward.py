"""Double backward of warp / tps_warp: the fused first-order backward, differentiated through the
PyTorch path (stn_triton/_double_backward.py). gradgradcheck in float64 on tiny inputs, on the
Triton kernels (interpreted on CPU) and the PyTorch path, and parity with F.grid_sample."""
import pytest
import torch
import torch.nn.functional as F

import stn_triton
from testing.references import random_theta


def _grid_sample_twice_differentiable() -> bool:
    x = torch.rand(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    grid = torch.zeros(1, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.grid_sample(x, grid, align_corners=False).sum(), [grid], create_graph=True)
    try:
        torch.autograd.grad(g.sum(), [x])
        return True
    except RuntimeError:  # torch 2.11: "derivative for aten::grid_sampler_2d_backward is not implemented"
        return False


def _composed(x, grid, **kw):
    from stn_triton._sample_composed import grid_sample_composed

    return grid_sample_composed(x, grid, **kw)


# Second-order references: F.grid_sample where this torch can differentiate it twice, and the
# composed sampler (checked against F.grid_sample at first order below) everywhere.
REFERENCE_SAMPLERS = [
    pytest.param(F.grid_sample, id="F.grid_sample", marks=pytest.mark.skipif(
        not _grid_sample_twice_differentiable(), reason="this torch cannot differentiate grid_sample twice")),
    pytest.param(_composed, id="composed"),
]


def tiny(device, n=2, c=2, h=5, w=6):
    return torch.randn(n, c, h, w, dtype=torch.float64, device=device, requires_grad=True)


# gradgradcheck perturbs every element of x, theta and grad_out and reruns the interpreted
# backward kernel each time: the Triton cases use the smallest inputs that still exercise every
# tap (~9 s each).


@pytest.mark.parametrize("backend,shape", [
    ("triton", (1, 1, 3, 4)), ("torch", (2, 2, 5, 6))])
@pytest.mark.parametrize("projective,padding_mode,align_corners", [
    (False, "zeros", False), (False, "reflection", True), (True, "border", False)])
def test_gradgradcheck_warp(device, backend, shape, projective, padding_mode, align_corners):
    x = tiny(device, *shape)
    theta = random_theta(shape[0], projective, device=device, dtype=torch.float64).requires_grad_()
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda x_, t_: stn_triton.warp(x_, t_, (3, 2), padding_mode=padding_mode, align_corners=align_corners),
            (x, theta), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend,shape", [
    ("triton", (1, 1, 3, 4)), ("torch", (2, 2, 5, 6))])
def test_gradgradcheck_tps(device, backend, shape):
    x = tiny(device, *shape)
    g = torch.linspace(-1, 1, 2, dtype=torch.float64, device=device)
    ctrl = torch.stack([g.repeat(2), g.repeat_interleave(2)], 1)
    pts = (ctrl + 0.1 * torch.randn(shape[0], 4, 2, dtype=torch.float64, device=device)).requires_grad_()
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradgradcheck(lambda x_, p_: stn_triton.tps_warp(x_, p_, (3, 2)), (x, pts),
                                            eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", REFERENCE_SAMPLERS)
def test_matches_grid_sample_double_backward(device, triton_backend, sampler):
    """A gradient penalty on grad theta, through stn_triton and through affine_grid + grid_sample."""
    x = tiny(device)
    theta = random_theta(2, device=device, dtype=torch.float64).requires_grad_()

    def penalty(fn):
        out = fn(x, theta)
        gx, gt = torch.autograd.grad(out.square().sum(), [x, theta], create_graph=True)
        return torch.autograd.grad(gt.square().sum() + gx.abs().sum(), [x, theta])

    ours = penalty(lambda x_, t_: stn_triton.warp(x_, t_, (4, 3)))
    ref = penalty(lambda x_, t_: sampler(x_, F.affine_grid(t_, (2, 2, 4, 3), align_corners=False),
                                         align_corners=False))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sampler", REFERENCE_SAMPLERS)
def test_theta_only_second_order(device, triton_backend, sampler):
    """x frozen (the localisation-net case): the Hessian-vector product w.r.t. theta."""
    x = tiny(device).detach()
    theta = random_theta(2, device=device, dtype=torch.float64).requires_grad_()
    v = torch.randn_like(theta)
    (gt,) = torch.autograd.grad(stn_triton.warp(x, theta).sin().sum(), [theta], create_graph=True)
    assert gt.requires_grad
    (hvp,) = torch.autograd.grad((gt * v).sum(), [theta])
    ref = sampler(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    (gt_r,) = torch.autograd.grad(ref.sin().sum(), [theta], create_graph=True)
    (hvp_r,) = torch.autograd.grad((gt_r * v).sum(), [theta])
    torch.testing.assert_close(hvp, hvp_r)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_composed_sampler_matches_grid_sample(mode, padding_mode, align_corners):
    """The differentiable sampler behind second order equals F.grid_sample, value and first-order
    gradients, with grid points well outside [-1, 1] so every padding rule is exercised."""
    from stn_triton._sample_composed import grid_sample_composed

    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    grid = (2.6 * torch.rand(2, 4, 6, 2, dtype=torch.float64) - 1.3).requires_grad_()
    go = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    outs = []
    for fn in (F.grid_sample, grid_sample_composed):
        out = fn(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        gx, gg = torch.autograd.grad(out, [x, grid], go, allow_unused=True)  # nearest: grid unused
        outs.append((out, gx, torch.zeros_like(grid) if gg is None else gg))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_third_order(device, triton_backend):
    """create_graph at second order keeps the graph, so a third derivative exists and matches."""
    from stn_triton._sample_composed import grid_sample_composed

    x = tiny(device).detach()
    theta = random_theta(2, device=device, dtype=torch.float64).requires_grad_()

    def second_and_third(fn):
        (g1,) = torch.autograd.grad(fn(x, theta).sin().sum(), [theta], create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), [theta], create_graph=True)
        return g2, torch.autograd.grad(g2.sum(), [theta])[0]

    ours = second_and_third(lambda x_, t_: stn_triton.warp(x_, t_))
    ref = second_and_third(lambda x_, t_: grid_sample_composed(x_, F.affine_grid(t_, x_.shape, align_corners=False)))
    torch.testing.assert_close(ours[0], ref[0])  # second order, built with create_graph=True
    torch.testing.assert_close(ours[1], ref[1])
