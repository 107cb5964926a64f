"""Real clients of ``stn_triton.grid_sample`` (issue #26 item 4, first part).

* MONAI's ``monai.networks.blocks.Warp`` (dense displacement field registration): it builds its grid
  (reference grid + DDF, normalised, (z, y, x) reordered to (x, y, z)) and calls ``F.grid_sample``
  with ``align_corners=True``. Here that call is routed through ``stn_triton.grid_sample`` on the
  Triton kernels (interpreted on CPU); the routed block must give what MONAI gives, values and
  gradients (image and DDF), 2-D and 3-D, every mode / padding it offers. Skipped without monai.
* A RAFT-style backward warp (``bilinear_sampler`` of RAFT's ``core/utils/utils.py``: pixel
  coordinates = a coordinate grid + flow, normalised with ``2 x / (W - 1) - 1``,
  ``align_corners=True``), written once on ``F.grid_sample`` and once on ``stn_triton.grid_sample``.
"""
import pytest
import torch
import torch.nn.functional as F

import stn_triton
from testing.tolerances import GRAD_PARAM_RTOL, assert_close

monai_warp = pytest.importorskip("monai.networks.blocks.warp")


@pytest.fixture
def routed(monkeypatch):
    """MONAI's Warp with its F.grid_sample call served by stn_triton.grid_sample; counts the calls."""
    calls = []

    class _F:
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
            calls.append((tuple(input.shape), mode, padding_mode))
            return stn_triton.grid_sample(input, grid, mode, padding_mode, bool(align_corners))

    monkeypatch.setattr(monai_warp, "F", _F())
    monkeypatch.setattr(monai_warp, "USE_COMPILED", False)
    return calls


def _monai(mode, padding_mode):
    with pytest.warns(UserWarning, match="native grid_sample"):
        return monai_warp.Warp(mode=mode, padding_mode=padding_mode)


def _relative(actual, expected, rtol, what):
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"{what}: {err:.3e} > {rtol:.1e} x {scale:.3e}"


@pytest.mark.parametrize("spatial", [(7, 9), (4, 5, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("mode,padding_mode", [("bilinear", "border"), ("bilinear", "zeros"),
                                               ("bilinear", "reflection"), ("nearest", "border")])
def test_monai_warp_routed_through_grid_sample(routed, spatial, mode, padding_mode, monkeypatch):
    monkeypatch.setattr(monai_warp, "USE_COMPILED", False)
    image = torch.randn(2, 3, *spatial)
    ddf = 1.5 * torch.randn(2, len(spatial), *spatial)  # displacements of a few voxels, some leave the image
    grad_out = torch.randn(2, 3, *spatial)

    def run(use_ours):
        img, d = image.clone().requires_grad_(), ddf.clone().requires_grad_()
        if use_ours:
            with stn_triton.use_backend("triton"):
                out = _monai(mode, padding_mode)(img, d)
                grads = torch.autograd.grad(out, [img, d], grad_out)
        else:
            monkeypatch.setattr(monai_warp, "F", F)
            out = _monai(mode, padding_mode)(img, d)
            grads = torch.autograd.grad(out, [img, d], grad_out)
        return out, grads

    ours, (g_img, g_ddf) = run(True)
    assert routed, "MONAI's Warp did not reach the routed grid_sample"
    ref, (r_img, r_ddf) = run(False)
    assert_close(ours, ref, torch.float32, "warped image")
    assert_close(g_img, r_img, torch.float32, "grad image")
    _relative(g_ddf, r_ddf, GRAD_PARAM_RTOL[torch.float32], "grad ddf")


def coords_grid(n, h, w):
    """RAFT's coords_grid: (N, 2, H, W) pixel coordinates, channel 0 = x (column), 1 = y (row)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys])[None].expand(n, 2, h, w)


def backwarp(img, flow, sampler):
    """RAFT-style backward warp: output pixel p samples img at p + flow(p) (pixels, align_corners=True)."""
    n, _, h, w = img.shape
    coords = (coords_grid(n, h, w) + flow).permute(0, 2, 3, 1)
    x = 2 * coords[..., 0] / (w - 1) - 1
    y = 2 * coords[..., 1] / (h - 1) - 1
    return sampler(img, torch.stack([x, y], -1), align_corners=True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_raft_style_backwarp(backend):
    img = torch.randn(2, 3, 9, 11)
    flow = 2.0 * torch.randn(2, 2, 9, 11)
    grad_out = torch.randn(2, 3, 9, 11)
    outs = []
    for sampler in (F.grid_sample, stn_triton.grid_sample):
        i, f = img.clone().requires_grad_(), flow.clone().requires_grad_()
        with stn_triton.use_backend(backend):
            out = backwarp(i, f, sampler)
            outs.append((out, torch.autograd.grad(out, [i, f], grad_out)))
    (ref, (ri, rf)), (ours, (oi, of)) = outs
    assert_close(ours, ref, torch.float32, "backwarp")
    assert_close(oi, ri, torch.float32, "grad image")
    _relative(of, rf, GRAD_PARAM_RTOL[torch.float32], "grad flow")
    # integer flow: an exact shift (the flow's sign convention: p samples p + flow)
    shift = torch.zeros(1, 2, 9, 11)
    shift[:, 0] = 2.0  # two columns to the right
    moved = backwarp(img[:1], shift, stn_triton.grid_sample)
    assert torch.allclose(moved[..., :-2], img[:1, :, :, 2:], atol=1e-5)
