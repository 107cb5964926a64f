"""Deterministic backward: ``torch.use_deterministic_algorithms(True)`` gives bit-identical grads.

grad_x is accumulated as int64 fixed point (integer addition is associative), so the result cannot
depend on the order in which programs add their contributions. The interpreter runs programs in
a fixed order, so "two runs agree" alone proves little here; the strong check is that *different
tilings* (different BLOCK_P / BLOCK_C, hence different summation orders and groupings) give
bit-identical gradients.
"""
import pytest
import torch

import stn_triton
from stn_triton.kernels import fixed_point, warp as kw
from tolerances import assert_close, assert_close_param_grad
from test_warp import random_theta, reference_grads


@pytest.fixture
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_grads_match_reference(device, triton_backend, deterministic, mode, dtype):
    x = torch.randn(2, 3, 6, 7, device=device).to(dtype).requires_grad_()
    theta = random_theta(2, device=device, strength=0.8).requires_grad_()  # zoom-outs: many outputs per input
    out = stn_triton.warp(x, theta, (9, 8), mode=mode)
    go = torch.randn_like(out)
    gx, gt = torch.autograd.grad(out, [x, theta], go)
    rgx, rgt = reference_grads(x, theta, (9, 8), mode, "zeros", False, go)
    assert_close(gx, rgx, dtype, "grad_x")
    assert_close_param_grad(gt, rgt, dtype, "grad_theta")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bit_identical_across_tilings_and_runs(device, channels_last):
    x = torch.randn(2, 6, 5, 5, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    theta = random_theta(2, device=device, strength=1.5)
    go = torch.randn(2, 6, 11, 13, device=device)
    results = [
        kw.warp_bwd(go, x, theta, "bilinear", "zeros", False, True, True, deterministic=True, config=blocks)
        for blocks in [(16, 2), (64, 4), (256, 8), (16, 2)]
    ]
    for gx, gt in results[1:]:
        assert torch.equal(gx, results[0][0])
    # grad_theta partials depend on the tiling only through the reduction tree: same tiling, same bits
    assert torch.equal(results[0][1], results[3][1])


def test_fixed_point_scale_bounds():
    go = torch.tensor([1.0, -3.0, 0.5]).view(1, 1, 1, 3)
    scale = fixed_point.fixed_point_scale(torch.cat([go, torch.zeros_like(go), torch.full_like(go, float("inf"))]))
    assert scale[0].item() == 2.0 ** (62 - 4)  # bound = 3 * 3 pixels = 9 -> floor(62 - log2 9) = 58
    assert scale[1].item() == 1.0 and scale[2].item() == 1.0  # all-zero / non-finite grads: harmless scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fixed_to_float_matches_float64_division(device, dtype, channels_last):
    """The one-pass conversion equals int64 -> float64 / scale -> dtype (single rounding here, as
    the scale is a power of two), per image, in both layouts, with a ragged last block."""
    buf = torch.randint(-2**62, 2**62, (3, 5, 17, 13), dtype=torch.int64, device=device)
    buf[1] = torch.randint(-1000, 1000, buf[1].shape, device=device)
    if channels_last:
        buf = buf.to(memory_format=torch.channels_last)
    scale = torch.tensor([2.0 ** 58, 2.0 ** -20, 2.0 ** 120], device=device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = fixed_point.fixed_to_float(buf, scale, dtype, acc)
    ref = (buf.to(torch.float64) / scale.double().view(3, 1, 1, 1)).to(dtype)
    assert out.dtype == dtype and out.stride() == buf.stride()
    if dtype == torch.bfloat16:  # int64 -> fp32 -> bf16 rounds twice: within one bf16 ulp
        torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(out, ref)


def test_fixed_to_float_rejects_float_buffer():
    with pytest.raises(ValueError, match="int64"):
        fixed_point.fixed_to_float(torch.zeros(1, 1, 2, 2), torch.ones(1), torch.float32, torch.float32)
