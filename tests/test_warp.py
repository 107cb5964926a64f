"""stn_triton.warp: the Triton kernels (interpreted on CPU) against the float64 PyTorch reference.

Groups: smoke / forward / gradients / dtypes & layouts / gradcheck / property / exceptions /
robustness / custom-op & compile. The reference is ``F.affine_grid`` + ``F.grid_sample`` (or,
for projective theta, an explicitly built homography grid + ``F.grid_sample``) in float64.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import stn_triton
from stn_triton import torch_path
from conftest import DEVICE
from testing.references import random_theta, reference, reference_grads, run_warp  # noqa: F401
from testing.tolerances import assert_close, assert_close_param_grad

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]


# ----------------------------------------------------------------------------- smoke


def test_identity_returns_input(device, triton_backend):
    x = torch.rand(2, 3, 9, 11, device=device)
    theta = stn_triton.params.affine(torch.zeros(2, 6, device=device))
    torch.testing.assert_close(stn_triton.warp(x, theta), x, atol=1e-6, rtol=0)


def test_default_backend_on_cpu_is_torch():
    assert stn_triton.resolve_backend(torch.device("cpu")) == "torch"
    if DEVICE == "cpu":  # the interpreter is on in CPU test runs (off on GPU runs)
        with stn_triton.use_backend("triton"):
            assert stn_triton.resolve_backend(torch.device("cpu")) == "triton"
    assert stn_triton.resolve_backend(torch.device("cuda")) == "triton"


def test_backend_env_read_at_call_time(monkeypatch):
    monkeypatch.setenv("STN_BACKEND", "triton")
    assert stn_triton.requested_backend() == "triton"
    with stn_triton.use_backend("torch"):
        assert stn_triton.requested_backend() == "torch"
    monkeypatch.setenv("STN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="STN_BACKEND"):
        stn_triton.requested_backend()
    for value in (" Torch ", "", "auto"):  # the fast read of the environment sees what os.environ holds
        monkeypatch.setenv("STN_BACKEND", value)
        assert stn_triton.requested_backend() == (value.strip().lower() or "auto")
    monkeypatch.delenv("STN_BACKEND")
    assert stn_triton.requested_backend() == "auto"


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors: the interpreter is the other backend")
@pytest.mark.parametrize("transform", ["warp", "tps"])
@pytest.mark.parametrize("forward_backend", ["triton", "torch"])
def test_backward_runs_on_the_forward_backend_from_another_thread(monkeypatch, transform, forward_backend):
    """Autograd runs CUDA backward passes on its own device thread, where the caller's
    ``use_backend`` is not set; running backward on another thread on CPU shows the same thing."""
    import threading

    from stn_triton.kernels import tps as kt, warp as kw

    called = []
    module, name = (kw, "warp_bwd") if transform == "warp" else (kt, "tps_bwd")
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: called.append(1) or real(*a, **k))
    monkeypatch.setenv("STN_BACKEND", "torch" if forward_backend == "triton" else "triton")  # the thread's default
    x = torch.rand(2, 2, 6, 7, requires_grad=True)
    with stn_triton.use_backend(forward_backend):
        if transform == "warp":
            out = stn_triton.warp(x, random_theta(2).requires_grad_())
        else:
            pts = stn_triton.torch_path.default_control_points(4)[None].repeat(2, 1, 1) + 0.05
            out = stn_triton.tps_warp(x, pts.requires_grad_())
    errors = []

    def backward():
        try:
            out.sum().backward()
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    t = threading.Thread(target=backward)
    t.start()
    t.join()
    assert not errors, errors
    assert bool(called) == (forward_backend == "triton")


# ----------------------------------------------------------------------------- forward + gradients, every mode


@pytest.mark.parametrize("projective", [False, True], ids=["affine", "projective"])
@pytest.mark.parametrize("mode,padding_mode", list(itertools.product(MODES, PADDINGS)))
@pytest.mark.parametrize("align_corners", [False, True])
def test_forward_and_grads_match_reference(device, triton_backend, projective, mode, padding_mode, align_corners):
    x = torch.randn(2, 3, 7, 10, device=device)
    theta = random_theta(2, projective, device=device)
    size = (6, 5)  # non-square and different from the input
    grad_out = torch.randn(2, 3, *size, device=device)
    out, gx, gt = run_warp(x, theta, size, mode, padding_mode, align_corners, grad_out)
    ref = reference(x, theta, size, mode, padding_mode, align_corners)
    rgx, rgt = reference_grads(x, theta, size, mode, padding_mode, align_corners, grad_out)
    assert out.shape == (2, 3, *size) and out.dtype == x.dtype
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.filterwarnings("ignore:Since version 1.3.0:UserWarning")  # affine_grid on unit-size grids
def test_one_pixel_output_and_input(device, triton_backend, align_corners):
    x = torch.randn(1, 2, 1, 5, device=device)
    theta = random_theta(1, device=device)
    for size in [(1, 1), (1, 4), (3, 1)]:
        out = stn_triton.warp(x, theta, size, align_corners=align_corners)
        assert_close(out, reference(x, theta, size, "bilinear", "zeros", align_corners), torch.float32, f"size {size}")


def test_only_needed_gradients(device, triton_backend):
    x = torch.randn(2, 2, 6, 6, device=device)
    theta = random_theta(2, device=device).requires_grad_()
    out = stn_triton.warp(x, theta)  # x does not require grad
    (gt,) = torch.autograd.grad(out.sum(), [theta])
    _, rgt = reference_grads(x, theta, (6, 6), "bilinear", "zeros", False, torch.ones(2, 2, 6, 6))
    assert_close_param_grad(gt, rgt, torch.float32, "theta-only grad")
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(stn_triton.warp(xg, theta.detach()).sum(), [xg])
    rgx, _ = reference_grads(x, theta, (6, 6), "bilinear", "zeros", False, torch.ones(2, 2, 6, 6))
    assert_close(gx, rgx, torch.float32, "x-only grad")


# ----------------------------------------------------------------------------- dtypes and layouts


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_dtypes_and_layouts(device, triton_backend, dtype, channels_last):
    x = torch.randn(2, 5, 8, 7, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    theta = random_theta(2, device=device)
    size = (9, 6)
    grad_out = torch.randn(2, 5, *size, device=device).to(dtype)
    out, gx, gt = run_warp(x, theta, size, "bilinear", "border", False, grad_out)
    assert out.dtype == dtype and gx.dtype == dtype and gt.dtype == theta.dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert gx.is_contiguous(memory_format=torch.channels_last) == channels_last
    # reference on the same (rounded) data with float64 coordinates: only the output rounding differs
    ref = reference(x, theta, size, "bilinear", "border", False)
    rgx, rgt = reference_grads(x, theta, size, "bilinear", "border", False, grad_out)
    assert_close(out, ref, dtype, "forward")
    assert_close(gx, rgx, dtype, "grad_x")
    # grad_theta comes back in theta's dtype (fp32 here), so it is at least fp32-rounded
    assert_close_param_grad(gt, rgt, torch.float32 if dtype == torch.float64 else dtype, "grad_theta")


def test_half_precision_uses_fp32_coordinates(device, triton_backend):
    """A bf16 image warped by a sub-pixel shift: fp32 coordinates keep the error at bf16 output rounding,
    where bf16 coordinates (what grid_sample on a bf16 grid does) would be off by up to ~1/128 of the image."""
    x = torch.linspace(0, 1, 200, device=device).repeat(1, 1, 4, 1).to(torch.bfloat16)  # (1, 1, 4, 200)
    theta = torch.tensor([[[1.0, 0.0, 0.0031], [0.0, 1.0, 0.0]]], device=device)
    out = stn_triton.warp(x, theta)
    ref = reference(x, theta, (4, 200), "bilinear", "zeros", False)
    interior = slice(1, 198)
    err = (out.double() - ref)[..., interior].abs().max().item()
    assert err <= 0.5 * 2**-7 * 1.0 + 1e-6  # half an ulp of bf16 at values <= 1


def test_arbitrary_strides(device, triton_backend):
    base = torch.randn(2, 8, 12, 3, device=device)
    x = base.permute(0, 3, 1, 2)[:, :, ::2, 1:]  # (2, 3, 4, 11) neither NCHW- nor NHWC-contiguous
    theta = random_theta(2, device=device)
    out = stn_triton.warp(x, theta, (5, 5), padding_mode="reflection")
    assert_close(out, reference(x, theta, (5, 5), "bilinear", "reflection", False), torch.float32, "strided")


def test_empty_batch(device, triton_backend):
    x = torch.randn(0, 3, 5, 5, device=device, requires_grad=True)
    theta = torch.zeros(0, 2, 3, device=device, requires_grad=True)
    out = stn_triton.warp(x, theta, (4, 4))
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and theta.grad.shape == theta.shape


def test_many_channels(device, triton_backend):
    """More channels than one channel block (NCHW and NHWC): exercises the channel loop and its tail."""
    for cl in (False, True):
        x = torch.randn(1, 70, 5, 6, device=device)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        theta = random_theta(1, device=device)
        go = torch.randn(1, 70, 4, 4, device=device)
        out, gx, gt = run_warp(x, theta, (4, 4), "bilinear", "zeros", True, go)
        rgx, rgt = reference_grads(x, theta, (4, 4), "bilinear", "zeros", True, go)
        assert_close(out, reference(x, theta, (4, 4), "bilinear", "zeros", True), torch.float32, "fwd")
        assert_close(gx, rgx, torch.float32, "grad_x")
        assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")


# ----------------------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("projective", [False, True], ids=["affine", "projective"])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_gradcheck(device, backend, projective, padding_mode):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    theta = random_theta(1, projective, torch.float64, device, strength=0.2).requires_grad_()
    with stn_triton.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, t: stn_triton.warp(a, t, (3, 4), padding_mode=padding_mode, align_corners=projective),
            (x, theta), eps=1e-6, atol=1e-7,
        )


# ----------------------------------------------------------------------------- property test

from hypothesis import given, settings, strategies as st  # noqa: E402


@pytest.mark.filterwarnings("ignore:Since version 1.3.0:UserWarning")  # affine_grid on unit-size grids
@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
    ho=st.integers(1, 7), wo=st.integers(1, 7), projective=st.booleans(),
    mode=st.sampled_from(MODES), padding_mode=st.sampled_from(PADDINGS), align_corners=st.booleans(),
    channels_last=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_random_shapes_and_thetas(n, c, h, w, ho, wo, projective, mode, padding_mode, align_corners,
                                           channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    theta = torch.eye(3)[None].repeat(n, 1, 1)
    theta[:, :2] += 0.8 * torch.randn(n, 2, 3, generator=g)
    if projective:
        theta[:, 2, :2] = 0.1 * torch.randn(n, 2, generator=g)
    else:
        theta = theta[:, :2]
    theta = theta.to(DEVICE)
    with stn_triton.use_backend("triton"):
        out = stn_triton.warp(x, theta, (ho, wo), mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    ref = reference(x, theta, (ho, wo), mode, padding_mode, align_corners)
    if mode == "nearest":
        # a coordinate within fp32 rounding of a tap boundary may round either way: allow rare flips
        mismatch = ((out.double() - ref).abs() > 1e-5).float().mean().item()
        assert mismatch <= 0.05
    else:
        assert_close(out, ref, torch.float32, "property")


# ----------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize(
    "x,theta,kwargs,err,match",
    [
        (torch.rand(2, 3, 4), torch.zeros(2, 2, 3), {}, ValueError, r"x must be 4-D .* got shape \(2, 3, 4\)"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), torch.zeros(2, 2, 3), {}, TypeError, "dtype torch.int64"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 2), {}, ValueError, r"theta must have shape .* got \(2, 3, 2\)"),
        (torch.rand(2, 3, 4, 4), torch.zeros(3, 2, 3), {}, ValueError, r"batch size .* N = 2 .* has 3"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 3, dtype=torch.int32), {}, TypeError, "theta must be a floating"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 3), {"mode": "area"}, ValueError, "mode must be one of"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 3), {"padding_mode": "wrap"}, ValueError, "padding_mode must be"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 3), {"size": (4,)}, ValueError, "size must be"),
        (torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 3), {"size": (-1, 3)}, ValueError, "size must be"),  # 0 is an empty output
        ("img", torch.zeros(2, 2, 3), {}, TypeError, "x must be a torch.Tensor"),
        (torch.rand(2, 3, 4, 4), [[1, 0, 0]], {}, TypeError, "theta must be a torch.Tensor"),
    ],
)
def test_bad_input(x, theta, kwargs, err, match):
    size = kwargs.pop("size", None)
    with pytest.raises(err, match=match):
        stn_triton.warp(x, theta, size, **kwargs)


def test_devices_must_match():
    x = torch.rand(1, 1, 4, 4)
    theta = torch.zeros(1, 2, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        stn_triton.warp(x, theta)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter is off on GPU runs")
def test_triton_backend_without_gpu_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with stn_triton.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        stn_triton.warp(torch.rand(1, 1, 4, 4), torch.eye(2, 3)[None])


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter is off on GPU runs")
@pytest.mark.parametrize("versions, ok", [
    (("3.6.0", "2.4.1"), False), (("3.6.0", "2.3.5"), True), (("3.7.0", "2.4.1"), True),
])
def test_interpreter_incompatible_numpy_is_a_clear_error(monkeypatch, versions, ok):
    import numpy
    import triton

    from stn_triton import backend

    monkeypatch.setattr(triton, "__version__", versions[0])
    monkeypatch.setattr(numpy, "__version__", versions[1])
    backend.check_interpreter_compatible.cache_clear()
    try:
        if ok:
            backend.check_interpreter_compatible()
        else:
            with pytest.raises(RuntimeError, match="numpy<2.4 or triton>=3.7"):
                backend.check_interpreter_compatible()
    finally:
        backend.check_interpreter_compatible.cache_clear()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="use_backend"):
        with stn_triton.use_backend("cuda"):
            pass


# ----------------------------------------------------------------------------- robustness


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy inside the interpreter
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_and_huge_theta_are_safe(device, triton_backend, padding_mode, mode):
    x = torch.rand(4, 2, 5, 6, device=device, requires_grad=True)
    theta = torch.tensor([
        [[float("nan"), 0, 0], [0, 1, 0]],
        [[float("inf"), 0, 0], [0, 1, float("-inf")]],
        [[1e30, 0, 0], [0, 1e30, -1e30]],
        [[1, 0, 3e9], [0, 1, 0]],
    ], device=device, requires_grad=True)
    out = stn_triton.warp(x, theta, padding_mode=padding_mode, mode=mode)
    assert out.shape == (4, 2, 5, 6)
    if padding_mode == "zeros":  # far outside / undefined coordinates read the zero padding
        assert torch.all(out[[0, 1, 3]] == 0)
    else:  # border / reflection clamp into the image: values stay within the image's range
        assert torch.all(out[2:].abs() <= x.detach().abs().max() + 1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_int64_index_switch():
    from stn_triton.kernels.policy import needs_int64

    assert not needs_int64(torch.empty(2, 3, 4, 5))
    big = torch.empty(1, device="meta").expand(2**31)  # no memory: a stride-0 view
    assert needs_int64(torch.empty((2, 2**30 + 1), device="meta"))
    assert not needs_int64(big.view(2**31)[:1])


# ----------------------------------------------------------------------------- custom op / compile


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck(backend, channels_last):
    x = torch.randn(2, 3, 5, 6, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    theta = random_theta(2, device=DEVICE)
    torch.library.opcheck(torch.ops.stn_triton.warp.default,
                          (x.requires_grad_(), theta.requires_grad_(), [4, 7], "bilinear", "reflection", True, backend))
    torch.library.opcheck(torch.ops.stn_triton.warp_backward.default,
                          (torch.randn(2, 3, 4, 7, device=DEVICE).requires_grad_(), x.detach().requires_grad_(),
                           theta.detach().requires_grad_(), "bilinear", "zeros", False, True, True, backend))


def test_torch_compile_fullgraph_small_stn():
    class TinySTN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Linear(2 * 8 * 8, 6)
            torch.nn.init.zeros_(self.loc.weight)
            torch.nn.init.zeros_(self.loc.bias)
            self.head = torch.nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            theta = stn_triton.params.affine(self.loc(x.flatten(1)))
            return self.head(stn_triton.warp(x, theta, (6, 6)).flatten(1))

    torch._dynamo.reset()
    model = TinySTN()
    x = torch.randn(4, 2, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model.loc.weight.grad is not None
