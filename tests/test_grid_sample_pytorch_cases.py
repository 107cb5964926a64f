"""PyTorch's own grid-sample test cases, ported to ``stn_triton.grid_sample`` (and, where they apply,
``stn_triton.warp``), on both backends: the fused kernels (interpreted on CPU) and the PyTorch path.

Source: ``test/test_nn.py`` of pytorch/pytorch (``TestNN`` and ``TestNNDeviceType``); each test names
the PyTorch test it comes from. The cases (shapes, parameter grids, the hand-written inputs, grids and
groundtruth tensors, the properties asserted) are PyTorch's; the code is this project's. Values and
gradients are compared with a float64 ``F.grid_sample`` reference under the project's tolerance table
(``testing.tolerances``); the hand-written groundtruth keeps PyTorch's own ``atol=1e-5``.

Where the project's contract differs from PyTorch the test asserts the project's rule and says so:
errors are ``ValueError`` / ``TypeError`` naming the argument (PyTorch raises ``RuntimeError`` from
C++), and a non-finite grid coordinate samples 0 (the fill value with ``"fill"``) with zero gradient.

Sizes: the Triton interpreter is slow, so PyTorch's random sizes are replaced by fixed sizes inside
PyTorch's ranges, gradcheck runs in fast mode on the interpreter, and PyTorch's 64-bit-indexing cases
(tensors of 8 GiB and more) run only on a GPU (``STN_TEST_CUDA=1``); on CPU they run at a reduced
size that keeps their strided-view comparison. An out-of-bounds read under the interpreter is a
segfault of the whole test process, so the full-size cases never run there.
"""
import contextlib
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from conftest import DEVICE, ON_GPU
from testing.tolerances import assert_close, assert_close_param_grad

MODES_2D = ["bilinear", "nearest", "bicubic"]
MODES_3D = ["bilinear", "nearest"]  # PyTorch has no 3-D bicubic
PADDINGS = ["zeros", "border", "reflection"]
BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]  # as tests/test_grid_sample.py
NAN, INF = float("nan"), float("inf")
GROUNDTRUTH_ATOL = 1e-5  # PyTorch's atol for its hand-written groundtruth (values printed to ~7 digits)

CONFIGS_2D = list(itertools.product(MODES_2D, PADDINGS, [True, False]))
CONFIGS_3D = list(itertools.product(MODES_3D, PADDINGS, [True, False]))


def _ids(cfg):
    mode, pad, ac = cfg
    return f"{mode}-{pad}-{'ac' if ac else 'noac'}"


def _run(backend, x, grid, mode, padding_mode, align_corners, grad_out=None, need_x=True, **kw):
    """stn_triton.grid_sample on fresh leaves under ``backend``: (out, grad_x | None, grad_grid | None)."""
    xs, gs = x.detach().requires_grad_(need_x), grid.detach().requires_grad_()
    with stn_triton.use_backend(backend):
        out = stn_triton.grid_sample(xs, gs, mode, padding_mode, align_corners, **kw)
        if grad_out is None:
            return out, None, None
        wrt = [xs, gs] if need_x else [gs]
        grads = torch.autograd.grad(out, wrt, grad_out)
    return (out, grads[0], grads[1]) if need_x else (out, None, grads[0])


def _reference(x, grid, mode, padding_mode, align_corners, grad_out=None, need_x=True):
    """float64 F.grid_sample: (out, grad_x | None, grad_grid | None)."""
    x64 = x.detach().double().requires_grad_(need_x)
    g64 = grid.detach().double().requires_grad_()
    out = F.grid_sample(x64, g64, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if grad_out is None:
        return out.detach(), None, None
    wrt = [x64, g64] if need_x else [g64]
    grads = torch.autograd.grad(out, wrt, grad_out.double())
    return (out.detach(), grads[0], grads[1]) if need_x else (out.detach(), None, grads[0])


def _compare(backend, x, grid, mode, padding_mode, align_corners, need_x=True, dtype=None):
    """Forward, grad_x and grad_grid of one call against the float64 reference (project tolerances)."""
    dtype = dtype or x.dtype
    n, c = x.shape[:2]
    grad_out = torch.randn(n, c, *grid.shape[1:-1], dtype=x.dtype, device=x.device)
    out, gx, gg = _run(backend, x, grid, mode, padding_mode, align_corners, grad_out, need_x)
    assert out.shape == (n, c, *grid.shape[1:-1]) and out.dtype == x.dtype
    assert gg.shape == grid.shape and (gx is None or gx.shape == x.shape)
    if out.numel() == 0:  # PyTorch's empty-grid / empty-channel / empty-batch cases: empty, zero gradients
        assert not gg.any() and (gx is None or not gx.any())
        return
    ref, rgx, rgg = _reference(x, grid, mode, padding_mode, align_corners, grad_out, need_x)
    assert_close(out, ref, dtype, "forward")
    if need_x:
        assert_close(gx, rgx, dtype, "grad_input")
    assert_close_param_grad(gg, rgg, dtype, "grad_grid")
    if mode == "nearest":
        assert not gg.any()


# ----------------------------------------------------------------------------- TestNN.test_grid_sample

# PyTorch's known input (torch.arange(1., 11).view(1, 1, 2, 5)) and grid, and its groundtruth output per
# (mode, padding_mode, align_corners)
GT_GRID = [[[-0.9, -4.1], [0, 0.2000], [1, -1], [-0.333, 1e-6], [0.5, 1.0]],
           [[-1.0, -0.5], [0, 0.3333], [1, -1], [-0.200, 1e-6], [1.5, 0.5]]]
GT_OUTPUT = {
    ("bilinear", "zeros", True): [[0.0000, 6.0000000000, 5.0000, 4.8340, 9.0000],
                                  [2.2500, 6.3332500450, 5.0000, 5.1000, 0.0000]],
    ("bilinear", "zeros", False): [[0.0000, 6.5000000000, 1.2500, 4.6675000191, 4.6250],
                                   [0.5000, 7.1665000916, 1.2500, 5.0000000000, 0.0000]],
    ("bilinear", "border", True): [[1.2000, 6.0000000000, 5.0000, 4.8340, 9.0000],
                                   [2.2500, 6.3332500450, 5.0000, 5.1000, 8.7500]],
    ("bilinear", "border", False): [[1.0000, 6.5000000000, 5.0000, 4.6675000191, 9.2500],
                                    [1.0000, 7.1665000916, 5.0000, 5.0000000000, 10.0000]],
    ("bilinear", "reflection", True): [[3.4500, 6.0000000000, 5.0000, 4.8340, 9.0000],
                                       [2.2500, 6.3332500450, 5.0000, 5.1000, 7.7500]],
    ("bilinear", "reflection", False): [[3.0000004768, 6.5000000000, 5.0000, 4.6675000191, 9.2500],
                                        [1.0000000000, 7.1665000916, 5.0000, 5.0000000000, 9.2500]],
    ("nearest", "zeros", True): [[0., 8., 5., 7., 9.], [1., 8., 5., 8., 0.]],
    ("nearest", "zeros", False): [[0., 8., 5., 7., 0.], [1., 8., 5., 8., 0.]],
    ("nearest", "border", True): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 10.]],
    ("nearest", "border", False): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 10.]],
    ("nearest", "reflection", True): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 9.]],
    ("nearest", "reflection", False): [[1., 8., 5., 7., 9.], [1., 8., 5., 8., 9.]],
    ("bicubic", "zeros", True): [[-0.10424726, 7.1400003, 5.0000, 5.7842274, 9.0000],
                                 [2.4492188, 7.4814040, 5.0000, 6.0277520, 0.0000]],
    ("bicubic", "zeros", False): [[0.00000, 7.6287503, 1.0625, 5.5977230, 5.3270264],
                                  [0.40625, 8.0288770, 1.0625, 5.9375067, -0.3515625]],
    ("bicubic", "border", True): [[1.1520010, 6.0599990, 5.0000, 4.870930, 9.0000000],
                                  [2.1328125, 6.4258375, 5.0000, 5.076003, 8.8671875]],
    ("bicubic", "border", False): [[0.894531, 6.6050020, 4.625, 4.7138715, 9.800781],
                                   [0.906250, 7.2822485, 4.625, 5.0000052, 10.00000]],
    ("bicubic", "reflection", True): [[3.1822524, 6.239998, 5.0000, 4.8709273, 9.00000],
                                      [1.7812500, 6.703594, 5.0000, 5.0760007, 8.21875]],
    ("bicubic", "reflection", False): [[2.7993753, 6.6050020, 4.25, 4.7138715, 10.269531],
                                       [0.8125000, 7.2822485, 4.25, 5.0000052, 9.332031]],
}

