"""The eager path (``stn_triton._eager_path``: the implementations without the custom-op
dispatch) against the custom ops themselves: bit-identical outputs and gradients on both backends,
over modes, paddings, dtypes, layouts and the deterministic switch; the path chosen per call
(the op under ``torch.compile`` / for tensor subclasses); the PyTorch path's cached base grids."""
import itertools

import pytest
import torch

import stn_triton
from conftest import DEVICE
from stn_triton import torch_path
from stn_triton._tps_ops import TPS_WARP, tps_warp_op
from stn_triton._warp3d_ops import WARP3D, warp3d_op
from stn_triton._warp_ops import WARP, warp_op

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection", "fill"]
BACKENDS = ["torch"] if DEVICE == "cuda" else ["torch", "triton"]  # the interpreter is the CPU's triton


def _both_paths(entry, op, x, param, aux, size, mode, padding_mode, fill, grad_out, backend):
    """(out, grads) through the eager entry and through the custom op, same inputs, same backend."""
    results = []
    for path in ("eager", "op"):
        xs, ps = x.detach().requires_grad_(), param.detach().requires_grad_()
        fs = None if fill is None else fill.detach().requires_grad_()
        if path == "eager":
            out = entry._eager(xs, ps, aux, list(size), mode, padding_mode, False, backend, fs)
        else:
            out = op(xs, ps, *aux, list(size), mode, padding_mode, False, backend, fs)
        wrt = [xs, ps] + ([fs] if fs is not None else [])
        grads = torch.autograd.grad(out, wrt, grad_out)
        results.append((out, grads))
    return results


def _assert_bit_identical(results):
    """Outputs and every gradient bit for bit; the layouts of the output and of grad_x too. The
    parameter's gradient may be a transposed / permuted view where autograd recorded the call
    (``recorded_by_autograd``: what its own backward of the grid returns, as for ``F.affine_grid``),
    contiguous from the custom op."""
    (out_e, g_e), (out_o, g_o) = results
    assert torch.equal(out_e, out_o) and out_e.stride() == out_o.stride()
    for i, (a, b) in enumerate(zip(g_e, g_o)):
        assert torch.equal(a, b) and (i == 1 or a.stride() == b.stride())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,padding_mode", list(itertools.product(MODES, PADDINGS)))
@pytest.mark.parametrize("dtype,channels_last,deterministic_on", [
    (torch.float32, False, False), (torch.float64, True, True), (torch.bfloat16, True, False),
    (torch.float32, True, True)])
