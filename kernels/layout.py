"""Memory-format helpers shared by the launchers, the custom ops and the PyTorch path.

Every output and gradient of an image takes the input's memory format: channels_last when x is
channels_last (and not also plain-contiguous, as with C == 1 or 1x1 images), NCHW otherwise
(including inputs with arbitrary strides). Pure PyTorch: importing this module imports no triton.
"""
from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format outputs and gradients of ``x`` are allocated in."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def empty_output(x: torch.Tensor, h_out: int, w_out: int) -> torch.Tensor:
    """Uninitialised (N, C, h_out, w_out) in x's dtype, device and memory format."""
    return torch.empty((x.shape[0], x.shape[1], h_out, w_out), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))
