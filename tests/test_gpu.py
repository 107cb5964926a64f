"""GPU-only checks (run by bench/run_gpu.sh with STN_TEST_CUDA=1): the compiled Triton kernels at
real sizes against the PyTorch path on the same GPU, every mode, both layouts, fp32 and bf16."""
import pytest
import torch

import stn_triton
from testing.tolerances import assert_close, assert_close_param_grad
from testing.references import random_theta, reference, reference_grads

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("shape,size", [((256, 2, 42, 42), (42, 42)), ((32, 3, 448, 448), (224, 224)),
                                        ((16, 160, 16, 16), (16, 16)), ((4, 64, 224, 224), (224, 224))])
@pytest.mark.parametrize("projective", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_matches_reference_on_gpu(shape, size, projective, padding_mode, channels_last):
    x = torch.randn(*shape, device="cuda")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    theta = random_theta(shape[0], projective, device="cuda")
    go = torch.randn(shape[0], shape[1], *size, device="cuda")
    xr, tr = x.clone().requires_grad_(), theta.clone().requires_grad_()
    with stn_triton.use_backend("triton"):
        out = stn_triton.warp(xr, tr, size, padding_mode=padding_mode)
        gx, gt = torch.autograd.grad(out, [xr, tr], go)
    ref = reference(x, theta, size, "bilinear", padding_mode, False)
    rgx, rgt = reference_grads(x, theta, size, "bilinear", padding_mode, False, go)
    assert_close(out, ref, torch.float32, "forward")
    assert_close(gx, rgx, torch.float32, "grad_x")
    assert_close_param_grad(gt, rgt, torch.float32, "grad_theta")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_on_gpu_match_torch_path(dtype):
    x = torch.randn(64, 16, 64, 64, device="cuda").to(dtype).to(memory_format=torch.channels_last)
    theta = random_theta(64, device="cuda")
    with stn_triton.use_backend("triton"):
        a = stn_triton.warp(x, theta)
    with stn_triton.use_backend("torch"):
        b = stn_triton.warp(x, theta)
    assert_close(a, b, dtype, "triton vs torch path")


def test_cuda_graph_capture():
    """No host synchronisation inside: forward + backward can be captured in a CUDA graph."""
    x = torch.randn(8, 3, 32, 32, device="cuda", requires_grad=True)
    theta = random_theta(8, device="cuda").requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            gx, gt = torch.autograd.grad(stn_triton.warp(x, theta).square().sum(), [x, theta])
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gx, gt = torch.autograd.grad(stn_triton.warp(x, theta).square().sum(), [x, theta])
    g.replay()
    torch.cuda.synchronize()
    ref_gx, ref_gt = torch.autograd.grad(stn_triton.warp(x, theta).square().sum(), [x, theta])
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gt, ref_gt)


def test_deterministic_bit_identical_on_gpu():
    x = torch.randn(64, 8, 64, 64, device="cuda")
    theta = random_theta(64, device="cuda", strength=1.0)
    go = torch.randn(64, 8, 96, 96, device="cuda")
    from stn_triton.kernels import warp as kw

    a = kw.warp_bwd(go, x, theta, "bilinear", "zeros", False, True, True, deterministic=True)
    b = kw.warp_bwd(go, x, theta, "bilinear", "zeros", False, True, True, deterministic=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("k", [16, 64])
def test_tps_peak_memory_has_no_hwk_term(k):
    """Fused TPS forward + backward allocates the output and gradients, nothing of size H*W*K."""
    n, c, h, w = 32, 3, 224, 224
    x = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
    g = int(k ** 0.5)
    t = torch.linspace(-1, 1, g, device="cuda")
    pts = torch.stack([t.repeat(g), t.repeat_interleave(g)], 1) + 0.05 * torch.randn(n, k, 2, device="cuda")
    pts.requires_grad_()
    with stn_triton.use_backend("triton"):
        stn_triton.tps_warp(x, pts).sum().backward()  # warm-up: layout cache, autotune, allocator
        x.grad = pts.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        stn_triton.tps_warp(x, pts).sum().backward()
        torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    image = x.numel() * x.element_size()
    # out + grad_out + grad_x (+ its fp32/fixed-point buffer) + small per-program partials
    assert extra < 5 * image, (extra, image)
    assert extra < n * h * w * k * 4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_a_non_current_device():
    """Tensors on cuda:1 while cuda:0 is current: the kernels must run on cuda:1."""
    torch.cuda.set_device(0)
    x = torch.randn(4, 3, 17, 19, device="cuda:1", requires_grad=True)
    theta = random_theta(4, device="cuda:1").requires_grad_()
    with stn_triton.use_backend("triton"):
        out = stn_triton.warp(x, theta, (11, 13))
        gx, gt = torch.autograd.grad(out.square().sum(), [x, theta])
    ref = reference(x.detach().cpu(), theta.detach().cpu(), (11, 13), "bilinear", "zeros", False)
    assert out.device == x.device and gx.device == x.device
    assert_close(out.cpu(), ref, torch.float32, "forward on cuda:1")


def test_cuda_graph_capture_tps_explicit_control_points_is_a_clear_error():
    """Explicit control points are read on the host every call (nothing is keyed by tensor
    identity, which in-place edits can make stale), so capturing such a call is refused clearly."""
    cps = torch.rand(6, 2, device="cuda") * 2 - 1
    x = torch.randn(4, 3, 24, 24, device="cuda")
    pts = cps + 0.05 * torch.randn(4, 6, 2, device="cuda")
    stn_triton.tps_warp(x, pts, control_points=cps)  # fine outside a graph
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.stream(s), torch.cuda.graph(g):
            stn_triton.tps_warp(x, pts, control_points=cps)