# PyTorch's "explicit check for gradient edge cases": input torch.arange(0., 5).expand((1, 1, 5, 5)),
# this grid, and the groundtruth of grid.grad after output.sum().backward()
GT_GRAD_GRID = [[[1.0, 1.0], [1.0, -1.0], [0.8, 0.8], [0.8, -0.8]],
                [[-1.0, -1.0], [-1.0, 1.0], [-0.8, -0.8], [-0.8, 0.8]]]
_ZERO_GRAD = [[[0., 0.], [0., 0.], [0., 0.], [0., 0.]], [[0., 0.], [0., 0.], [0., 0.], [0., 0.]]]
GT_GRID_GRAD = {
    ("bilinear", "zeros", True): [[[-8., -8.], [-8., 0.], [2., 0.], [2., 0.]],
                                  [[2., 0.], [2., 0.], [2., 0.], [2., 0.]]],
    ("bilinear", "zeros", False): [[[-5., -5.], [-5., 5.], [-10., -10.], [-10., 10.]],
                                   [[0., 0.], [0., 0.], [0., 0.], [0., 0.]]],
    ("bilinear", "border", True): [[[-0., -0.], [-0., 0.], [2., 0.], [2., 0.]],
                                   [[0., 0.], [0., 0.], [2., 0.], [2., 0.]]],
    ("bilinear", "border", False): _ZERO_GRAD,
    ("bilinear", "reflection", True): [[[-0., -0.], [-0., 0.], [2., 0.], [2., 0.]],
                                       [[0., 0.], [0., 0.], [2., 0.], [2., 0.]]],
    ("bilinear", "reflection", False): _ZERO_GRAD,
    **{("nearest", pad, ac): _ZERO_GRAD for pad in PADDINGS for ac in (True, False)},
    ("bicubic", "zeros", True): [[[-4.5, -6.], [-4.5, 6.], [2.725679, 0.740878], [2.725679, -0.740878]],
                                 [[1.5, 0.], [1.5, 0.], [1.927921, -0.05688], [1.927921, 0.05688]]],
    ("bicubic", "zeros", False): [[[-5.859375, -5.888672], [-5.859375, 5.888672], [-5.6250, -7.5000], [-5.6250, 7.5000]],
                                  [[-0.234375, -0.263672], [-0.234375, 0.263672], [1.8750, 0.], [1.8750, 0.]]],
    ("bicubic", "border", True): [[[1.5, 0.], [1.5, 0.], [1.74, 0.], [1.74, 0.]],
                                  [[1.5, 0.], [1.5, 0.], [1.74, 0.], [1.74, 0.]]],
    ("bicubic", "border", False): [[[-0.46875, 0.], [-0.46875, 0.], [1.8750, 0.], [1.8750, 0.]],
                                   [[-0.46875, 0.], [-0.46875, 0.], [1.8750, 0.], [1.8750, 0.]]],
    ("bicubic", "reflection", True): [[[0., 0.], [0., 0.], [1.92, 0.], [1.92, 0.]],
                                      [[0., 0.], [0., 0.], [1.92, 0.], [1.92, 0.]]],
    ("bicubic", "reflection", False): [[[0., 0.], [0., 0.], [1.875, 0.], [1.875, 0.]],
                                       [[0., 0.], [0., 0.], [1.875, 0.], [1.875, 0.]]],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS_2D, ids=_ids)
def test_grid_sample_known_input_groundtruth(device, backend, cfg):
    """TestNN.test_grid_sample, "test known input on CPU": PyTorch's fixed 2x5 input and 2x5 grid
    (coordinates outside [-1, 1], on pixel centres and edges), per-mode / per-padding groundtruth,
    both align_corners; in float64 (the test's default dtype) and float32 (its CPU fallback check).
    Project extension: ``"fill"`` with fill value 0 equals the zeros groundtruth."""
    mode, padding_mode, align_corners = cfg
    expected = torch.tensor(GT_OUTPUT[cfg], dtype=torch.float64, device=device).view(1, 1, 2, 5)
    for dtype in (torch.float64, torch.float32):
        x = torch.arange(1., 11, dtype=dtype, device=device).view(1, 1, 2, 5)
        grid = torch.tensor(GT_GRID, dtype=dtype, device=device).view(1, 2, 5, 2)
        out, _, _ = _run(backend, x, grid, mode, padding_mode, align_corners)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, atol=GROUNDTRUTH_ATOL, rtol=0,
                                   msg=lambda m: f"{cfg} {dtype}: {m}")
        if padding_mode == "zeros":
            filled, _, _ = _run(backend, x, grid, mode, "fill", align_corners, fill_value=0.0)
            torch.testing.assert_close(filled.double(), expected, atol=GROUNDTRUTH_ATOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS_2D, ids=_ids)
def test_grid_sample_gradient_edge_case_groundtruth(device, backend, cfg):
    """TestNN.test_grid_sample, "explicit check for gradient edge cases": grid.grad of
    ``grid_sample(arange(0, 5).expand(1, 1, 5, 5), grid).sum()`` on coordinates at +-1 and +-0.8
    against PyTorch's groundtruth, with and without input.requires_grad (PyTorch's backward
    branches on it), float64 and float32. The input is an expanded tensor (stride 0 in H); its
    gradient, where asked, is checked against float64 F.grid_sample."""
    mode, padding_mode, align_corners = cfg
    expected = torch.tensor(GT_GRID_GRAD[cfg], dtype=torch.float64, device=device).view(1, 2, 4, 2)
    for dtype, need_x in itertools.product((torch.float64, torch.float32), (False, True)):
        x = torch.arange(0., 5, dtype=dtype, device=device).expand((1, 1, 5, 5))
        grid = torch.tensor(GT_GRAD_GRID, dtype=dtype, device=device).view(1, 2, 4, 2)
        grad_out = torch.ones(1, 1, 2, 4, dtype=dtype, device=device)  # output.sum().backward()
        _, gx, gg = _run(backend, x, grid, mode, padding_mode, align_corners, grad_out, need_x)
        torch.testing.assert_close(gg.double(), expected, atol=GROUNDTRUTH_ATOL, rtol=0,
                                   msg=lambda m: f"{cfg} {dtype} input_requires_grad={need_x}: {m}")
        if need_x:
            _, rgx, _ = _reference(x, grid, mode, padding_mode, align_corners, grad_out)
            assert_close(gx, rgx, dtype, "grad_input")


