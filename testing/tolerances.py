"""One table of tolerances, per dtype, for comparing kernels with the float64 reference.

Coordinates are always computed in fp32 (fp64 for fp64 data), so the forward error of half
types is the storage rounding of the output (and of the input taps); gradients accumulate in
fp32 and are rounded once. grad_theta sums over all output pixels, so its tolerance is relative
to the gradient's own scale (see ``assert_close``).
"""
import torch

# dtype: (atol, rtol) for outputs and grad_x
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# Thin-plate splines, dtype: (atol, rtol) for outputs and grad_x. The spline is evaluated in fp32
# registers (fp64 for fp64): its K radial terms w_k U(|p - c_k|) are large and cancel (sum w = 0,
# sum w c = 0; sum |w_k U_k| reaches ~250 for K = 64 with strong warps), so each fp32 source
# coordinate carries ~eps32 * sum |w_k U_k| ~ 1e-6 .. 1e-5 of error, not the ~1e-7 of an affine
# warp; it reaches outputs and grad_x through the image slope times W / 2. Half types: storage
# rounding still dominates, so their rows are TOL's.
TPS_TOL = dict(TOL)
TPS_TOL[torch.float32] = (1e-4, 1e-4)

# dtype: relative tolerance for grad_theta / grad_points, measured against max |reference|
GRAD_PARAM_RTOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "",
                 table: dict = TOL) -> None:
    atol, rtol = table[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def assert_close_param_grad(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= GRAD_PARAM_RTOL[dtype] * scale, f"{what}: max error {err:.3e} > {GRAD_PARAM_RTOL[dtype]:.1e} x scale {scale:.3e}"
