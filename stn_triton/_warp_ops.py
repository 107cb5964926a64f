"""``torch.library`` custom ops for the affine / projective warp, with fake kernels and autograd.

``stn_triton::warp`` and ``stn_triton::warp_backward`` are opaque to ``torch.compile``
(``fullgraph=True`` sees one node each way) and contain no host synchronisation. Each op picks its
backend when it *runs* (``stn_triton.backend.resolve_backend``): the Triton kernels, or the
pure-PyTorch path. ``custom_op`` is used rather than ``triton_op`` + ``wrap_triton`` because it
works the same under the Triton interpreter on CPU (which is how the tests exercise the kernels)
and on CUDA; ``triton_op`` does not run under the interpreter.
"""
from __future__ import annotations

import torch

from . import torch_path
from ._double_backward import backward_of_backward
from ._sample_composed import grid_sample_composed
from .backend import resolve_backend
from stn_triton.kernels import warp as kw
from stn_triton.kernels.layout import empty_output, memory_format_of


@torch.library.custom_op("stn_triton::warp", mutates_args=())
def warp_op(x: torch.Tensor, theta: torch.Tensor, h_out: int, w_out: int, mode: str, padding_mode: str,
            align_corners: bool) -> torch.Tensor:
    if resolve_backend(x.device) == "torch":
        return torch_path.warp(x, theta, h_out, w_out, mode, padding_mode, align_corners)
    return kw.warp_fwd(x, theta, h_out, w_out, mode, padding_mode, align_corners)


@warp_op.register_fake
def _(x, theta, h_out, w_out, mode, padding_mode, align_corners):
    return empty_output(x, h_out, w_out)


@torch.library.custom_op("stn_triton::warp_backward", mutates_args=())
def warp_backward_op(grad_out: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, mode: str, padding_mode: str,
                     align_corners: bool, need_x: bool, need_theta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (grad_x, grad_theta); a gradient that is not needed comes back as an empty tensor."""
    if resolve_backend(x.device) == "torch":
        gx, gt = _torch_backward(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta)
    else:
        # any grad_out strides work, including the all-zero strides of an expanded scalar grad
        gx, gt = kw.warp_bwd(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta,
                             deterministic=torch.are_deterministic_algorithms_enabled())
    return (gx if gx is not None else x.new_empty(0)), (gt if gt is not None else theta.new_empty(0))


@warp_backward_op.register_fake
def _(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta):
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)) if need_x \
        else x.new_empty(0)
    gt = torch.empty(theta.shape, dtype=theta.dtype, device=theta.device) if need_theta else theta.new_empty(0)
    return gx, gt


def _torch_backward(grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta):
    """Backward of the PyTorch path: aten's grid-sampler backward, then the grid -> theta chain.

    (Autograd is off inside a custom op's implementation, so the chain is written out.)
    """
    if x.shape[0] == 0:
        gx = torch.zeros(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=memory_format_of(x)) \
            if need_x else None
        return gx, (torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device) if need_theta else None)
    cdt = torch_path.compute_dtype(x.dtype)
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]
    th = theta.to(cdt)
    grid = torch_path.transform_grid(th, h_out, w_out, align_corners)
    gx, ggrid = torch_path.sample_backward(grad_out, x, grid, mode, padding_mode, align_corners, need_x, need_theta)
    gt = None
    if need_theta:
        n = x.shape[0]
        base = torch_path.base_grid(h_out, w_out, align_corners, cdt, x.device)  # (P, 3)
        g = ggrid.reshape(n, -1, 2)
        if theta.shape[1] == 3:  # through the division by w: x_s = u / w, y_s = v / w
            inv_w = 1.0 / torch.einsum("pk,nk->np", base, th[:, 2])
            src = grid.reshape(n, -1, 2)
            g_w = -(g * src).sum(-1) * inv_w
            g = torch.cat([g * inv_w[..., None], g_w[..., None]], dim=-1)
        gt = torch.einsum("npj,pk->njk", g, base).to(theta.dtype).contiguous()
    return gx, gt


def _setup_context(ctx, inputs, output):
    x, theta, _h, _w, mode, padding_mode, align_corners = inputs
    ctx.save_for_backward(x, theta)
    ctx.config = (mode, padding_mode, align_corners)


def _backward(ctx, grad_out):
    x, theta = ctx.saved_tensors
    need_x, need_theta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_theta):
        return None, None, None, None, None, None, None
    gx, gt = warp_backward_op(grad_out, x, theta, *ctx.config, need_x, need_theta)
    return (gx if need_x else None), (gt if need_theta else None), None, None, None, None, None


warp_op.register_autograd(_backward, setup_context=_setup_context)


def _setup_context_backward(ctx, inputs, output):
    grad_out, x, theta, mode, padding_mode, align_corners, need_x, need_theta = inputs
    ctx.save_for_backward(grad_out, x, theta)
    ctx.config = (mode, padding_mode, align_corners)
    ctx.computed = (need_x, need_theta)


def _double_backward(ctx, gg_x, gg_theta):
    """Second order through the PyTorch path (``stn_triton._double_backward``)."""
    grad_out, x, theta = ctx.saved_tensors
    mode, padding_mode, align_corners = ctx.config
    h_out, w_out = grad_out.shape[2], grad_out.shape[3]

    def forward(x_, theta_):
        grid = torch_path.transform_grid(theta_.to(torch_path.compute_dtype(x_.dtype)), h_out, w_out, align_corners)
        return grid_sample_composed(x_, grid, mode, padding_mode, align_corners)

    d_go, d_x, d_theta = backward_of_backward(forward, grad_out, [x, theta], ctx.computed, [gg_x, gg_theta])
    return d_go, d_x, d_theta, None, None, None, None, None


warp_backward_op.register_autograd(_double_backward, setup_context=_setup_context_backward)
