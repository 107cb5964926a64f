"""stn_triton.params.from_pixels / to_pixels (issue #26 item 6): a pixel-space matrix as OpenCV and
kornia take it (source pixels -> destination pixels) becomes the theta of stn_triton.warp.
``warp(src, from_pixels(M, src.shape[-2:], dsize), dsize)`` must equal kornia's ``warp_affine`` /
``warp_perspective`` (checked on both backends, bilinear and nearest, both align_corners); the
pixel conventions themselves are checked by hand. kornia is a test dependency (skipped without it)."""
import math

import pytest
import torch

import stn_triton
from stn_triton.params import from_pixels, to_pixels

kornia = pytest.importorskip("kornia")


def _affine(n=2, dtype=torch.float64):
    c, s = math.cos(0.3), math.sin(0.3)
    m = torch.tensor([[c * 1.1, -s, 3.0], [s, c * 0.9, -2.0]], dtype=dtype)[None].repeat(n, 1, 1)
    m[1:, :, 2] += torch.tensor([1.5, 0.7], dtype=dtype)
    return m


def _projective(n=2, dtype=torch.float64):
    h = torch.eye(3, dtype=dtype)[None].repeat(n, 1, 1)
    h[:, :2] = _affine(n, dtype)
    h[:, 2, :2] = torch.tensor([0.002, -0.003], dtype=dtype)
    return h


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_matches_kornia(backend, mode, align_corners, kind):
    src = torch.rand(2, 3, 13, 17, dtype=torch.float64)
    dsize = (11, 19)
    m = _affine() if kind == "affine" else _projective()
    kwarp = kornia.geometry.transform.warp_affine if kind == "affine" else kornia.geometry.transform.warp_perspective
    ref = kwarp(src, m, dsize, mode=mode, align_corners=align_corners)
    theta = from_pixels(m, src.shape[-2:], dsize, align_corners=align_corners)
    assert theta.shape == ((2, 2, 3) if kind == "affine" else (2, 3, 3)) and theta.dtype == m.dtype
    with stn_triton.use_backend(backend):
        ours = stn_triton.warp(src, theta, dsize, mode=mode, align_corners=align_corners)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    # to_pixels inverts it (projective matrices up to scale: normalised to [2, 2] = 1)
    back = to_pixels(theta, src.shape[-2:], dsize, align_corners=align_corners)
    torch.testing.assert_close(back, m if kind == "affine" else m / m[:, 2:, 2:], atol=1e-12, rtol=1e-12)


def test_pixel_conventions_by_hand():
    # the identity in pixels between equal sizes is the identity theta, for either align_corners
    for ac in (False, True):
        theta = from_pixels(torch.eye(2, 3), (5, 7), (5, 7), align_corners=ac)
        torch.testing.assert_close(theta, torch.eye(2, 3)[None])
    # a shift of the image by +2 columns: destination pixel (x, y) shows source pixel (x - 2, y)
    src = torch.rand(1, 1, 6, 9, dtype=torch.float64)
    m = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for ac in (False, True):
        out = stn_triton.warp(src, from_pixels(m, (6, 9), (6, 9), align_corners=ac), (6, 9), align_corners=ac)
        torch.testing.assert_close(out[..., 2:], src[..., :-2], atol=1e-12, rtol=0)
        assert not out[..., :2].any()
    # a single m (2, 3) is a batch of one
    assert from_pixels(m, (6, 9), (6, 9)).shape == (1, 2, 3)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 2, 3\).*got \(2, 4\)"):
        from_pixels(torch.zeros(2, 4), (4, 4), (4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        from_pixels(torch.eye(3, dtype=torch.int64), (4, 4), (4, 4))
    with pytest.raises(ValueError, match="in_size must be"):
        from_pixels(torch.eye(3), (4, 0), (4, 4))
    with pytest.raises(ValueError, match="singular"):
        from_pixels(torch.zeros(2, 3), (4, 4), (4, 4))
    with pytest.raises(TypeError, match="align_corners"):
        to_pixels(torch.eye(2, 3)[None], (4, 4), (4, 4), align_corners=1)
