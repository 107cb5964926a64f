"""Launch Triton kernels on the device that holds their tensors.

A Triton launch goes to the *current* CUDA device and its current stream, not to the device of
the tensors it is given. With tensors on ``cuda:1`` and ``cuda:0`` current (the default in a
process that never called ``torch.cuda.set_device``), an unguarded launch would run on the wrong
device with foreign pointers. Every launcher is wrapped in :func:`on_tensor_device`, which makes
the first tensor argument's device current for the duration of the launch (a no-op when it
already is, and for CPU tensors under the interpreter).
"""
from __future__ import annotations

import functools

import torch


def on_tensor_device(launcher):
    """Decorator: run ``launcher`` with its first tensor argument's CUDA device made current."""
    @functools.wraps(launcher)
    def wrapped(*args, **kwargs):
        # every launcher's first argument is a tensor: the generator only for other callers
        t = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            (a for a in args if isinstance(a, torch.Tensor)), None)
        if t is not None and t.is_cuda and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    wrapped.on_tensor_device = True
    return wrapped
