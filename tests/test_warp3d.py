"""stn_triton.warp on volumes: x (N, C, D, H, W) with theta (N, 3, 4), the fused 3-D kernels
(interpreted on CPU) against a float64 reference built from stock PyTorch only
(``F.affine_grid`` + ``F.grid_sample`` on 5-D tensors). Volumes are tiny (2x2x3x4x5) so the
interpreter keeps the file fast; sizes are odd and the output size differs from the input's."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from stn_triton.kernels import warp3d as kw3
from testing.references import run_warp
from testing.tolerances import assert_close, assert_close_param_grad

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]
SIZE = (3, 5, 2)  # (D_out, H_out, W_out)


def random_theta3d(n, dtype=torch.float32, device="cpu", strength=0.4):
    theta = torch.eye(3, 4, dtype=torch.float64)[None].repeat(n, 1, 1)
    theta += strength * torch.randn(n, 3, 4, dtype=torch.float64)
    return theta.to(dtype=dtype, device=device)


def reference(x, theta, size, mode, padding_mode, align_corners, grad_out=None):
    """float64 forward (and grads when grad_out is given) from F.affine_grid + F.grid_sample."""
    x64 = x.detach().double().requires_grad_()
    t64 = theta.detach().double().requires_grad_()
    grid = F.affine_grid(t64, (x.shape[0], x.shape[1], *size), align_corners=align_corners)
    out = F.grid_sample(x64, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if grad_out is None:
        return out.detach(), None, None
    gx, gt = torch.autograd.grad(out, [x64, t64], grad_out.double())
    return out.detach(), gx, gt


# ----------------------------------------------------------------------------- forward + gradients


def test_identity_returns_input(device, triton_backend):
    x = torch.rand(2, 3, 3, 4, 5, device=device)
    theta = torch.eye(3, 4, device=device)[None].repeat(2, 1, 1)
    torch.testing.assert_close(stn_triton.warp(x, theta), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mode,padding_mode", list(itertools.product(MODES, PADDINGS)))
@pytest.mark.parametrize("align_corners", [False, True])
def test_forward_and_grads_match_reference(device, backend, mode, padding_mode, align_corners):
    x = torch.randn(2, 2, 3, 4, 5, device=device)
    theta = random_theta3d(2, device=device)
    grad_out = torch.randn(2, 2, *SIZE, device=device)
    with stn_triton.use_backend(backend):
        out, gx, gt = run_warp(x, theta, SIZE, mode, padding_mode, align_corners, grad_out)
    ref, rgx, rgt = reference(x, theta, SIZE, mode, padding_mode, align_corners, grad_out)
    assert out.shape == (2, 2, *SIZE) and out.dtype == x.dtype
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "ndhwc"])
def test_dtypes_and_layouts(device, triton_backend, dtype, channels_last):
    x = torch.randn(2, 3, 3, 4, 5, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    theta = random_theta3d(2, device=device)
    grad_out = torch.randn(2, 3, *SIZE, device=device).to(dtype)
    out, gx, gt = run_warp(x, theta, SIZE, "bilinear", "border", False, grad_out)
    assert out.dtype == dtype and gx.dtype == dtype and gt.dtype == theta.dtype
    assert out.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    assert gx.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    ref, rgx, rgt = reference(x, theta, SIZE, "bilinear", "border", False, grad_out)
    assert_close(out, ref, dtype, "forward")
    assert_close(gx, rgx, dtype, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float32 if dtype == torch.float64 else dtype, "grad_theta")


def test_fp64_theta_and_data_are_fp64_accurate(device, triton_backend):
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, device=device)
    theta = random_theta3d(1, torch.float64, device)
    go = torch.randn(1, 2, *SIZE, dtype=torch.float64, device=device)
    out, gx, gt = run_warp(x, theta, SIZE, "bilinear", "reflection", True, go)
    ref, rgx, rgt = reference(x, theta, SIZE, "bilinear", "reflection", True, go)
    assert_close(out, ref, torch.float64, "forward")
    assert_close(gx, rgx, torch.float64, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float64, "grad_theta")


def test_arbitrary_strides_and_many_channels(device, triton_backend):
    base = torch.randn(2, 6, 5, 9, 3, device=device)
    x = base.permute(0, 4, 1, 2, 3)[:, :, ::2, :, 1:]  # (2, 3, 3, 5, 8): neither NCDHW nor NDHWC
    theta = random_theta3d(2, device=device)
    go = torch.randn(2, 3, *SIZE, device=device)
    out, gx, gt = run_warp(x, theta, SIZE, "bilinear", "reflection", False, go)
    ref, rgx, rgt = reference(x, theta, SIZE, "bilinear", "reflection", False, go)
    assert_close(out, ref, torch.float32, "strided forward")
    assert_close(gx, rgx, torch.float32, "strided grad_x")
    assert_close_param_grad(gt, rgt, torch.float32, "strided grad_theta")
    for cl in (False, True):  # more channels than one channel block: the loop and its tail
        x = torch.randn(1, 70, 2, 3, 3, device=device)
        if cl:
            x = x.to(memory_format=torch.channels_last_3d)
        theta = random_theta3d(1, device=device)
        go = torch.randn(1, 70, 2, 2, 3, device=device)
        out, gx, gt = run_warp(x, theta, (2, 2, 3), "bilinear", "zeros", True, go)
        ref, rgx, rgt = reference(x, theta, (2, 2, 3), "bilinear", "zeros", True, go)
        assert_close(out, ref, torch.float32, f"C=70 cl={cl} forward")
        assert_close(gx, rgx, torch.float32, f"C=70 cl={cl} grad_x")
        assert_close_param_grad(gt, rgt, torch.float32, f"C=70 cl={cl} grad_theta")


def test_stride0_batch_one_volume_many_thetas(device, triton_backend):
    """One volume expanded over the batch (stride 0, no copy): grad_x sums over the thetas."""
    vol = torch.randn(1, 2, 3, 4, 5, device=device, requires_grad=True)
    x = vol.expand(3, -1, -1, -1, -1)
    assert x.stride(0) == 0
    theta = random_theta3d(3, device=device).requires_grad_()
    out = stn_triton.warp(x, theta, SIZE)
    go = torch.randn_like(out)
    gv, gt = torch.autograd.grad(out, [vol, theta], go)
    ref, rgx, rgt = reference(x.contiguous(), theta, SIZE, "bilinear", "zeros", False, go)
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gv, rgx.sum(0, keepdim=True), torch.float32, "grad of the one volume")
    assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")


@pytest.mark.filterwarnings("ignore:Since version 1.3.0:UserWarning")  # affine_grid on unit-size grids
def test_one_voxel_output_and_input(device, triton_backend):
    x = torch.randn(1, 2, 1, 1, 4, device=device)
    theta = random_theta3d(1, device=device)
    for ac in (False, True):
        for size in [(1, 1, 1), (1, 3, 1), (2, 1, 3)]:
            out = stn_triton.warp(x, theta, size, align_corners=ac)
            assert_close(out, reference(x, theta, size, "bilinear", "zeros", ac)[0], torch.float32, f"{size} {ac}")


def test_only_needed_gradients(device, triton_backend):
    x = torch.randn(2, 2, 3, 4, 5, device=device)
    theta = random_theta3d(2, device=device).requires_grad_()
    (gt,) = torch.autograd.grad(stn_triton.warp(x, theta).sum(), [theta])
    _, rgx, rgt = reference(x, theta, (3, 4, 5), "bilinear", "zeros", False, torch.ones(2, 2, 3, 4, 5))
    assert_close_param_grad(gt, rgt, torch.float32, "theta-only grad")
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(stn_triton.warp(xg, theta.detach()).sum(), [xg])
    assert_close(gx, rgx, torch.float32, "x-only grad")


def test_empty_batch(device, triton_backend):
    x = torch.randn(0, 3, 3, 4, 5, device=device, requires_grad=True)
    theta = torch.zeros(0, 3, 4, device=device, requires_grad=True)
    out = stn_triton.warp(x, theta, (2, 2, 2))
    assert out.shape == (0, 3, 2, 2, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape and theta.grad.shape == theta.shape


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy inside the interpreter
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_non_finite_theta_is_safe(device, triton_backend, padding_mode):
    x = torch.rand(3, 2, 3, 4, 5, device=device, requires_grad=True)
    theta = torch.eye(3, 4, device=device)[None].repeat(3, 1, 1)
    theta[0, 0, 0] = float("nan")
    theta[1, 2, 3] = float("inf")
    theta[2] *= 1e30
    theta.requires_grad_()
    out = stn_triton.warp(x, theta, padding_mode=padding_mode)
    assert torch.all(out[:2] == 0)  # non-finite coordinates sample 0 in every padding mode
    assert torch.all(out[2].abs() <= x.detach().abs().max() + 1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- deterministic mode, int64


def test_deterministic_bit_identical_across_tilings(device):
    x = torch.randn(2, 3, 3, 4, 5, device=device)
    theta = random_theta3d(2, device=device, strength=1.0)
    go = torch.randn(2, 3, *SIZE, device=device)
    results = [kw3.warp3d_bwd(go, x, theta, "bilinear", "zeros", False, True, True, deterministic=True, config=cfg)
               for cfg in [(16, 1), (32, 2), (64, 4), (16, 1)]]
    for gx, _ in results[1:]:
        assert torch.equal(gx, results[0][0])
    assert torch.equal(results[0][1], results[3][1])
    _, rgx, rgt = reference(x, theta, SIZE, "bilinear", "zeros", False, go)
    assert_close(results[0][0], rgx, torch.float32, "deterministic grad_x")
    assert_close_param_grad(results[0][1], rgt, torch.float32, "grad_theta")


def test_deterministic_algorithms_flag_reaches_the_kernel(device, triton_backend, monkeypatch):
    seen = []
    real = kw3.warp3d_bwd
    monkeypatch.setattr(kw3, "warp3d_bwd", lambda *a, **k: seen.append(k["deterministic"]) or real(*a, **k))
    x = torch.randn(1, 2, 3, 4, 5, device=device, requires_grad=True)
    theta = random_theta3d(1, device=device)
    torch.use_deterministic_algorithms(True)
    try:
        stn_triton.warp(x, theta, SIZE).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [True]
    _, rgx, _ = reference(x, theta, SIZE, "bilinear", "zeros", False, torch.ones(1, 2, *SIZE))
    assert_close(x.grad, rgx, torch.float32, "deterministic grad_x")


@pytest.mark.parametrize("mode", MODES)
def test_int64_specialisation_computes_the_same(device, triton_backend, monkeypatch, mode):
    """The INDEX_64 kernels (forced here: a tensor that needs them cannot be allocated on a test
    machine) give the int32 kernels' results; the compiled IR of every int64 specialisation is
    checked for 32-bit offset arithmetic in tests/test_aot.py."""
    x = torch.randn(2, 2, 3, 4, 5, device=device).to(memory_format=torch.channels_last_3d)
    theta = random_theta3d(2, device=device)
    go = torch.randn(2, 2, *SIZE, device=device)
    base = run_warp(x, theta, SIZE, mode, "reflection", False, go)
    monkeypatch.setattr(kw3, "needs_int64", lambda *t: True)
    wide = run_warp(x, theta, SIZE, mode, "reflection", False, go)
    for a, b in zip(base, wide):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------- gradcheck, higher orders


# gradcheck perturbs every input element and reruns the interpreted kernels each time: the Triton
# cases use the smallest volumes that still put taps on every side of a voxel.
@pytest.mark.parametrize("backend,padding_mode,align_corners", [
    ("triton", "reflection", False), ("torch", "zeros", False), ("torch", "border", True),
    ("torch", "reflection", False)])
def test_gradcheck(device, backend, padding_mode, align_corners):
    shape, size = ((1, 1, 2, 2, 3), (1, 2, 2)) if backend == "triton" else ((1, 2, 2, 3, 3), (2, 2, 3))
    x = torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta3d(1, torch.float64, device, strength=0.2).requires_grad_()
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, t: stn_triton.warp(a, t, size, padding_mode=padding_mode, align_corners=align_corners),
            (x, theta), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gradgradcheck(device, backend):
    x = torch.randn(1, 1, 2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta3d(1, torch.float64, device, strength=0.2).requires_grad_()
    size = (1, 2, 2) if backend == "triton" else (2, 2, 2)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda a, t: stn_triton.warp(a, t, size, padding_mode="border"), (x, theta), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x,theta,size,match",
    [
        (torch.rand(2, 1, 3, 4, 5), torch.zeros(2, 2, 3), None,
         r"theta must have shape \(N, 3, 4\) .* x of shape \(2, 1, 3, 4, 5\), got \(2, 2, 3\).*4-D image"),
        (torch.rand(2, 1, 4, 5), torch.zeros(2, 3, 4), None,
         r"theta must have shape \(N, 2, 3\) .* got \(2, 3, 4\).*needs a 5-D volume x"),
        (torch.rand(2, 1, 3, 4, 5), torch.zeros(2, 3, 4), (4, 5),
         r"size must be None or a triple of non-negative ints \(D_out, H_out, W_out\) .* got \(4, 5\)"),
        (torch.rand(2, 1, 3, 4, 5), torch.zeros(3, 3, 4), None, r"batch size .* N = 2 .* has 3"),
        (torch.rand(2, 1, 0, 4, 5), torch.zeros(2, 3, 4), None, r"D, H, W > 0"),
        (torch.rand(2, 1, 2, 3, 4, 5), torch.zeros(2, 3, 4), None, r"x must be 4-D .* or 5-D"),
    ],
)
def test_bad_input(x, theta, size, match):
    with pytest.raises(ValueError, match=match):
        stn_triton.warp(x, theta, size)


# ----------------------------------------------------------------------------- custom op / compile


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "ndhwc"])
def test_opcheck(backend, channels_last):
    x = torch.randn(1, 3, 2, 2, 3, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    theta = random_theta3d(1, device=DEVICE)
    torch.library.opcheck(torch.ops.stn_triton.warp3d.default,
                          (x.requires_grad_(), theta.requires_grad_(), [1, 2, 3], "bilinear", "reflection", True,
                           backend))
    torch.library.opcheck(torch.ops.stn_triton.warp3d_backward.default,
                          (torch.randn(1, 3, 1, 2, 3, device=DEVICE).requires_grad_(), x.detach().requires_grad_(),
                           theta.detach().requires_grad_(), "bilinear", "zeros", False, True, True, backend))


def test_torch_compile_fullgraph_volume_stn():
    class TinySTN3d(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Linear(2 * 3 * 4 * 4, 12)
            torch.nn.init.zeros_(self.loc.weight)
            torch.nn.init.zeros_(self.loc.bias)
            self.head = torch.nn.Linear(2 * 2 * 3 * 3, 3)

        def forward(self, x):
            theta = stn_triton.params.affine3d(self.loc(x.flatten(1)))
            return self.head(stn_triton.warp(x, theta, (2, 3, 3)).flatten(1))

    torch._dynamo.reset()
    model = TinySTN3d()
    x = torch.randn(4, 2, 3, 4, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model.loc.weight.grad is not None


# ----------------------------------------------------------------------------- params, SpatialTransformer


def test_volume_params_zero_is_identity_and_shapes():
    from stn_triton import params

    for name, k in (("affine3d", 12), ("attention3d", 4)):
        assert params.n_params(name) == k
        theta = params.to_transform(name, torch.zeros(2, k))
        assert theta.shape == (2, 3, 4)
        torch.testing.assert_close(theta, torch.eye(3, 4).expand(2, 3, 4))
    v = torch.tensor([[0.5, 0.1, -0.2, 0.3]])
    expected = torch.tensor([[[1.5, 0, 0, 0.1], [0, 1.5, 0, -0.2], [0, 0, 1.5, 0.3]]])
    torch.testing.assert_close(params.attention3d(v), expected)
    v12 = torch.randn(3, 12)
    torch.testing.assert_close(params.affine3d(v12), torch.eye(3, 4) + v12.view(3, 3, 4))
    with pytest.raises(ValueError, match=r"affine3d\(\) expects v of shape \(N, 12\)"):
        params.affine3d(torch.zeros(2, 6))


@pytest.mark.parametrize("transform", ["affine3d", "attention3d"])
def test_spatial_transformer_on_volumes(device, triton_backend, transform):
    loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 4 * 5, 8), torch.nn.Tanh())
    stn = stn_triton.SpatialTransformer(loc, transform, out_size=(3, 5, 2)).to(device)
    x = torch.randn(2, 2, 3, 4, 5, device=device, requires_grad=True)
    y, theta = stn(x)
    assert y.shape == (2, 2, 3, 5, 2) and theta.shape == (2, 3, 4)
    ref, _, _ = reference(x, torch.eye(3, 4).expand(2, 3, 4), (3, 5, 2), "bilinear", "zeros", False)
    assert_close(y, ref, torch.float32, "untrained = identity resampling")
    y.square().sum().backward()
    assert stn.regressor.weight.grad is not None and stn.regressor.weight.grad.abs().sum() > 0
    cube, _ = stn_triton.SpatialTransformer(loc, transform, out_size=2).to(device)(x)
    assert cube.shape == (2, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"out_size must be .*\(D_out, H_out, W_out\)"):
        stn_triton.SpatialTransformer(loc, transform, out_size=(4, 4))
