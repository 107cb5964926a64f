"""repro.colocalisation (geometry, encoder, diagnose, the CLI): IoU against hand-worked boxes, attention windows as boxes, the triplet loss
against a direct evaluation of supplement eq. (1), the localiser / descriptor shapes, a smoke run."""
import itertools
import json

import pytest
import torch

from repro.colocalisation import diagnose as dg, encoder as en, geometry as geo, recipe
from repro.colocalisation.__main__ import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),          # identical
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),        # overlap 1, union 4 + 4 - 1
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),       # contained
    ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),          # touching edges
    ((0, 0, 1, 1), (5, 5, 6, 6), 0.0),          # disjoint
    ((0, 0, 28, 28), (14, 0, 42, 28), 1 / 3),   # half a digit box off: 392 / 1176
    ((10, 20, 38, 48), (12, 22, 40, 50), 676 / 892),  # 26*26 / (2*784 - 676)
])
def test_iou_hand_worked(a, b, expected):
    got = geo.iou(torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert geo.iou(torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)).item() == pytest.approx(expected, abs=1e-6)


def test_attention_box():
    from stn_triton.params import attention

    th = attention(torch.tensor([[0.0, 0.0, 0.0], [1 / 3 - 1, 0.0, 0.0], [-0.5, 0.5, -0.25]]))
    boxes = geo.attention_box(th, 84, 84)
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0, 84, 84]))
    assert torch.allclose(boxes[1], torch.tensor([28.0, 28, 56, 56]), atol=1e-4)
    # s = 0.5, tx = 0.5 -> x in [0, 1] -> [42, 84]; ty = -0.25 -> y in [-0.75, 0.25] -> [10.5, 52.5]
    assert torch.allclose(boxes[2], torch.tensor([42.0, 10.5, 84, 52.5]), atol=1e-4)


def test_triplet_loss_matches_eq1_direct():
    """sum_n sum_{m != n} max(0, |e(I_n^T) - e(I_m^T)|^2 - |e(I_n^T) - e(I_n^rand)|^2 + alpha), evaluated
    by loops over a tiny data set of N = 4 (descriptors scaled so some terms are active, some not)."""
    g = torch.Generator().manual_seed(0)
    N, D, alpha = 4, 5, 1.0
    e_t = torch.randn(N, D, generator=g, dtype=torch.float64) * 0.6
    e_rand = torch.randn(N, D, generator=g, dtype=torch.float64) * 0.6
    direct, active = 0.0, 0
    for n in range(N):
        for m in range(N):
            if m == n:
                continue
            dp = sum((e_t[n, k].item() - e_t[m, k].item()) ** 2 for k in range(D))
            dn = sum((e_t[n, k].item() - e_rand[n, k].item()) ** 2 for k in range(D))
            direct += max(0.0, dp - dn + alpha)
            active += dp - dn + alpha > 0
    assert 0 < active < N * (N - 1)  # the hinge is exercised on both sides
    pairs = [(n, m) for n, m in itertools.product(range(N), range(N)) if n != m]
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    got = en.triplet_loss(e_t[i], e_t[j], e_rand[i], alpha, reduction="sum")
    assert got.item() == pytest.approx(direct, rel=1e-12)
    assert en.triplet_loss(e_t[i], e_t[j], e_rand[i], alpha).item() == pytest.approx(direct / len(pairs), rel=1e-12)


def test_descriptor_and_negatives():
    x = torch.rand(3, 1, 84, 84)
    y = torch.rand(3, 1, 28, 28)
    from repro.distorted_mnist import recipe as dm

    cnn = dm.build_model("P", "cnn")
    d = en.Descriptor(cnn)
    w = cnn.width
    assert d(y).shape == (3, w * 10 * 10 + w * 2 * 2 + 10)
    assert torch.allclose(d(y)[:, -10:], cnn(y))
    assert not any(p.requires_grad for p in d.parameters())
    # the negative crop shares the positive's scale, gradient included; window-inside keeps it in
    # the image, centre-inside only its centre (and so reaches windows the other cannot)
    s = torch.full((256,), 0.4, requires_grad=True)
    th_r = geo.random_crop_theta(s, torch.Generator().manual_seed(0))
    th_r[:, 0, 0].sum().backward()
    assert torch.allclose(s.grad, torch.ones(256))
    b = geo.attention_box(th_r.detach())
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    assert ((cx >= 0) & (cx <= 84) & (cy >= 0) & (cy <= 84)).all() and (b[:, 0] < 0).any() and (b[:, 2] > 84).any()


