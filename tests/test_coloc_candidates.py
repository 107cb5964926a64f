"""repro.colocalisation.candidates: the candidate windows are the pixels, the fully convolutional scorer is the
per-window localisation net, the relaxed loss is eq. (1) at one-hot choices, and a small run."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from repro.colocalisation import candidates as cc, recipe
from repro.colocalisation.encoder import triplet_loss
from repro.colocalisation.geometry import window_theta

pytestmark = pytest.mark.usefixtures("one_thread")


def test_candidate_positions_and_bad_stride():
    p = cc.candidate_positions(4)
    assert p.shape == (225, 2) and p[0].tolist() == [0, 0] and p[1].tolist() == [4, 0] and p[-1].tolist() == [56, 56]
    assert cc.candidate_positions(8).shape == (64, 2)
    for bad in (0, 3, 6):
        with pytest.raises(ValueError, match="multiple of 4"):
            cc.candidate_positions(bad)


def test_candidate_crops_are_the_pixels():
    x = torch.rand(2, 1, 84, 84)
    crops = cc.candidate_crops(x, 8)
    for n in range(2):
        for k, (px, py) in enumerate(cc.candidate_positions(8).int().tolist()):
            torch.testing.assert_close(crops[n, k], x[n, :, py:py + 28, px:px + 28], atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", [4, 8])
def test_scorer_is_the_localisation_net_on_every_window(stride):
    # the fully convolutional features equal conv 9x9/4 - ReLU - max-pool 2 run on each 28 px crop
    torch.manual_seed(0)
    x = torch.rand(2, 1, 84, 84)
    sc = cc.CandidateScorer(stride)
    feats = sc.window_features(x)  # (N, 32, G, G)
    g = (84 - 28) // stride + 1
    assert feats.shape == (2, 32, g, g)
    crops = cc.candidate_crops(x, stride)  # (N, G*G, 1, 28, 28)
    per = F.max_pool2d(F.relu(sc.conv(crops.flatten(0, 1))), 2)  # (N*G*G, 8, 2, 2)
    per = per.reshape(2, g, g, 8, 2, 2).permute(0, 4, 5, 3, 1, 2).reshape(2, 32, g, g)  # part-major, as the scorer
    torch.testing.assert_close(feats, per, rtol=0, atol=1e-4)  # the crops carry the warp's ~1e-5 coordinate rounding


def test_localiser_starts_at_the_centre_window():
    loc = cc.CandidateLocaliser(4)
    x = torch.rand(3, 1, 84, 84)
    p = loc.probs(x)
    torch.testing.assert_close(p, torch.full_like(p, 1 / 225))
    th = loc.theta(x)
    torch.testing.assert_close(th, window_theta(torch.full((3,), 1 / 3), torch.zeros(3, 2)), atol=1e-6, rtol=0)
    crop, _ = loc(x)
    torch.testing.assert_close(crop, x[:, :, 28:56, 28:56], atol=1e-4, rtol=0)


def test_relaxed_loss_is_eq1_at_one_hot_choices():
    torch.manual_seed(1)
    b, k, d = 5, 9, 7
    fn, fm = torch.randn(b, k, d), torch.randn(b, k, d)
    r = torch.randint(0, k, (b,))
    fr = fn[torch.arange(b), r]
    h = cc.pair_hinges(fn, fm, fr, alpha=1.0)
    ii, jj = torch.randint(0, k, (b,)), torch.randint(0, k, (b,))
    direct = triplet_loss(fn[torch.arange(b), ii], fm[torch.arange(b), jj], fr, 1.0)
    torch.testing.assert_close(h[torch.arange(b), ii, jj].mean(), direct, rtol=1e-5, atol=1e-5)
    p, q = F.one_hot(ii, k).float(), F.one_hot(jj, k).float()
    torch.testing.assert_close(cc.relaxed_loss(h, p, q, tau=0.3), direct, rtol=1e-5, atol=1e-5)
    # with q uniform the soft-min picks the anchor window's best match as tau -> 0
    best = h[torch.arange(b), ii].min(1).values.mean()
    torch.testing.assert_close(cc.relaxed_loss(h, p, torch.full((b, k), 1 / k), tau=1e-4), best, rtol=1e-4, atol=1e-4)


def test_small_run_is_deterministic_and_complete():
    from repro.data import colocalisation_set
    from repro.distorted_mnist.recipe import build_model

    ds = colocalisation_set("TC", 3, seed=0, n=6)
    torch.manual_seed(0)
    enc = build_model("R", "cnn")
    prof = replace(recipe.PROFILES["full"], steps=5, batch=2, pca_dims=16, cand_stride=8,
                   snapshot_every=1)
    a = cc.colocalise_candidates(ds.images, ds.boxes, enc, prof, log=None)
    b = cc.colocalise_candidates(ds.images, ds.boxes, enc, prof, log=None)
    assert a["final_boxes"] == b["final_boxes"] and a["loss_history"] == b["loss_history"]
    assert a["steps"] == 5 and len(a["snapshots"]) == 6 and a["candidates"] == 64
    assert 0 <= a["localised_pct"] <= 100 and 0 <= a["pca_median_rel_error"] < 1
    assert all(abs((x1 - x0) - 28) < 1e-3 for x0, _, x1, _ in a["final_boxes"])  # always the 28 px window
