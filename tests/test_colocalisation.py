"""repro.colocalisation: IoU against hand-worked boxes, attention windows as boxes, the triplet loss
against a direct evaluation of supplement eq. (1), the localiser / descriptor shapes, a smoke run."""
import itertools
import json

import pytest
import torch

from repro import colocalisation as co


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
    got = co.iou(torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert co.iou(torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)).item() == pytest.approx(expected, abs=1e-6)


def test_attention_box():
    from stn_triton.params import attention

    th = attention(torch.tensor([[0.0, 0.0, 0.0], [1 / 3 - 1, 0.0, 0.0], [-0.5, 0.5, -0.25]]))
    boxes = co.attention_box(th, 84, 84)
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
    got = co.triplet_loss(e_t[i], e_t[j], e_rand[i], alpha, reduction="sum")
    assert got.item() == pytest.approx(direct, rel=1e-12)
    assert co.triplet_loss(e_t[i], e_t[j], e_rand[i], alpha).item() == pytest.approx(direct / len(pairs), rel=1e-12)


def test_localiser_and_descriptor():
    st = co.localiser()
    net = st.loc_net
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear", "ReLU"]
    assert net[0].out_channels == 8 and net[0].kernel_size == (9, 9) and net[0].stride == (4, 4)
    assert st.regressor.out_features == 2  # schedule mode: translation only, the scale is set per step
    assert sum(p.numel() for p in st.parameters()) == 5938  # conv 656 + fc 5192 + fc 72 + regressor 18
    # stride 1: conv 656 + fc 8*38*38*8+8 = 92424 + 72 + 18: the supplement's "100k"
    assert sum(p.numel() for p in co.localiser(loc_stride=1).parameters()) == 93170
    with pytest.raises(ValueError, match="loc_stride must be one of"):
        co.localiser(loc_stride=2)
    x = torch.rand(3, 1, 84, 84)
    y, th = st(x)
    assert y.shape == (3, 1, 28, 28)
    # starts at the identity (the whole image), as the supplement initialises every ST
    assert torch.allclose(th, torch.eye(2, 3).expand(3, 2, 3))
    st.scale = 1 / 3
    assert torch.allclose(co.attention_box(st.theta(x)), torch.tensor([[28.0, 28, 56, 56]] * 3), atol=1e-4)
    assert (th[:, 0, 1] == 0).all() and (th[:, 1, 0] == 0).all() and torch.equal(th[:, 0, 0], th[:, 1, 1])  # attention
    with torch.no_grad():  # a final 1/3-scale window never leaves the image, whatever the regressor says
        st.regressor.bias.copy_(torch.tensor([-50.0, 50.0]))
    b = co.attention_box(st.theta(x))
    assert torch.allclose(b, torch.tensor([[0.0, 56, 28, 84]] * 3), atol=1e-3)
    # window-inside: the bound follows the scale, so this window never leaves the image either
    st = co.localiser(translation="window-inside")
    st.scale = 0.8
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([-50.0, 50.0]))
    b = co.attention_box(st.theta(x))
    assert torch.allclose(b, torch.tensor([[0.0, 84 - 0.8 * 84, 0.8 * 84, 84]] * 3), atol=1e-3)
    # final-slack: t = +-5/6, so a final 28 px window may reach 7 px (1/6 of the half-width 42 px) past the edge
    st = co.localiser(translation="final-slack")
    st.scale = 1 / 3
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([-50.0, 50.0]))
    b = co.attention_box(st.theta(x))
    assert torch.allclose(b, torch.tensor([[-7.0, 63, 21, 91]] * 3), atol=1e-3)
    with pytest.raises(ValueError, match="translation must be one of"):
        co.localiser(translation="free")
    # learned scale: the whole window never leaves the image, whatever the regressor says
    st = co.localiser("learned")
    assert st.regressor.out_features == 3
    assert torch.allclose(co.attention_box(st.theta(x)), torch.tensor([[28.0, 28, 56, 56]] * 3), atol=1e-4)
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([5.0, -50.0, 50.0]))
    b = co.attention_box(st.theta(x))
    assert (b[:, :2] >= -1e-3).all() and (b[:, 2:] <= 84 + 1e-3).all()
    with pytest.raises(ValueError, match="scale must be one of"):
        co.localiser("free")
    from repro import distorted_mnist as dm

    cnn = dm.build_model("P", "cnn")
    d = co.Descriptor(cnn)
    w = cnn.width
    assert d(y).shape == (3, w * 10 * 10 + w * 2 * 2 + 10)
    assert torch.allclose(d(y)[:, -10:], cnn(y))
    assert not any(p.requires_grad for p in d.parameters())
    # the negative crop shares the positive's scale, gradient included; window-inside keeps it in
    # the image, centre-inside only its centre (and so reaches windows the other cannot)
    s = torch.full((256,), 0.4, requires_grad=True)
    th_r = co.random_crop_theta(s, torch.Generator().manual_seed(0), "window-inside")
    th_r[:, 0, 0].sum().backward()
    assert torch.allclose(s.grad, torch.ones(256))
    b = co.attention_box(th_r.detach())
    assert (b[:, :2] >= -1e-4).all() and (b[:, 2:] <= 84 + 1e-4).all()
    b = co.attention_box(co.random_crop_theta(s, torch.Generator().manual_seed(0)).detach())
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    assert ((cx >= 0) & (cx <= 84) & (cy >= 0) & (cy <= 84)).all() and (b[:, 0] < 0).any() and (b[:, 2] > 84).any()
    with pytest.raises(ValueError, match="negatives must be one of"):
        co.random_crop_theta(s, torch.Generator(), "anywhere")


