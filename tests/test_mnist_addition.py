"""The MNIST-addition recipe end to end on the smoke profile: every model trains (loss falls),
results.json / results.md / the transformer figure are written, the CLI runs."""
import json

import pytest

from repro.mnist_addition import recipe as rec
from repro.mnist_addition.__main__ import main
from repro.harness import train_one


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", ["fcn", "cnn", "st-fcn", "2xst-fcn"])
def test_smoke_training_reduces_loss(model, tmp_path):
    exp = rec.EXPERIMENT
    # the CNN costs ~10x an FCN step on CPU: fewer, smaller batches
    kw = dict(steps=12, batch_size=16, log_every=4, ckpt_every=4, final_eval_limit=100) if model == "cnn" else {}
    prof = exp.profile("smoke", model, lr=3e-3, **kw)
    r = train_one(exp, model, prof, 0, tmp_path, progress=False)
    first, last = r["history"][0]["loss"], r["history"][-1]["loss"]
    assert last < first, r["history"]
    assert 0 <= r["error"] <= 100 and r["n_test"] == (100 if model == "cnn" else 500)


def test_recipe_writes_results_table_and_figure(tmp_path):
    code = main(["--profile", "smoke", "--model", "fcn,2xst-fcn", "--out", str(tmp_path), "--no-progress",
                     "--steps", "10"])
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "mnist_addition" and data["profile"] == "smoke" and data["device"] == "cpu"
    assert list(data["models"]) == ["fcn", "2xst-fcn"]
    for name, r in data["models"].items():
        assert {"error", "seeds", "iterations", "versions", "wall_time_s", "images_per_s", "params"} <= set(r)
        assert r["iterations"] == 10 and r["paper_error"] == rec.PAPER[name]
    md = (tmp_path / "results.md").read_text()
    assert "| 2xst-fcn | 5.8 |" in md and "Deviations from the paper" in md
    assert (tmp_path / "transformers.png").stat().st_size > 1000


def test_profiles_match_the_paper():
    p = rec.PROFILES["paper"]
    assert (p.steps, p.batch_size, p.lr, p.milestones, p.gamma, p.optimizer, len(p.seeds)) == (
        150_000, 256, 0.01, (50_000, 100_000), 0.1, "sgd", 3)
    assert p.lr_at(49_999) == 0.01 and p.lr_at(50_000) == pytest.approx(0.001) and p.lr_at(100_000) == pytest.approx(1e-4)
    assert set(rec.PROFILES) == {"paper", "quick", "smoke"}


def test_width_floor_and_transformer_are_recorded_and_checked(tmp_path, capsys):
    assert rec.build_model("fcn").width == 109 and rec.build_model("2xst-fcn").width == 90  # the 400k budget's
    assert rec.build_model("fcn", min_width=128).width == 128
    assert rec.build_model("2xst-fcn", min_width=128).width == 128
    assert rec.build_model("cnn", min_width=128).width == rec.build_model("cnn").width  # filters: not an FCN width
    code = main(["--profile", "smoke", "--model", "fcn", "--out", str(tmp_path), "--no-progress", "--steps", "4",
                 "--min-width", "128"])
    assert code == 0
    r = json.loads((tmp_path / "fcn" / "seed0" / "result.json").read_text())
    assert r["config"] == {"transform": "affine", "min_width": 128}
    assert r["data"] == {"set": "addition", "version": 2, "options": {}, "mode": "online"}
    assert json.loads((tmp_path / "results.json").read_text())["models"]["fcn"]["config"]["min_width"] == 128
    # a result and checkpoint of another config are not resumed: a clear refusal, then --restart trains anew
    code = main(["--profile", "smoke", "--model", "fcn", "--out", str(tmp_path), "--no-progress", "--steps", "4",
                 "--resume"])
    assert code == 4 and "min_width': 128" in capsys.readouterr().err
    code = main(["--profile", "smoke", "--model", "fcn", "--out", str(tmp_path), "--no-progress", "--steps", "4",
                 "--restart"])
    assert code == 0
    r = json.loads((tmp_path / "fcn" / "seed0" / "result.json").read_text())
    assert r["config"] == {"transform": "affine", "min_width": None}
    assert main(["--profile", "smoke", "--model", "fcn", "--out", str(tmp_path), "--min-width", "0"]) == 2
