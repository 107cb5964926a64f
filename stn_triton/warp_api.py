"""Public affine / projective warp: ``stn_triton.warp``."""
from __future__ import annotations

import torch

from . import _checks
from ._warp_ops import WARP
from ._warp3d_ops import WARP3D


def warp(x: torch.Tensor, theta: torch.Tensor, size=None, *, mode: str = "bilinear",
         padding_mode: str = "zeros", align_corners: bool = False, fill_value=None) -> torch.Tensor:
    """Warp ``x`` by the affine or projective transforms ``theta``: one fused kernel each way.
    Images (4-D x) and volumes (5-D x, 3-D affine theta (N, 3, 4)).

    Equal to ``F.grid_sample(x, F.affine_grid(theta, (N, C, *size), align_corners), mode,
    padding_mode, align_corners)`` for affine ``theta`` (to fp32 rounding), without building the
    grid tensor.

    Convention:
        * ``x``: (N, C, H, W), float32 / float16 / bfloat16 / float64, contiguous, channels_last or
          any strides. The output has x's dtype and memory format, shape (N, C, H_out, W_out).
        * Volumes: ``x`` (N, C, D, H, W) (NCDHW, channels_last_3d or any strides) with ``theta``
          (N, 3, 4): ``[x_s, y_s, z_s]^T = theta @ [x_t, y_t, z_t, 1]^T``, (x, y, z) = (column,
          row, slice), ``size`` (D_out, H_out, W_out); equal to ``F.grid_sample(x,
          F.affine_grid(theta, (N, C, *size), align_corners), ...)``. ``"bilinear"`` is trilinear
          (PyTorch's name for 5-D); every padding mode, dtype and gradient as for images.
        * ``theta``: (N, 2, 3) affine or (N, 3, 3) projective. It maps *normalised output*
          coordinates (x_t, y_t) to *normalised source* coordinates, exactly as ``F.affine_grid``:
          ``[x_s, y_s]^T = theta @ [x_t, y_t, 1]^T``; projective: ``[u, v, w]^T = theta @ [x_t, y_t, 1]^T``,
          source = (u / w, v / w).
        * Coordinates are (x, y) = (column, row), each in [-1, 1] across the image.
          ``align_corners=True``: -1 and 1 are the centres of the corner pixels;
          ``False``: the outer edges of the corner pixels (PyTorch's default).
        * ``size``: (H_out, W_out), ints, numpy integers or 0-d integer tensors; default (H, W).
        * ``mode``: ``"bilinear"`` | ``"nearest"`` (round half to even, as PyTorch) | ``"bicubic"``
          (images only, as PyTorch's: A = -0.75, each of the 4x4 taps padded by its own rule);
          ``padding_mode``: ``"zeros"`` | ``"border"`` | ``"reflection"`` | ``"fill"``.
        * ``padding_mode="fill"`` with ``fill_value`` (a float, C floats, or a tensor of shape () or
          (C,), which may require grad; default 0): x is sampled as if surrounded on every side by
          the constant ``fill_value[c]``: ``out = sample_zeros + fill_value[c] * (1 - coverage)``,
          coverage = the interpolation weight that falls inside x (so a bilinear sample half a pixel
          past the border blends the edge and the fill value half and half, and nearest reads the
          fill value wherever the rounded tap is outside). A non-finite coordinate reads the fill
          value. Gradients: x as with zeros, theta through both terms, fill_value =
          sum of grad_out * (1 - coverage).
        * Coordinates are computed in fp32 even for fp16 / bf16 data (fp64 for fp64 data).
        * An empty output (N = 0, C = 0 or an output size of 0) is an empty tensor with zero
          gradients. A pixel whose source coordinate is not
          finite (NaN / inf theta, w = 0 for projective theta) samples 0 in every padding mode and
          gets zero gradient; finite coordinates are clamped to +-2**20 first.

    Backend: Triton kernels for CUDA tensors, PyTorch (``F.grid_sample``) otherwise; see
    :func:`stn_triton.use_backend`. It is chosen here, when the call is made, and the backward
    runs on the same one.

    Gradients flow to ``x`` and ``theta``: the backward is one fused kernel, and
    ``torch.use_deterministic_algorithms(True)`` makes it bit-reproducible. Second and higher
    orders (``create_graph=True``) are supported through PyTorch ops.

    Example:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> theta = stn_triton.params.attention(torch.zeros(8, 3))   # identity
        >>> torch.allclose(stn_triton.warp(x, theta), x, atol=1e-6)
        True
    """
    _checks.check_image(x, "x", volumes=True)
    check_theta(x, theta)
    _checks.check_sampling_modes(x, mode, padding_mode)
    align_corners = _checks.check_align_corners(align_corners)
    fill = _checks.fill_tensor(x, padding_mode, fill_value)
    if x.dim() == 5:
        d_out, h_out, w_out = _checks.resolve_size_3d(x, size)
        return WARP3D(x, theta, (), [d_out, h_out, w_out], mode, padding_mode, align_corners, fill)
    h_out, w_out = _checks.resolve_size(x, size)
    return WARP(x, theta, (), [h_out, w_out], mode, padding_mode, align_corners, fill)


def check_theta(x: torch.Tensor, theta) -> None:
    volume = x.dim() == 5
    expected = "(N, 3, 4) (3-D affine, for a 5-D volume x)" if volume else \
        "(N, 2, 3) (affine) or (N, 3, 3) (projective)"
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor of shape {expected}, got {type(theta).__name__}")
    if theta.dim() != 3 or tuple(theta.shape[1:]) not in (((3, 4),) if volume else ((2, 3), (3, 3))):
        hint = ""
        if not volume and theta.dim() == 3 and tuple(theta.shape[1:]) == (3, 4):
            hint = "; a (N, 3, 4) theta is a 3-D affine transform and needs a 5-D volume x (N, C, D, H, W)"
        elif volume and theta.dim() == 3 and tuple(theta.shape[1:]) in ((2, 3), (3, 3)):
            hint = "; a 2-D transform needs a 4-D image x (N, C, H, W)"
        raise ValueError(f"theta must have shape {expected} for x of shape {tuple(x.shape)}, "
                         f"got {tuple(theta.shape)}{hint}")
    if theta.shape[0] != x.shape[0]:
        raise ValueError(
            f"theta's batch size must equal x's: x has N = {x.shape[0]} (shape {tuple(x.shape)}), "
            f"theta has {theta.shape[0]} (shape {tuple(theta.shape)})"
        )
    _checks.check_float(theta, "theta")
    _checks.check_same_device(x, theta, "theta")