ORDERS = [(0, 1, 2, 3), (0, 3, 1, 2), (3, 0, 1, 2), (0, 2, 1, 3)]  # PyTorch's grid_dim_contig_order


def _grid_in_order(n, h, w, order, dtype, device):
    """A (N, H, W, 2) grid whose permute(order) is contiguous (PyTorch's get_grid)."""
    shape = [n, h, w, 2]
    inverse = [order.index(d) for d in range(4)]
    grid = torch.randn([shape[d] for d in order], dtype=dtype, device=device).permute(inverse)
    assert tuple(grid.shape) == tuple(shape) and grid.permute(order).is_contiguous()
    return grid


# PyTorch's test_shape cases: (N, C, IH, IW, H, W), drawn inside PyTorch's random ranges: same size,
# larger output, smaller output, 1x1 input, empty grid, empty channel, empty batch
SHAPES_2D = [(2, 3, 4, 5, 4, 5), (3, 2, 3, 4, 5, 6), (2, 3, 6, 5, 3, 2), (2, 2, 1, 1, 3, 4),
             (2, 3, 4, 4, 0, 5), (2, 0, 4, 3, 3, 5), (0, 3, 4, 4, 3, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS_2D, ids=_ids)
def test_grid_sample_shapes_layouts_and_grads(device, backend, cfg):
    """TestNN.test_grid_sample, its ``test``/``test_shape`` helpers: same-size, larger and smaller
    outputs, a 1x1 input, an empty grid, an empty channel and an empty batch; a non-contiguous input
    (``randn(C, N, IH, IW).transpose(0, 1)``), grids contiguous in each of PyTorch's four dimension
    orders, input_requires_grad False and True, and an expanded input with stride 0 in H ("check that
    zero-dimensional input strides don't error out"). PyTorch compares CPU with CUDA and its CPU
    fallback in float64 (the test's default dtype); here each call's output, grad_input and grad_grid
    are compared with float64 F.grid_sample. On the interpreter each shape takes one grid order and
    one input_requires_grad in turn (all four orders are covered); the PyTorch path takes all."""
    mode, padding_mode, align_corners = cfg
    dt = torch.float64
    for i, (n, c, ih, iw, h, w) in enumerate(SHAPES_2D):
        combos = [(ORDERS[i % 4], i % 2 == 0)] if backend == "triton" else \
            list(itertools.product(ORDERS, (False, True)))
        for order, need_x in combos:
            x = torch.randn(c, n, ih, iw, dtype=dt, device=device).transpose(0, 1)
            grid = _grid_in_order(n, h, w, order, dt, device)
            _compare(backend, x, grid, mode, padding_mode, align_corners, need_x)
    x = torch.randn(2, 3, 1, 5, dtype=dt, device=device).expand(2, 3, 4, 5)
    _compare(backend, x, _grid_in_order(2, 3, 4, ORDERS[1], dt, device), mode, padding_mode, align_corners)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS_2D, ids=_ids)
def test_grid_sample_gradcheck(device, backend, cfg):
    """TestNN.test_grid_sample, "do gradcheck": gradcheck of grid_sample in float64 with
    ``input = randn(N, C, H, W)``, ``grid = randn(N, H, W, 2)``, input_requires_grad False and True.
    Sizes at the low end of PyTorch's ranges. On the interpreter: gradcheck's fast mode (one random
    projection instead of the full Jacobian), and only input_requires_grad=True (the grid-only
    backward is checked against float64 in test_grid_sample_shapes_layouts_and_grads)."""
    mode, padding_mode, align_corners = cfg
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, device=device)
    grid = torch.randn(2, 3, 4, 2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(inp, grd):
        return stn_triton.grid_sample(inp, grd, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    with stn_triton.use_backend(backend):
        for need_x in ((True,) if backend == "triton" else (False, True)):
            assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(need_x), grid),
                                            fast_mode=backend == "triton")


# ----------------------------------------------------------------------------- TestNN.test_grid_sample_3d

# (N, C, ID, IH, IW, D, H, W) inside PyTorch's ranges: same size, larger, smaller, 1x1x1 input, empty
# grid, empty channel, empty batch
SHAPES_3D = [(2, 2, 3, 2, 4, 3, 2, 4), (2, 2, 2, 3, 2, 3, 4, 3), (2, 3, 4, 3, 3, 2, 2, 3),
             (2, 2, 1, 1, 1, 2, 3, 2), (2, 2, 3, 2, 3, 3, 0, 3), (2, 0, 2, 3, 2, 3, 3, 3),
             (0, 2, 3, 2, 3, 3, 3, 3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS_3D, ids=_ids)
def test_grid_sample_3d(device, backend, cfg):
    """TestNN.test_grid_sample_3d: its test_shape cases (same size, larger, smaller, 1x1x1 input,
    empty grid, empty channel, empty batch) with a non-contiguous input (``randn(C, N, ...)
    .transpose(0, 1)``) and grid (``randn(D, N, H, W, 3).transpose(0, 1)``), input_requires_grad
    False and True, and an input expanded in D (stride 0); compared with float64 F.grid_sample. Then
    PyTorch's gradcheck of (input, grid) and of grid alone, in gradcheck's fast mode (one random
    projection of the Jacobian: the full one costs seconds per case even on the PyTorch path)."""
    mode, padding_mode, align_corners = cfg
    dt = torch.float64
    for i, (n, c, id_, ih, iw, d, h, w) in enumerate(SHAPES_3D):
        for need_x in ((i % 2 == 0,) if backend == "triton" else (False, True)):
            x = torch.randn(c, n, id_, ih, iw, dtype=dt, device=device).transpose(0, 1)
            grid = torch.randn(d, n, h, w, 3, dtype=dt, device=device).transpose(0, 1)
            _compare(backend, x, grid, mode, padding_mode, align_corners, need_x)
    x = torch.randn(2, 2, 1, 3, 4, dtype=dt, device=device).expand(2, 2, 3, 3, 4)
    _compare(backend, x, torch.randn(2, 2, 3, 2, 3, dtype=dt, device=device), mode, padding_mode, align_corners)

    inp = torch.randn(2, 2, 2, 3, 2, dtype=dt, device=device, requires_grad=True)
    grid = torch.randn(2, 2, 3, 2, 3, dtype=dt, device=device, requires_grad=True)
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, g: stn_triton.grid_sample(a, g, mode=mode, padding_mode=padding_mode,
                                                align_corners=align_corners), (inp, grid), fast_mode=True)
        fixed = inp.detach()
        assert torch.autograd.gradcheck(
            lambda g: stn_triton.grid_sample(fixed, g, mode=mode, padding_mode=padding_mode,
                                             align_corners=align_corners), (grid,), fast_mode=True)


# ----------------------------------------------------------------------------- error checking


