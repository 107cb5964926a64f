"""padding_mode="fill": the image (2-D) or volume (3-D) sampled as if surrounded by a constant.

The reference shares nothing with the implementation: it pads x with the fill value on every side
(far enough that no tap reaches past it), remaps the normalised coordinates to the padded image,
and samples that with ``F.grid_sample(..., padding_mode="zeros")`` in float64. Its gradients
(x, theta and the fill value, which builds the padding) come from autograd."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from testing.tolerances import assert_close, assert_close_param_grad

PAD = 16  # pixels of constant around the input in the reference: > any tap of the thetas below


def random_theta(n, dims, dtype=torch.float32, device="cpu", strength=0.5):
    eye = torch.eye(dims, dims + 1, dtype=torch.float64)
    return (eye + strength * torch.randn(n, dims, dims + 1, dtype=torch.float64)).to(dtype=dtype, device=device)


def padded_reference(x, theta, size, mode, align_corners, fill):
    """F.grid_sample (zeros padding) of x surrounded by PAD pixels of ``fill`` ((C,) float64)."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    padded = fill.reshape(1, c, *[1] * len(spatial)).expand(n, c, *[s + 2 * PAD for s in spatial]).clone()
    padded[(slice(None), slice(None)) + tuple(slice(PAD, PAD + s) for s in spatial)] = x
    grid = F.affine_grid(theta, (n, c, *size), align_corners=align_corners)
    cols = []
    for k, s in enumerate(list(spatial)[::-1]):  # the grid's (x, y(, z)) order
        g = grid[..., k]
        # the same pixel coordinate in the padded image, normalised to its size
        if align_corners:
            cols.append(((g + 1) * (s - 1) + 2 * PAD) / (s + 2 * PAD - 1) - 1)
        else:
            cols.append(((g + 1) * s + 2 * PAD) / (s + 2 * PAD) - 1)
    return F.grid_sample(padded, torch.stack(cols, -1), mode=mode, padding_mode="zeros", align_corners=align_corners)


def reference_with_grads(x, theta, size, mode, align_corners, fill, grad_out):
    x64, t64, f64 = (t.detach().double().requires_grad_() for t in (x, theta, fill))
    out = padded_reference(x64, t64, size, mode, align_corners, f64)
    return (out.detach(), *torch.autograd.grad(out, [x64, t64, f64], grad_out.double()))


CASES = [pytest.param(4, (3, 5, 6), (4, 7), id="2d"), pytest.param(5, (2, 3, 4, 5), (3, 5, 2), id="3d")]


@pytest.mark.parametrize("dims,shape,size", CASES)
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mode,align_corners", list(itertools.product(["bilinear", "nearest"], [False, True])))
def test_matches_constant_padded_reference(device, dims, shape, size, backend, mode, align_corners):
    x = torch.randn(2, *shape, device=device)
    theta = random_theta(2, dims - 2, device=device)
    fill = torch.randn(shape[0], device=device)
    grad_out = torch.randn(2, shape[0], *size, device=device)
    xr, tr, fr = (t.clone().requires_grad_() for t in (x, theta, fill))
    with stn_triton.use_backend(backend):
        out = stn_triton.warp(xr, tr, size, mode=mode, padding_mode="fill", align_corners=align_corners,
                              fill_value=fr)
        gx, gt, gf = torch.autograd.grad(out, [xr, tr, fr], grad_out)
    ref, rgx, rgt, rgf = reference_with_grads(x, theta, size, mode, align_corners, fill, grad_out)
    assert (out.detach() != 0).float().mean() > 0.5
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")
    assert_close_param_grad(gf, rgf, torch.float32, "grad_fill")


