"""Memory-format helpers shared by the launchers, the custom ops and the PyTorch path.

Every output and gradient of an image takes the input's memory format: channels_last
(``channels_last_3d`` for a 5-D volume) when x is channels-last (and not also plain-contiguous,
as with C == 1 or 1x1 images), NCHW / NCDHW otherwise (including inputs with arbitrary strides).
Pure PyTorch: importing this module imports no triton.
"""
from __future__ import annotations

import torch


def _channels_last_format(x: torch.Tensor):
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def is_channels_last(x: torch.Tensor) -> bool:
    """x is 4-D channels_last or 5-D channels_last_3d (and not also plain-contiguous)."""
    return (x.dim() in (4, 5) and not x.is_contiguous()
            and x.is_contiguous(memory_format=_channels_last_format(x)))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format outputs and gradients of ``x`` are allocated in."""
    return _channels_last_format(x) if is_channels_last(x) else torch.contiguous_format


def empty_output(x: torch.Tensor, *size: int) -> torch.Tensor:
    """Uninitialised (N, C, *size) in x's dtype, device and memory format: size is (H_out, W_out)
    for an image, (D_out, H_out, W_out) for a volume."""
    return torch.empty((x.shape[0], x.shape[1], *size), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def nothing_to_sample(x: torch.Tensor, *size: int) -> bool:
    """The output (N, C, *size) of sampling x is empty (N = 0, C = 0 or an output extent 0): the
    result is an empty tensor of that shape and every gradient is zero, on every backend, with no
    kernel launched and no grid built. The one rule for all empty cases (``F.grid_sample`` itself
    rejects N = 0)."""
    return x.shape[0] == 0 or x.shape[1] == 0 or 0 in size