def test_grid_sample_error_checking(device):
    """TestNN.test_grid_sample_error_checking, mapped to this project's contract: a ValueError /
    TypeError whose message names the offending argument (PyTorch: ValueError for the strings,
    RuntimeError from C++ for the rest)."""
    inp = torch.empty(1, 1, 2, 2, device=device)
    grid = torch.empty(1, 1, 1, 2, device=device)
    out = stn_triton.grid_sample(inp.zero_(), grid.zero_(), align_corners=False)  # "assert no error"
    assert out.shape == (1, 1, 1, 1)

    cases = [  # (kwargs, error, [substrings of the message]); PyTorch's expected message in the comment
        (dict(input=inp, grid=grid, mode="garbage"), ValueError, ["mode", "'garbage'"]),  # but got: 'garbage'
        (dict(input=inp, grid=grid, padding_mode="garbage"), ValueError, ["padding_mode", "'garbage'"]),
        # expected grid to have size 1 in last dimension (a 3-D input)
        (dict(input=inp[0], grid=grid), ValueError, ["input", "4-D", "(1, 2, 2)"]),
        # expected grid to have size 2 in last dimension (a 5-D grid for a 4-D input)
        (dict(input=inp, grid=torch.empty(1, 1, 1, 1, 3, device=device)), ValueError, ["grid", "(1, 1, 1, 1, 3)"]),
        # expected grid and input to have same batch size
        (dict(input=inp, grid=torch.empty(2, 1, 1, 2, device=device)), ValueError, ["grid", "batch size"]),
        # expected grid to have size 2 in last dimension
        (dict(input=inp, grid=torch.empty(1, 1, 1, 3, device=device)), ValueError, ["grid", "(1, 1, 1, 3)"]),
        # expected input to have non-empty spatial dimensions
        (dict(input=torch.empty(1, 1, 0, 2, device=device), grid=grid), ValueError, ["input", "(1, 1, 0, 2)"]),
        # bicubic interpolation only supports 4D input
        (dict(input=torch.empty(1, 1, 2, 2, 2, device=device), grid=torch.empty(1, 1, 1, 1, 3, device=device),
              mode="bicubic"), ValueError, ["bicubic", "volumes"]),
    ]
    # Expected all tensors to be on the same device (PyTorch: input on CUDA, grid on CPU); on a CPU
    # machine the grid goes to the "meta" device instead
    other = "cpu" if DEVICE == "cuda" else "meta"
    cases.append((dict(input=inp, grid=grid.to(other)), ValueError, ["grid", other]))
    for kwargs, err, parts in cases:
        with pytest.raises(err) as info:
            stn_triton.grid_sample(**kwargs)
        for part in parts:
            assert part in str(info.value), (kwargs.keys(), str(info.value))


# ----------------------------------------------------------------------------- nearest rounding


def _normalize(indices, size, align_corners):
    """PyTorch's normalize_indices: unnormalised pixel indices to grid coordinates."""
    if align_corners:
        return 2 * indices / (size - 1) - 1
    return (indices * 2 + 1) / size - 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_nearest_neighbor_rounding_mode_consistency(device, backend, padding_mode, align_corners):
    """TestNN.test_grid_sample_nearest_neighbor_rounding_mode_consistency: nearest sampling of a 1-D
    profile (length 10) at unnormalised indices 0, 0.1, ..., 9.0 (exact .5 ties included) along x and
    y of a 2-D image and x, y and z of a volume gives exactly the same values (PyTorch's assert,
    atol=rtol=0). Added: away from the ties (|frac - 0.5| > 0.01), the values equal float64
    F.grid_sample's (at a tie PyTorch itself says either side may win)."""
    test_dim, other_dim, step = 10, 9, 0.1
    unnorm = torch.arange(0, test_dim - 1 + step, step, dtype=torch.float32, device=device)
    queries = _normalize(unnorm, test_dim, align_corners)
    k = queries.shape[0]
    fixed = torch.full((k,), 0.5, dtype=torch.float32, device=device)
    data = torch.rand(test_dim, dtype=torch.float32, device=device)

    in_2d_x = data.reshape(1, test_dim).repeat(1, 1, other_dim, 1)  # (1, 1, 9, 10)
    grid_2d_x = torch.cat((queries.reshape(k, 1), fixed.reshape(k, 1)), dim=1).repeat(1, 1, 1, 1)
    in_3d_x = data.reshape(1, test_dim).repeat(1, 1, other_dim, other_dim, 1)  # (1, 1, 9, 9, 10)
    grid_3d_x = torch.cat((queries.reshape(k, 1), fixed.reshape(k, 1), fixed.reshape(k, 1)), dim=1).repeat(1, 1, 1, 1, 1)
    cases = {
        "2d_y": (torch.transpose(in_2d_x, 3, 2), grid_2d_x[..., [1, 0]]),
        "3d_x": (in_3d_x, grid_3d_x),
        "3d_y": (torch.transpose(in_3d_x, 4, 3), grid_3d_x[..., [1, 0, 2]]),
        "3d_z": (torch.transpose(in_3d_x, 4, 2), grid_3d_x[..., [1, 2, 0]]),
    }
    with stn_triton.use_backend(backend):
        out_2d_x = stn_triton.grid_sample(in_2d_x, grid_2d_x, "nearest", padding_mode, align_corners)
        base = out_2d_x[0, 0, 0, :]
        for name, (inp, grid) in cases.items():
            out = stn_triton.grid_sample(inp, grid, "nearest", padding_mode, align_corners)
            assert torch.equal(base, out.reshape(-1)), name
    off_tie = ((unnorm - unnorm.floor()) - 0.5).abs() > 0.01
    ref = F.grid_sample(in_2d_x.double(), grid_2d_x.double(), "nearest", padding_mode, align_corners)[0, 0, 0]
    assert off_tie.sum() > 60
    assert torch.equal(base[off_tie].double(), ref[off_tie])


# ----------------------------------------------------------------------------- non-finite coordinates


NONFINITE_GRID = [[[[NAN, 0], [0, INF], [-INF, 0.3], [0.2, -0.4]]]]  # three non-finite points, then a finite one


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy inside the interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_nan_inf(device, backend, dtype):
    """TestNNDeviceType.test_grid_sample_nan_inf: nearest sampling of a zero 3x3 image at
    (nan, 0) and (0, inf) gives zeros in every padding mode (PyTorch's case, as is).

    Then the project's own rule, which PyTorch does not promise (its output for a non-finite
    coordinate with a non-zero image may be NaN or a border / reflected value, and its CPU backward
    has read out of bounds there): with a non-zero image, every mode and padding, a non-finite
    coordinate samples exactly 0 and gets zero gradient, and every output and gradient is finite.
    The same rule with ``padding_mode="fill"`` is test_grid_sample_nan_inf_fill."""
    x = torch.zeros(1, 1, 3, 3, dtype=dtype, device=device)
    grid = torch.tensor([[[[NAN, 0], [0, INF]]]], dtype=dtype, device=device)
    for padding_mode in PADDINGS:
        out, _, _ = _run(backend, x, grid, "nearest", padding_mode, False)
        assert torch.equal(out, torch.zeros(1, 1, 1, 2, dtype=dtype, device=device)), padding_mode

    x = torch.rand(1, 2, 3, 3, dtype=dtype, device=device) + 1
    grid = torch.tensor(NONFINITE_GRID, dtype=dtype, device=device)
    for mode, padding_mode in itertools.product(MODES_2D, PADDINGS):
        grad_out = torch.ones(1, 2, 1, 4, dtype=dtype, device=device)
        out, gx, gg = _run(backend, x, grid, mode, padding_mode, False, grad_out)
        assert not out[0, :, 0, :3].any(), (mode, padding_mode)
        assert not gg[0, 0, :3].any(), (mode, padding_mode)
        assert out[0, :, 0, 3].abs().min() > 0  # the finite coordinate samples the image
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gg).all()




