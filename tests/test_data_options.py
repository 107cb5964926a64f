"""The distorted-MNIST generator options (repro.data.options, issue #29): resolution and errors,
what each option does to the draws, the old readings reproducing data version 2 bit for bit, cache
names, and the data record a result carries."""
import math

import pytest
import torch

from repro.data import distort, options, sets
from testing.data_hashes import data_hashes

# data version 2's pinned hashes (tests/test_data_sets.py before version 3) of the sets whose default
# changed: the old readings, given as options, must still give exactly those bits
V2 = {
    "P": ['825014940066bb9d', '17ffb8efd319bc5c', 'b54938785f7a91b7', '0ab1f0162a801397'],
    "E": ['410ef96c257903a0', '415f7d2e942dcc6f', '48cae4fe2093deef', 'ecb31aa9e75e14b1'],
    "TC": ['f9dfc17cebe8d4a8', '7a629bad8fd0207c', '4756f22a6b818d2d', 'd86340e5c900559f'],
    "coloc-TC": ['a5f83a97f397be5d', 'e93f8d75e52c422a', 'f4914cac151f7b38', 'b2849ea8f2022e62'],
}
V2_OPTIONS = options.VERSION2
# data version 3's pinned hashes of P and E (version 4 changed their sigma): version 3's sigma, given as an
# option, must still give exactly those bits
V3 = {
    "P": ['6f8c28632b3f2023', 'd59125cddf893dc0', 'c07d1fb01e798d39', '2a8d4f98c8d34a59'],
    "E": ['67f27c1013c0cf10', '14349ac7986ffb89', '1df0e3a63c7451e7', '7343af8df7973c21'],
}
V2_CLUTTER = V2_OPTIONS["TC"]


@pytest.mark.parametrize("name", sorted(V2))
def test_version_2_readings_are_bit_identical(name):
    assert data_hashes(name, V2_OPTIONS[name]) == V2[name]


@pytest.mark.parametrize("name", sorted(V3))
def test_version_3_readings_are_bit_identical(name):
    assert data_hashes(name, options.VERSION3[name]) == V3[name]


def test_resolve_defaults_types_and_errors():
    assert options.resolve("R") == {}
    assert options.resolve("P") == {"corners": "source", "min_extent": 0.25, "reject": "none", "sigma": 4.4}
    assert options.resolve("E") == {"grid": 4, "side": "source", "sigma": 2.27}
    assert options.resolve("P", ["sigma=3", "corners=source"])["sigma"] == 3.0
    assert options.resolve("E", {"grid": "5"})["grid"] == 5
    assert options.resolve("P", {"reject": "squashed+mirrored"})["reject"] == "mirrored+squashed"  # canonical
    r = options.resolve("TC", {"combine": "max"})
    assert options.resolve("TC", r) == r  # idempotent
    for bad, match in [(("P", {"corner": "x"}), "unknown data option.*corners"),
                       (("R", {"sigma": 1}), "it has: none"),
                       (("P", {"corners": "middle"}), "one of"),
                       (("P", {"sigma": "five"}), "must be a float"),
                       (("P", {"sigma": -1}), r"\[0.0, 14.0\]"),
                       (("E", {"grid": 2.5}), "must be a int"),
                       (("P", {"reject": "mirrored+bogus"}), "subset"),
                       (("P", ["sigma3"]), "key=value")]:
        with pytest.raises(ValueError, match=match):
            options.resolve(*bad)


def test_tags_and_cache_names(tmp_path):
    assert options.tag("P", options.resolve("P")) == ""
    a = options.tag("P", options.resolve("P", {"sigma": 3}))
    b = options.tag("P", options.resolve("P", {"sigma": "3.0"}))
    assert a == b and len(a) == 10 and a != options.tag("P", options.resolve("P", {"sigma": 3.5}))
    assert sets.cache_path("TC", "test", 0, tmp_path).name == "TC_test_seed0_v3.npz"
    assert sets.cache_path("TC", "test", 0, tmp_path, V2_CLUTTER).name.startswith("TC-")
    assert sets.cache_path("R", "test", 0, tmp_path).name == "R_test_seed0_v2.npz"
    assert sets.cache_path("P", "test", 0, tmp_path).name == "P_test_seed0_v4.npz"
    assert sets.cache_path("P", "test", 0, tmp_path, options.VERSION3["P"]).name.startswith("P-")


