"""stn_triton.tps_warp / tps_grid: the fused TPS kernels (interpreted on CPU) and the PyTorch path
against an independent float64 reference.

The reference (``reference_grid`` below) is written out here from the definition, with stock
PyTorch only: build L = [[U(|c_i - c_j|), P], [P^T, 0]], solve ``L @ coef = [points; 0]`` with
``torch.linalg.solve`` in float64, evaluate the spline on ``F.affine_grid``'s identity grid, and
``F.grid_sample``. It shares no code with ``kernels/`` or ``stn_triton`` (so it also checks the
PyTorch path).

Groups: forward + gradients per K / modes & paddings / layouts & dtypes / properties /
gradcheck / exceptions / custom op & compile / AOT.
"""
import itertools
import warnings

import pytest
from conftest import DEVICE
from testing.compiler import check_rows, static_report  # every specialisation: test_aot's slow test
import torch
import torch.nn.functional as F

import stn_triton
from stn_triton import _tps_ops, torch_path
from testing.tolerances import TPS_TOL, assert_close, assert_close_param_grad

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]


# ----------------------------------------------------------------------------- reference


def grid_control_points(k, dtype=torch.float64, device="cpu"):
    g = int(round(k ** 0.5))
    t = torch.linspace(-1, 1, g, dtype=dtype, device=device)
    return torch.stack([t.repeat(g), t.repeat_interleave(g)], dim=1)  # x fastest


def _u(d2):
    return torch.where(d2 > 0, d2 * torch.log(torch.where(d2 > 0, d2, 1.0)), 0.0)


def reference_grid(points, cps, size, align_corners):
    """float64 TPS grid (N, H, W, 2), differentiable w.r.t. ``points``."""
    n, k, _ = points.shape
    c = cps.double()
    p = torch.cat([torch.ones(k, 1, dtype=torch.float64, device=c.device), c], dim=1)
    L = torch.zeros(k + 3, k + 3, dtype=torch.float64, device=c.device)
    L[:k, :k] = _u(((c[:, None] - c[None]) ** 2).sum(-1))
    L[:k, k:] = p
    L[k:, :k] = p.t()
    rhs = torch.cat([points.double(), points.new_zeros(n, 3, 2, dtype=torch.float64)], dim=1)
    coef = torch.linalg.solve(L, rhs)  # (N, K+3, 2): w, then a0, a_x, a_y
    eye = torch.eye(2, 3, dtype=torch.float64, device=c.device)[None]
    with warnings.catch_warnings():  # affine_grid warns about unit-size grids with align_corners=True
        warnings.simplefilter("ignore", UserWarning)
        base = F.affine_grid(eye, (1, 1, *size), align_corners=align_corners).reshape(-1, 2)  # (P, 2)
    phi = torch.cat([_u(((base[:, None] - c[None]) ** 2).sum(-1)), torch.ones_like(base[:, :1]), base], dim=1)
    return torch.einsum("pj,njd->npd", phi, coef).reshape(n, *size, 2)