def test_frozen_conv_input_gradient_matches_conv2d():
    # the encoder's first conv computes its input gradient as matmul + fold (a 6x cheaper backward
    # on CPU): same values and gradient as the plain convolution, gradcheck-exact in float64
    conv = torch.nn.Conv2d(1, 5, 9).double()
    fc = en.FrozenConv(conv)
    x = torch.rand(2, 1, 13, 11, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(fc, (x,))
    g = torch.randn(2, 5, 5, 3, dtype=torch.float64)
    ours, = torch.autograd.grad(fc(x), x, g)
    ref, = torch.autograd.grad(conv(x), x, g)
    assert torch.allclose(ours, ref, atol=1e-12) and torch.equal(fc(x), conv(x))
    multi = torch.nn.Conv2d(3, 4, 3).double()  # several input channels: the fold sums them apart
    x3 = torch.rand(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(en.FrozenConv(multi), (x3,))
    for bad in (torch.nn.Conv2d(1, 2, 3, stride=2), torch.nn.Conv2d(1, 2, 3, padding=1)):
        assert not en.FrozenConv.fits(bad)
        with pytest.raises(ValueError, match="stride 1, no padding"):
            en.FrozenConv(bad)
    # inside the descriptor: the gradient reaching the crops is the plain CNN's
    from repro.distorted_mnist import recipe as dm

    cnn = dm.build_model("P", "cnn").double()
    d = en.Descriptor(cnn, "layer-l2")
    assert isinstance(d.h1[0], en.FrozenConv)
    y = torch.rand(3, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    ours, = torch.autograd.grad(d(y).pow(2).sum(), y)
    a = cnn.body[:3](y)
    b = cnn.body[3:6](a)
    plain = torch.cat([torch.nn.functional.normalize(t.flatten(1), dim=1) for t in (a, b, cnn.body[6:](b))], 1)
    ref, = torch.autograd.grad(plain.pow(2).sum(), y)
    assert torch.allclose(ours, ref, atol=1e-10)


def test_cli_smoke(tmp_path):
    assert main(["--profile", "smoke", "--variant", "both", "--digits", "3", "--out", str(tmp_path),
                    "--no-progress", "--figure-digit", "3"]) == 0
    for v in ("T", "TC"):
        r = json.loads((tmp_path / v / "digit3.json").read_text())
        assert r["steps"] == 4 and 0 <= r["localised_pct"] <= 100 and len(r["snapshots"]) == 3
        assert (tmp_path / f"steps_{v}_digit3.png").stat().st_size > 1000
    t = (tmp_path / "table.md").read_text()
    assert "| 3 | 100 |" in t and "not run" in t
    assert "T ink reference" in t and "(ink reference: mean" in t  # the no-learning level beside eq. (1)
    assert r["encoder"]["steps"] == 3 and r["schedule"]["localiser"] == "candidates" and r["schedule"]["alpha"] == 2
    assert "final_encoder" not in r and "Final-phase encoder:" not in t
    assert r["data"] == {"set": "coloc-TC", "version": 3, "options": {"combine": "add", "patch_from": "anywhere"}}
    assert json.loads((tmp_path / "T" / "digit3.json").read_text())["data"]["options"] == {}


def test_cli_data_options(tmp_path, capsys):
    args = ["--profile", "smoke", "--variant", "TC", "--digits", "3", "--no-progress", "--figure-digit", "3",
            "--out", str(tmp_path)]
    assert main(args + ["--data-option", "combine=max", "--data-option", "patch_from=centre20"]) == 0
    r = json.loads((tmp_path / "TC" / "digit3.json").read_text())
    assert r["data"]["options"] == {"combine": "max", "patch_from": "centre20"}
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0  # other data: not skipped, localised again on the default clutter
    assert "(resume)" not in capsys.readouterr().out
    assert json.loads((tmp_path / "TC" / "digit3.json").read_text())["data"]["options"]["combine"] == "add"
    with pytest.raises(SystemExit):
        main(args + ["--data-option", "combine=min"])


def test_cli_jobs_match_one_process(tmp_path):
    # --jobs N runs the pairs in worker processes: the same results as in-process (each pair seeds
    # its own generators), every pair's file written, and the command's wall time in the table
    args = ["--profile", "smoke", "--variant", "T", "--digits", "3,4", "--no-progress", "--threads", "1"]
    assert main(args + ["--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    for d in (3, 4):
        a, b = (json.loads((tmp_path / k / "T" / f"digit{d}.json").read_text()) for k in ("one", "two"))
        assert a["final_boxes"] == b["final_boxes"] and a["loss_history"] == b["loss_history"]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["jobs"] == 2 and run["threads"] == 1
    assert "worker process(es) of 1 thread(s)" in (tmp_path / "two" / "table.md").read_text()
    with pytest.raises(SystemExit):
        main(args + ["--jobs", "0", "--out", str(tmp_path / "bad")])


def test_ink_inside():
    img = torch.zeros(2, 1, 10, 10)
    img[:, :, 2:4, 2:4] = 1.0  # 4 ink pixels at rows/cols 2..3
    img[1, :, 8, 8] = 4.0  # image 1: as much ink again in pixel (8, 8)
    boxes = torch.tensor([[2.0, 2, 4, 4], [0.0, 0, 5, 5]])
    assert torch.allclose(geo.ink_inside(img, boxes), torch.tensor([1.0, 0.5]))
    assert geo.ink_inside(img[:1], torch.tensor([[5.0, 5, 10, 10]])).item() == 0.0


def test_box_theta_inverts_attention_box_and_corner_boxes():
    boxes = torch.tensor([[10.0, 20, 38, 48], [0.0, 56, 28, 84]])
    assert torch.allclose(geo.attention_box(geo.box_theta(boxes)), boxes, atol=1e-4)
    img = torch.ones(1, 1, 84, 84)
    img[..., 56:, 56:] = 0  # bottom-right corner is empty
    assert dg.emptiest_corner_boxes(img).tolist() == [[56.0, 56.0, 84.0, 84.0]]


def test_window_theta_is_the_library_attention_transform():
    # the one window-theta builder agrees with stn_triton.params.attention (v = (s - 1, cx, cy)) and
    # with the boxes it stands for
    from stn_triton.params import attention

    s, c = torch.tensor([1.0, 1 / 3, 0.5]), torch.tensor([[0.0, 0.0], [-2 / 3, 0.5], [0.25, -0.1]])
    th = geo.window_theta(s, c)
    assert torch.allclose(th, attention(torch.cat([(s - 1)[:, None], c], 1)), atol=1e-7)
    assert torch.allclose(geo.attention_box(th), torch.tensor([[0.0, 0, 84, 84], [0, 49, 28, 77], [31.5, 16.8, 73.5, 58.8]]),
                          atol=1e-4)


def test_ink_centroid_boxes_find_the_largest_blob():
    img = torch.zeros(3, 1, 84, 84)
    img[0, :, 50:70, 10:30] = 1.0  # one 20 px digit-sized blob centred at (20, 60)
    img[1] = img[0]
    img[1, :, 2:8, 76:82] = 1.0  # + a 6 px clutter fragment far away: the mean shift leaves it behind
    boxes = geo.ink_centroid_boxes(img)  # image 2 is empty: the box stays at the image centre
    assert torch.allclose(boxes, torch.tensor([[6.0, 46, 34, 74], [6.0, 46, 34, 74], [28.0, 28, 56, 56]]), atol=1e-3)


def test_offset_landscape_centre_is_expected_loss_at_the_true_boxes():
    from repro.data import colocalisation_set
    from repro.distorted_mnist.recipe import build_model

    torch.manual_seed(0)
    enc = build_model("R", "cnn")
    out = dg.offset_landscape(enc, "T", 3, offsets=(-4, 0, 4), samples=250, n=8)
    assert out["offsets"] == [-4, 0, 4] and len(out["hinge"]) == 3 and all(len(r) == 3 for r in out["hinge"])
    ds = colocalisation_set("T", 3, seed=0, n=8)
    direct = dg.expected_loss(ds.images, geo.box_theta(ds.boxes), en.Descriptor(enc, "layer-l2"), samples=250)
    assert out["hinge"][1][1] == pytest.approx(direct, abs=1e-4)


def test_cli_damaged_encoder_cache_and_restart(tmp_path, capsys):
    from repro.colocalisation.encoder import cache_file

    args = ["--profile", "smoke", "--variant", "T", "--digits", "3", "--out", str(tmp_path), "--no-progress",
            "--figure-digit", "3"]
    assert main(args) == 0
    enc = cache_file(recipe.encoder_spec(recipe.PROFILES["smoke"]))
    enc.write_bytes(enc.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert main(args) == 4
    err = capsys.readouterr().err
    assert str(enc) in err and "--restart" in err and "Traceback" not in err
    assert main(args + ["--restart"]) == 0
    assert "deleted the cached encoder" in capsys.readouterr().out
    assert main(args) == 0  # the retrained cache loads
