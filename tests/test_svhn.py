"""SVHN networks (supplement 1.4), the synthetic stand-in and the recipe's smoke run."""
import json

import pytest
import torch

from stn_triton.models import svhn


pytestmark = pytest.mark.usefixtures("one_thread")


def _conv(ci, co):
    return 25 * ci * co + co


def _lin(i, o):
    return i * o + o


def test_paper_cnn_param_count_by_hand():
    # conv[48]-max-conv[64]-conv[128]-max-conv[160]-conv[192]-max-conv[192]-conv[192]-max-conv[192]
    # (5x5 everywhere) -> 4x4x192 = 3072 at 64 px -> fc[3072] x3 -> 5 x fc[11]
    convs = _conv(3, 48) + _conv(48, 64) + _conv(64, 128) + _conv(128, 160) + _conv(160, 192) + 3 * _conv(192, 192)
    fcs = 3 * _lin(3072, 3072)
    heads = 5 * _lin(3072, 11)
    assert convs + fcs + heads == 32_820_951
    assert svhn.meta_param_count("cnn", in_size=64) == 32_820_951


def test_paper_st_param_counts_by_hand():
    cnn64 = 32_820_951
    # ST-CNN Single: conv[32,5]-max-conv[32,5]-fc[32]-fc[32]-fc[6] on the 64x64x3 image
    single = _conv(3, 32) + _conv(32, 32) + _lin(32 * 32 * 32, 32) + _lin(32, 32) + _lin(32, 6)
    assert svhn.meta_param_count("st-single", in_size=64) == cnn64 + single
    # ST-CNN Multi: fc[32]-fc[32]-fc[6] on 64x64x3, 32x32x48, 32x32x64, 16x16x128 inputs
    multi = sum(_lin(f, 32) + _lin(32, 32) + _lin(32, 6) for f in (64 * 64 * 3, 32 * 32 * 48, 32 * 32 * 64, 16 * 16 * 128))
    assert svhn.meta_param_count("st-multi", in_size=64) == cnn64 + multi


@pytest.mark.parametrize("model", svhn.MODELS)
@pytest.mark.parametrize("size", [64, 128])
def test_full_size_param_counts_match_closed_form(model, size):
    assert svhn.meta_param_count(model, in_size=size) == svhn.expected_param_count(model, in_size=size)


@pytest.mark.parametrize("model", svhn.MODELS)
def test_tiny_forward_backward_and_counts(model):
    net = svhn.SVHNNet(model, in_size=32, width=0.125)
    assert svhn.count_params(net) == svhn.expected_param_count(model, in_size=32, width=0.125)
    x = torch.randn(3, 3, 32, 32)
    y = svhn.encode_labels([[1, 2], [0], [9, 9, 9, 9, 9]])
    out = net(x)
    assert out.shape == (3, 5, 11)
    loss = svhn.svhn_loss(out, y)
    loss.backward()
    assert torch.isfinite(loss)
    n_st = {"cnn": 0, "st-single": 1, "st-multi": 4}[model]
    assert len(net.last_thetas) == n_st
    for st in net.sts.values():  # gradients reach the localisation nets through the warp
        assert st.regressor.bias.grad is not None and st.regressor.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("model", ["st-single", "st-multi"])
def test_identity_init(model):
    net = svhn.SVHNNet(model, in_size=32, width=0.125).eval()
    eye = torch.eye(2, 3)
    x = torch.randn(2, 3, 32, 32)
    net(x)
    for th in net.last_thetas:
        torch.testing.assert_close(th, eye.expand_as(th))
    # each transformer is the identity map on its input (multi-channel feature maps included)
    seen = []

    def hook(module, inp, out):
        seen.append(inp[0].shape[1])
        torch.testing.assert_close(out[0], inp[0], atol=1e-5, rtol=1e-5)

    hs = [st.register_forward_hook(hook) for st in net.sts.values()]
    net(x)
    for h in hs:
        h.remove()
    assert seen == ([3] if model == "st-single" else [3, 6, 8, 16])  # width 0.125 of 3, 48, 64, 128


def test_multi_warps_feature_maps_with_many_channels():
    net = svhn.SVHNNet("st-multi", in_size=64, width=1.0)  # the paper's widths: 3, 48, 64, 128 channels
    ins = [st.loc_net[1].in_features for st in net.sts.values()]
    assert ins == [3 * 64 * 64, 48 * 32 * 32, 64 * 32 * 32, 128 * 16 * 16]


