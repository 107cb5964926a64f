"""Benchmark shapes, from the paper's uses and beyond, and the bytes each pass must move.

A case is (name, N, C, H, W, H_out, W_out); a :class:`VolumeCase` (name, N, C, D, H, W, D_out,
H_out, W_out, dtype, layout) is a 3-D warp of volumes, whose grid has 3 floats per output voxel.
``bytes_fused`` is the least traffic a fused kernel
needs (inputs read once, outputs written once); ``bytes_unfused`` adds what the PyTorch path
moves for its materialised grid (affine_grid writes N*H_out*W_out*2 floats, grid_sample reads
them; backward writes and reads a grad-grid of the same size, and affine_grid's backward reads
it again). Their ratio is the best speedup fusion alone can give in a bandwidth-bound regime.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int
    c: int
    h: int
    w: int
    h_out: int
    w_out: int
    gpu_only: bool = True

    @property
    def id(self) -> str:
        return f"{self.name}-{self.n}x{self.c}x{self.h}x{self.w}->{self.h_out}x{self.w_out}"

    in_pixels = property(lambda self: self.h * self.w)
    out_pixels = property(lambda self: self.h_out * self.w_out)
    coords = 2  # floats per grid point


@dataclasses.dataclass(frozen=True)
class VolumeCase:
    """A 3-D warp: x (N, C, D, H, W) -> (N, C, D_out, H_out, W_out), in one dtype and layout."""
    name: str
    n: int
    c: int
    d: int
    h: int
    w: int
    d_out: int
    h_out: int
    w_out: int
    dtype: str = "fp32"
    channels_last: bool = False
    gpu_only: bool = True

    @property
    def id(self) -> str:
        layout = "ndhwc" if self.channels_last else "ncdhw"
        return (f"{self.name}-{self.n}x{self.c}x{self.d}x{self.h}x{self.w}->{self.d_out}x{self.h_out}x{self.w_out}"
                f"-{self.dtype}-{layout}")

    in_pixels = property(lambda self: self.d * self.h * self.w)
    out_pixels = property(lambda self: self.d_out * self.h_out * self.w_out)
    coords = 3


CASES = [
    Case("mnist", 256, 1, 28, 28, 28, 28, gpu_only=False),
    Case("mnist-add", 256, 2, 42, 42, 42, 42, gpu_only=False),
    Case("mnist-tc", 256, 1, 60, 60, 60, 60, gpu_only=False),
    Case("svhn64", 128, 3, 64, 64, 64, 64),
    Case("svhn128", 128, 3, 128, 128, 128, 128),
    Case("svhn-multi-c48", 128, 48, 32, 32, 32, 32),
    Case("svhn-multi-c160", 128, 160, 16, 16, 16, 16),
    Case("svhn-multi-c192", 128, 192, 16, 16, 16, 16),
    Case("cub448", 32, 3, 448, 448, 224, 224),
    Case("large-c64", 64, 64, 224, 224, 224, 224),
    Case("large-1024", 8, 3, 1024, 1024, 1024, 1024),
]

VOLUME_CASES = [
    VolumeCase("aug32", 4, 1, 32, 32, 32, 32, 32, 32, gpu_only=False),  # small enough for a CPU run
    VolumeCase("brain128", 2, 1, 128, 128, 128, 128, 128, 128),
    VolumeCase("mri160x192x160-c4", 1, 4, 160, 192, 160, 160, 192, 160, dtype="bf16", channels_last=True),
    VolumeCase("augment64", 16, 1, 64, 64, 64, 64, 64, 64),
]

PASSES = ("fwd", "fwd_bwd", "bwd_theta")


def bytes_fused(case: Case, pass_: str, elem: int, param_elems: int = 6) -> int:
    """Fewest bytes a fused kernel moves: x read, out written (fwd); grad_out read, x read for the
    coordinate gradient, grad_x written (bwd); theta is negligible but counted."""
    x = case.n * case.c * case.in_pixels * elem
    out = case.n * case.c * case.out_pixels * elem
    theta = case.n * param_elems * 4
    fwd = x + out + theta
    if pass_ == "fwd":
        return fwd
    if pass_ == "bwd_theta":  # forward, then backward reads grad_out and x, writes grad_theta
        return fwd + out + x + theta
    return fwd + out + x + x + theta  # fwd + bwd: grad_out, x read; grad_x written


def bytes_unfused(case: Case, pass_: str, elem: int, param_elems: int = 6) -> int:
    """Bytes of the affine_grid + grid_sample path: the fused bytes plus its grid tensors (fp32
    for fp32 data; in the data dtype otherwise, which is what grid_sample requires)."""
    grid = case.n * case.out_pixels * case.coords * elem
    extra = 2 * grid  # affine_grid writes it, grid_sample reads it
    if pass_ != "fwd":
        extra += 3 * grid  # grad-grid written by grid_sample backward, read by affine_grid backward (+ grid re-read)
    return bytes_fused(case, pass_, elem, param_elems) + extra
