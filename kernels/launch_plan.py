"""Per-shape launch plans: everything a launcher decides from shapes, strides, dtypes and modes
(tiling, grid, the int64 decision, the output's shape and memory format, the kernel's integer and
constexpr arguments) is computed once per distinct key and reused.

At the paper's shapes a launch is host-bound, and these decisions cost more than the rest of the
call (``triton.cdiv`` / ``next_power_of_2`` are JIT functions when called from the host, and
``needs_int64`` walks every stride). A key holds values only -- ``(shape, strides, dtype)`` per
tensor, and the modes -- never a tensor or its ``id()``, so a plan can never go stale: the same key
always means the same launch. The plan builders run on ``meta`` tensors of the keyed shapes and
strides, through the same policy functions an uncached launch would call.
"""
from __future__ import annotations

import functools

import torch

PLAN_CACHE_SIZE = 512  # distinct (shapes, strides, dtypes, modes) per launcher; a training run has a handful

plan_cache = functools.lru_cache(maxsize=PLAN_CACHE_SIZE)


def tensor_key(t: torch.Tensor) -> tuple:
    """What a plan may depend on of a tensor: shape, strides, dtype."""
    return (t.shape, t.stride(), t.dtype)


def meta_tensor(key: tuple) -> torch.Tensor:
    """A storage-less tensor with a :func:`tensor_key`'s shape, strides and dtype."""
    shape, stride, dtype = key
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def config_key(config):
    """A launch ``config`` override as a hashable key (tuples and lists alike)."""
    return None if config is None else tuple(config)