@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_nan_inf_fill(device, backend, dtype):
    """TestNNDeviceType.test_grid_sample_nan_inf, extended to the project's ``"fill"`` padding: a
    non-finite coordinate samples exactly the fill value (documented in grid_sample's contract), with
    zero gradient for the grid and the whole gradient for the fill value."""
    x = torch.rand(1, 2, 3, 3, dtype=dtype, device=device) + 1
    grid = torch.tensor(NONFINITE_GRID, dtype=dtype, device=device)
    for mode in MODES_2D:
        fill = torch.tensor([0.7, -1.3], dtype=dtype, device=device, requires_grad=True)
        xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
        with stn_triton.use_backend(backend):
            out = stn_triton.grid_sample(xs, gs, mode, "fill", False, fill_value=fill)
            gx, gg, gf = torch.autograd.grad(out, [xs, gs, fill], torch.ones_like(out))
        assert not gg[0, 0, :3].any(), mode
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gf).all()
        for j in range(3):
            assert torch.equal(out[0, :, 0, j], fill.detach()), (mode, j, out[0, :, 0, j].tolist())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_sample_nan_inf_fill_3d(device, backend):
    """The same rule for volumes: one non-finite axis of three, the others fractional, reads exactly
    the fill value (the project's contract; PyTorch has no fill padding)."""
    x = torch.rand(1, 2, 3, 4, 5, device=device) + 1
    grid = torch.tensor([[[[[NAN, 0.3, -0.41], [0.17, INF, 0.33], [0.29, -0.61, -INF], [0.1, 0.2, 0.3]]]]],
                        device=device)
    fill = torch.tensor([0.7, -1.3], device=device)
    for mode in MODES_3D:
        with stn_triton.use_backend(backend):
            out = stn_triton.grid_sample(x, grid, mode, "fill", True, fill_value=fill)
        for j in range(3):
            assert torch.equal(out[0, :, 0, 0, j], fill), (mode, j, out[0, :, 0, 0, j].tolist())
        assert not torch.equal(out[0, :, 0, 0, 3], fill)


# ----------------------------------------------------------------------------- TestNNDeviceType.test_grid_sample_large


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_sample_large(device, backend):
    """TestNNDeviceType.test_grid_sample_large (CUDA-only in PyTorch; here both backends):

    * issue 35202: coordinates of ~1e7 on a 480x640 image sample 0 and the backward runs;
    * issue 24823 (1): a 3x3x3 volume sampled on its own identity grid with one coordinate set to inf
      gives the volume with that voxel 0, and the input gradient ones with that voxel 0 (half, float,
      double; PyTorch's atol 0.005 for half and for the gradient);
    * issue 24823 (2): theta scaled by -1e20 through affine_grid samples 0 -- also through
      ``stn_triton.warp`` with that theta, whose gradients must be finite.
    """
    inp = torch.rand(1, 1, 480, 640, dtype=torch.float, device=device)
    coords = torch.tensor([[-10059144, 67680944], [67680944, 67680944]], dtype=torch.float, device=device)
    coords = coords.unsqueeze(0).unsqueeze(0).repeat(1, 1, 1, 1)
    out, gx, gg = _run(backend, inp, coords, "bilinear", "zeros", False, torch.ones(1, 1, 1, 2, device=device))
    assert torch.equal(out, torch.zeros(1, 1, 1, 2, device=device))
    assert not gx.any() and torch.isfinite(gg).all()

    for dtype in (torch.half, torch.float, torch.double):
        image = torch.arange(27, 0, -1, dtype=dtype, device=device).view(1, 1, 3, 3, 3)
        theta = torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]], dtype=dtype, device=device)
        grid = F.affine_grid(theta, (1, 1, 3, 3, 3), align_corners=False)
        grid[:, 1, 1, 1, 0] = INF
        grad_out = torch.ones(1, 1, 3, 3, 3, dtype=dtype, device=device)
        out, gx, _ = _run(backend, image, grid, "bilinear", "zeros", False, grad_out)
        expected = torch.tensor([[[[[27., 26., 25.], [24., 23., 22.], [21., 20., 19.]],
                                   [[18., 17., 16.], [15., 0., 13.], [12., 11., 10.]],
                                   [[9., 8., 7.], [6., 5., 4.], [3., 2., 1.]]]]], dtype=dtype, device=device)
        tol = {"atol": 0.005, "rtol": 0} if dtype == torch.half else {}
        torch.testing.assert_close(out, expected, **tol)
        expected_grad = torch.ones_like(image)
        expected_grad[0, 0, 1, 1, 1] = 0
        torch.testing.assert_close(gx, expected_grad, atol=0.005, rtol=0)

    param = torch.tensor([[[-1.0e+20, 0.0, 0.0], [0.0, -1.0e+20, 0.0]]], dtype=torch.float, device=device)
    img = torch.zeros((1, 1, 4, 4), dtype=torch.float, device=device)
    grid = F.affine_grid(param, img.size(), align_corners=False)
    out, _, _ = _run(backend, img, grid, "bilinear", "zeros", False)
    assert torch.equal(out, torch.zeros(1, 1, 4, 4, device=device))
    xs, ts = torch.rand_like(img).requires_grad_(), param.clone().requires_grad_()
    with stn_triton.use_backend(backend):
        warped = stn_triton.warp(xs, ts)
        gx, gt = torch.autograd.grad(warped, [xs, ts], torch.ones_like(warped))
    assert torch.equal(warped, torch.zeros_like(warped))
    assert not gx.any() and torch.isfinite(gt).all()


# ----------------------------------------------------------------------------- half / bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bfloat16"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_half_and_bfloat16_precision(device, backend, dtype, align_corners):
    """TestNNDeviceType.test_grid_sample_half_precision / test_grid_sample_bfloat16_precision (CUDA-only
    in PyTorch): data and grid in half / bfloat16 (grid = rand * 2 - 1), every mode (bicubic on 4-D
    only), zeros padding, 4-D and 5-D, against the float64 computation on the same values. Sizes
    reduced from (32, 64, 16, 16) -> (32, 8, 8) and (32, 64, 16, 16, 16) -> (32, 8, 8, 8), keeping the
    input-to-output ratio; gradients (input and grid) compared too, under the project's tolerances."""
    for shape_in, shape_out in (((2, 4, 8, 8), (2, 4, 4, 2)), ((2, 3, 6, 6, 6), (2, 3, 3, 3, 3))):
        for mode in MODES_2D:
            if len(shape_in) != 4 and mode == "bicubic":
                continue
            data = torch.randn(shape_in, device=device, dtype=dtype)
            grid = torch.rand(shape_out, device=device, dtype=dtype) * 2.0 - 1.0
            grad_out = torch.randn(shape_in[:2] + shape_out[1:-1], device=device, dtype=dtype)
            out, gx, gg = _run(backend, data, grid, mode, "zeros", align_corners, grad_out)
            assert out.dtype == dtype and gx.dtype == dtype and gg.dtype == dtype
            ref, rgx, rgg = _reference(data, grid, mode, "zeros", align_corners, grad_out)
            assert_close(out, ref, dtype, f"{mode} {len(shape_in)}-D forward")
            assert_close(gx, rgx, dtype, f"{mode} {len(shape_in)}-D grad_input")
            assert_close_param_grad(gg, rgg, dtype, f"{mode} {len(shape_in)}-D grad_grid")