def reference(x, points, cps, size, mode, padding_mode, align_corners, grad_out=None):
    """(out, grad_x, grad_points) in float64; grads only when ``grad_out`` is given."""
    x64 = x.detach().double().requires_grad_()
    p64 = points.detach().double().requires_grad_()
    grid = reference_grid(p64, cps, size, align_corners)
    out = F.grid_sample(x64, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if grad_out is None:
        return out.detach(), None, None
    gx, gp = torch.autograd.grad(out, [x64, p64], grad_out.double())
    return out.detach(), gx, gp


def grid_strength(k):
    """Perturbation for the default sqrt(K) x sqrt(K) layout: 0.15, at most 0.35 grid spacings
    (stronger warps fold the spline over itself, and the fp32 cancellation error grows with them)."""
    return min(0.15, 0.35 * 2.0 / (round(k ** 0.5) - 1))


def random_points(n, cps, strength=0.15, dtype=torch.float32):
    return (cps.double()[None] + strength * torch.randn(n, *cps.shape, dtype=torch.float64, device=cps.device)).to(dtype)


def run(x, points, size, grad_out=None, **kw):
    x = x.detach().requires_grad_()
    points = points.detach().requires_grad_()
    out = stn_triton.tps_warp(x, points, size, **kw)
    if grad_out is None:
        return out, None, None
    gx, gp = torch.autograd.grad(out, [x, points], grad_out)
    return out, gx, gp


def check_against_reference(x, points, size, cps_explicit=None, mode="bilinear", padding_mode="zeros",
                            align_corners=False, what=""):
    k = points.shape[1]
    cps = cps_explicit if cps_explicit is not None else grid_control_points(k, device=x.device)
    h, w = size if size is not None else x.shape[2:]
    grad_out = torch.randn(x.shape[0], x.shape[1], h, w, device=x.device).to(x.dtype)
    out, gx, gp = run(x, points, size, grad_out, control_points=cps_explicit, mode=mode,
                      padding_mode=padding_mode, align_corners=align_corners)
    ref, rgx, rgp = reference(x, points, cps, (h, w), mode, padding_mode, align_corners, grad_out)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert_close(out, ref, x.dtype, f"{what} forward", TPS_TOL)
    assert_close(gx, rgx, x.dtype, f"{what} grad_x", TPS_TOL)
    assert gp.dtype == points.dtype
    assert_close_param_grad(gp, rgp, x.dtype, f"{what} grad_points")
    return out, gx, gp


# ----------------------------------------------------------------------------- forward + grads per K


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("k", [4, 16, 25, 64])
def test_forward_and_grads_per_k(device, backend, k):
    x = torch.randn(2, 3, 6, 7, device=device)
    points = random_points(2, grid_control_points(k, device=device), grid_strength(k))
    with stn_triton.use_backend(backend):
        check_against_reference(x, points, (5, 8), what=f"K={k} {backend}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_explicit_control_points(device, backend):
    # an irregular, well-spread layout (close pairs of control points make the spline ill-conditioned)
    cps = torch.tensor([[-0.8, -0.7], [0.1, -0.9], [0.85, -0.6], [-0.5, 0.0], [0.3, -0.2], [0.9, 0.3],
                        [-0.9, 0.8], [-0.1, 0.6], [0.6, 0.9], [0.0, 0.1]], dtype=torch.float64, device=device)
    x = torch.randn(2, 2, 7, 6, device=device)
    points = random_points(2, cps, 0.1)
    with stn_triton.use_backend(backend):
        check_against_reference(x, points, (4, 9), cps_explicit=cps.float(), align_corners=True, what=backend)


@pytest.mark.parametrize("mode,padding_mode,align_corners",
                         list(itertools.product(MODES, PADDINGS, [False, True])))
def test_modes_paddings(device, triton_backend, mode, padding_mode, align_corners):
    # strength 0.4: many samples land outside the image, exercising the padding
    x = torch.randn(2, 3, 5, 6, device=device)
    points = random_points(2, grid_control_points(9, device=device), 0.4)
    _, _, gp = check_against_reference(x, points, (6, 5), mode=mode, padding_mode=padding_mode,
                                       align_corners=align_corners, what=f"{mode}/{padding_mode}/{align_corners}")
    if mode == "nearest":
        assert not gp.any()  # piecewise constant in the coordinates, as grid_sample


def test_default_size_and_single_pixel_outputs(device, triton_backend):
    x = torch.randn(1, 2, 5, 4, device=device)
    points = random_points(1, grid_control_points(4, device=device))
    check_against_reference(x, points, None, what="size=None")
    check_against_reference(x, points, (1, 3), what="1x3")
    check_against_reference(x, points, (2, 1), align_corners=True, what="2x1")


# ----------------------------------------------------------------------------- layouts & dtypes


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, backend, dtype):
    x = torch.randn(2, 3, 6, 5, device=device).to(dtype)
    points = random_points(2, grid_control_points(16, device=device), dtype=dtype)
    with stn_triton.use_backend(backend):
        check_against_reference(x, points, (5, 7), padding_mode="border", what=f"{dtype} {backend}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, backend, layout):
    base = torch.randn(2, 5, 6, 14, device=device)
    if layout == "channels_last":
        x = base[:, :4, :, :7].contiguous().to(memory_format=torch.channels_last)
    else:
        x = base[:, 1::2, :, ::2]  # non-contiguous in C and W
    points = random_points(2, grid_control_points(16, device=device))
    with stn_triton.use_backend(backend):
        out, gx, _ = check_against_reference(x, points, (4, 6), padding_mode="reflection", what=layout)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)


def test_mixed_dtype_points(device, triton_backend):
    """fp16 image with fp64 points: coordinates still fp32-accurate, grad_points in points' dtype."""
    x = torch.randn(1, 2, 6, 6, device=device).half()
    points = random_points(1, grid_control_points(4, device=device), dtype=torch.float64)
    check_against_reference(x, points, (5, 5), what="fp16 x, fp64 points")


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity(device, backend, align_corners):
    """points == control_points is the identity warp, to fp32 rounding (the grid is built from
    float64 coefficients and rounded once: no ~1e-5 error from an fp32 spline evaluation)."""
    x = torch.randn(2, 3, 8, 9, device=device)
    cps = grid_control_points(16, device=device)
    with stn_triton.use_backend(backend):
        out = stn_triton.tps_warp(x, cps.float()[None].expand(2, 16, 2), align_corners=align_corners)
    # grid_sample's own fp32 rounding on the identity affine grid
    eye = torch.eye(2, 3, device=device)[None].expand(2, 2, 3)
    affine = F.grid_sample(x, F.affine_grid(eye, x.shape, align_corners=align_corners), align_corners=align_corners)
    bound = max(2 * (affine - x).abs().max().item(), 1e-6)
    assert (out - x).abs().max().item() <= bound


def test_torch_path_fp32_matches_float64_to_rounding(device):
    """The PyTorch path's fp32 grid is the float64 grid rounded once."""
    cps = grid_control_points(25, device=device)
    points = random_points(2, cps, 0.2)
    g32 = stn_triton.tps_grid(points, (7, 6))
    g64 = reference_grid(points, cps, (7, 6), False)
    assert g32.dtype == torch.float32
    assert (g32.double() - g64).abs().max().item() <= 2.0 ** -24 * max(1.0, g64.abs().max().item())


def test_tps_grid_matches_reference_and_grad(device):
    cps = torch.rand(7, 2, dtype=torch.float64, device=device) * 2 - 1
    points = random_points(3, cps, 0.2, dtype=torch.float64).requires_grad_()
    grid = stn_triton.tps_grid(points, (4, 5), control_points=cps, align_corners=True)
    ref = reference_grid(points, cps, (4, 5), True)
    torch.testing.assert_close(grid, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(grid)
    torch.testing.assert_close(torch.autograd.grad(grid, points, g)[0], torch.autograd.grad(ref, points, g)[0])


def test_interpolates_control_points(device, triton_backend):
    """source(c_k) = points_k: an output pixel exactly at a control point samples points_k."""
    # align_corners=True on a 3x3 output puts pixels exactly on the default 3x3 control grid
    x = torch.arange(2 * 5 * 5, dtype=torch.float32, device=device).reshape(2, 1, 5, 5)
    cps = grid_control_points(9, device=device)
    points = random_points(2, cps, 0.1)
    out = stn_triton.tps_warp(x, points, (3, 3), align_corners=True, padding_mode="border")
    direct = F.grid_sample(x.double(), points.double().reshape(2, 3, 3, 2), align_corners=True,
                           padding_mode="border")
    assert_close(out, direct, torch.float32, "at control points", TPS_TOL)


def test_empty_batch(device, triton_backend):
    x = torch.randn(0, 2, 4, 4, device=device, requires_grad=True)
    points = torch.zeros(0, 4, 2, device=device, requires_grad=True)
    out = stn_triton.tps_warp(x, points, (3, 3))
    assert out.shape == (0, 2, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and points.grad.shape == points.shape


def test_expanded_grad_out(device, triton_backend):
    """out.sum().backward() hands the backward an all-zero-stride grad_out."""
    x = torch.randn(1, 2, 5, 5, device=device)
    points = random_points(1, grid_control_points(16, device=device))
    xg, pg = x.clone().requires_grad_(), points.clone().requires_grad_()
    stn_triton.tps_warp(xg, pg, (4, 6), padding_mode="reflection").sum().backward()
    _, rgx, rgp = reference(x, points, grid_control_points(16, device=device), (4, 6), "bilinear", "reflection",
                            False, torch.ones(1, 2, 4, 6, device=device))
    assert_close(xg.grad, rgx, torch.float32, "grad_x", TPS_TOL)
    assert_close_param_grad(pg.grad, rgp, torch.float32, "grad_points")


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU profiler probe; test_gpu checks the CUDA peak")
def test_no_hwk_sized_intermediate():
    """The fused path never materialises an [N, H, W, K] tensor, forward or backward.

    The profiler records every aten allocation, including those inside the custom op; the torch
    path (which does materialise the radial basis) shows that the probe would catch one.
    """
    from torch.profiler import ProfilerActivity, profile

    n, h, w, k = 2, 32, 32, 64
    hwk_bytes = n * h * w * k * 4

    def largest_allocation(backend):
        x = torch.randn(n, 1, h, w, requires_grad=True)
        pts = (grid_control_points(k, torch.float32) + 0.05 * torch.randn(k, 2)).expand(n, k, 2)
        pts = pts.clone().requires_grad_()
        with stn_triton.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                stn_triton.tps_warp(x, pts).sum().backward()
        return max(e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::"))

    assert largest_allocation("torch") >= hwk_bytes  # the probe sees an H*W*K tensor
    assert largest_allocation("triton") < hwk_bytes / 4  # O(K^2) solve + O(N*C*H*W) buffers only


def test_default_grid_solved_once_per_k(device, monkeypatch):
    _tps_ops.clear_cache()
    calls = []
    real = torch_path.tps_coefficient_map
    monkeypatch.setattr(torch_path, "tps_coefficient_map", lambda c: calls.append(1) or real(c))
    x = torch.randn(1, 1, 4, 4, device=device)
    for _ in range(3):
        stn_triton.tps_warp(x, random_points(1, grid_control_points(4, device=device)))
        stn_triton.tps_warp(x, random_points(1, grid_control_points(9, device=device)))
    assert len(calls) == 2


def test_explicit_control_points_solved_once_per_content(device, monkeypatch):
    """Explicit control points are found by content: equal contents in new tensors reuse the
    solve, and the host reads them every call (nothing is keyed by identity)."""
    _tps_ops.clear_cache()
    solves = []
    real_map = torch_path.tps_coefficient_map
    monkeypatch.setattr(torch_path, "tps_coefficient_map", lambda c: solves.append(1) or real_map(c))
    x = torch.randn(1, 1, 4, 4, device=device)
    cps = torch.rand(5, 2, device=device) * 2 - 1
    points = random_points(1, cps)
    first = stn_triton.tps_warp(x, points, control_points=cps)
    for _ in range(3):
        torch.testing.assert_close(stn_triton.tps_warp(x, points, control_points=cps.clone()), first)
    assert len(solves) == 1


def test_torch_path_builds_phi_once_per_content_and_size(monkeypatch):
    """The CPU PyTorch path's Phi (H*W, K+3) is found by content: a training step used to build it
    three times (forward grid, backward grid, coefficient gradient); now once per (control points,
    size), with the same values as a fresh build."""
    _tps_ops.clear_cache()
    calls = []
    real = torch_path.tps_features
    monkeypatch.setattr(torch_path, "tps_features", lambda *a: calls.append(a[1:3]) or real(*a))
    cps = grid_control_points(9)
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64, requires_grad=True)
    with stn_triton.use_backend("torch"):
        for _ in range(3):
            pts = random_points(2, cps, dtype=torch.float64).requires_grad_()
            stn_triton.tps_warp(x, pts, (7, 5)).sum().backward()
            check_against_reference(x.detach(), pts.detach(), (7, 5))
        stn_triton.tps_warp(x, pts, (6, 6))
        stn_triton.tps_warp(x, pts, (6, 6), control_points=cps * 0.9)
    assert calls.count((7, 5)) == 1  # (the reference builds its own grid, independently)
    assert calls.count((6, 6)) == 2  # a new size, then new contents


@pytest.mark.parametrize("edit", ["data", "numpy"])
def test_control_points_edited_without_version_bump_are_seen(edit):
    """``cp.data[...] = v`` and ``cp.numpy()[...] = v`` do not bump the version counter; the
    solved system must still follow the new contents (it differed by 0.79 from a fresh solve)."""
    _tps_ops.clear_cache()
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    cps = torch.tensor([[-0.8, -0.7], [0.6, -0.5], [0.1, 0.7], [-0.4, 0.2], [0.5, 0.4]], dtype=torch.float64)
    points = cps[None] + 0.1 * torch.randn(1, 5, 2, dtype=torch.float64)
    stn_triton.tps_warp(x, points, control_points=cps)
    version = cps._version
    if edit == "data":
        cps.data[0] = torch.tensor([-0.2, -0.9], dtype=torch.float64)
    else:
        cps.numpy()[0] = (-0.2, -0.9)
    assert cps._version == version  # the hole the old identity + version cache had
    fresh = torch_path.tps_warp(x, points, cps.clone(), 9, 9)
    torch.testing.assert_close(stn_triton.tps_warp(x, points, control_points=cps), fresh)


def test_control_points_id_reuse_is_safe():
    """A new tensor at the address of a dead one (same id(), same version) must not hit the dead
    tensor's solve."""
    _tps_ops.clear_cache()
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    seen = {}
    for trial in range(50):
        cps = torch.rand(5, 2, dtype=torch.float64) * 1.6 - 0.8
        points = cps[None] + 0.1
        out = stn_triton.tps_warp(x, points, control_points=cps)
        torch.testing.assert_close(out, torch_path.tps_warp(x, points, cps, 9, 9))
        seen.setdefault(id(cps), 0)
        seen[id(cps)] += 1
        del cps
    assert max(seen.values()) > 1  # ids were reused (CPython reuses freed addresses), and it stayed right


# ----------------------------------------------------------------------------- custom op & compile


@pytest.mark.parametrize("backend,explicit", [("triton", True), ("torch", False), ("torch", True)],
                         ids=["triton-explicit-cps", "torch-default-cps", "torch-explicit-cps"])
def test_opcheck(backend, explicit):
    x = torch.randn(2, 2, 4, 5, device=DEVICE).to(memory_format=torch.channels_last)
    cps = grid_control_points(4).float().to(DEVICE) * 0.9 if explicit else None
    points = random_points(2, grid_control_points(4)).to(DEVICE)
    m64, c64 = _tps_ops.tps_system(cps, 4, torch.device(DEVICE))
    coef = torch_path.tps_coefficients(points, m64)
    torch.library.opcheck(torch.ops.stn_triton.tps_warp.default,
                          (x.requires_grad_(), coef.requires_grad_(), c64, [3, 4], "bilinear", "zeros", False, backend))
    torch.library.opcheck(torch.ops.stn_triton.tps_warp_backward.default,
                          (torch.randn(2, 2, 3, 4, device=DEVICE).requires_grad_(), x.detach().requires_grad_(),
                           coef.detach().requires_grad_(), c64, "bilinear", "border", True, True, True, backend))


def test_torch_compile_fullgraph_tiny_tps():
    class TinyTPS(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Linear(2 * 6 * 6, 16 * 2)
            torch.nn.init.zeros_(self.loc.weight)
            with torch.no_grad():
                self.loc.bias.copy_(grid_control_points(16).float().reshape(-1))
            self.head = torch.nn.Linear(2 * 5 * 5, 3)

        def forward(self, x):
            points = self.loc(x.flatten(1)).view(-1, 16, 2)
            return self.head(stn_triton.tps_warp(x, points, (5, 5)).flatten(1))

    torch._dynamo.reset()
    model = TinyTPS()
    x = torch.randn(3, 2, 6, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model.loc.weight.grad is not None and model.loc.bias.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- AOT (real compiler)


def test_aot_core_tps_kernels_sm90_no_spills():
    """K = 16 and K = 64, forward and backward, compiled for sm_90: zero spills."""
    rows = static_report("--arch", "90", "--match", "tps_fwd/K16/bilinear/zeros/fp32/nchw", "tps_bwd/K16/bilinear/zeros/fp32/nchw",
                         "tps_fwd/K64/bilinear/zeros/fp32/nchw", "tps_bwd/K64/bilinear/zeros/fp32/nchw")
    check_rows(rows)
    labels = {r["label"] for r in rows}
    for k in (16, 64):
        for kind in ("fwd", "bwd"):
            assert any(lab.startswith(f"tps_{kind}/K{k}/") for lab in labels)
