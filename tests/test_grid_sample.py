"""stn_triton.grid_sample: F.grid_sample for any grid (issue #26 item 1), through the fused kernels
(interpreted on CPU) and the PyTorch path, against a float64 reference of stock PyTorch only
(``F.grid_sample`` on the same grid). Sizes are tiny and odd; grids reach beyond [-1, 1]."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE
from stn_triton._grid_sample_ops import GRID_SAMPLE, GRID_SAMPLE3D, grid_sample3d_op, grid_sample_op
from testing.tolerances import GRAD_PARAM_RTOL, assert_close

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]
BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]  # the interpreter is the CPU's triton


def random_grid(n, *size, dims=2, spread=1.3, device="cpu", dtype=torch.float32):
    return ((torch.rand(n, *size, dims, dtype=torch.float64) * 2 - 1) * spread).to(device=device, dtype=dtype)


def reference(x, grid, mode, padding_mode, align_corners, grad_out):
    """float64 output, grad_x and grad_grid of F.grid_sample."""
    x64 = x.detach().double().requires_grad_()
    g64 = grid.detach().double().requires_grad_()
    out = F.grid_sample(x64, g64, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    gx, gg = torch.autograd.grad(out, [x64, g64], grad_out.double())
    return out.detach(), gx, gg


def run(x, grid, mode, padding_mode, align_corners, grad_out, **kw):
    xs, gs = x.detach().requires_grad_(), grid.detach().requires_grad_()
    out = stn_triton.grid_sample(xs, gs, mode, padding_mode, align_corners, **kw)
    gx, gg = torch.autograd.grad(out, [xs, gs], grad_out)
    return out, gx, gg


def assert_grid_grad_close(actual, expected, dtype, what="grad_grid"):
    """grad_grid is per pixel but carries the image slope times W / 2: relative to its own scale."""
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= GRAD_PARAM_RTOL[dtype] * scale, f"{what}: max error {err:.3e} > {GRAD_PARAM_RTOL[dtype]:.1e} x {scale:.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,padding_mode", list(itertools.product(MODES, PADDINGS)))
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dims", [2, 3], ids=["image", "volume"])
def test_forward_and_grads_match_grid_sample(device, backend, mode, padding_mode, align_corners, dims):
    if dims == 2:
        x, grid = torch.randn(2, 3, 7, 9, device=device), random_grid(2, 5, 6, device=device)
    else:
        x, grid = torch.randn(2, 2, 3, 4, 5, device=device), random_grid(2, 3, 2, 4, dims=3, device=device)
    grad_out = torch.randn(2, x.shape[1], *grid.shape[1:-1], device=device)
    with stn_triton.use_backend(backend):
        out, gx, gg = run(x, grid, mode, padding_mode, align_corners, grad_out)
    ref, rgx, rgg = reference(x, grid, mode, padding_mode, align_corners, grad_out)
    assert out.shape == ref.shape and out.dtype == x.dtype and gg.shape == grid.shape
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_grid_grad_close(gg, rgg, torch.float32)
    if mode == "nearest":
        assert not gg.any()  # piecewise constant, as PyTorch


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_dtypes_layouts_and_grid_strides(device, triton_backend, dtype, channels_last):
    x = torch.randn(2, 4, 6, 7, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    # a non-contiguous grid: (x, y) in separate planes, viewed as (N, H_out, W_out, 2)
    planes = random_grid(2, 5, 3, device=device).permute(0, 3, 1, 2).contiguous()
    grid = planes.permute(0, 2, 3, 1)
    assert not grid.is_contiguous()
    grad_out = torch.randn(2, 4, 5, 3, device=device).to(dtype)
    out, gx, gg = run(x, grid, "bilinear", "reflection", False, grad_out)
    assert out.dtype == dtype and gx.dtype == dtype and gg.dtype == grid.dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert gx.is_contiguous(memory_format=torch.channels_last) == channels_last
    ref, rgx, rgg = reference(x, grid, "bilinear", "reflection", False, grad_out)
    assert_close(out, ref, dtype, "forward")
    assert_close(gx, rgx, dtype, "grad_x")
    assert_grid_grad_close(gg, rgg, torch.float32 if dtype == torch.float64 else dtype)


def test_fp64_input_reads_fp64_coordinates_and_a_half_grid_works(device, triton_backend):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=device)
    grid = random_grid(1, 4, 4, device=device, dtype=torch.float64)
    grad_out = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=device)
    out, gx, gg = run(x, grid, "bilinear", "zeros", True, grad_out)
    ref, rgx, rgg = reference(x, grid, "bilinear", "zeros", True, grad_out)
    assert_close(out, ref, torch.float64, "forward")
    assert_close(gx, rgx, torch.float64, "grad_x")
    assert_grid_grad_close(gg, rgg, torch.float64)
    half = grid.to(torch.float16)  # coordinates read from fp16, computed in fp64
    out16 = stn_triton.grid_sample(x, half)
    assert_close(out16, F.grid_sample(x, half.double(), align_corners=False), torch.float64, "fp16 grid")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [2, 3], ids=["image", "volume"])
def test_fill_padding_and_its_gradient(device, backend, dims):
    if dims == 2:
        x, grid = torch.randn(2, 3, 5, 6, device=device), random_grid(2, 4, 5, spread=1.6, device=device)
    else:
        x, grid = torch.randn(1, 2, 3, 4, 3, device=device), random_grid(1, 2, 3, 2, dims=3, spread=1.6, device=device)
    fill = torch.randn(x.shape[1], device=device, requires_grad=True)
    grad_out = torch.randn(x.shape[0], x.shape[1], *grid.shape[1:-1], device=device)
    with stn_triton.use_backend(backend):
        xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
        out = stn_triton.grid_sample(xs, gs, "bilinear", "fill", False, fill_value=fill)
        gx, gg, gf = torch.autograd.grad(out, [xs, gs, fill], grad_out)
    # reference: sample_zeros + fill * (1 - coverage), all float64 F.grid_sample
    x64, g64, f64 = x.double().requires_grad_(), grid.double().requires_grad_(), fill.detach().double().requires_grad_()
    cov = F.grid_sample(torch.ones_like(x64[:, :1]), g64, align_corners=False)
    shape = (1, -1) + (1,) * dims
    ref = F.grid_sample(x64, g64, align_corners=False) + f64.view(shape) * (1 - cov)
    rgx, rgg, rgf = torch.autograd.grad(ref, [x64, g64, f64], grad_out.double())
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_grid_grad_close(gg, rgg, torch.float32)
    assert_grid_grad_close(gf, rgf, torch.float32, "grad_fill")


def test_deterministic_backward_is_bit_identical_across_tilings(device, deterministic):
    x = torch.randn(2, 5, 9, 8, device=device)
    grid = random_grid(2, 11, 10, spread=0.9, device=device)  # many pixels share taps: atomics would race
    grad_out = torch.randn(2, 5, 11, 10, device=device)
    from stn_triton.kernels import grid_sample as kg

    results = [kg.grid_sample_bwd(grad_out, x, grid, "bilinear", "zeros", False, True, True, deterministic=True,
                                  config=cfg) for cfg in ((16, 4), (64, 8), (128, 2), (16, 4))]
    # grad_x: int64 fixed point, the same bits under any tiling; grad_grid: one writer per element,
    # its channel sum in BLOCK_C chunks, so the same bits for the same tiling, every run
    for gx, _ in results[1:]:
        assert torch.equal(gx, results[0][0])
    assert torch.equal(results[0][1], results[3][1])
    with stn_triton.use_backend("triton"):
        first = run(x, grid, "bilinear", "zeros", False, grad_out)
        second = run(x, grid, "bilinear", "zeros", False, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(first[1], results[0][0])
    _, rgx, rgg = reference(x, grid, "bilinear", "zeros", False, grad_out)
    assert_close(results[0][0], rgx, torch.float32, "deterministic grad_x")
    assert_grid_grad_close(results[1][1], rgg, torch.float32)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy inside the interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode", PADDINGS + ["fill"])
def test_non_finite_coordinates_sample_zero_with_zero_gradient(device, backend, padding_mode):
    x = torch.randn(1, 2, 4, 5, device=device)
    grid = random_grid(1, 3, 4, device=device)
    grid[0, 0, 0, 0] = float("nan")
    grid[0, 1, 2, 1] = float("inf")
    grid[0, 2, 3, :] = float("-inf")
    fill = torch.tensor([0.5, -2.0], device=device) if padding_mode == "fill" else None
    with stn_triton.use_backend(backend):
        out, gx, gg = run(x, grid, "bilinear", padding_mode, False, torch.ones(1, 2, 3, 4, device=device),
                          fill_value=fill)
    expect = torch.zeros(2, device=device) if fill is None else fill
    for i, j in ((0, 0), (1, 2), (2, 3)):
        assert torch.equal(out[0, :, i, j], expect)
        assert torch.equal(gg[0, i, j], torch.zeros(2, device=device))
    assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gg).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_empty_output(device, backend):
    with stn_triton.use_backend(backend):
        for x, grid in ((torch.randn(0, 3, 4, 5, device=device), random_grid(0, 2, 3, device=device)),
                        (torch.randn(2, 3, 4, 5, device=device), random_grid(2, 0, 3, device=device)),
                        (torch.randn(1, 2, 3, 4, 5, device=device), random_grid(1, 2, 0, 3, dims=3, device=device))):
            xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
            out = stn_triton.grid_sample(xs, gs)
            assert out.shape == (x.shape[0], x.shape[1], *grid.shape[1:-1])
            gx, gg = torch.autograd.grad(out.sum(), [xs, gs], allow_unused=True)
            assert not gx.any() and not gg.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(device, backend):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    # coordinates away from the taps' kinks (pixel centres / edges), where the function is smooth
    grid = (torch.tensor([[[[-0.61, 0.27], [0.33, -0.42]], [[0.07, 0.55], [-0.29, -0.13]]]], dtype=torch.float64,
                         device=device)).requires_grad_()
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, g: stn_triton.grid_sample(a, g, "bilinear", "border", False),
                                        (x, grid))
        assert torch.autograd.gradgradcheck(lambda a, g: stn_triton.grid_sample(a, g, "bilinear", "zeros", True),
                                            (x, grid))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_path_equals_custom_op_bit_for_bit(device, backend):
    x = torch.randn(2, 3, 5, 6, device=device)
    grid = random_grid(2, 4, 5, device=device)
    grad_out = torch.randn(2, 3, 4, 5, device=device)
    results = []
    for path in ("eager", "op"):
        xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
        if path == "eager":
            out = GRID_SAMPLE._eager(xs, gs, (), [4, 5], "bilinear", "reflection", False, backend, None)
        else:
            out = grid_sample_op(xs, gs, [4, 5], "bilinear", "reflection", False, backend, None)
        results.append((out, torch.autograd.grad(out, [xs, gs], grad_out)))
    (a, ga), (b, gb) = results
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_compile_fullgraph(backend):
    x = torch.randn(1, 2, 4, 5, requires_grad=True)
    grid = random_grid(1, 3, 4).requires_grad_()
    torch.library.opcheck(grid_sample_op.default if hasattr(grid_sample_op, "default") else
                          torch.ops.stn_triton.grid_sample.default,
                          (x, grid, [3, 4], "bilinear", "border", False, backend))
    v = torch.randn(1, 2, 3, 4, 3, requires_grad=True)
    g3 = random_grid(1, 2, 2, 3, dims=3).requires_grad_()
    torch.library.opcheck(torch.ops.stn_triton.grid_sample3d.default,
                          (v, g3, [2, 2, 3], "nearest", "zeros", True, backend))
    with stn_triton.use_backend(backend):
        f = torch.compile(lambda a, g: stn_triton.grid_sample(a, g, padding_mode="reflection"), fullgraph=True,
                          backend="aot_eager")
        torch.testing.assert_close(f(x, grid), stn_triton.grid_sample(x, grid, padding_mode="reflection"))
    assert GRID_SAMPLE3D.op is grid_sample3d_op


def test_bad_input_names_the_argument_and_shape():
    x = torch.randn(2, 3, 4, 5)
    cases = [
        ((x, torch.zeros(2, 4, 5)), ValueError, r"grid must have shape \(N, H_out, W_out, 2\).*got \(2, 4, 5\)"),
        ((x, torch.zeros(2, 4, 5, 3)), ValueError, r"got \(2, 4, 5, 3\)"),
        ((x, torch.zeros(3, 4, 5, 2)), ValueError, r"grid's batch size must equal input's.*N = 2.*has 3"),
        ((x, torch.zeros(2, 4, 5, 2, dtype=torch.int64)), TypeError, "grid must be a floating-point tensor"),
        ((x, [[0.0, 0.0]]), TypeError, "grid must be a torch.Tensor"),
        ((torch.randn(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 2)), ValueError, r"\(N, D_out, H_out, W_out, 3\)"),
        ((torch.randn(3, 4), torch.zeros(3, 4, 2)), ValueError, "input must be 4-D"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match):
            stn_triton.grid_sample(*args)
    with pytest.raises(ValueError, match="mode must be one of"):
        stn_triton.grid_sample(x, torch.zeros(2, 4, 5, 2), mode="area")
    with pytest.raises(ValueError, match="fill_value is only used"):
        stn_triton.grid_sample(x, torch.zeros(2, 4, 5, 2), fill_value=1.0)