def test_make_keeps_option_variants_apart(tmp_path):
    a = sets.make("TC", "test", 0, cache_dir=tmp_path, device="cpu")
    b = sets.make("TC", "test", 0, cache_dir=tmp_path, device="cpu", options=V2_CLUTTER)
    assert a.options["combine"] == "add" and b.options["combine"] == "max"
    assert not torch.equal(a.images_u8[:64], b.images_u8[:64])
    assert len(list((tmp_path / "sets").glob("TC*.npz"))) == 2
    sets._MEMO.clear()  # from disk again: each file is read back as its own variant
    assert torch.equal(sets.make("TC", "test", 0, cache_dir=tmp_path, options=V2_CLUTTER).images_u8, b.images_u8)


def test_options_of_a_result():
    assert options.of_result("TC", {"data": sets.data_record("TC")}) == options.resolve("TC")
    assert options.of_result("TC", {}) == options.resolve("TC", V2_CLUTTER)  # before records: version 2
    assert options.of_result("R", {}) == {}


def test_data_record():
    r = sets.data_record("TC")
    assert r == {"set": "TC", "version": 3, "options": {"combine": "add", "patch_from": "anywhere"}}
    assert sets.data_record("R") == {"set": "R", "version": 2, "options": {}}


def _draw(name, n=2000, **opts):
    g = distort.generator("options-test", name)
    return distort.sample_params(name, torch.arange(n) % 1000, 1000, g, opts)


def test_clutter_patch_region_and_combine():
    p = _draw("TC", patch_from="anywhere")
    crop = p["clutter_crop"]
    assert int(crop.min()) == 0 and int(crop.max()) == 28 - 6  # anywhere in the 28×28 digit
    p = _draw("TC", patch_from="centre20")
    assert int(p["clutter_crop"].min()) == 4 and int(p["clutter_crop"].max()) == 4 + 20 - 6
    # add: the sum of digit and patches, clipped to 1; max: their maximum
    pool = torch.full((3, 28, 28), 200, dtype=torch.uint8)
    q = {"clutter_src": torch.tensor([[1, 2]]), "clutter_crop": torch.zeros(1, 2, 2, dtype=torch.int64),
         "clutter_dest": torch.tensor([[[0, 0], [3, 3]]])}
    for combine, overlap in (("add", 1.0), ("max", 200 / 255)):
        canvas = torch.full((1, 1, 10, 10), 100 / 255)
        distort._paste_clutter(canvas, pool, q, combine)
        canvas.clamp_(0, 1)
        assert float(canvas[0, 0, 4, 4]) == pytest.approx(overlap)  # both patches and the background
        single = (100 + 200) / 255 if combine == "add" else 200 / 255
        assert float(canvas[0, 0, 0, 0]) == pytest.approx(min(single, 1.0))
        assert float(canvas[0, 0, 9, 9]) == pytest.approx(100 / 255)


def test_clutter_add_is_exact_in_any_order():
    """The added clutter is an integer sum: the same bits whatever order the patches come in."""
    p = _draw("coloc-TC", n=8)
    pool, _ = sets.digit_pool("train")
    a = torch.zeros(8, 1, 84, 84)
    distort._paste_clutter(a, pool, p, "add")
    perm = torch.arange(16).flip(0)
    q = {k: (v[:, perm] if k.startswith("clutter") else v) for k, v in p.items()}
    b = torch.zeros(8, 1, 84, 84)
    distort._paste_clutter(b, pool, q, "add")
    assert torch.equal(a, b)


def _corner_output_positions(theta):
    """Output positions of the source frame's corners under the output -> source homographies."""
    c = torch.tensor(distort._CORNERS, dtype=theta.dtype)
    return distort._apply(torch.linalg.inv(theta), c.expand(theta.shape[0], 4, 2))


def test_p_corner_readings_and_sigma():
    n = 4000
    out = _draw("P", n, corners="output", sigma=5.0)["theta"]
    src = _draw("P", n, corners="source", sigma=5.0)["theta"]
    c = torch.tensor(distort._CORNERS, dtype=torch.float64)
    # output: the source corners land at s·c + N(0, 5 px); source: the canvas corners sample c / s + N(0, 5 px)
    landed = _corner_output_positions(out)
    spread = math.sqrt(25 + (14 * 0.25 / math.sqrt(12)) ** 2)
    assert abs(float(((landed - c * 0.875) * 14).std()) - spread) < 0.25
    sampled = distort._apply(src, c.expand(n, 4, 2))
    inv_s = 1 / torch.tensor([0.75, 1.0], dtype=torch.float64)
    assert abs(float(((sampled - c * inv_s.mean()) * 14).std()) - math.sqrt(25 + (14 * 0.0)**2)) < 0.6
    small = _draw("P", n, corners="output", sigma=2.5)["theta"]
    assert abs(float(((_corner_output_positions(small) - c * 0.875) * 14).std())
               - math.sqrt(6.25 + (14 * 0.25 / math.sqrt(12)) ** 2)) < 0.2