# ----------------------------------------------------------------------------- 64-bit indexing


def _strided_view_case(backend, im, coords, modes):
    """PyTorch's "compare sampling with large strides to the same op on a contiguous tensor"."""
    large_view = im[..., 127::128]
    small_image = torch.rand_like(large_view)
    large_view[...] = small_image
    for mode, padding_mode, align_corners in itertools.product(modes, PADDINGS, (True, False)):
        grad_out = torch.ones(im.shape[:2] + coords.shape[1:-1], dtype=im.dtype, device=im.device)
        a, ga, gca = _run(backend, small_image, coords, mode, padding_mode, align_corners, grad_out)
        b, gb, gcb = _run(backend, large_view, coords, mode, padding_mode, align_corners, grad_out)
        assert_close(a, b, im.dtype, f"{mode} {padding_mode} {align_corners} forward")
        assert_close(ga, gb, im.dtype, f"{mode} {padding_mode} {align_corners} grad_input")
        assert_close_param_grad(gca, gcb, im.dtype, "grad_grid")
        ref, _, _ = _reference(small_image, coords, mode, padding_mode, align_corners)
        assert_close(b, ref, im.dtype, "forward vs float64")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_large_index_2d_strided_view(device, backend, dtype):
    """TestNNDeviceType.test_grid_sample_large_index_2d at a reduced size: the strided view
    ``im[..., 127::128]`` (W stride 128) sampled like its contiguous copy, every mode, padding and
    align_corners, values and gradients. The full-size case (a 32769 x 65536 image, 64-bit offsets) is
    test_grid_sample_large_index_2d below, GPU only."""
    im = torch.zeros([1, 1, 5, 6 * 128], device=device, dtype=dtype)
    coords = torch.rand(1, 4, 4, 2, device=device, dtype=dtype)
    _strided_view_case(backend, im, coords, MODES_2D)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_large_index_3d_strided_view(device, backend, dtype):
    """TestNNDeviceType.test_grid_sample_large_index_3d at a reduced size: PyTorch's corner sampling
    (all coordinates 1) of a zero volume gives zeros, and the strided view ``im[..., 127::128]`` samples
    like its contiguous copy (bilinear and nearest, every padding and align_corners)."""
    im = torch.zeros([1, 1, 2, 5, 4 * 128], device=device, dtype=dtype)
    corners = torch.full((1, 2, 2, 2, 3), 1., device=device, dtype=dtype)
    out, _, _ = _run(backend, im, corners, "bilinear", "zeros", False)
    assert torch.equal(out, torch.zeros((1, 1, 2, 2, 2), device=device, dtype=dtype))
    coords = torch.rand(1, 1, 4, 4, 3, device=device, dtype=dtype)
    _strided_view_case(backend, im, coords, MODES_3D)


