"""A real client: MONAI's ``AffineTransform`` (monai.networks.layers) resamples with
``F.affine_grid`` + ``F.grid_sample``. Here its two calls are routed through ``stn_triton.warp``
(the Triton kernels, interpreted on CPU): ``affine_grid`` returns a lazy grid that carries theta,
and ``grid_sample`` of that lazy grid is ``stn_triton.warp(src, theta, size, ...)``; no grid
tensor is built. The routed module must give what unrouted MONAI gives, on the inputs of MONAI's
own tests (tests/networks/layers/test_affine_transform.py: the 3-D case's expected values are
checked too) and on random volumes, gradients included. Skipped when monai is not installed."""
import math

import pytest
import torch
import torch.nn.functional as F

import stn_triton

monai_layers = pytest.importorskip("monai.networks.layers")
AffineTransform = monai_layers.AffineTransform


class _LazyGrid:
    """What the routed affine_grid returns: theta and the output size, no grid."""

    def __init__(self, theta, size, align_corners):
        self.theta, self.size, self.align_corners = theta, tuple(size), align_corners


@pytest.fixture
def routed(monkeypatch):
    """Route F.affine_grid + F.grid_sample (as MONAI calls them) through stn_triton.warp; counts the
    routed calls. Other grid_sample calls (real grids) go to PyTorch unchanged."""
    real_grid_sample = F.grid_sample
    calls = []

    def affine_grid(theta, size, align_corners=None):
        return _LazyGrid(theta, size, bool(align_corners))

    def grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
        if not isinstance(grid, _LazyGrid):
            return real_grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        assert bool(align_corners) == grid.align_corners
        calls.append((tuple(input.shape), tuple(grid.theta.shape)))
        return stn_triton.warp(input, grid.theta, grid.size[2:], mode=mode, padding_mode=padding_mode,
                               align_corners=grid.align_corners)

    monkeypatch.setattr(F, "affine_grid", affine_grid)
    monkeypatch.setattr(F, "grid_sample", grid_sample)
    with stn_triton.use_backend("triton"):
        yield calls


def _both(routed_calls, monkeypatch, make, *args):
    """(routed output, MONAI's own output) of ``make()(*args)``."""
    out = make()(*args)
    assert routed_calls, "the call was not routed through stn_triton.warp"
    monkeypatch.undo()
    return out, make()(*args)


T = math.pi / 3
IMAGE_2D = torch.tensor([[[[4.0, 1.0, 3.0, 2.0], [7.0, 6.0, 8.0, 5.0], [3.0, 5.0, 3.0, 6.0]]]])
ROT_2D = torch.tensor([[math.cos(T), -math.sin(T), 0], [math.sin(T), math.cos(T), 0], [0, 0, 1]])
ROT_3D = torch.tensor([[1, 0, 0, 0], [0.0, math.cos(T), -math.sin(T), 0], [0, math.sin(T), math.cos(T), 0],
                       [0, 0, 0, 1]])

MONAI_CASES = [  # (module factory, image, affine, output size or None): MONAI's test inputs
    pytest.param(lambda: AffineTransform(align_corners=False), IMAGE_2D,
                 torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]), None, id="shift-y"),
    pytest.param(lambda: AffineTransform(align_corners=False), IMAGE_2D,
                 torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]), None, id="shift-xy"),
    pytest.param(lambda: AffineTransform((3, 2), align_corners=False), torch.arange(1.0, 13.0).view(1, 1, 3, 4),
                 torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), None, id="zoom"),
    pytest.param(lambda: AffineTransform(), torch.arange(1.0, 13.0).view(1, 1, 3, 4),
                 torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (1, 4), id="zoom_1"),
    pytest.param(lambda: AffineTransform((1, 2), zero_centered=True), torch.arange(1.0, 13.0).view(1, 1, 3, 4),
                 torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), None, id="zoom_zero_center"),
    pytest.param(lambda: AffineTransform(align_corners=False), torch.arange(24.0).view(1, 1, 4, 6), ROT_2D, None,
                 id="rotation"),
    pytest.param(lambda: AffineTransform((3, 4), padding_mode="border", align_corners=False, mode="bilinear"),
                 torch.arange(24.0).view(1, 1, 4, 6), ROT_2D, None, id="rotation-border"),
    pytest.param(lambda: AffineTransform((3, 4, 2), padding_mode="border", align_corners=False, mode="bilinear"),
                 torch.arange(48.0).view(2, 1, 4, 2, 3), ROT_3D, None, id="3d-rotation-border"),
]


# MONAI's own reference path calls F.affine_grid on unit-size grids for the zoom cases, which PyTorch warns about
@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed:UserWarning")
@pytest.mark.parametrize("make,image,affine,size", MONAI_CASES)
def test_routed_affine_transform_matches_monai(routed, monkeypatch, make, image, affine, size):
    args = (image, affine) if size is None else (image, affine, size)
    ours, theirs = _both(routed, monkeypatch, make, *args)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_routed_3d_case_reproduces_monais_expected_values(routed):
    out = AffineTransform((3, 4, 2), padding_mode="border", align_corners=False, mode="bilinear")(
        torch.arange(48.0).view(2, 1, 4, 2, 3), ROT_3D)
    assert routed == [((2, 1, 4, 2, 3), (2, 3, 4))]
    expected = torch.tensor([  # MONAI's expected output for this input
        [[[[0.00000006, 0.5000001], [2.3660254, 1.3660254], [4.732051, 2.4019241], [5.0, 3.9019237]],
          [[6.0, 6.5], [8.366026, 7.3660254], [10.732051, 8.401924], [11.0, 9.901924]],
          [[12.0, 12.5], [14.366026, 13.366025], [16.732052, 14.401924], [17.0, 15.901923]]]],
        [[[[24.0, 24.5], [26.366024, 25.366024], [28.732052, 26.401924], [29.0, 27.901924]],
          [[30.0, 30.5], [32.366028, 31.366026], [34.732048, 32.401924], [35.0, 33.901924]],
          [[36.0, 36.5], [38.366024, 37.366024], [40.73205, 38.401924], [41.0, 39.901924]]]],
    ])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode,padding_mode", [("bilinear", "zeros"), ("nearest", "reflection"),
                                               ("bilinear", "border")])
@pytest.mark.parametrize("normalized", [False, True])
def test_routed_random_volumes_and_gradients(routed, monkeypatch, mode, padding_mode, normalized):
    """Random (N, C, D, H, W) volumes and 4x4 affines (pixel or normalised coordinates), an output
    size of its own, and gradients to the image and the affine through the routed op."""
    image = torch.randn(2, 2, 3, 4, 5)
    affine = torch.eye(4).repeat(2, 1, 1)
    affine[:, :3] += 0.2 * torch.randn(2, 3, 4)

    def run():
        img, aff = image.clone().requires_grad_(), affine.clone().requires_grad_()
        xform = AffineTransform((3, 2, 5), normalized=normalized, mode=mode, padding_mode=padding_mode,
                                align_corners=True)
        out = xform(img, aff)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), [img, aff],
                                    allow_unused=True)
        return out, grads

    ours, ours_grads = run()
    assert routed
    monkeypatch.undo()
    theirs, their_grads = run()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours_grads, their_grads):
        if b is None:
            assert a is None or torch.all(a == 0)
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
