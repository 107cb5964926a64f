"""``nn.Module`` building blocks: :class:`SpatialTransformer`."""
from __future__ import annotations

import re

import torch
from torch import nn

from . import params as _params
from .tps_api import tps_warp
from .warp_api import warp

TRANSFORMS = ("attention", "translation", "rotation_scale_translation", "affine", "projective", "tps",
              *_params.VOLUME_TRANSFORMS)


def parse_transform(transform: str, k: int = 16) -> tuple[str, int]:
    """``"affine"`` -> ("affine", k); ``"tps"`` / ``"tps16"`` / ``"tps(9)"`` -> ("tps", K)."""
    if not isinstance(transform, str):
        raise TypeError(f"transform must be a string, got {type(transform).__name__}")
    name = transform.strip().lower()
    m = re.fullmatch(r"tps\(?(\d+)?\)?", name)
    if m:
        return "tps", int(m.group(1)) if m.group(1) else int(k)
    if name not in TRANSFORMS:
        raise ValueError(f"transform must be one of {list(TRANSFORMS)} (or 'tps(K)'), got {transform!r}")
    return name, int(k)


def _infer_features(loc_net: nn.Module) -> int:
    last = None
    for m in loc_net.modules():
        if hasattr(m, "out_features") and isinstance(getattr(m, "out_features"), int):
            last = m.out_features
    if last is None:
        raise ValueError("could not infer the localisation net's output width (no layer with out_features); "
                         "pass loc_features=")
    return last


class SpatialTransformer(nn.Module):
    """A spatial transformer (Jaderberg et al. 2015): localisation net -> parameters -> warp.

    Args:
        loc_net: maps the input (N, C, H, W) to features (N, F) (flattening included).
        transform: ``attention`` | ``translation`` | ``rotation_scale_translation`` | ``affine`` |
            ``projective`` | ``tps`` (``tps(K)`` / ``tpsK`` pick K control points; default 16);
            for volumes (x (N, C, D, H, W)): ``attention3d`` | ``affine3d`` ((N, 3, 4) theta).
        out_size: (H_out, W_out) of the warped output ((D_out, H_out, W_out) for volumes), or an
            int for a square (cube), or ``None`` for the input's size.
        loc_features: F; inferred from the last layer with ``out_features`` in ``loc_net`` if omitted.
        k: TPS control points when ``transform == "tps"`` (a perfect square; default grid).
        mode / padding_mode / align_corners / fill_value: as :func:`stn_triton.warp`
            (``fill_value`` with ``padding_mode="fill"``: a float, C floats, a tensor (kept as a
            buffer, so it moves with the module) or an ``nn.Parameter`` (learned)).

    The module appends the final regression layer ``self.regressor = nn.Linear(F, n_params)``
    initialised to zero weights and zero bias; with the :mod:`stn_triton.params` helpers the zero
    vector is the identity transform, so an untrained transformer returns its input (resampled to
    ``out_size``).

    ``forward(x)`` returns ``(y, theta)``: the warped output (N, C, H_out, W_out) and the
    transform -- (N, 2, 3) for the affine family, (N, 3, 3) projective, (N, K, 2) control-point
    positions for TPS. On CUDA tensors the warp runs on the fused Triton kernels (backend
    ``auto``), elsewhere on PyTorch.
    """

    def __init__(self, loc_net: nn.Module, transform: str = "affine", out_size=None, *,
                 loc_features: int | None = None, k: int = 16, mode: str = "bilinear",
                 padding_mode: str = "zeros", align_corners: bool = False, fill_value=None):
        super().__init__()
        self.transform, self.k = parse_transform(transform, k)
        volume = self.transform in _params.VOLUME_TRANSFORMS
        if out_size is not None:
            dims = 3 if volume else 2
            out_size = (int(out_size),) * dims if isinstance(out_size, int) else tuple(int(s) for s in out_size)
            if len(out_size) != dims or min(out_size) <= 0:
                raise ValueError(f"out_size must be None, an int or {'(D_out, H_out, W_out)' if volume else '(H_out, W_out)'}"
                                 f" for transform {self.transform!r}, got {out_size!r}")
        self.out_size = out_size
        self.loc_net = loc_net
        feats = int(loc_features) if loc_features is not None else _infer_features(loc_net)
        self.n_params = _params.n_params(self.transform, self.k)
        self.regressor = nn.Linear(feats, self.n_params)
        self.reset_regressor()
        self.mode, self.padding_mode, self.align_corners = mode, padding_mode, bool(align_corners)
        if fill_value is not None and padding_mode != "fill":
            raise ValueError(f"fill_value is only used with padding_mode='fill', got padding_mode={padding_mode!r}")
        if isinstance(fill_value, nn.Parameter):
            self.fill_value = fill_value
        elif isinstance(fill_value, torch.Tensor):
            self.register_buffer("fill_value", fill_value)
        else:
            self.fill_value = fill_value

    def reset_regressor(self) -> None:
        """Zero weights and bias: the identity transform."""
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.zero_()

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        v = self.regressor(self.loc_net(x))
        return _params.to_transform(self.transform, v, self.k)

    def forward(self, x: torch.Tensor):
        # theta keeps the localiser's precision: the warp reads it in any float dtype and computes
        # coordinates in fp32 (fp64 for fp64 x), so rounding it to a half x's dtype would only
        # lose accuracy (a bf16 theta is off by ~0.4 px at 224 px)
        theta = self.theta(x)
        if self.transform == "tps":
            y = tps_warp(x, theta, self.out_size, mode=self.mode, padding_mode=self.padding_mode,
                         align_corners=self.align_corners)
        else:
            y = warp(x, theta, self.out_size, mode=self.mode, padding_mode=self.padding_mode,
                     align_corners=self.align_corners, fill_value=self.fill_value)
        return y, theta

    def extra_repr(self) -> str:
        t = f"tps(K={self.k})" if self.transform == "tps" else self.transform
        return f"transform={t}, out_size={self.out_size}, n_params={self.n_params}"
