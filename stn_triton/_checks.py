"""Input validation shared by every public op: clear errors naming the argument, never a crash."""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_image(x, name: str = "x", volumes: bool = False) -> None:
    """x is an (N, C, H, W) image batch, or with ``volumes`` also an (N, C, D, H, W) volume batch."""
    if not isinstance(x, torch.Tensor):
        what = "(N, C, H, W) or (N, C, D, H, W)" if volumes else "(N, C, H, W)"
        raise TypeError(f"{name} must be a torch.Tensor of shape {what}, got {type(x).__name__}")
    if x.dim() != 4 and not (volumes and x.dim() == 5):
        raise ValueError(f"{name} must be {'4-D (N, C, H, W) or 5-D (N, C, D, H, W)' if volumes else '4-D (N, C, H, W)'}, "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got dtype {x.dtype}"
        )
    if 0 in x.shape[2:]:  # N = 0 or C = 0: an empty output (nothing_to_sample)
        raise ValueError(f"{name} must have {'D, H, W' if x.dim() == 5 else 'H, W'} > 0, "
                         f"got shape {tuple(x.shape)}")


def check_modes(mode: str, padding_mode: str, allow_fill: bool = False, bicubic: bool | str = "by this op") -> None:
    """``bicubic``: True where ``mode="bicubic"`` is supported, else why not (said in the error)."""
    if mode == "bicubic" and bicubic is not True:
        raise ValueError(f'mode="bicubic" is not supported {bicubic}; use "bilinear" or "nearest"')
    if mode not in MODES + ("bicubic",):
        raise ValueError(f"mode must be one of {MODES + ('bicubic',)}, got {mode!r}")
    allowed = PADDING_MODES + (("fill",) if allow_fill else ())
    if padding_mode not in allowed:
        raise ValueError(f"padding_mode must be one of {allowed}, got {padding_mode!r}")


def check_sampling_modes(x: torch.Tensor, mode: str, padding_mode: str, name: str = "x") -> None:
    """The modes of the ops that sample images and volumes alike (``warp``, ``grid_sample``,
    ``warp_flow``): every padding mode, fill included; bicubic for images only (PyTorch has none
    for volumes). The volume's shape is formatted only when the error is raised."""
    if mode == "bicubic" and x.dim() == 5:
        check_modes(mode, padding_mode, bicubic=f"for volumes ({name} of shape {tuple(x.shape)}): "
                                                "PyTorch has no 3-D bicubic")
    check_modes(mode, padding_mode, allow_fill=True, bicubic=True)


def fill_tensor(x: torch.Tensor, padding_mode: str, fill_value) -> torch.Tensor | None:
    """The (C,) fill values of ``padding_mode="fill"`` from ``fill_value``: a number (every channel),
    a sequence of C numbers, or a float tensor of shape () or (C,) on x's device (it may require
    grad: a 0-d one is expanded, so its gradient is the sum over channels). None otherwise."""
    c = x.shape[1]
    if padding_mode != "fill":
        if fill_value is not None:
            raise ValueError(f'fill_value is only used with padding_mode="fill", got padding_mode={padding_mode!r}')
        return None
    if fill_value is None:
        fill_value = 0.0
    if isinstance(fill_value, torch.Tensor):
        if not fill_value.is_floating_point():
            raise TypeError(f"fill_value must be a floating-point tensor, got dtype {fill_value.dtype}")
        check_same_device(x, fill_value, "fill_value")
        if fill_value.dim() == 0:
            return fill_value.expand(c)
        if tuple(fill_value.shape) != (c,):
            raise ValueError(f"fill_value must be a float or have shape () or (C,) = ({c},), "
                             f"got shape {tuple(fill_value.shape)}")
        return fill_value
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(fill_value, numbers.Real) and not isinstance(fill_value, bool):
        return torch.full((c,), float(fill_value), dtype=cdt, device=x.device)
    if isinstance(fill_value, Sequence) and not isinstance(fill_value, str) and len(fill_value) == c \
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in fill_value):
        return torch.tensor([float(v) for v in fill_value], dtype=cdt, device=x.device)
    raise ValueError(f"fill_value must be a float, a sequence of C = {c} floats or a tensor of shape () or ({c},), "
                     f"got {fill_value!r}")


def check_same_device(x: torch.Tensor, other: torch.Tensor, name: str, x_name: str = "x") -> None:
    if other.device != x.device:
        raise ValueError(f"{name} is on {other.device} but {x_name} is on {x.device}; they must be on the same device")


def check_float(t: torch.Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _is_int(v) -> bool:
    """A Python or numpy integer, or a 0-d integer tensor (MONAI passes sizes so, and
    ``F.affine_grid`` accepts them), as PyTorch accepts for sizes; not a bool or a float."""
    if isinstance(v, torch.Tensor):
        return v.dim() == 0 and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def resolve_size(x: torch.Tensor | None, size, name: str = "size") -> tuple[int, int]:
    """(H_out, W_out) from ``size`` (None means x's (H, W)); ints or numpy integers, never floats."""
    if size is None and x is not None:
        return int(x.shape[2]), int(x.shape[3])
    if isinstance(size, (torch.Size, Sequence)) and not isinstance(size, str):
        if len(size) == 2 and all(_is_int(s) for s in size):
            h, w = int(size[0]), int(size[1])
            if h >= 0 and w >= 0:  # 0: an empty output (nothing_to_sample), as PyTorch
                return h, w
    raise ValueError(f"{name} must be {'None or ' if x is not None else ''}a pair of non-negative ints (H_out, W_out), "
                     f"got {size!r}")


def resolve_size_3d(x: torch.Tensor, size, name: str = "size") -> tuple[int, int, int]:
    """(D_out, H_out, W_out) of a volume from ``size`` (None means x's (D, H, W))."""
    if size is None:
        return int(x.shape[2]), int(x.shape[3]), int(x.shape[4])
    if isinstance(size, (torch.Size, Sequence)) and not isinstance(size, str):
        if len(size) == 3 and all(_is_int(s) for s in size):
            d, h, w = (int(s) for s in size)
            if d >= 0 and h >= 0 and w >= 0:
                return d, h, w
    raise ValueError(f"{name} must be None or a triple of non-negative ints (D_out, H_out, W_out) for a volume "
                     f"x of shape {tuple(x.shape)}, got {size!r}")


def check_align_corners(align_corners) -> bool:
    """``align_corners`` as a bool: None is False (as ``F.grid_sample`` / ``F.affine_grid`` read it,
    their default since PyTorch 1.3); anything else but a bool is a TypeError."""
    if isinstance(align_corners, bool) or type(align_corners).__name__ == "bool_":
        return bool(align_corners)
    if align_corners is None:
        return False
    raise TypeError(f"align_corners must be a bool or None (False), got {align_corners!r} "
                    f"({type(align_corners).__name__})")
