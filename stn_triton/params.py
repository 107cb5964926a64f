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


# ----------------------------------------------------------------------------- pixel-space matrices
def _pixel_to_norm(size, align_corners: bool, dtype, device) -> torch.Tensor:
    """(3, 3): pixel coordinates (x = column, y = row, pixel centres at integers) of an (H, W)
    image -> its normalised coordinates, as ``F.grid_sample`` reads them: ``2 x / (W - 1) - 1``
    with ``align_corners=True`` (a single pixel: x itself, so it sits at 0), ``(2 x + 1) / W - 1``
    with False."""
    h, w = (int(s) for s in size)
    rows = []
    for i, extent in enumerate((w, h)):
        if align_corners:
            scale, shift = (1.0, 0.0) if extent == 1 else (2.0 / (extent - 1), -1.0)
        else:
            scale, shift = 2.0 / extent, 1.0 / extent - 1.0
        row = [0.0, 0.0, shift]
        row[i] = scale
        rows.append(row)
    rows.append([0.0, 0.0, 1.0])
    return torch.tensor(rows, dtype=dtype, device=device)


def _pixel_matrix_args(m, in_size, out_size, align_corners, name):
    if not isinstance(m, torch.Tensor) or not m.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor of shape (N, 2, 3) or (N, 3, 3), "
                        f"got {type(m).__name__ if not isinstance(m, torch.Tensor) else m.dtype}")
    if m.dim() not in (2, 3) or tuple(m.shape[-2:]) not in ((2, 3), (3, 3)):
        raise ValueError(f"{name} must have shape (N, 2, 3) (affine) or (N, 3, 3) (projective), "
                         f"or (2, 3) / (3, 3) for one matrix, got {tuple(m.shape)}")
    for size, what in ((in_size, "in_size"), (out_size, "out_size")):
        if len(tuple(size)) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f"{what} must be (H, W) with H, W >= 1, got {tuple(size)}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {align_corners!r}")


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) float64 from (N, 2, 3) / (N, 3, 3) (a (2, 3) / (3, 3) matrix is a batch of one)."""
    m = m.to(torch.float64)
    if m.dim() == 2:
        m = m[None]
    if m.shape[-2] == 2:
        last = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device).expand(m.shape[0], 1, 3)
        m = torch.cat([m, last], 1)
    return m


def from_pixels(m: torch.Tensor, in_size, out_size, align_corners: bool = False) -> torch.Tensor:
    """The ``theta`` of :func:`stn_triton.warp` for a pixel-space matrix ``m``, as OpenCV's
    ``cv2.warpAffine`` / ``warpPerspective`` and kornia's ``warp_affine`` / ``warp_perspective``
    take it.

    Convention:
        * ``m``: (N, 2, 3) affine or (N, 3, 3) projective (or one (2, 3) / (3, 3) matrix), mapping
          *source pixels* to *destination pixels*: ``[u, v, w]^T = m [x, y, 1]^T``, destination
          (u / w, v / w); (x, y) = (column, row), pixel centres at integers (0 .. W - 1).
        * ``in_size``: the source's (H, W); ``out_size``: the destination's (H_out, W_out) (kornia's
          ``dsize``). ``align_corners``: the sampling convention the warp will use (as kornia's).
        * Returns (N, 2, 3) for an affine ``m``, (N, 3, 3) for a projective one, in m's dtype: the map
          from normalised output to normalised source coordinates, ``theta = P_in m^-1 P_out^-1``
          (P: pixel -> normalised), so that ``warp(src, from_pixels(m, src.shape[-2:], dsize), dsize)``
          equals kornia's ``warp_affine(src, m, dsize)`` / ``warp_perspective`` (both ``align_corners``).
          Computed in float64; a singular ``m`` is a ValueError.
    """
    _pixel_matrix_args(m, in_size, out_size, align_corners, "m")
    p_in, p_out_inv = _frames(in_size, out_size, align_corners, m.device)
    return _inverse_between(m, p_in, p_out_inv, "m", "no inverse map from destination to source pixels")


def to_pixels(theta: torch.Tensor, in_size, out_size, align_corners: bool = False) -> torch.Tensor:
    """The inverse of :func:`from_pixels`: the source-pixel -> destination-pixel matrix of ``theta``
    ((N, 2, 3) -> (N, 2, 3), (N, 3, 3) -> (N, 3, 3) with ``[2, 2] = 1``), ``m = P_out^-1 theta^-1 P_in``."""
    _pixel_matrix_args(theta, in_size, out_size, align_corners, "theta")
    p_in, p_out_inv = _frames(in_size, out_size, align_corners, theta.device)
    return _inverse_between(theta, p_out_inv, p_in, "theta", "it has no pixel-space inverse")


def _frames(in_size, out_size, align_corners, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_in, P_out^-1) in float64: the source's pixel -> normalised map and the inverse of the
    destination's, the two factors around ``m^-1`` / ``theta^-1``."""
    p_in = _pixel_to_norm(in_size, align_corners, torch.float64, device)
    return p_in, torch.linalg.inv(_pixel_to_norm(out_size, align_corners, torch.float64, device))


def _inverse_between(a, left, right, name, meaning):
    """``left @ a^-1 @ right`` in float64 (a in homogeneous form), back in a's dtype and form:
    (N, 2, 3) for an affine ``a``, (N, 3, 3) with ``[2, 2] = 1`` for a projective one."""
    h = _homogeneous(a)
    if bool((torch.linalg.det(h).abs() < 1e-12).any()):
        raise ValueError(f"{name} is singular (|det| < 1e-12): {meaning}")
    r = left @ torch.linalg.inv(h) @ right
    r = r[:, :2] if a.shape[-2] == 2 else r / r[:, 2:, 2:]
    return r.to(a.dtype)
