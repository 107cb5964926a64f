"""mode="bicubic" (issue #26 item 3): PyTorch's bicubic grid_sample (A = -0.75, the coordinate
unnormalised but not padded, each of the 4x4 taps padded by its own rule) in ``warp`` (affine and
projective), ``grid_sample`` and ``warp_flow``, through the fused kernels (interpreted on CPU) and
the PyTorch path, against float64 ``F.grid_sample(..., mode="bicubic")``: values, grad_x and the
coordinates' gradients, every padding (fill: zeros + fill * (1 - coverage)) and align_corners;
deterministic; second order through the composed sampler; images only."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from stn_triton._sample_composed import grid_sample_composed
from testing.tolerances import GRAD_PARAM_RTOL, assert_close

BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]
PADDINGS = ["zeros", "border", "reflection"]


def _relative(actual, expected, rtol, what):
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: {err:.3e} > {rtol:.1e} x {scale:.3e}"


def _grid(n, h, w, device, spread=1.3):
    return ((torch.rand(n, h, w, 2, dtype=torch.float64) * 2 - 1) * spread).to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode,align_corners", list(itertools.product(PADDINGS + ["fill"], [False, True])))
def test_grid_sample_bicubic_matches_pytorch(device, backend, padding_mode, align_corners):
    x = torch.randn(2, 3, 7, 9, device=device)
    grid = _grid(2, 5, 6, device)
    fill = torch.tensor([0.5, -1.0, 2.0], device=device) if padding_mode == "fill" else None
    xs, gs = x.clone().requires_grad_(), grid.float().requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.grid_sample(xs, gs, "bicubic", padding_mode, align_corners, fill_value=fill)
    grad_out = torch.randn_like(out)
    gx, gg = torch.autograd.grad(out, [xs, gs], grad_out)
    x64, g64 = x.double().requires_grad_(), grid.clone().requires_grad_()
    pad = "zeros" if padding_mode == "fill" else padding_mode
    ref = F.grid_sample(x64, g64, "bicubic", pad, align_corners)
    if fill is not None:  # the library's fill rule: out = sample_zeros + fill * (1 - coverage)
        cov = F.grid_sample(torch.ones_like(x64[:, :1]), g64, "bicubic", "zeros", align_corners)
        ref = ref + fill.double().view(1, -1, 1, 1) * (1 - cov)
    rgx, rgg = torch.autograd.grad(ref, [x64, g64], grad_out.double())
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    _relative(gg, rgg, GRAD_PARAM_RTOL[torch.float32], "grad_grid")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("projective", [False, True], ids=["affine", "projective"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_bicubic_matches_pytorch(device, backend, projective, align_corners):
    x = torch.randn(2, 3, 7, 9, device=device)
    rows = 3 if projective else 2
    theta = torch.eye(3)[:rows].expand(2, rows, 3) + 0.15 * torch.randn(2, rows, 3)
    theta = theta.to(device)
    xs, ts = x.clone().requires_grad_(), theta.clone().requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.warp(xs, ts, (6, 8), mode="bicubic", padding_mode="border", align_corners=align_corners)
    grad_out = torch.randn_like(out)
    gx, gt = torch.autograd.grad(out, [xs, ts], grad_out)
    x64, t64 = x.double().requires_grad_(), theta.double().requires_grad_()
    base = F.affine_grid(torch.eye(2, 3, dtype=torch.float64, device=device)[None].expand(2, 2, 3), (2, 3, 6, 8),
                         align_corners=align_corners)
    hom = torch.cat([base, torch.ones_like(base[..., :1])], -1) @ t64.transpose(1, 2)[:, None]
    grid = hom[..., :2] / hom[..., 2:] if projective else hom
    ref = F.grid_sample(x64, grid, "bicubic", "border", align_corners)
    rgx, rgt = torch.autograd.grad(ref, [x64, t64], grad_out.double())
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    _relative(gt, rgt, GRAD_PARAM_RTOL[torch.float32], "grad_theta")


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_flow_bicubic_matches_pytorch(device, backend):
    x = torch.randn(2, 2, 7, 9, device=device)
    flow = 1.5 * torch.randn(2, 2, 7, 9, device=device)
    xs, fs = x.clone().requires_grad_(), flow.clone().requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.warp_flow(xs, fs, mode="bicubic", padding_mode="reflection", align_corners=True)
    grad_out = torch.randn_like(out)
    gx, gf = torch.autograd.grad(out, [xs, fs], grad_out)
    x64, f64 = x.double().requires_grad_(), flow.double().requires_grad_()
    base = F.affine_grid(torch.eye(2, 3, dtype=torch.float64, device=device)[None].expand(2, 2, 3), (2, 2, 7, 9),
                         align_corners=True)
    grid = base + f64.movedim(1, -1) * torch.tensor([2 / 8, 2 / 6], dtype=torch.float64, device=device)
    ref = F.grid_sample(x64, grid, "bicubic", "reflection", True)
    rgx, rgf = torch.autograd.grad(ref, [x64, f64], grad_out.double())
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    _relative(gf, rgf, GRAD_PARAM_RTOL[torch.float32], "grad_flow")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_channels_last(device, triton_backend, dtype):
    x = torch.randn(1, 5, 6, 7, device=device).to(dtype).to(memory_format=torch.channels_last)
    grid = _grid(1, 4, 5, device)
    out = stn_triton.grid_sample(x, grid.to(dtype if dtype == torch.float64 else torch.float32), "bicubic")
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    ref = F.grid_sample(x.double(), grid, "bicubic", "zeros", False)
    assert_close(out, ref, dtype, "forward")


def test_deterministic_bicubic_backward(device, deterministic):
    x = torch.randn(2, 4, 8, 9, device=device)
    grid = _grid(2, 10, 11, device, spread=0.9).float()
    grad_out = torch.randn(2, 4, 10, 11, device=device)
    from stn_triton.kernels import grid_sample as kg

    runs = [kg.grid_sample_bwd(grad_out, x, grid, "bicubic", "border", False, True, True, deterministic=True,
                               config=cfg) for cfg in ((16, 4), (64, 2), (16, 4))]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][0], runs[2][0])  # grad_x: any tiling
    assert torch.equal(runs[0][1], runs[2][1])  # grad_grid: the same tiling, every run


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_non_finite_coordinates_read_nothing(device, backend, padding_mode):
    x = torch.randn(1, 2, 5, 6, device=device)
    grid = _grid(1, 3, 4, device).float()
    grid[0, 1, 2, 0] = float("nan")
    grid[0, 2, 1, 1] = float("-inf")
    xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.grid_sample(xs, gs, "bicubic", padding_mode)
        gx, gg = torch.autograd.grad(out.sum(), [xs, gs])
    assert not out[0, :, 1, 2].any() and not out[0, :, 2, 1].any()
    assert not gg[0, 1, 2].any() and not gg[0, 2, 1].any()
    assert torch.isfinite(gx).all() and torch.isfinite(gg).all()


@pytest.mark.parametrize("padding_mode,align_corners", list(itertools.product(PADDINGS, [False, True])))
def test_composed_bicubic_equals_grid_sample(padding_mode, align_corners):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    grid = _grid(2, 4, 5, "cpu")
    torch.testing.assert_close(grid_sample_composed(x, grid, "bicubic", padding_mode, align_corners),
                               F.grid_sample(x, grid, "bicubic", padding_mode, align_corners), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(device, backend):
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    grid = torch.tensor([[[[-0.61, 0.27], [0.33, -0.42]], [[0.07, 0.55], [-0.29, -0.13]]]], dtype=torch.float64,
                        device=device, requires_grad=True)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, g: stn_triton.grid_sample(a, g, "bicubic", "reflection"), (x, grid))
        assert torch.autograd.gradgradcheck(lambda a, g: stn_triton.grid_sample(a, g, "bicubic", "border", True),
                                            (x, grid))


def test_bicubic_is_images_only_and_not_tps():
    with pytest.raises(ValueError, match=r'"bicubic" is not supported for volumes \(x of shape \(1, 1, 2, 3, 4\)\)'):
        stn_triton.warp(torch.randn(1, 1, 2, 3, 4), torch.eye(3, 4)[None], mode="bicubic")
    with pytest.raises(ValueError, match="for volumes"):
        stn_triton.grid_sample(torch.randn(1, 1, 2, 3, 4), torch.zeros(1, 2, 3, 4, 3), "bicubic")
    with pytest.raises(ValueError, match="for volumes"):
        stn_triton.warp_flow(torch.randn(1, 1, 2, 3, 4), torch.zeros(1, 3, 2, 3, 4), mode="bicubic")
    with pytest.raises(ValueError, match="by tps_warp"):
        stn_triton.tps_warp(torch.randn(1, 1, 4, 4), stn_triton.params.tps(torch.zeros(1, 32)), mode="bicubic")
    with pytest.raises(ValueError, match="mode must be one of"):
        stn_triton.warp(torch.randn(1, 1, 4, 4), torch.eye(2, 3)[None], mode="cubic")
