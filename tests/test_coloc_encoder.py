"""repro.coloc_encoder: the shift and scale augmentations by hand, the spec hash, train-once-then-load from the
cache, a damaged cache refused; (slow) the default spec's test error."""
import pytest
import torch

from repro import coloc_encoder as ce
from repro.harness.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shifted_by_hand():
    x = torch.zeros(2, 1, 28, 28)
    x[:, 0, 10, 12] = 1.0
    # pad 2: output pixel (r, c) = input pixel (r + s_y - 2, c + s_x - 2), s = (s_x, s_y)
    y = ce.shifted(x, torch.tensor([[0, 4], [2, 2]]), 2)
    assert y.shape == (2, 1, 28, 28)
    assert y[0, 0, 8, 14] == 1.0 and y[0].sum() == 1.0  # s = (0, 4): content moves +2 px in x, -2 px in y
    assert torch.equal(y[1], x[1])  # s = (2, 2): no shift
    edge = torch.zeros(1, 1, 28, 28)
    edge[0, 0, 0, 0] = 1.0
    assert ce.shifted(edge, torch.tensor([[4, 4]]), 2).sum() == 0  # moved out of the frame: zero filled


def test_rescaled_by_hand():
    """A full-frame square shrunk to half size at centre (0.5, -0.5) covers x in [0, 1], y in [-1, 0]
    (normalised): pixels 14..27 in x, 0..13 in y, and keeps its ink / size^2."""
    x = torch.ones(1, 1, 28, 28)
    y = ce.rescaled(x, torch.tensor([0.5]), torch.tensor([[0.5, -0.5]]))
    inside = y[0, 0, 1:13, 15:27]
    assert torch.allclose(inside, torch.ones_like(inside))
    assert y[0, 0, :, :13].abs().max() == 0 and y[0, 0, 15:, :].abs().max() == 0
    assert torch.isclose(y.sum(), torch.tensor(28 * 28 * 0.25), rtol=0.05)
    same = ce.rescaled(x, torch.tensor([1.0]), torch.zeros(1, 2))
    assert torch.allclose(same, x)


def test_scale_augment_keeps_the_digit_in_frame():
    """Under augment='scale' no ink is lost past the frame beyond the +-shift px jitter's reach, and
    the digits come out smaller on average (ink ~ size^2, mean size 2/3 -> ~0.48 of the ink)."""
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 4:24, 4:24] = 1.0  # an MNIST-like 20 px core with a 4 px empty border
    spec = ce.EncoderSpec(shift=0)
    y = ce.augmented(x, spec, torch.Generator().manual_seed(0))
    ratio = y.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert 0.3 < ratio.mean() < 0.65 and ratio.max() <= 1.0 + 1e-4
    assert (ratio >= (1 / 3) ** 2 * 0.9).all()  # nothing shrank below scale_min or fell out of the frame
    with pytest.raises(ValueError, match="augment"):
        ce.EncoderSpec(augment="blur", steps=1)
    with pytest.raises(ValueError, match="scale_min"):
        ce.EncoderSpec(scale_min=0)


def test_tc_windows_centre_on_the_digit_box():
    """augment='tc-window': with no jitter and the digit filling the whole window, the window is the
    digit's 28x28 box, pixel for pixel (integer-aligned bilinear taps); a digit filling 1/2 of the
    window sees a window twice the box's side around the same centre."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 84, 84, generator=g)
    boxes = torch.tensor([[10.0, 20, 38, 48], [56, 0, 84, 28]])
    exact = ce.tc_windows(img, boxes, ce.EncoderSpec(shift=0, scale_min=1.0, augment="tc-window"), g)
    torch.testing.assert_close(exact[0], img[0, :, 20:48, 10:38], atol=1e-5, rtol=0)
    torch.testing.assert_close(exact[1], img[1, :, 0:28, 56:84], atol=1e-5, rtol=0)
    half = ce.tc_windows(torch.ones(1, 1, 84, 84), torch.tensor([[28.0, 28, 56, 56]]),
                         ce.EncoderSpec(shift=0, scale_min=0.5, augment="tc-window"), torch.Generator())
    # the scale is drawn in [0.5, 1]: the window spans 28..56 px of canvas, all inside: all ones
    assert torch.allclose(half, torch.ones_like(half), atol=1e-5)


def test_spec_hash_and_cache_file(tmp_path):
    a, b = ce.EncoderSpec(), ce.EncoderSpec(steps=1499)
    assert ce.spec_hash(a) == ce.spec_hash(ce.EncoderSpec()) != ce.spec_hash(b)
    assert ce.spec_hash(a) != ce.spec_hash(ce.EncoderSpec(seed=1)) != ce.spec_hash(ce.EncoderSpec(shift=0))
    assert ce.spec_hash(a) != ce.spec_hash(ce.EncoderSpec(augment="shift"))
    assert ce.cache_file(a, tmp_path).parent == tmp_path / "encoders"


@pytest.mark.parametrize("augment", ce.AUGMENTS)
def test_train_once_then_load(tmp_path, capsys, augment):
    spec = ce.EncoderSpec(steps=3, batch=16, augment=augment)
    m1, info = ce.digit_encoder(spec, cache_dir=tmp_path, progress=False)
    path = ce.cache_file(spec, tmp_path)
    assert path.is_file() and info["steps"] == 3 and 0 <= info["test_error_pct"] <= 100
    assert 0 <= info["augmented_test_error_pct"] <= 100 and info["augment"] == augment
    assert info["params"] == sum(p.numel() for p in m1.parameters())
    m2, info2 = ce.digit_encoder(spec, cache_dir=tmp_path, progress=False)  # loaded, not retrained
    assert info2["wall_time_s"] == info["wall_time_s"] and info2["cache"] == str(path)
    for p, q in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p, q)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=str(path)):
        ce.digit_encoder(spec, cache_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_default_encoder_classifies(tmp_path):
    """The default spec (2,000 Adam steps, scale augmentation) reaches < 2.5 % error on the full-size MNIST
    test digits (measured 1.75 %)."""
    _, info = ce.digit_encoder(cache_dir=tmp_path, progress=False)
    assert info["test_error_pct"] < 2.5
