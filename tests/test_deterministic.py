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
from testing.tolerances import assert_close, assert_close_param_grad
from testing.references import random_theta, reference_grads


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


def test_fixed_point_exponent_bounds(device):
    go = torch.tensor([1.0, -3.0, 0.5], device=device).view(1, 1, 1, 3)
    bad = torch.tensor([1.0, float("nan"), 0.5], device=device).view(1, 1, 1, 3)
    exps = fixed_point.fixed_point_exponents(
        torch.cat([go, torch.zeros_like(go), torch.full_like(go, float("inf")), bad]), torch.float32)
    assert exps.dtype == torch.int32
    # max 3 = 1.5 * 2**1, 3 pixels -> ceil(log2 3) = 2: e = 61 - 1 - 2, so 3 * 3 * 2**58 < 2**62
    assert exps[0].item() == 58
    assert exps[1].item() == 0  # all-zero image: a harmless exponent
    assert exps[2].item() == exps[3].item() == 1 << 30  # non-finite: the float64 fallback's sentinel


def test_fixed_point_exponent_reads_any_strides(device):
    """An expanded scalar gradient (all strides 0) and a transposed one read like their copies."""
    go = torch.randn(3, 2, 5, 4, device=device)
    for g in (torch.tensor(0.75, device=device).expand(3, 2, 5, 4), go.transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(fixed_point.fixed_point_exponents(g, torch.float32),
                                   fixed_point.fixed_point_exponents(g.contiguous(), torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fixed_to_float_matches_float64_division(device, dtype, channels_last):
    """The one-pass conversion equals int64 -> float64 * 2**-e -> dtype (single rounding here, as
    the scale is a power of two), per image, in both layouts, with a ragged last block, for
    exponents beyond the float range of 2**e itself."""
    buf = torch.randint(-2**62, 2**62, (3, 5, 17, 13), dtype=torch.int64, device=device)
    buf[1] = torch.randint(-1000, 1000, buf[1].shape, device=device)
    if channels_last:
        buf = buf.to(memory_format=torch.channels_last)
    e = [58, -20, 150] if dtype != torch.float64 else [58, -900, 1100]
    exps = torch.tensor(e, dtype=torch.int32, device=device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = fixed_point.fixed_to_float(buf, exps, dtype, acc)
    ref = (buf.to(torch.float64) * torch.tensor([2.0 ** -v for v in e], dtype=torch.float64, device=device).view(3, 1, 1, 1)).to(dtype) \
        if dtype != torch.float64 else torch.stack([torch.ldexp(buf[i].double(), torch.tensor(-v, device=device)) for i, v in enumerate(e)])
    assert out.dtype == dtype and out.stride() == buf.stride()
    if dtype == torch.bfloat16:  # int64 -> fp32 -> bf16 rounds twice: within one bf16 ulp
        torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(out, ref)


def _det_and_atomic_grad_x(device, go, dtype=torch.float32):
    x = torch.randn(go.shape[0], go.shape[1], 5, 6, device=device, dtype=dtype)
    theta = random_theta(go.shape[0], device=device, strength=0.8).to(dtype)
    det, _ = kw.warp_bwd(go, x, theta, "bilinear", "zeros", False, True, False, deterministic=True)
    atomic, _ = kw.warp_bwd(go, x, theta, "bilinear", "zeros", False, True, False, deterministic=False)
    return det, atomic


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_deterministic_propagates_non_finite_grad_out(device, bad):
    """NaN / inf in grad_out reach grad_x where the atomic path puts them (it turned them into
    finite garbage, hiding overflow from AMP's GradScaler); other images stay bit-exact."""
    go = torch.randn(2, 2, 7, 8, device=device)
    go[0, 1, 3, 4] = bad
    det, atomic = _det_and_atomic_grad_x(device, go)
    assert torch.equal(torch.isnan(det), torch.isnan(atomic))
    assert torch.equal(torch.isinf(det), torch.isinf(atomic))
    assert (~torch.isfinite(det[0])).any()
    fin = torch.isfinite(atomic)
    torch.testing.assert_close(det[fin], atomic[fin], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(det[1]).all()


@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1e-38), (torch.float32, 1e36),
                                             (torch.float64, 1e-300), (torch.float64, 1e60), (torch.float64, 1e300)])
def test_deterministic_keeps_resolution_over_the_whole_range(device, dtype, magnitude):
    """Tiny gradients were zeroed (fp32 ~1e-38, fp64 ~1e-40) and huge fp64 ones overflowed (~1e60):
    the relative resolution must hold over the dtype's whole finite range."""
    go = torch.randn(2, 2, 7, 8, device=device, dtype=dtype) * magnitude
    det, atomic = _det_and_atomic_grad_x(device, go, dtype)
    assert torch.isfinite(det).all()
    scale = atomic.abs().max()
    assert scale > 0
    assert ((det - atomic).abs().max() / scale).item() < 1e-5


def test_fixed_to_float_rejects_float_buffer():
    with pytest.raises(ValueError, match="int64"):
        fixed_point.fixed_to_float(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.int32), torch.float32,
                                   torch.float32)
