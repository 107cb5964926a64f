"""Public displacement-field warping: ``stn_triton.warp_flow``."""
from __future__ import annotations

import torch

from . import _checks, torch_path
from ._warp_flow_ops import WARP_FLOW, WARP_FLOW3D, pixel_scales


def warp_flow(x: torch.Tensor, flow: torch.Tensor, theta: torch.Tensor | None = None, *, mode: str = "bilinear",
              padding_mode: str = "zeros", align_corners: bool = False, fill_value=None) -> torch.Tensor:
    """Warp ``x`` by a dense displacement field given in input pixels, with no grid tensor.

    Convention:
        * ``x``: (N, C, H, W) images or (N, C, D, H, W) volumes (dtypes, layouts as :func:`warp`).
        * ``flow``: (N, 2, H_out, W_out) for images, (N, 3, D_out, H_out, W_out) for volumes,
          channel-first, channel order (x, y[, z]) = (column, row[, slice]) like every coordinate of
          this library, in **input pixels**; any float dtype and strides. The output has shape
          (N, C, *flow.shape[2:]).
        * Output pixel p samples x at the normalised source ``base(p) + flow(p) * 2 / (S - 1 if
          align_corners else S)`` per axis (S = that axis' input size), ``base(p) = theta @ [p_norm, 1]``
          with p_norm as ``F.affine_grid`` gives it and ``theta`` (N, 2, 3) / (N, 3, 4), default the
          identity. So with equal sizes and no theta, output pixel (i, j) samples input pixel
          (i + v, j + u), (u, v) = flow[:, :, i, j], for either ``align_corners``.
        * The base and the flow are added in fp32 registers (fp64 for fp64 data), never in a
          half-precision grid (pytorch#36108). With ``theta`` given, the affine part is folded into the
          flow first (one flow-sized tensor, differentiable in theta); without it nothing grid-sized is
          built.
        * ``mode`` (``"bicubic"`` for images), ``padding_mode`` (``"fill"`` with ``fill_value``),
          non-finite coordinates, empty outputs: as :func:`warp` / :func:`grid_sample`.

    Gradients flow to ``x``, ``flow`` (zero for nearest), ``theta`` and ``fill_value``; the flow's
    gradient has one writer per element and ``torch.use_deterministic_algorithms(True)`` makes x's
    bit-reproducible.

    Mapping other libraries onto it: MONAI's ``Warp()(image, ddf)`` (DDF in voxels, channel order
    (row, col[, slice]) = the array axes, ``align_corners=True``, border padding) is
    ``warp_flow(image, ddf.flip(1), padding_mode="border", align_corners=True)``; VoxelMorph's
    ``SpatialTransformer(size)(src, flow)`` (the same axis order, align_corners=True, zeros) is
    ``warp_flow(src, flow.flip(1), align_corners=True)``; RAFT's backward warp
    (``bilinear_sampler(img, coords_grid + flow)``, flow in (x, y) pixels) is
    ``warp_flow(img, flow, align_corners=True)``.
    """
    _checks.check_image(x, "x", volumes=True)
    check_flow(x, flow)
    _checks.check_sampling_modes(x, mode, padding_mode)
    align_corners = _checks.check_align_corners(align_corners)
    fill = _checks.fill_tensor(x, padding_mode, fill_value)
    size = list(flow.shape[2:])
    if theta is not None:
        flow = _fold_theta(x, flow, theta, size, align_corners)
    op = WARP_FLOW3D if x.dim() == 5 else WARP_FLOW
    return op(x, flow, (), size, mode, padding_mode, align_corners, fill)


def check_flow(x: torch.Tensor, flow) -> None:
    dims = x.dim() - 2
    expected = "(N, 3, D_out, H_out, W_out)" if dims == 3 else "(N, 2, H_out, W_out)"
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"flow must be a torch.Tensor of shape {expected}, got {type(flow).__name__}")
    if flow.dim() != x.dim() or flow.shape[1] != dims:
        raise ValueError(f"flow must have shape {expected} (one channel per spatial axis of x, channel-first) for x "
                         f"of shape {tuple(x.shape)}, got {tuple(flow.shape)}")
    if flow.shape[0] != x.shape[0]:
        raise ValueError(f"flow's batch size must equal x's: x has N = {x.shape[0]} (shape {tuple(x.shape)}), "
                         f"flow has {flow.shape[0]} (shape {tuple(flow.shape)})")
    _checks.check_float(flow, "flow")
    _checks.check_same_device(x, flow, "flow")


def _fold_theta(x, flow, theta, size, align_corners):
    """flow + (theta's base - the identity's base) in input pixels: the op then adds the identity."""
    dims = x.dim() - 2
    shape = (3, 4) if dims == 3 else (2, 3)
    if not isinstance(theta, torch.Tensor) or theta.dim() != 3 or tuple(theta.shape[1:]) != shape \
            or theta.shape[0] != x.shape[0]:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"theta must be None or have shape (N, {shape[0]}, {shape[1]}) with N = {x.shape[0]} for x of "
                         f"shape {tuple(x.shape)}, got {got}")
    _checks.check_float(theta, "theta")
    _checks.check_same_device(x, theta, "theta")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = theta.to(acc)
    if dims == 2:
        grid = torch_path.transform_grid(t, *size, align_corners)
        base = torch_path.base_grid(*size, align_corners, acc, x.device)[:, :2].reshape(*size, 2)
    else:
        grid = torch_path.transform_grid_3d(t, *size, align_corners)
        base = torch_path.base_grid_3d(*size, align_corners, acc, x.device)[:, :3].reshape(*size, 3)
    scale = torch.tensor(pixel_scales(x.shape[2:], align_corners), dtype=acc, device=x.device)
    return flow.to(acc) + ((grid - base) / scale).movedim(-1, 1)
