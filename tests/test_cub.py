"""BN-Inception, the CUB multi-stream ST network (supplement 1.5) and the recipe's smoke run."""
import json

import pytest
import torch

from stn_triton.models import cub, inception_bn


pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_count(module_fn):
    with torch.device("meta"):
        m = module_fn()
    return sum(p.numel() for p in m.parameters())


def test_bn_inception_full_size():
    # GoogLeNet-BN (Ioffe & Szegedy 2015): 11,295,240 parameters with the 1000-way classifier
    assert _meta_count(lambda: inception_bn.BNInception(1000)) == 11_295_240
    assert _meta_count(lambda: inception_bn.BNInception(None)) == 11_295_240 - (1024 * 1000 + 1000)
    with torch.device("meta"):
        net = inception_bn.BNInception(None)
        assert net.out_dim == 1024
        assert net.features(torch.empty(2, 3, 224, 224)).shape == (2, 1024, 7, 7)
        assert net(torch.empty(2, 3, 224, 224)).shape == (2, 1024)


@pytest.mark.parametrize("n_st,size", [(0, 224), (2, 224), (2, 448), (4, 448)])
def test_cub_full_size_param_counts(n_st, size):
    trunk = 10_270_240
    streams = max(n_st, 1)
    expected = streams * trunk + (streams * 1024 + 1) * 200
    if n_st:  # localisation: trunk + conv1x1 1024->128 + fc 128*7*7->128 + fc 128->2N
        expected += trunk + (1024 * 128 + 128) + (128 * 49 * 128 + 128) + (128 * 2 * n_st + 2 * n_st)
    assert _meta_count(lambda: cub.CUBSTNet(n_st, input_size=size)) == expected
    assert cub.expected_param_count(n_st, size) == expected


def test_cub_full_size_shapes_on_meta():
    with torch.device("meta"):
        m = cub.CUBSTNet(4, input_size=448)
        x = torch.empty(2, 3, 448, 448)
        xn = m.norm(x)
        theta = m.thetas(xn)
        assert theta.shape == (2, 4, 2, 3)
        assert m.loc_trunk.features(torch.nn.functional.avg_pool2d(xn, 2)).shape == (2, 1024, 7, 7)


def _tiny(n_st=2, **kw):
    return cub.CUBSTNet(n_st, input_size=64, crop_size=32, width=1 / 16, num_classes=7, **kw)


