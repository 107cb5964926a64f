"""stn_triton.warp_flow (issue #26 item 2): displacement-field warping, through the fused kernels
(interpreted on CPU) and the PyTorch path, against a float64 reference of stock PyTorch only:
``F.affine_grid(theta)`` + the flow scaled to normalised units + ``F.grid_sample``. Also the
issue's defining property (output pixel (i, j) samples input pixel (i + v, j + u)), MONAI's ``Warp``
and VoxelMorph's transformer mapped onto it, half-precision flows, and bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from stn_triton._warp_flow_ops import WARP_FLOW, warp_flow_op
from testing.tolerances import GRAD_PARAM_RTOL, assert_close

BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]


def reference(x, flow, theta, mode, padding_mode, align_corners):
    """float64 F.affine_grid(theta or I) + flow * 2 / (S - 1 | S) + F.grid_sample, differentiable."""
    n, dims = x.shape[0], x.dim() - 2
    size = flow.shape[2:]
    th = theta if theta is not None else torch.eye(dims, dims + 1, dtype=x.dtype, device=x.device).expand(n, -1, -1)
    grid = F.affine_grid(th, (n, 1, *size), align_corners=align_corners)
    scale = torch.tensor([2.0 / max(s - 1, 1) if align_corners else 2.0 / s for s in reversed(x.shape[2:])],
                         dtype=x.dtype, device=x.device)
    return F.grid_sample(x, grid + flow.movedim(1, -1) * scale, mode, padding_mode, align_corners)


def _relative(actual, expected, rtol, what):
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: {err:.3e} > {rtol:.1e} x {scale:.3e}"


def _inputs(dims, device, with_theta):
    if dims == 2:
        x, flow = torch.randn(2, 3, 7, 9, device=device), 1.5 * torch.randn(2, 2, 5, 6, device=device)
    else:
        x, flow = torch.randn(2, 2, 3, 4, 5, device=device), 1.5 * torch.randn(2, 3, 2, 3, 4, device=device)
    theta = torch.eye(dims, dims + 1, device=device) + 0.2 * torch.randn(2, dims, dims + 1, device=device) \
        if with_theta else None
    return x, flow, theta


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,padding_mode", list(itertools.product(["bilinear", "nearest"],
                                                                     ["zeros", "border", "reflection"])))
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dims,with_theta", [(2, False), (2, True), (3, False), (3, True)],
                         ids=["2d", "2d-theta", "3d", "3d-theta"])
def test_forward_and_grads_match_reference(device, backend, mode, padding_mode, align_corners, dims, with_theta):
    x, flow, theta = _inputs(dims, device, with_theta)
    leaves = [x.clone().requires_grad_(), flow.clone().requires_grad_()]
    if theta is not None:
        leaves.append(theta.clone().requires_grad_())
    with stn_triton.use_backend(backend):
        out = stn_triton.warp_flow(*leaves[:2], leaves[2] if theta is not None else None, mode=mode,
                                   padding_mode=padding_mode, align_corners=align_corners)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(ref_leaves[0], ref_leaves[1], ref_leaves[2] if theta is not None else None, mode, padding_mode,
                    align_corners)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert_close(out, ref, torch.float32, "forward")
    assert_close(grads[0], ref_grads[0], torch.float32, "grad_x")
    _relative(grads[1], ref_grads[1], GRAD_PARAM_RTOL[torch.float32], "grad_flow")
    if theta is not None:
        _relative(grads[2], ref_grads[2], GRAD_PARAM_RTOL[torch.float32], "grad_theta")
    if mode == "nearest":
        assert not grads[1].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_integer_flow_moves_pixels_exactly(device, backend, align_corners):
    """With equal sizes and no theta, output pixel (i, j) samples input pixel (i + v, j + u)."""
    x = torch.randn(1, 2, 6, 8, device=device)
    flow = torch.zeros(1, 2, 6, 8, device=device)
    flow[:, 0], flow[:, 1] = 3.0, -1.0  # u = +3 columns, v = -1 row
    with stn_triton.use_backend(backend):
        out = stn_triton.warp_flow(x, flow, align_corners=align_corners)
    torch.testing.assert_close(out[:, :, 1:, :5], x[:, :, :5, 3:], atol=1e-5, rtol=0)
    # outside: zeros padding (up to fp32 rounding of the coordinate, which can bleed ~1e-7 of a neighbour)
    assert out[:, :, 0].abs().max() < 1e-5 and out[:, :, :, 5:].abs().max() < 1e-5
    half = torch.full_like(flow, 0.5)  # half a pixel right and down: the mean of four neighbours
    with stn_triton.use_backend(backend):
        out = stn_triton.warp_flow(x, half, align_corners=align_corners)
    quad = (x[..., :-1, :-1] + x[..., :-1, 1:] + x[..., 1:, :-1] + x[..., 1:, 1:]) / 4
    torch.testing.assert_close(out[..., :-1, :-1], quad, atol=1e-5, rtol=0)


def test_half_precision_flow_keeps_fp32_coordinates(device, triton_backend):
    """A bf16 flow is added to the base in fp32 registers: the coordinate error is the flow's own
    rounding, not that of a bf16 identity grid (pytorch#36108)."""
    x = torch.randn(1, 1, 64, 300, device=device)
    flow = torch.full((1, 2, 64, 300), 0.25, device=device)
    ours = stn_triton.warp_flow(x.bfloat16(), flow.bfloat16()).float()
    exact = stn_triton.warp_flow(x.bfloat16().float(), flow)  # 0.25 is exact in bf16
    torch.testing.assert_close(ours, exact, atol=2e-2, rtol=2e-2)  # bf16 output rounding only
    base = F.affine_grid(torch.eye(2, 3, device=device)[None], (1, 1, 64, 300), align_corners=False)
    bf16_grid = (base.bfloat16() + (flow.movedim(1, -1) * torch.tensor([2 / 300, 2 / 64], device=device)).bfloat16())
    pytorch_way = F.grid_sample(x.bfloat16().float(), bf16_grid.float(), align_corners=False)
    # the bf16 grid misplaces columns far from the centre by up to ~1 pixel; ours does not
    assert (pytorch_way - exact).abs().max() > 10 * (ours - exact).abs().max()


monai_warp = pytest.importorskip("monai.networks.blocks.warp")


@pytest.mark.parametrize("spatial", [(7, 9), (4, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_monai_warp_equals_warp_flow_with_flipped_channels(spatial, backend):
    """MONAI's Warp (DDF in voxels, channels in array-axis order, align_corners=True, border) is
    warp_flow(image, ddf.flip(1), padding_mode="border", align_corners=True)."""
    image = torch.randn(2, 3, *spatial)
    ddf = 1.5 * torch.randn(2, len(spatial), *spatial)
    with pytest.warns(UserWarning, match="native grid_sample"):
        block = monai_warp.Warp(mode="bilinear", padding_mode="border")
    import unittest.mock

    with unittest.mock.patch.object(monai_warp, "USE_COMPILED", False):
        ref = block(image, ddf)
    with stn_triton.use_backend(backend):
        ours = stn_triton.warp_flow(image, ddf.flip(1), padding_mode="border", align_corners=True)
    assert_close(ours, ref, torch.float32, "MONAI Warp")


def test_voxelmorph_spatial_transformer_equals_warp_flow():
    """VoxelMorph's SpatialTransformer, as its source writes it: grid = meshgrid (ij) + flow, each axis
    normalised by 2 (v / (S - 1) - 0.5), reversed to (x, y, z), grid_sample(align_corners=True)."""
    src = torch.randn(1, 2, 5, 6, 7)
    flow = 1.2 * torch.randn(1, 3, 5, 6, 7)
    vecs = [torch.arange(0, s, dtype=torch.float32) for s in src.shape[2:]]
    grid = torch.stack(torch.meshgrid(vecs, indexing="ij"))[None]
    new = grid + flow
    for i, s in enumerate(src.shape[2:]):
        new[:, i] = 2 * (new[:, i] / (s - 1) - 0.5)
    ref = F.grid_sample(src, new.permute(0, 2, 3, 4, 1)[..., [2, 1, 0]], align_corners=True, mode="bilinear")
    with stn_triton.use_backend("triton"):
        ours = stn_triton.warp_flow(src, flow.flip(1), align_corners=True)
    assert_close(ours, ref, torch.float32, "VoxelMorph")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_gradcheck_eager_and_op(device, backend):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    flow = (0.3 * torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device) + 0.17).requires_grad_()
    fill = torch.tensor([0.5, -1.0], dtype=torch.float64, device=device, requires_grad=True)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, f, v: stn_triton.warp_flow(a, f, padding_mode="fill", fill_value=v), (x, flow, fill))
        assert torch.autograd.gradgradcheck(lambda a, f: stn_triton.warp_flow(a, f, align_corners=True), (x, flow))
    # the eager path and the custom op give the same bits
    results = []
    for path in ("eager", "op"):
        xs, fs = x.detach().float().requires_grad_(), flow.detach().float().requires_grad_()
        out = WARP_FLOW._eager(xs, fs, (), [3, 4], "bilinear", "reflection", False, backend, None) if path == "eager" \
            else warp_flow_op(xs, fs, [3, 4], "bilinear", "reflection", False, backend, None)
        results.append((out, torch.autograd.grad(out.square().sum(), [xs, fs])))
    (a, ga), (b, gb) = results
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_compile_and_empty(backend):
    x = torch.randn(1, 2, 4, 5, requires_grad=True)
    flow = torch.randn(1, 2, 3, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.stn_triton.warp_flow.default, (x, flow, [3, 4], "bilinear", "zeros", False, backend))
    torch.library.opcheck(torch.ops.stn_triton.warp_flow3d.default,
                          (torch.randn(1, 1, 2, 3, 4), torch.randn(1, 3, 2, 2, 3), [2, 2, 3], "nearest", "border", True,
                           backend))
    with stn_triton.use_backend(backend):
        f = torch.compile(lambda a, d: stn_triton.warp_flow(a, d), fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(f(x, flow), stn_triton.warp_flow(x, flow))
        xs = torch.randn(0, 2, 4, 5, requires_grad=True)
        out = stn_triton.warp_flow(xs, torch.zeros(0, 2, 3, 4, requires_grad=True))
        assert out.shape == (0, 2, 3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_non_finite(device, backend, deterministic):
    x = torch.randn(2, 3, 6, 7, device=device)
    flow = 2 * torch.randn(2, 2, 6, 7, device=device)
    flow[0, 0, 1, 1] = float("nan")
    flow[1, 1, 2, 3] = float("inf")
    runs = []
    with stn_triton.use_backend(backend):
        for _ in range(2):
            xs, fs = x.clone().requires_grad_(), flow.clone().requires_grad_()
            out = stn_triton.warp_flow(xs, fs, padding_mode="border")
            runs.append((out, *torch.autograd.grad(out.square().sum(), [xs, fs])))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    out, gx, gf = runs[0]
    assert not out[0, :, 1, 1].any() and not out[1, :, 2, 3].any()  # non-finite: 0 in every padding mode
    assert not gf[0, :, 1, 1].any() and not gf[1, :, 2, 3].any()
    assert torch.isfinite(gx).all() and torch.isfinite(gf).all()


def test_bad_input():
    x = torch.randn(2, 3, 4, 5)
    cases = [
        ((x, torch.zeros(2, 3, 4, 5)), ValueError, r"flow must have shape \(N, 2, H_out, W_out\).*got \(2, 3, 4, 5\)"),
        ((x, torch.zeros(2, 4, 5, 2)), ValueError, r"one channel per spatial axis"),
        ((x, torch.zeros(3, 2, 4, 5)), ValueError, r"flow's batch size must equal x's"),
        ((x, torch.zeros(2, 2, 4, 5, dtype=torch.int32)), TypeError, "flow must be a floating-point tensor"),
        ((torch.randn(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 5)), ValueError, r"\(N, 3, D_out, H_out, W_out\)"),
        ((x, torch.zeros(2, 2, 4, 5), torch.zeros(2, 3, 3)), ValueError, r"theta must be None or have shape \(N, 2, 3\)"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match):
            stn_triton.warp_flow(*args)
    with pytest.raises(ValueError, match="mode must be one of"):
        stn_triton.warp_flow(x, torch.zeros(2, 2, 4, 5), mode="area")