def _needs_gpu_memory(nbytes):
    if not ON_GPU:
        pytest.skip("64-bit indexing case of many GiB: GPU only (STN_TEST_CUDA=1). On CPU the torch backend "
                    "would need the same memory, and an out-of-bounds read under the Triton interpreter "
                    "would crash the test process")
    if not torch.cuda.is_available() or torch.cuda.mem_get_info()[0] < nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free GPU memory")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_large_index_2d(device, dtype):
    """TestNNDeviceType.test_grid_sample_large_index_2d at full size on the Triton kernels (GPU only):
    a 32769 x 65536 image, whose strided view ``im[..., 127::128]`` needs 64-bit offsets, sampled like
    its contiguous copy with every mode, padding and align_corners (values and gradients)."""
    esize = torch.tensor([], dtype=dtype).element_size()
    _needs_gpu_memory(int(32769 * (65536 + 3 * 65536 / 128) * esize * 1.1))
    im = torch.zeros([1, 1, 32769, 65536], device=device, dtype=dtype)
    view = im[..., 127::128]
    assert sum(i * s for i, s in zip(view.size(), view.stride())) >= 2 ** 31, "view must use 64-bit indexing"
    with stn_triton.use_backend("triton"):
        _strided_view_case("triton", im, torch.rand(1, 4, 4, 2, device=device, dtype=dtype), MODES_2D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_sample_large_index_3d(device, dtype):
    """TestNNDeviceType.test_grid_sample_large_index_3d at full size on the Triton kernels (GPU only):
    corner sampling of a 2 x 32769 x 32768 zero volume gives zeros; its strided view samples like its
    contiguous copy."""
    esize = torch.tensor([], dtype=dtype).element_size()
    _needs_gpu_memory(int(2 * 32769 * (32768 + 3 * 32768 / 128) * esize * 1.1))
    im = torch.zeros([1, 1, 2, 32769, 32768], device=device, dtype=dtype)
    corners = torch.full((1, 2, 2, 2, 3), 1., device=device, dtype=dtype)
    out, _, _ = _run("triton", im, corners, "bilinear", "zeros", False)
    assert torch.equal(out, torch.zeros((1, 1, 2, 2, 2), device=device, dtype=dtype))
    view = im[..., 127::128]
    assert sum(i * s for i, s in zip(view.size(), view.stride())) >= 2 ** 31, "view must use 64-bit indexing"
    _strided_view_case("triton", im, torch.rand(1, 1, 4, 4, 3, device=device, dtype=dtype), MODES_3D)


# ----------------------------------------------------------------------------- affine_grid cases, through warp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_grid_groundtruth_through_warp(device, backend, align_corners):
    """TestNN.test_affine_grid and test_affine_grid_3d: PyTorch's groundtruth grids of
    ``affine_grid(arange(1, 7).view(1, 2, 3), (1, 1, 2, 2))`` and ``affine_grid(arange(1, 13).view(1, 3,
    4), (1, 1, 2, 2, 2))``. ``warp`` builds no grid tensor, so the grid is checked through sampling:
    ``warp(x, theta)`` equals float64 ``F.grid_sample(x, groundtruth_grid)`` with reflection padding
    (the groundtruth coordinates reach 42, far outside [-1, 1], where zeros padding would hide them),
    every mode. Then PyTorch's gradcheck of affine_grid becomes warp's gradients (input and theta)
    against float64 affine_grid + grid_sample, and PyTorch's empty-span warning case (a size-1 output
    axis with align_corners=True) a comparison with the reference."""
    gt2 = {True: [[[0., -3.], [2., 5.]], [[4., 7.], [6., 15.]]],
           False: [[[1.5, 1.5], [2.5, 5.5]], [[3.5, 6.5], [4.5, 10.5]]]}[align_corners]
    gt3 = {True: [[[[[-2., -10., -18.], [0., 0., 0.]], [[2., 2., 2.], [4., 12., 20.]]],
                   [[[4., 4., 4.], [6., 14., 22.]], [[8., 16., 24.], [10., 26., 42.]]]]],
           False: [[[[[1., -1., -3.], [2., 4., 6.]], [[3., 5., 7.], [4., 10., 16.]]],
                    [[[4., 6., 8.], [5., 11., 17.]], [[6., 12., 18.], [7., 17., 27.]]]]]}[align_corners]
    grid2 = torch.tensor(gt2, dtype=torch.float64, device=device).view(1, 2, 2, 2)
    grid3 = torch.tensor(gt3, dtype=torch.float64, device=device).view(1, 2, 2, 2, 3)
    theta2 = torch.arange(1., 7, dtype=torch.float64, device=device).view(1, 2, 3)
    theta3 = torch.arange(1., 13, dtype=torch.float64, device=device).view(1, 3, 4)
    for dtype in (torch.float64, torch.float32):
        for x, theta, grid, modes in ((torch.randn(1, 2, 3, 4, dtype=dtype, device=device), theta2, grid2, MODES_2D),
                                      (torch.randn(1, 2, 3, 4, 5, dtype=dtype, device=device), theta3, grid3, MODES_3D)):
            for mode in modes:
                with stn_triton.use_backend(backend):
                    out = stn_triton.warp(x, theta.to(dtype), tuple(grid.shape[1:-1]), mode=mode,
                                          padding_mode="reflection", align_corners=align_corners)
                ref = F.grid_sample(x.double(), grid, mode, "reflection", align_corners)
                assert_close(out, ref, dtype, f"{mode} {x.dim()}-D")

    for x, theta, size in ((torch.randn(2, 3, 4, 5, device=device), torch.randn(2, 2, 3, device=device), (3, 4)),
                           (torch.randn(1, 2, 3, 2, 4, device=device), torch.randn(1, 3, 4, device=device), (2, 3, 2)),
                           (torch.randn(1, 2, 3, 4, device=device), torch.randn(1, 2, 3, device=device), (2, 1))):
        grad_out = torch.randn(x.shape[0], x.shape[1], *size, device=device)
        xs, ts = x.clone().requires_grad_(), theta.clone().requires_grad_()
        with stn_triton.use_backend(backend):
            out = stn_triton.warp(xs, ts, size, align_corners=align_corners)
            gx, gt = torch.autograd.grad(out, [xs, ts], grad_out)
        x64, t64 = x.double().requires_grad_(), theta.double().requires_grad_()
        with pytest.warns(UserWarning) if (align_corners and 1 in size) else contextlib.nullcontext():
            rgrid = F.affine_grid(t64, (x.shape[0], x.shape[1], *size), align_corners=align_corners)
        ref = F.grid_sample(x64, rgrid, align_corners=align_corners)
        rgx, rgt = torch.autograd.grad(ref, [x64, t64], grad_out.double())
        assert_close(out, ref, torch.float32, f"{size} forward")
        assert_close(gx, rgx, torch.float32, f"{size} grad_x")
        assert_close_param_grad(gt, rgt, torch.float32, f"{size} grad_theta")


@pytest.mark.parametrize("nd", [2, 3])
def test_affine_grid_backward_cl_cf_consistency(device, nd):
    """TestNN.test_affine_grid_backward_cl_cf_consistency (PyTorch issue 124154): the gradient with
    respect to theta is the same for a channels_last and a contiguous incoming gradient. PyTorch's
    incoming gradient is the grid's; ``warp`` has no grid, so here it is the warped output's
    (theta = rand(6, nd, nd + 1), size (6, 3, 4, 5[, 5]) as in PyTorch), on both backends, and also
    against float64 affine_grid + grid_sample."""
    theta = torch.rand([6, nd, nd + 1], device=device)
    size = [6, 3, 4, 5] if nd == 2 else [6, 3, 4, 5, 5]
    x = torch.randn(size, device=device)
    memory_format = torch.channels_last if nd == 2 else torch.channels_last_3d
    grad = torch.rand(size, device=device)
    for backend in BACKENDS:
        grads = []
        for g in (grad.contiguous(memory_format=memory_format), grad):
            ts = theta.clone().requires_grad_()
            with stn_triton.use_backend(backend):
                out = stn_triton.warp(x, ts, size[2:])
                grads.append(torch.autograd.grad(out, ts, g)[0])
        assert_close_param_grad(grads[0], grads[1], torch.float32, f"{backend} channels_last vs contiguous")
        _, rgt = _warp_reference_grads(x, theta, size[2:], grad)
        assert_close_param_grad(grads[1], rgt, torch.float32, f"{backend} vs float64")


def _warp_reference_grads(x, theta, size, grad_out):
    x64, t64 = x.double().requires_grad_(), theta.double().requires_grad_()
    grid = F.affine_grid(t64, (x.shape[0], x.shape[1], *size), align_corners=False)
    out = F.grid_sample(x64, grid, align_corners=False)
    return torch.autograd.grad(out, [x64, t64], grad_out.double())


def test_affine_grid_error_checking_through_warp(device):
    """TestNN.test_affine_grid_error_checking, mapped to ``warp``'s theta / x / size contract (a
    ValueError or TypeError naming the argument; PyTorch: ValueError / NotImplementedError from
    affine_grid). PyTorch's empty-span warning case is in test_affine_grid_groundtruth_through_warp."""
    x = torch.randn(1, 1, 2, 2, device=device)
    theta = torch.zeros(1, 2, 3, dtype=torch.double, device=device)
    assert stn_triton.warp(x.double(), theta).shape == (1, 1, 2, 2)  # "assert no error"
    v = torch.randn(1, 1, 2, 2, 2, device=device)
    theta3 = torch.zeros(1, 3, 4, dtype=torch.double, device=device)
    assert stn_triton.warp(v.double(), theta3).shape == (1, 1, 2, 2, 2)
    cases = [
        ((x, theta.int()), TypeError, ["theta", "floating-point"]),  # Expected theta to have floating point type
        # Expected a batch of 2D affine matrices of shape Nx2x3
        ((x, theta[0]), ValueError, ["theta", "(2, 3)"]),
        ((x, theta.unsqueeze(0)), ValueError, ["theta", "(1, 1, 2, 3)"]),
        ((x, theta.repeat(1, 2, 1)), ValueError, ["theta", "(1, 4, 3)"]),
        ((x, theta.repeat(1, 1, 2)), ValueError, ["theta", "(1, 2, 6)"]),
        # Expected a batch of 3D affine matrices of shape Nx3x4
        ((v, theta3[0]), ValueError, ["theta", "(3, 4)"]),
        ((v, theta3.unsqueeze(0)), ValueError, ["theta", "(1, 1, 3, 4)"]),
        ((v, theta3.repeat(1, 2, 1)), ValueError, ["theta", "(1, 6, 4)"]),
        ((v, theta3.repeat(1, 1, 2)), ValueError, ["theta", "(1, 3, 8)"]),
        # affine_grid only supports 4D and 5D sizes: x of 3 or 6 dimensions, or a size of the wrong length
        ((torch.randn(1, 2, 2, device=device), theta3), ValueError, ["x", "(1, 2, 2)"]),
        ((torch.randn(1, 1, 2, 2, 2, 2, device=device), theta3), ValueError, ["x", "(1, 1, 2, 2, 2, 2)"]),
        ((x, theta, (2, 2, 2)), ValueError, ["size", "(2, 2, 2)"]),
        ((v, theta3, (2, 2)), ValueError, ["size", "(2, 2)"]),
    ]
    for args, err, parts in cases:
        with pytest.raises(err) as info:
            stn_triton.warp(*args)
        for part in parts:
            assert part in str(info.value), (part, str(info.value))


# ----------------------------------------------------------------------------- affine rotations, through warp

ANGLES = [r * math.pi * 2 for r in [0.0, 0.5, 0.25, 0.125, random.Random(0).random()]]  # PyTorch's angle_rad_()
INPUT_2D = [[1, 1, 3, 5], [1, 1, 3, 3], [1, 1, 4, 4], [1, 1, 3, 4]]
OUTPUT_2D = [[1, 1, 5, 3], [1, 1, 3, 5], [1, 1, 4, 3], [1, 1, 5, 5], [1, 1, 6, 6]]
INPUT_2DSQ = [[1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 4, 4], [1, 1, 6, 6]]
OUTPUT_2DSQ = [[1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 4, 4], [1, 1, 5, 5], [1, 1, 6, 6]]
INPUT_3D = [[1, 1, 2, 2, 2], [1, 1, 2, 3, 4], [1, 1, 3, 3, 3], [1, 1, 4, 4, 4], [1, 1, 3, 4, 5]]
OUTPUT_3D = [[1, 1, 2, 2, 2], [1, 1, 3, 3, 3], [1, 1, 3, 4, 5], [1, 1, 4, 3, 2], [1, 1, 5, 5, 5], [1, 1, 6, 6, 6]]


def _rotation_2d(angles, device):
    """PyTorch's _buildEquivalentAffineTransforms2d transform_tensor, one row per angle: [[c, -s, 0], [s, c, 0]]
    (float32)."""
    c, s = torch.cos(torch.tensor(angles, dtype=torch.float64)), torch.sin(torch.tensor(angles, dtype=torch.float64))
    z = torch.zeros_like(c)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1).to(device, torch.float32)


