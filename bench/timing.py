"""Timing helpers shared by `pytest bench/` and `python -m bench.tune`.

On CUDA: ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed before every call, median),
cycling through input sets that together exceed the L2 cache so no call reads warm data.
Without CUDA: a few wall-clock repetitions on the CPU, which are smoke numbers, not benchmarks.
"""
from __future__ import annotations

import itertools
import math
import time

import torch


def rotating_sets(make, set_bytes: int, l2_bytes: int | None) -> list:
    """Enough independent input sets (``make(i)``) that cycling through them exceeds twice the L2."""
    if not torch.cuda.is_available():
        return [make(0)]
    count = min(8, max(2, math.ceil(2 * (l2_bytes or 50 * 2**20) / max(set_bytes, 1))))
    return [make(i) for i in range(count)]


def time_ms(run, sets) -> float:
    """Median milliseconds of ``run(inputs)``, cycling through ``sets``."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        it = itertools.cycle(sets)
        return do_bench(lambda: run(next(it)), warmup=25, rep=100, return_mode="median")
    run(sets[0])
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        run(sets[0])
    return (time.perf_counter() - t0) / reps * 1e3