def test_p_rejection_removes_degenerate_draws():
    n = 4000
    keep = _draw("P", n, corners="output", sigma=5.0)["theta"]
    assert float(distort.mirrored(keep).double().mean()) > 0.001
    assert float(distort.horizon_crosses(keep).double().mean()) > 0.05
    rej = _draw("P", n, corners="output", sigma=5.0, reject="mirrored+horizon+squashed", min_extent=0.4)["theta"]
    assert not bool(distort.mirrored(rej).any()) and not bool(distort.horizon_crosses(rej).any())
    ext = distort.frame_extent(_corner_output_positions(rej))
    assert float(ext.min()) >= 0.4
    only_m = _draw("P", n, corners="output", sigma=5.0, reject="mirrored")["theta"]
    assert not bool(distort.mirrored(only_m).any()) and bool(distort.horizon_crosses(only_m).any())


def test_mirrored_matches_the_jacobian_determinant():
    th = _draw("P", 3000)["theta"]
    a, p0, cc, w0 = th[:, :2, :2], th[:, :2, 2], th[:, 2, :2], th[:, 2, 2]
    j = a * w0[:, None, None] - p0[:, :, None] * cc[:, None, :]
    assert torch.equal(distort.mirrored(th), torch.linalg.det(j) < 0)


def test_e_sigma_and_grid():
    for sigma, grid in ((1.5, 4), (3.0, 4), (2.0, 5)):
        pts = _draw("E", 3000, sigma=sigma, grid=grid)["points"]
        k = grid * grid
        assert pts.shape == (3000, k, 2)
        cps = distort.control_points(k)
        s_est = (cps[None] * pts).sum((1, 2)) / (cps[None] * cps[None]).sum((1, 2))
        noise = (pts - cps[None] * s_est[:, None, None]) * 14
        # the least-squares scale absorbs ~1 of the 2k degrees of freedom
        assert abs(float(noise.std()) - sigma * math.sqrt(1 - 1 / (2 * k))) < 0.05 * sigma
    img = sets.OnlineStream("E", 4, options={"sigma": 3.0, "grid": 5}).batch(0).images
    assert img.shape == (4, 1, 28, 28) and float(img.sum()) > 0


def test_e_output_side():
    """side=output: the digit's control points land at s c + noise in the output (a spline per image).
    At sigma 0 both sides are the same pure scaling, bit for bit; the per-image spline interpolates
    its control points; the draws are the same random numbers as side=source."""
    from repro.data import exact_render

    assert options.resolve("E")["side"] == "source"
    with pytest.raises(ValueError, match="one of"):
        options.resolve("E", {"side": "middle"})
    zero = {"sigma": 0.0}
    src, out = (sets.OnlineStream("E", 16, options={**zero, "side": side}).batch(3).images for side in ("source", "output"))
    assert torch.equal(src, out) and float(src.sum()) > 0
    a, b = _draw("E", 200, side="source"), _draw("E", 200, side="output")
    c = distort.control_points(16)
    assert "control" not in a and torch.equal(b["points"], c.expand(200, 16, 2))
    # the same scale s and noise d on the other side: source points c / s + d, output control points
    # s c + d, so their difference is (1 / s - s) c, a non-negative multiple of c per image
    diff = a["points"] - b["control"]
    k = (diff * c).sum((1, 2)) / (c * c).sum()
    assert torch.allclose(diff, k[:, None, None] * c, atol=1e-12) and bool((k >= 0).all())
    m = exact_render._tps_system_per_image(b["control"][:8])
    coef = torch.einsum("nij,njc->nic", m, b["points"][:8])
    ctrl = b["control"][:8]
    d2 = ((ctrl[:, :, None, :] - ctrl[:, None, :, :]) ** 2).sum(-1)
    u = torch.where(d2 > 0, d2 * torch.log(d2.clamp_min(1e-300)), torch.zeros_like(d2))
    at_control = torch.einsum("nkj,njc->nkc", torch.cat([u, torch.ones_like(u[..., :1]), ctrl], 2), coef)
    assert float((at_control - b["points"][:8]).abs().max()) < 1e-3  # f(s c + d) = c (up to the 2^-16 rounding)
    img = sets.OnlineStream("E", 32, options={"side": "output"}).batch(0).images
    assert img.shape == (32, 1, 28, 28) and torch.isfinite(img).all() and float(img.sum()) > 0