def test_warp_eager_equals_op(device, backend, mode, padding_mode, dtype, channels_last, deterministic_on):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic_on)
    try:
        x = torch.randn(2, 3, 5, 6, device=device).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        theta = (torch.eye(3, device=device)[:2] + 0.3 * torch.randn(2, 2, 3, device=device))
        fill = torch.randn(3, device=device) if padding_mode == "fill" else None
        grad_out = torch.randn(2, 3, 4, 7, device=device).to(dtype)
        _assert_bit_identical(_both_paths(WARP, warp_op, x, theta, (), (4, 7), mode, padding_mode, fill, grad_out,
                                          backend))
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflection", "fill"])
def test_projective_and_volume_eager_equals_op(device, backend, padding_mode):
    x = torch.randn(2, 3, 5, 6, device=device)
    theta = torch.eye(3, device=device) + 0.1 * torch.randn(2, 3, 3, device=device)
    fill = torch.randn(3, device=device) if padding_mode == "fill" else None
    _assert_bit_identical(_both_paths(WARP, warp_op, x, theta, (), (4, 5), "bilinear", padding_mode, fill,
                                      torch.randn(2, 3, 4, 5, device=device), backend))
    v = torch.randn(2, 2, 3, 4, 5, device=device)
    theta3 = torch.eye(4, device=device)[:3] + 0.1 * torch.randn(2, 3, 4, device=device)
    fill = torch.randn(2, device=device) if padding_mode == "fill" else None
    _assert_bit_identical(_both_paths(WARP3D, warp3d_op, v, theta3, (), (2, 3, 4), "bilinear", padding_mode, fill,
                                      torch.randn(2, 2, 2, 3, 4, device=device), backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_tps_eager_equals_op(device, backend, mode):
    x = torch.randn(2, 3, 6, 5, device=device)
    m64, c64 = stn_triton._tps_ops.solved_system(None, 9, torch.device(device))
    points = torch_path.default_control_points(9, device=device)[None] + 0.05 * torch.randn(2, 9, 2, device=device)
    coef = torch_path.tps_coefficients(points, m64)
    _assert_bit_identical(_both_paths(TPS_WARP, tps_warp_op, x, coef, (c64,), (4, 5), mode, "border", None,
                                      torch.randn(2, 3, 4, 5, device=device), backend))


def test_eager_path_skips_the_custom_op_and_compile_uses_it(monkeypatch):
    """Eager calls never enter the custom op; under torch.compile the op is what is traced."""
    calls = []
    real = WARP.op
    monkeypatch.setattr(WARP, "op", lambda *a: calls.append(1) or real(*a))
    x, theta = torch.rand(2, 1, 4, 4), torch.eye(3)[:2].repeat(2, 1, 1).requires_grad_()
    stn_triton.warp(x, theta).sum().backward()
    assert calls == []
    torch._dynamo.reset()
    torch.compile(lambda a, t: stn_triton.warp(a, t), fullgraph=True, backend="eager")(x, theta)
    assert calls  # traced through the op


def test_double_backward_through_the_eager_path():
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    theta = (torch.eye(3, dtype=torch.float64)[:2] + 0.1 * torch.randn(2, 2, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, t: stn_triton.warp(a, t, (4, 4)), (x, theta))


def test_cached_base_grid_is_shared_and_survives_inference_mode():
    """Built once per key (never per call), and built outside inference mode even when first asked
    inside it, so a later training step can save it for backward."""
    with torch.inference_mode():
        first = torch_path.base_grid(3, 11, True, torch.float64)
    assert not first.is_inference()
    assert torch_path.base_grid(3, 11, True, torch.float64) is first
    theta = torch.eye(3, dtype=torch.float64)[:2][None].requires_grad_()
    torch_path.transform_grid(theta, 3, 11, True).sum().backward()  # saves the cached base: must not raise
    expected = torch.nn.functional.affine_grid(theta.detach(), (1, 1, 3, 11), align_corners=True)
    assert torch.equal(torch_path.transform_grid(theta.detach(), 3, 11, True), expected)


def test_launch_plans_are_keyed_by_layout_not_identity():
    """Two tensors with the same shape, strides, dtype and modes share one plan; another layout
    gets its own (its output keeps x's memory format)."""
    from bench.host_overhead import stubbed_kernels
    from stn_triton.kernels import warp as kw

    kw._fwd_plan.cache_clear()
    theta = torch.eye(3)[:2].repeat(2, 1, 1)
    with stn_triton.use_backend("triton"), stubbed_kernels():
        for _ in range(2):
            stn_triton.warp(torch.rand(2, 3, 5, 6), theta.clone())
        assert kw._fwd_plan.cache_info().misses == 1 and kw._fwd_plan.cache_info().hits == 1
        out = stn_triton.warp(torch.rand(2, 3, 5, 6).contiguous(memory_format=torch.channels_last), theta)
    assert kw._fwd_plan.cache_info().misses == 2
    assert out.is_contiguous(memory_format=torch.channels_last)


def _recorded_cases():
    """(name, entry, op, x, param, aux, size) per spec whose PyTorch path autograd may record."""
    from stn_triton._grid_sample_ops import GRID_SAMPLE, GRID_SAMPLE3D, grid_sample3d_op, grid_sample_op
    from stn_triton._warp_flow_ops import WARP_FLOW, WARP_FLOW3D, warp_flow3d_op, warp_flow_op
    g = torch.Generator().manual_seed(5)
    x2, x3 = torch.randn(2, 3, 5, 6, generator=g), torch.randn(2, 2, 3, 4, 5, generator=g)
    m64, c64 = stn_triton._tps_ops.solved_system(None, 9, torch.device("cpu"))
    points = torch_path.default_control_points(9)[None] + 0.1 * torch.randn(2, 9, 2, generator=g)
    return [
        ("warp", WARP, warp_op, x2, torch.eye(3)[:2] + 0.3 * torch.randn(2, 2, 3, generator=g), (), (4, 7)),
        ("warp projective", WARP, warp_op, x2, torch.eye(3) + 0.1 * torch.randn(2, 3, 3, generator=g), (), (4, 7)),
        ("warp3d", WARP3D, warp3d_op, x3, torch.eye(4)[:3] + 0.2 * torch.randn(2, 3, 4, generator=g), (), (2, 3, 4)),
        ("tps_warp", TPS_WARP, tps_warp_op, x2, torch_path.tps_coefficients(points, m64), (c64,), (4, 7)),
        ("grid_sample", GRID_SAMPLE, grid_sample_op, x2, 2.4 * torch.rand(2, 4, 7, 2, generator=g) - 1.2, (),
         (4, 7)),
        ("grid_sample3d", GRID_SAMPLE3D, grid_sample3d_op, x3, 2.4 * torch.rand(2, 2, 3, 4, 3, generator=g) - 1.2,
         (), (2, 3, 4)),
        ("warp_flow", WARP_FLOW, warp_flow_op, x2, 1.5 * torch.randn(2, 2, 4, 7, generator=g), (), (4, 7)),
        ("warp_flow3d", WARP_FLOW3D, warp_flow3d_op, x3, torch.randn(2, 3, 2, 3, 4, generator=g), (), (2, 3, 4)),
    ]


@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                               (torch.float32, torch.float64)])
@pytest.mark.parametrize("mode,padding_mode,align_corners", [
    ("bilinear", "zeros", False), ("bilinear", "border", True), ("nearest", "reflection", False),
    ("bicubic", "reflection", True), ("bicubic", "zeros", False)])
def test_pytorch_path_recorded_by_autograd_equals_op(dtype, param_dtype, mode, padding_mode, align_corners):
    """Where no library rule applies, an eager PyTorch-path call is aten's own nodes (no Python
    Function: cheaper than F.affine_grid + F.grid_sample on the host), and its output and
    gradients are the custom op's bit for bit."""
    for name, entry, op, x, param, aux, size in _recorded_cases():
        if mode == "bicubic" and (x.dim() == 5 or name == "tps_warp"):
            continue
        x, param = x.to(dtype), (param if name == "tps_warp" else param.to(param_dtype))  # coef: always float64
        grad_out = torch.randn(x.shape[0], x.shape[1], *size, dtype=dtype)
        results = []
        for path in ("eager", "op"):
            xs, ps = x.clone().requires_grad_(), param.clone().requires_grad_()
            out = entry._eager(xs, ps, aux, list(size), mode, padding_mode, align_corners, "torch", None) \
                if path == "eager" else op(xs, ps, *aux, list(size), mode, padding_mode, align_corners, "torch", None)
            if path == "eager":
                assert type(out.grad_fn).__name__.startswith("GridSampler"), (name, type(out.grad_fn).__name__)
            results.append((out, torch.autograd.grad(out, [xs, ps], grad_out)))
        _assert_bit_identical(results)


def test_pytorch_path_keeps_the_function_where_a_rule_applies():
    """Fill padding, a non-finite coordinate (NaN theta; w = 0), half data and a channels_last x
    go through the Function (its backward applies the rule)."""
    x, theta = torch.randn(2, 3, 5, 6), torch.eye(3)[:2].repeat(2, 1, 1) + 0.1
    fill = torch.randn(3)

    def node(x_, theta_, padding_mode="zeros", fill_=None):
        out = WARP._eager(x_, theta_.requires_grad_(), (), [4, 5], "bilinear", padding_mode, False, "torch", fill_)
        return type(out.grad_fn).__name__

    assert node(x, theta.clone()).startswith("GridSampler")
    assert node(x, theta.clone(), "fill", fill) == "EagerBackward"
    assert node(x, theta.clone().index_fill_(1, torch.tensor([0]), float("nan"))) == "EagerBackward"
    singular = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]).expand(2, 3, 3).clone()  # w = x_t: 0 on a column
    assert node(torch.randn(2, 3, 5, 5), singular) == "EagerBackward"
    assert node(x.to(torch.bfloat16), theta.clone()) == "EagerBackward"
    assert node(x.contiguous(memory_format=torch.channels_last), theta.clone()) == "EagerBackward"