def _rotation_3d(angle, axis):
    """PyTorch's _buildEquivalentAffineTransforms3d transform_tensor (torchRotation_ary[:3], float32)."""
    s, c = math.sin(angle), math.cos(angle)
    c1 = 1 - c
    z, y, x = axis
    return torch.tensor([[x * x * c1 + c, y * x * c1 - z * s, z * x * c1 + y * s, 0],
                         [x * y * c1 + z * s, y * y * c1 + c, z * y * c1 - x * s, 0],
                         [x * z * c1 - y * s, y * z * c1 + x * s, z * z * c1 + c, 0]], dtype=torch.float64).float()


def _border_warp(backend, x, theta, size):
    """PyTorch's rotation tests sample with padding_mode='border', align_corners=True (bilinear)."""
    with stn_triton.use_backend(backend):
        out = stn_triton.warp(x, theta.to(x.device), size, padding_mode="border", align_corners=True)
    grid = F.affine_grid(theta.to(x.device).double(), (x.shape[0], x.shape[1], *size), align_corners=True)
    ref = F.grid_sample(x.double(), grid, "bilinear", "border", True)
    assert_close(out, ref, torch.float32, f"warp {tuple(x.shape)} -> {size}")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_2d_rotations(device, backend):
    """TestNNDeviceType.test_affine_2d_rotate0 / rotate90 / rotate45 / rotateRandom, through ``warp``
    (PyTorch compares ``grid_sample(x, affine_grid(rotation))`` with scipy.ndimage.affine_transform,
    which is not installed here; the reference is float64 affine_grid + grid_sample, border padding,
    align_corners=True, as in PyTorch). rotate90 keeps PyTorch's explicit corner properties
    (out[0, 0] = in[0, -1], ...), and the mean for equal sizes; rotate45 keeps its hand-built input;
    rotateRandom its corner values 2, 4, 6, 8, every angle of PyTorch's angle_rad_() (batched per size
    pair) and its input / output size lists."""
    # rotate0: a random 3x3 image to 5x5
    _border_warp(backend, torch.rand(1, 1, 3, 3, device=device), _rotation_2d([0.0], device), (5, 5))
    # rotate90: square sizes
    for in_size, out_size in itertools.product(INPUT_2DSQ, OUTPUT_2DSQ):
        x = torch.rand(in_size, device=device)
        out = _border_warp(backend, x, _rotation_2d([0.25 * math.pi * 2], device), tuple(out_size[2:]))[0, 0]
        if in_size == out_size:
            torch.testing.assert_close(out.mean(), x.mean(), atol=1e-5, rtol=1e-5)
        for got, want in ((out[0, 0], x[0, 0, 0, -1]), (out[0, -1], x[0, 0, -1, -1]),
                          (out[-1, -1], x[0, 0, -1, 0]), (out[-1, 0], x[0, 0, 0, 0])):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # rotate45: PyTorch's hand-built 3x3 input
    x = torch.zeros(1, 1, 3, 3, device=device)
    x[0, 0, 0, :] = 0.5
    x[0, 0, 2, 2] = 1.0
    _border_warp(backend, x, _rotation_2d([0.125 * math.pi * 2], device), (3, 3))
    # rotateRandom: every angle (a batch), every input / output size pair
    thetas = _rotation_2d(ANGLES, device)
    for in_size, out_size in itertools.product(INPUT_2D, OUTPUT_2D):
        x = torch.rand(in_size, device=device).round(decimals=3)
        x[0, 0, 0, 0], x[0, 0, 0, -1], x[0, 0, -1, 0], x[0, 0, -1, -1] = 2, 4, 6, 8
        _border_warp(backend, x.expand(len(ANGLES), -1, -1, -1), thetas, tuple(out_size[2:]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_3d_rotateRandom(device, backend):
    """TestNNDeviceType.test_affine_3d_rotateRandom, through ``warp`` on volumes: every angle of
    angle_rad_() about every axis of axis_vector_() (the three unit axes and a random one), batched
    per (input, output) size pair of PyTorch's lists (all 30 pairs on the PyTorch path; on the
    interpreter 6 pairs covering every input and output size), corner values 2..9 set as in PyTorch;
    against float64 affine_grid + grid_sample (border padding, align_corners=True) instead of scipy."""
    rng = random.Random(1)
    t = (rng.random(), rng.random(), rng.random())
    norm = sum(v ** 2 for v in t) ** 0.5
    axes = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), tuple(v / norm for v in t)]
    thetas = torch.stack([_rotation_3d(a, ax) for a, ax in itertools.product(ANGLES, axes)])
    pairs = list(itertools.product(INPUT_3D, OUTPUT_3D)) if backend == "torch" else \
        [(INPUT_3D[i % len(INPUT_3D)], out_size) for i, out_size in enumerate(OUTPUT_3D)]  # every size, once
    for in_size, out_size in pairs:
        x = torch.rand(in_size, device=device)
        for value, idx in zip(range(2, 10), itertools.product((0, -1), repeat=3)):
            x[(0, 0) + idx] = value
        _border_warp(backend, x.expand(thetas.shape[0], -1, -1, -1, -1), thetas, tuple(out_size[2:]))


def test_pytorch_groundtruth_tables_are_complete():
    """Every (mode, padding_mode, align_corners) PyTorch has groundtruth for is present (PyTorch raises
    'missing groundtruth test' otherwise), with the shapes of its .view() calls."""
    assert set(GT_OUTPUT) == set(CONFIGS_2D) == set(GT_GRID_GRAD)
    assert all(torch.tensor(v).numel() == 10 for v in GT_OUTPUT.values())
    assert all(torch.tensor(v).numel() == 16 for v in GT_GRID_GRAD.values())