def test_tiling_init_and_forward():
    assert cub.tile_centres(4) == [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]
    assert cub.tile_centres(2) == [(-0.5, 0.0), (0.5, 0.0)]
    m = _tiny(4)
    x = torch.rand(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 7)
    th = m.last_thetas
    for i, (cx, cy) in enumerate(cub.tile_centres(4)):
        torch.testing.assert_close(th[:, i], torch.tensor([[0.5, 0, cx], [0, 0.5, cy]]).expand(2, 2, 3))
    # the top-left crop at init is exactly the top-left quadrant of the (normalised) image
    crops, _ = m.crops(x)
    assert crops[0].shape == (2, 3, 32, 32)
    torch.testing.assert_close(crops[0], m.norm(x)[..., :32, :32], atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert m.loc.regressor.bias.grad is not None and m.loc.regressor.bias.grad.abs().sum() > 0


def test_localisation_gets_the_loc_lr():
    from repro.harness.loop import make_optimizer
    from repro.harness.profile import Profile

    m = _tiny(2)
    opt = make_optimizer(m, Profile("t", steps=1, batch_size=1, lr=0.01, loc_lr_mult=1e-3))
    groups = {g["lr_mult"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert groups[1e-3] == sum(p.numel() for p in m.loc_parameters()) > 0


def test_cnn_baseline_tiny():
    m = cub.CUBSTNet(0, input_size=32, crop_size=32, width=1 / 16, num_classes=7)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert m.last_thetas is None


def test_load_generated_full_size_state_dict(tmp_path):
    sd = inception_bn.make_state_dict(1000, bn_row_vectors=True)  # (1, C) BN vectors, as some ports store
    sd = {"module." + k: v for k, v in sd.items()}
    path = tmp_path / "bn_inception.pth"
    torch.save({"state_dict": sd}, path)
    net = inception_bn.BNInception(None)
    info = net.load_pretrained(str(path))
    assert info["ignored"] == ["last_linear.weight", "last_linear.bias"]
    torch.testing.assert_close(net.inception_5b_pool_proj.weight, sd["module.inception_5b_pool_proj.weight"])
    torch.testing.assert_close(net.conv1_7x7_s2_bn.running_var, sd["module.conv1_7x7_s2_bn.running_var"].view(-1))
    with_cls = inception_bn.BNInception(1000)
    with_cls.load_pretrained(str(path))
    torch.testing.assert_close(with_cls.last_linear.weight, sd["module.last_linear.weight"])


def test_load_errors_list_keys():
    sd = inception_bn.make_state_dict(None)
    sd.pop("inception_4a_1x1.weight")
    sd["inception_9z_1x1.weight"] = torch.zeros(3)
    sd["conv2_3x3.weight"] = torch.zeros(5, 5, 3, 3)
    net = inception_bn.BNInception(None)
    with pytest.raises(inception_bn.PretrainedLayoutError) as e:
        net.load_pretrained(sd)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "inception_4a_1x1.weight" in msg
    assert "unexpected keys (1)" in msg and "inception_9z_1x1.weight" in msg
    assert "conv2_3x3.weight: file (5, 5, 3, 3) vs model (192, 64, 3, 3)" in msg
    with pytest.raises(FileNotFoundError):
        net.load_pretrained("/nonexistent/weights.pth")


def test_cub_model_loads_into_every_trunk():
    sd = inception_bn.BNInception(None, width=1 / 16).state_dict()
    m = _tiny(2)
    m.load_pretrained(sd)
    for t in m.trunk_modules():
        torch.testing.assert_close(t.conv1_7x7_s2.weight, sd["conv1_7x7_s2.weight"])
    assert m.loc.regressor.weight.abs().sum() == 0  # tiling init untouched


def test_ten_views_and_posterior_average():
    img = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    v = cub.ten_views(img, 4)
    assert v.shape == (2, 10, 3, 4, 4)
    torch.testing.assert_close(v[:, 0], img[..., :4, :4])
    torch.testing.assert_close(v[:, 5], img[..., :4, :4].flip(-1))
    m = _tiny(2).eval()
    p = cub.predict_views(m, torch.rand(2, 10, 3, 64, 64))
    torch.testing.assert_close(p.sum(1), torch.ones(2))


def _fake_cub(root, classes=3, train=3, test=2):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    lines_img, lines_lab, lines_split = [], [], []
    k = 0
    for c in range(classes):
        d = root / "images" / f"{c + 1:03d}.Bird_{c}"
        d.mkdir(parents=True)
        for j in range(train + test):
            k += 1
            w, h = 70 + 5 * j, 66 + 3 * c
            arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(d / f"img_{j}.jpg")
            lines_img.append(f"{k} {d.name}/img_{j}.jpg")
            lines_lab.append(f"{k} {c + 1}")
            lines_split.append(f"{k} {1 if j < train else 0}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    return root


def test_recipe_smoke_fake_cub(tmp_path):
    pytest.importorskip("PIL")
    import repro.cub.__main__ as recipe

    data = _fake_cub(tmp_path / "CUB_200_2011")
    w = tmp_path / "w.pth"
    torch.save(inception_bn.BNInception(1000, width=1 / 16).state_dict(), w)  # right layout at this width
    out = tmp_path / "run"
    args = ["--data", str(data), "--weights", str(w), "--n-st", "2", "--input", "64", "--crop", "32",
            "--width", "0.0625", "--workers", "0", "--profile", "smoke", "--out", str(out), "--no-progress"]
    assert recipe.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    r = res["models"]["2xst-cnn"]
    assert 0 <= r["error"] <= 100 and r["iterations"] == 3
    assert (out / "transformers.png").exists()
    assert (out / "2xst-cnn" / "seed0" / "checkpoint.pt").exists()
    # a weights file of the wrong layout is refused before training, listing the keys
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(1)}, bad)
    assert recipe.main(args[:2] + ["--weights", str(bad)] + args[4:]) == 2
