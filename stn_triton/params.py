"""Parameterisations: a localisation net's raw output vector -> transformation parameters.

Every helper maps the zero vector to the identity transform, so a localisation net whose final
regression layer starts with zero weights and zero bias starts at the identity (the paper's
initialisation). Each takes ``v`` of shape (N, n_params) and returns ``theta`` for
:func:`stn_triton.warp` ((N, 2, 3), or (N, 3, 3) for projective) or control-point positions for
:func:`stn_triton.tps_warp` ((N, K, 2)).

=============================  ========  =====================================================
helper                         params    theta
=============================  ========  =====================================================
``attention``                  3         [[1+s, 0, tx], [0, 1+s, ty]]           v = (s, tx, ty)
``translation``                2         [[1, 0, tx], [0, 1, ty]]                v = (tx, ty)
``rotation_scale_translation`` 4         (1+s) R(a) with translation             v = (a, s, tx, ty)
``affine``                     6         I + v.view(2, 3)
``projective``                 8         I + [v, 0].view(3, 3)
``tps``                        2K        control_points + v.view(K, 2)
``attention3d``                4         [[1+s, 0, 0, tx], [0, 1+s, 0, ty], [0, 0, 1+s, tz]]  (volumes)
``affine3d``                   12        I + v.view(3, 4)                       (volumes)
=============================  ========  =====================================================

The ``*3d`` helpers return (N, 3, 4) theta for volumes (5-D x).
"""
from __future__ import annotations

import torch

from . import torch_path

N_PARAMS = {"attention": 3, "translation": 2, "rotation_scale_translation": 4, "affine": 6, "projective": 8,
            "attention3d": 4, "affine3d": 12}
VOLUME_TRANSFORMS = ("attention3d", "affine3d")


def _check(v: torch.Tensor, n: int, name: str) -> None:
    if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.shape[1] != n:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{name}() expects v of shape (N, {n}), got {got}")


def attention(v: torch.Tensor) -> torch.Tensor:
    """Isotropic scale + translation (the paper's attention transform). v = (s, tx, ty)."""
    _check(v, 3, "attention")
    s = 1.0 + v[:, 0]
    z = torch.zeros_like(s)
    return torch.stack([torch.stack([s, z, v[:, 1]], 1), torch.stack([z, s, v[:, 2]], 1)], 1)


def translation(v: torch.Tensor) -> torch.Tensor:
    """Translation only. v = (tx, ty)."""
    _check(v, 2, "translation")
    one = torch.ones_like(v[:, 0])
    z = torch.zeros_like(one)
    return torch.stack([torch.stack([one, z, v[:, 0]], 1), torch.stack([z, one, v[:, 1]], 1)], 1)


def rotation_scale_translation(v: torch.Tensor) -> torch.Tensor:
    """Rotation by angle a (radians), isotropic scale 1+s, translation. v = (a, s, tx, ty)."""
    _check(v, 4, "rotation_scale_translation")
    a, s = v[:, 0], 1.0 + v[:, 1]
    c, si = s * torch.cos(a), s * torch.sin(a)
    return torch.stack([torch.stack([c, -si, v[:, 2]], 1), torch.stack([si, c, v[:, 3]], 1)], 1)


def affine(v: torch.Tensor) -> torch.Tensor:
    """General affine: identity + v viewed as (2, 3)."""
    _check(v, 6, "affine")
    eye = torch.eye(2, 3, dtype=v.dtype, device=v.device)
    return eye + v.view(-1, 2, 3)


def projective(v: torch.Tensor) -> torch.Tensor:
    """Homography with theta[2, 2] fixed to 1: identity + (v, 0) viewed as (3, 3)."""
    _check(v, 8, "projective")
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye + torch.cat([v, torch.zeros_like(v[:, :1])], 1).view(-1, 3, 3)


def attention3d(v: torch.Tensor) -> torch.Tensor:
    """Isotropic scale + translation of a volume: (N, 3, 4) theta. v = (s, tx, ty, tz)."""
    _check(v, 4, "attention3d")
    s = 1.0 + v[:, 0]
    z = torch.zeros_like(s)
    return torch.stack([torch.stack([s, z, z, v[:, 1]], 1), torch.stack([z, s, z, v[:, 2]], 1),
                        torch.stack([z, z, s, v[:, 3]], 1)], 1)


def affine3d(v: torch.Tensor) -> torch.Tensor:
    """General 3-D affine: identity + v viewed as (3, 4), for volumes."""
    _check(v, 12, "affine3d")
    eye = torch.eye(3, 4, dtype=v.dtype, device=v.device)
    return eye + v.view(-1, 3, 4)


def tps(v: torch.Tensor, k: int = 16, control_points: torch.Tensor | None = None) -> torch.Tensor:
    """Thin-plate spline: control-point positions = control_points + v viewed as (K, 2).

    ``control_points`` defaults to the regular sqrt(K) x sqrt(K) grid over [-1, 1]^2 (x fastest).
    """
    if control_points is None:
        control_points = torch_path.default_control_points(k, v.dtype, v.device)
    k = control_points.shape[0]
    _check(v, 2 * k, "tps")
    return control_points.to(v.dtype) + v.view(-1, k, 2)


def n_params(transform: str, k: int = 16) -> int:
    """Number of raw parameters a localisation head must output for ``transform``."""
    if transform == "tps":
        return 2 * k
    if transform not in N_PARAMS:
        raise ValueError(f"transform must be one of {sorted(N_PARAMS) + ['tps']}, got {transform!r}")
    return N_PARAMS[transform]


def to_transform(transform: str, v: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Dispatch by name: ``to_transform("affine", v)`` == ``affine(v)``."""
    if transform == "tps":
        return tps(v, k)
    n_params(transform)  # validates the name
    return globals()[transform](v)