def test_frozen_conv_input_gradient_matches_conv2d():
    # the encoder's first conv computes its input gradient as matmul + fold (a 6x cheaper backward
    # on CPU): same values and gradient as the plain convolution, gradcheck-exact in float64
    conv = torch.nn.Conv2d(1, 5, 9).double()
    fc = co.FrozenConv(conv)
    x = torch.rand(2, 1, 13, 11, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(fc, (x,))
    g = torch.randn(2, 5, 5, 3, dtype=torch.float64)
    ours, = torch.autograd.grad(fc(x), x, g)
    ref, = torch.autograd.grad(conv(x), x, g)
    assert torch.allclose(ours, ref, atol=1e-12) and torch.equal(fc(x), conv(x))
    multi = torch.nn.Conv2d(3, 4, 3).double()  # several input channels: the fold sums them apart
    x3 = torch.rand(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(co.FrozenConv(multi), (x3,))
    for bad in (torch.nn.Conv2d(1, 2, 3, stride=2), torch.nn.Conv2d(1, 2, 3, padding=1)):
        assert not co.FrozenConv.fits(bad)
        with pytest.raises(ValueError, match="stride 1, no padding"):
            co.FrozenConv(bad)
    # inside the descriptor: the gradient reaching the crops is the plain CNN's
    from repro import distorted_mnist as dm

    cnn = dm.build_model("P", "cnn").double()
    d = co.Descriptor(cnn, "layer-l2")
    assert isinstance(d.h1[0], co.FrozenConv)
    y = torch.rand(3, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    ours, = torch.autograd.grad(d(y).pow(2).sum(), y)
    a = cnn.body[:3](y)
    b = cnn.body[3:6](a)
    plain = torch.cat([torch.nn.functional.normalize(t.flatten(1), dim=1) for t in (a, b, cnn.body[6:](b))], 1)
    ref, = torch.autograd.grad(plain.pow(2).sum(), y)
    assert torch.allclose(ours, ref, atol=1e-10)


def test_scale_schedule():
    p = co.PROFILES["smoke"]
    prof = co.replace(p, steps=100, hold=0.2, shrink=0.6)
    assert co.scale_at(0, prof) == 1.0 and co.scale_at(20, prof) == 1.0
    assert co.scale_at(50, prof) == pytest.approx(1 - 0.5 * (1 - 1 / 3))
    assert co.scale_at(80, prof) == pytest.approx(1 / 3) and co.scale_at(100, prof) == pytest.approx(1 / 3)
    # the last phase starts where the scale first reaches 1/3, and only under a schedule
    assert co.final_phase_start(prof) == 80 and co.scale_at(79, prof) > 1 / 3 + 1e-6
    assert co.final_phase_start(co.replace(prof, scale="learned")) is None
    full = co.PROFILES["regress"]  # 300 at scale 1, 300 shrinking, 1,800 at 1/3
    assert co.final_phase_start(full) == 600 and co.scale_at(299, full) == 1.0 and full.steps == 2400
    assert co.final_phase_start(co.PROFILES["full"]) is None  # the candidate localiser: always at 1/3
    prof = co.replace(prof, start_scale=0.8)
    assert co.scale_at(10, prof) == 0.8 and co.scale_at(50, prof) == pytest.approx(0.8 - 0.5 * (0.8 - 1 / 3))


def test_cli_smoke(tmp_path):
    assert co.main(["--profile", "smoke", "--variant", "both", "--digits", "3", "--out", str(tmp_path),
                    "--no-progress", "--figure-digit", "3"]) == 0
    for v in ("T", "TC"):
        r = json.loads((tmp_path / v / "digit3.json").read_text())
        assert r["steps"] == 4 and 0 <= r["localised_pct"] <= 100 and len(r["snapshots"]) == 3
        assert (tmp_path / f"steps_{v}_digit3.png").stat().st_size > 1000
    t = (tmp_path / "table.md").read_text()
    assert "| 3 | 100 |" in t and "not run" in t
    assert "T ink reference" in t and "(ink reference: mean" in t  # the no-learning level beside eq. (1)
    assert r["encoder"]["steps"] == 3 and r["schedule"]["scale"] == "schedule"
    assert r["final_encoder"]["augment"] == "shift" and r["schedule"]["final_encoder_augment"] == "shift"
    assert "Final-phase encoder:" in t


def test_cli_jobs_match_one_process(tmp_path):
    # --jobs N runs the pairs in worker processes: the same results as in-process (each pair seeds
    # its own generators), every pair's file written, and the command's wall time in the table
    args = ["--profile", "smoke", "--variant", "T", "--digits", "3,4", "--no-progress", "--threads", "1"]
    assert co.main(args + ["--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert co.main(args + ["--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    for d in (3, 4):
        a, b = (json.loads((tmp_path / k / "T" / f"digit{d}.json").read_text()) for k in ("one", "two"))
        assert a["final_boxes"] == b["final_boxes"] and a["loss_history"] == b["loss_history"]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["jobs"] == 2 and run["threads"] == 1
    assert "worker process(es) of 1 thread(s)" in (tmp_path / "two" / "table.md").read_text()
    with pytest.raises(SystemExit):
        co.main(args + ["--jobs", "0", "--out", str(tmp_path / "bad")])


def test_ink_inside():
    img = torch.zeros(2, 1, 10, 10)
    img[:, :, 2:4, 2:4] = 1.0  # 4 ink pixels at rows/cols 2..3
    img[1, :, 8, 8] = 4.0  # image 1: as much ink again in pixel (8, 8)
    boxes = torch.tensor([[2.0, 2, 4, 4], [0.0, 0, 5, 5]])
    assert torch.allclose(co.ink_inside(img, boxes), torch.tensor([1.0, 0.5]))
    assert co.ink_inside(img[:1], torch.tensor([[5.0, 5, 10, 10]])).item() == 0.0


def test_box_theta_inverts_attention_box_and_corner_boxes():
    boxes = torch.tensor([[10.0, 20, 38, 48], [0.0, 56, 28, 84]])
    assert torch.allclose(co.attention_box(co.box_theta(boxes)), boxes, atol=1e-4)
    img = torch.ones(1, 1, 84, 84)
    img[..., 56:, 56:] = 0  # bottom-right corner is empty
    assert co.emptiest_corner_boxes(img).tolist() == [[56.0, 56.0, 84.0, 84.0]]


def test_window_theta_is_the_library_attention_transform():
    # the one window-theta builder agrees with stn_triton.params.attention (v = (s - 1, cx, cy)) and
    # with the boxes it stands for
    from stn_triton.params import attention

    s, c = torch.tensor([1.0, 1 / 3, 0.5]), torch.tensor([[0.0, 0.0], [-2 / 3, 0.5], [0.25, -0.1]])
    th = co.window_theta(s, c)
    assert torch.allclose(th, attention(torch.cat([(s - 1)[:, None], c], 1)), atol=1e-7)
    assert torch.allclose(co.attention_box(th), torch.tensor([[0.0, 0, 84, 84], [0, 49, 28, 77], [31.5, 16.8, 73.5, 58.8]]),
                          atol=1e-4)


def test_ink_centroid_boxes_find_the_largest_blob():
    img = torch.zeros(3, 1, 84, 84)
    img[0, :, 50:70, 10:30] = 1.0  # one 20 px digit-sized blob centred at (20, 60)
    img[1] = img[0]
    img[1, :, 2:8, 76:82] = 1.0  # + a 6 px clutter fragment far away: the mean shift leaves it behind
    boxes = co.ink_centroid_boxes(img)  # image 2 is empty: the box stays at the image centre
    assert torch.allclose(boxes, torch.tensor([[6.0, 46, 34, 74], [6.0, 46, 34, 74], [28.0, 28, 56, 56]]), atol=1e-3)


def test_offset_landscape_centre_is_expected_loss_at_the_true_boxes():
    from repro.data import colocalisation_set
    from repro.distorted_mnist import build_model

    torch.manual_seed(0)
    enc = build_model("R", "cnn")
    out = co.offset_landscape(enc, "T", 3, offsets=(-4, 0, 4), samples=250, n=8)
    assert out["offsets"] == [-4, 0, 4] and len(out["hinge"]) == 3 and all(len(r) == 3 for r in out["hinge"])
    ds = colocalisation_set("T", 3, seed=0, n=8)
    direct = co.expected_loss(ds.images, co.box_theta(ds.boxes), co.Descriptor(enc, "layer-l2"), samples=250)
    assert out["hinge"][1][1] == pytest.approx(direct, abs=1e-4)


def test_final_encoder_takes_over_at_the_final_phase():
    # the same run with another encoder for the final phase: identical losses up to the phase
    # boundary, different after it; "same" (or no final phase) means no second encoder
    from dataclasses import replace

    from repro.data import colocalisation_set
    from repro.distorted_mnist import build_model

    prof = replace(co.PROFILES["smoke"], steps=8, batch=2, hold=0.25, shrink=0.25)
    start = co.final_phase_start(prof)
    assert 0 < start < prof.steps
    ds = colocalisation_set("T", 3, seed=0, n=6)
    torch.manual_seed(0)
    enc, other = build_model("R", "cnn"), build_model("R", "cnn")
    a = co.colocalise(ds.images, ds.boxes, enc, prof, log=None)["loss_history"]
    b = co.colocalise(ds.images, ds.boxes, enc, prof, log=None, final_enc=other)["loss_history"]
    assert len(a) == len(b) == prof.steps
    assert a[:start] == b[:start] and a[start:] != b[start:]
    assert co.final_encoder_spec(prof).augment == "shift"
    assert co.final_encoder_spec(replace(prof, final_encoder_augment="same")) is None
    assert co.final_encoder_spec(replace(prof, scale="learned")) is None  # no final phase
    with pytest.raises(ValueError, match="final_encoder_augment must be one of"):
        co.final_encoder_spec(replace(prof, final_encoder_augment="blur"))


def test_cli_damaged_encoder_cache_and_restart(tmp_path, capsys):
    from repro.coloc_encoder import cache_file

    args = ["--profile", "smoke", "--variant", "T", "--digits", "3", "--out", str(tmp_path), "--no-progress",
            "--figure-digit", "3"]
    assert co.main(args) == 0
    enc = cache_file(co.encoder_spec(co.PROFILES["smoke"]))
    enc.write_bytes(enc.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    assert co.main(args) == 4
    err = capsys.readouterr().err
    assert str(enc) in err and "--restart" in err and "Traceback" not in err
    assert co.main(args + ["--restart"]) == 0
    assert "deleted the cached encoder" in capsys.readouterr().out
    assert co.main(args) == 0  # the retrained cache loads
