"""Public sampling at any grid: ``stn_triton.grid_sample``, a drop-in for ``F.grid_sample``."""
from __future__ import annotations

import torch

from . import _checks
from ._grid_sample_ops import GRID_SAMPLE, GRID_SAMPLE3D


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool = False, *, fill_value=None) -> torch.Tensor:
    """Sample ``input`` at the normalised coordinates ``grid``: ``F.grid_sample`` with the same
    argument order and conventions, one fused kernel each way, and a deterministic backward.

    Convention:
        * ``input``: (N, C, H, W) images or (N, C, D, H, W) volumes, float32 / float16 / bfloat16 /
          float64, contiguous, channels_last or any strides; the output has input's dtype and memory
          format, shape (N, C, H_out, W_out) / (N, C, D_out, H_out, W_out).
        * ``grid``: (N, H_out, W_out, 2) for images, (N, D_out, H_out, W_out, 3) for volumes, any
          float dtype and strides, on input's device. ``grid[n, i, j] = (x, y)`` is the source
          coordinate of output pixel (i, j), (x, y[, z]) = (column, row[, slice]), each in [-1, 1]
          across the input: ``align_corners=True``: -1 and 1 are the centres of the corner pixels;
          ``False`` (PyTorch's default): their outer edges. Coordinates are read in fp32 (fp64 for
          fp64 input) whatever the grid's dtype.
        * ``mode``: ``"bilinear"`` (trilinear for volumes, PyTorch's name) | ``"nearest"`` (round half
          to even, as PyTorch) | ``"bicubic"`` (images only; PyTorch's A = -0.75, the coordinate
          unnormalised but not padded, each of the 4x4 taps padded by its own rule).
        * ``padding_mode``: ``"zeros"`` | ``"border"`` | ``"reflection"`` | ``"fill"`` with
          ``fill_value`` (a float, C floats, or a tensor of shape () or (C,), which may require grad):
          the input sampled as if surrounded by that constant (see :func:`stn_triton.warp`).
        * A non-finite grid coordinate samples 0 (the fill value with ``"fill"``) and gets zero
          gradient; finite coordinates are clamped to +-2**20 first. An empty output (N = 0, C = 0, or
          an output extent 0) is an empty tensor with zero gradients.

    Gradients flow to ``input``, ``grid`` (zero for nearest, as in PyTorch) and ``fill_value``.
    The grid's gradient has one writer per element; ``torch.use_deterministic_algorithms(True)``
    makes the input's gradient bit-reproducible too (int64 fixed point instead of float atomics),
    where PyTorch's CUDA backward raises. Backend: Triton kernels for CUDA tensors, PyTorch
    (``F.grid_sample``) otherwise (:func:`stn_triton.use_backend`).

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> theta = torch.eye(2, 3).expand(2, 2, 3)
        >>> g = torch.nn.functional.affine_grid(theta, (2, 3, 8, 8), align_corners=False)
        >>> torch.allclose(stn_triton.grid_sample(input=x, grid=g), x, atol=1e-6)
        True
    """
    _checks.check_image(input, "input", volumes=True)
    check_grid(input, grid)
    _checks.check_sampling_modes(input, mode, padding_mode, "input")
    align_corners = _checks.check_align_corners(align_corners)
    fill = _checks.fill_tensor(input, padding_mode, fill_value)
    size = list(grid.shape[1:-1])
    op = GRID_SAMPLE3D if input.dim() == 5 else GRID_SAMPLE
    return op(input, grid, (), size, mode, padding_mode, align_corners, fill)


def check_grid(x: torch.Tensor, grid) -> None:
    """``grid`` is (N, H_out, W_out, 2) for a 4-D x, (N, D_out, H_out, W_out, 3) for a 5-D x, float, on x's device."""
    volume = x.dim() == 5
    expected = "(N, D_out, H_out, W_out, 3)" if volume else "(N, H_out, W_out, 2)"
    if not isinstance(grid, torch.Tensor):
        raise TypeError(f"grid must be a torch.Tensor of shape {expected}, got {type(grid).__name__}")
    if grid.dim() != x.dim() or grid.shape[-1] != (3 if volume else 2):
        raise ValueError(f"grid must have shape {expected} for input of shape {tuple(x.shape)}, "
                         f"got {tuple(grid.shape)}")
    if grid.shape[0] != x.shape[0]:
        raise ValueError(f"grid's batch size must equal input's: input has N = {x.shape[0]} (shape "
                         f"{tuple(x.shape)}), grid has {grid.shape[0]} (shape {tuple(grid.shape)})")
    _checks.check_float(grid, "grid")
    _checks.check_same_device(x, grid, "grid", "input")