@pytest.mark.parametrize("dims,shape,size", CASES)
def test_fill_value_forms(device, triton_backend, dims, shape, size):
    """A float, C floats, a 0-d tensor (its grad sums the channels'), and 0 == zeros padding."""
    c = shape[0]
    x = torch.randn(1, *shape, device=device)
    theta = random_theta(1, dims - 2, device=device, strength=0.8)
    zeros = stn_triton.warp(x, theta, size)
    torch.testing.assert_close(stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=0.0), zeros,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(stn_triton.warp(x, theta, size, padding_mode="fill"), zeros, atol=1e-6, rtol=0)
    values = [0.5 * (k + 1) for k in range(c)]
    per_channel = stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=values)
    ref = padded_reference(x.double(), theta.double(), size, "bilinear", False, torch.tensor(values).double())
    assert_close(per_channel, ref, torch.float32, "per-channel list")
    scalar = torch.tensor(1.5, device=device, requires_grad=True)
    out = stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=scalar)
    assert_close(out, padded_reference(x.double(), theta.double(), size, "bilinear", False,
                                       torch.full((c,), 1.5).double()), torch.float32, "0-d tensor")
    go = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, [scalar], go)
    full = torch.full((c,), 1.5, device=device, requires_grad=True)
    (g_full,) = torch.autograd.grad(stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=full), [full], go)
    torch.testing.assert_close(g, g_full.sum())
    torch.testing.assert_close(stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=2.0),
                               stn_triton.warp(x, theta, size, padding_mode="fill", fill_value=[2.0] * c))


@pytest.mark.parametrize("dims,shape,size", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtypes_and_channels_last(device, triton_backend, dims, shape, size, dtype):
    x = torch.randn(2, *shape, device=device).to(dtype)
    x = x.to(memory_format=torch.channels_last if dims == 4 else torch.channels_last_3d)
    theta = random_theta(2, dims - 2, device=device)
    fill = torch.randn(shape[0], device=device)
    go = torch.randn(2, shape[0], *size, device=device).to(dtype)
    xr, tr, fr = (t.clone().requires_grad_() for t in (x, theta, fill))
    out = stn_triton.warp(xr, tr, size, padding_mode="fill", fill_value=fr)
    gx, gt, gf = torch.autograd.grad(out, [xr, tr, fr], go)
    assert out.dtype == dtype and gx.dtype == dtype and gf.dtype == fill.dtype
    ref, rgx, rgt, rgf = reference_with_grads(x, theta, size, "bilinear", False, fill, go)
    assert_close(out, ref, dtype, "forward")
    assert_close(gx, rgx, dtype, "grad_x")
    rtol_dtype = torch.float32 if dtype == torch.float64 else dtype
    assert_close_param_grad(gt, rgt, rtol_dtype, "grad_theta")
    assert_close_param_grad(gf, rgf, rtol_dtype, "grad_fill")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy inside the interpreter
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_finite_coordinates_read_the_fill_value(device, backend):
    x = torch.rand(2, 2, 4, 5, device=device, requires_grad=True)
    theta = torch.tensor([[[float("nan"), 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, float("inf")]]], device=device)
    fill = torch.tensor([3.0, -2.0], device=device)
    with stn_triton.use_backend(backend):
        out = stn_triton.warp(x, theta, padding_mode="fill", fill_value=fill)
        out.sum().backward()
    torch.testing.assert_close(out, fill.reshape(1, 2, 1, 1).expand_as(out))
    assert torch.all(x.grad == 0)


def test_deterministic_backward_with_fill(device):
    from stn_triton.kernels import warp as kw, warp3d as kw3

    fill = torch.tensor([0.7, -1.2], device=device)
    for bwd, x, theta in ((kw.warp_bwd, torch.randn(2, 2, 5, 6, device=device), random_theta(2, 2, device=device)),
                          (kw3.warp3d_bwd, torch.randn(2, 2, 3, 4, 5, device=device), random_theta(2, 3, device=device))):
        go = torch.randn(2, 2, *x.shape[2:], device=device)
        fast = bwd(go, x, theta, "bilinear", "fill", False, True, True, fill=fill)
        det = [bwd(go, x, theta, "bilinear", "fill", False, True, True, deterministic=True, config=cfg, fill=fill)
               for cfg in [(16, 1), (64, 2)]]
        assert torch.equal(det[0][0], det[1][0])
        assert_close(det[0][0], fast[0], torch.float32, "deterministic grad_x")
        assert_close_param_grad(det[0][1], fast[1], torch.float32, "grad_theta")


@pytest.mark.parametrize("dims", [4, 5])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gradcheck(device, backend, dims):
    shape = (1, 1, 3, 4) if dims == 4 else (1, 1, 2, 2, 2)
    size = (2, 3) if dims == 4 else (1, 2, 2)
    x = torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(1, dims - 2, torch.float64, device, strength=0.3).requires_grad_()
    fill = torch.tensor([0.8], dtype=torch.float64, device=device, requires_grad=True)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, t, f: stn_triton.warp(a, t, size, padding_mode="fill", fill_value=f, align_corners=dims == 5),
            (x, theta, fill), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gradgradcheck(device, backend):
    x = torch.randn(1, 1, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(1, 2, torch.float64, device, strength=0.3).requires_grad_()
    fill = torch.tensor([0.8], dtype=torch.float64, device=device, requires_grad=True)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda a, t, f: stn_triton.warp(a, t, (2, 2), padding_mode="fill", fill_value=f),
            (x, theta, fill), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"padding_mode": "zeros", "fill_value": 1.0}, ValueError, r"fill_value is only used with padding_mode=\"fill\""),
        ({"padding_mode": "fill", "fill_value": [1.0, 2.0]}, ValueError, r"sequence of C = 3 floats"),
        ({"padding_mode": "fill", "fill_value": torch.zeros(2)}, ValueError, r"shape \(\) or \(C,\) = \(3,\)"),
        ({"padding_mode": "fill", "fill_value": torch.zeros(3, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"padding_mode": "fill", "fill_value": "red"}, ValueError, "fill_value must be"),
    ],
)
def test_bad_fill_value(kwargs, err, match):
    with pytest.raises(err, match=match):
        stn_triton.warp(torch.rand(1, 3, 4, 4), torch.eye(2, 3)[None], **kwargs)