def test_length_head_option():
    net = svhn.SVHNNet("cnn", in_size=32, width=0.125, length_head=True)
    digits, length = net(torch.randn(2, 3, 32, 32))
    assert digits.shape == (2, 5, 11) and length.shape == (2, 7)
    y = svhn.encode_labels([[3, 1], [7, 7, 7]])
    assert svhn.labels_to_lengths(y).tolist() == [2, 3]
    svhn.svhn_loss((digits, length), y).backward()


def test_sequence_metric():
    y = svhn.encode_labels([[1, 2], [3]])
    logits = torch.full((2, 5, 11), -5.0)
    logits.scatter_(2, y[..., None], 5.0)
    assert svhn.sequence_correct(logits, y).tolist() == [True, True]
    logits[1, 1] = 0
    logits[1, 1, 4] = 9  # predicts a second digit where there is none
    assert svhn.sequence_correct(logits, y).tolist() == [True, False]


def test_loc_lr_groups_via_harness():
    from repro.harness.loop import make_optimizer
    from repro.harness.profile import Profile

    net = svhn.SVHNNet("st-multi", in_size=32, width=0.125)
    opt = make_optimizer(net, Profile("t", steps=1, batch_size=1, lr=0.01, loc_lr_mult=0.1))
    groups = {g["lr_mult"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert groups[0.1] == sum(p.numel() for p in net.loc_parameters())


def test_synthetic_standin_format():
    from repro.svhn import synthetic as ss

    g = torch.Generator().manual_seed(0)
    pool = (torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (50,)))
    d = ss.make("train", 40, 32, seed=3, mnist=pool)
    assert d.images.shape == (40, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.labels.shape == (40, 5) and d.lengths.min() >= 1 and d.lengths.max() <= 5
    assert torch.equal(svhn.labels_to_lengths(d.labels), d.lengths)
    d2 = ss.make("train", 40, 32, seed=3, mnist=pool)
    assert torch.equal(d.images, d2.images) and torch.equal(d.labels, d2.labels)  # deterministic
    del g


def test_recipe_smoke_synthetic(tmp_path, monkeypatch):
    """The recipe end to end on a tiny stand-in: training, checkpoints, resume, results, figure."""
    import repro.svhn.__main__ as recipe
    from repro.svhn import synthetic as ss

    pool = (torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (100,)))
    monkeypatch.setattr(recipe, "synthetic_splits",
                        lambda size, sizes, seed=0: ss.make_splits(size, 48, 16, 32, seed, pool, pool))
    out = tmp_path / "run"
    args = ["--synthetic", "--profile", "smoke", "--model", "cnn,st-multi", "--steps", "4", "--batch-size", "8",
            "--out", str(out), "--no-progress", "--log-every", "2"]
    assert recipe.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"cnn", "st-multi"}
    assert 0 <= res["models"]["st-multi"]["error"] <= 100
    assert "NOT on SVHN" in (out / "results.md").read_text()
    assert (out / "transformers.png").exists()
    assert (out / "st-multi" / "seed0" / "checkpoint.pt").exists()
    assert recipe.main(args + ["--resume"]) == 0  # finished runs are skipped


def test_benchmark_smoke(tmp_path):
    from repro.svhn.benchmark import benchmark

    res = benchmark(tmp_path, size=32, width=0.125, batch=2, steps=1, device="cpu", warmup=1)
    assert set(res["relative_to_cnn_min"]) == set(svhn.MODELS)
    assert (tmp_path / "timing.md").exists()


def test_recipe_smoke_real_format(tmp_path, monkeypatch):
    """``--data DIR`` on a tiny fake SVHN format-1 folder (digitStruct.mat, PNGs) via repro.data.svhn."""
    pytest.importorskip("h5py")
    pytest.importorskip("PIL")
    import repro.svhn.__main__ as recipe
    from testing.fake_svhn import fake_svhn

    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path / "cache"))
    data = fake_svhn(tmp_path / "svhn", n_train=12, n_test=6)
    out = tmp_path / "run"
    args = ["--data", str(data), "--size", "32", "--val-size", "2", "--profile", "smoke", "--model", "st-single",
            "--steps", "2", "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert recipe.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == "svhn32" and "st-single" in res["models"]
    md = (out / "results.md").read_text()
    assert "trained on `train`" in md and "NOT on SVHN" not in md