def test_coefficient_grid_keeps_the_product_exact():
    """A spline with huge coefficients (nearly coincident control points) gets a coarser grid, so that
    basis @ coef stays exact (the same bits in any summation order); small ones keep 2^-16."""
    from repro.data import exact_render

    basis = exact_render._tps_tables(16, 28, 28)[1]
    coef = torch.randn(3, 19, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coef[1] *= 1e6
    got = exact_render._coef_on_grid(coef, exact_render._below_exponent(basis[None]))
    assert torch.equal(got[0], (coef[0] / 2 ** -16).round() * 2 ** -16)  # below 2^8: the fine grid
    assert not torch.equal(got[1], (coef[1] / 2 ** -16).round() * 2 ** -16)  # coarser
    prod = torch.matmul(basis, got[1])
    flipped = torch.matmul(basis.flip(1), got[1].flip(0))  # another summation order
    assert torch.equal(prod, flipped)


def test_per_image_spline_matches_the_whole_basis_product():
    """E side=output's source coordinates (separable distances, chunks of images, the radial part by
    bmm and the affine part added after) are the bits of the whole basis [U..., 1, x, y] times the
    coefficients on their grid, for chunks that do and do not divide the batch; and the batched
    Gauss-Jordan solve (row swaps) agrees with LAPACK and keeps broadcast leading dimensions."""
    from repro.data import exact_render as er

    g = torch.Generator().manual_seed(1)
    n, k, h, w = 11, 16, 9, 7
    control = distort.control_points(k)[None] * 0.9 + 0.05 * torch.randn(n, k, 2, generator=g, dtype=torch.float64)
    coef = torch.randn(n, k + 3, 2, generator=g, dtype=torch.float64)
    coef[3] *= 1e7  # a coarser coefficient grid for this image
    ys, xs = er._pixel_axis(h, "cpu"), er._pixel_axis(w, "cpu")
    pix = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], 1)
    d2 = ((pix[None, :, None, :] - control[:, None, :, :]) ** 2).sum(-1)
    u = er._on_coef_grid(torch.where(d2 > 0, d2 * torch.log(d2.clamp_min(1e-300)), torch.zeros_like(d2)))
    basis = torch.cat([u, torch.ones(n, h * w, 1, dtype=torch.float64), er._on_coef_grid(pix).expand(n, -1, -1)], 2)
    want = torch.bmm(basis, er._coef_on_grid(coef, er._below_exponent(basis))).reshape(n, h, w, 2)
    for chunk in (1, 4, 16):
        assert torch.equal(er._tps_source_per_image(control, coef, h, w, chunk), want)
    a = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, 6, 2, generator=g, dtype=torch.float64)
    x = er.solve(a, b)
    assert x.shape == (3, 4, 6, 2)
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-10)


def test_recipe_records_and_checks_the_data(tmp_path):
    from repro.distorted_mnist.recipe import experiment

    exp = experiment("P", data_options=["corners=output"])
    assert exp.data == {"set": "P", "version": 4, "mode": "online",
                        "options": {"corners": "output", "min_extent": 0.25, "reject": "none", "sigma": 4.4}}
    with pytest.raises(ValueError, match="unknown data option"):
        experiment("P", data_options=["corner=source"])


def test_recipe_table_shows_each_runs_data(tmp_path):
    from repro.distorted_mnist.__main__ import main

    assert main(["--dataset", "P", "--model", "fcn", "--profile", "smoke", "--no-progress", "--no-figure",
                 "--out", str(tmp_path), "--data-option", "corners=output"]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| P | FCN | 0 |" in table and "v4 (corners=output, min_extent=0.25, reject=none, sigma=4.4)" in table
    assert main(["--dataset", "P", "--model", "fcn", "--profile", "smoke", "--out", str(tmp_path),
                 "--data-option", "sigma=99"]) == 2  # a bad option stops before anything runs