def test_tps_rejects_fill_clearly():
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        stn_triton.tps_warp(torch.rand(1, 1, 4, 4), stn_triton.torch_path.default_control_points(4)[None],
                            padding_mode="fill")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dims", [4, 5])
def test_opcheck_with_fill(backend, dims):
    x = torch.randn(1, 2, *((3, 4) if dims == 4 else (2, 2, 3)), device=DEVICE)
    theta = random_theta(1, dims - 2, device=DEVICE)
    size = [2, 3] if dims == 4 else [1, 2, 3]
    op = torch.ops.stn_triton.warp if dims == 4 else torch.ops.stn_triton.warp3d
    fill = torch.tensor([0.5, -1.0], device=DEVICE)
    torch.library.opcheck(op.default, (x.requires_grad_(), theta.requires_grad_(), size, "bilinear", "fill", False,
                                       backend, fill.clone().requires_grad_()))
    bwd = torch.ops.stn_triton.warp_backward if dims == 4 else torch.ops.stn_triton.warp3d_backward
    torch.library.opcheck(bwd.default, (torch.randn(1, 2, *size, device=DEVICE).requires_grad_(),
                                        x.detach().requires_grad_(), theta.detach().requires_grad_(), "bilinear",
                                        "fill", False, True, True, backend, fill.clone().requires_grad_()))


@pytest.mark.parametrize("dims", [4, 5])
def test_torch_compile_fullgraph_with_learned_fill(dims):
    """fill_value a learned parameter: one graph, forward and backward (fill, theta, x)."""
    shape = (2, 2, 5, 6) if dims == 4 else (2, 2, 3, 4, 5)
    size = (4, 4) if dims == 4 else (2, 3, 4)
    fill = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    theta = random_theta(2, dims - 2).requires_grad_()
    x = torch.randn(*shape, requires_grad=True)

    def f(x_, t_, f_):
        return stn_triton.warp(x_, t_, size, padding_mode="fill", fill_value=f_).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, theta, fill), [x, theta, fill])
    expected = torch.autograd.grad(f(x, theta, fill), [x, theta, fill])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
