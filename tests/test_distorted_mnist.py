"""repro.distorted_mnist: model/paper tables, quick-profile overrides, parameter budgets, and smoke
runs of the CLI (single data set and the resumable --all grid with its table and figure)."""
import json

import pytest
import torch

from repro.distorted_mnist import recipe as rec
from repro.distorted_mnist.__main__ import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_table_matches_seed_numbers():
    assert set(rec.PAPER) == set(rec.DATASETS)
    assert all(set(rec.PAPER[d]) == set(rec.GRID_MODELS) for d in rec.TABLE1_DATASETS)
    assert rec.PAPER["R"]["fcn"] == 2.1 and rec.PAPER["RTS"]["fcn"] == 5.2 and rec.PAPER["E"]["st-cnn-tps"] == 1.1
    assert rec.PAPER["P"]["st-fcn-proj"] == 1.4 and rec.PAPER["RTS"]["st-cnn-proj"] == 0.6
    assert rec.PAPER["TC"] == {"fcn": 13.2, "cnn": 3.5, "st-fcn-aff": 2.0, "st-cnn-aff": 1.7}
    assert len(rec.GRID_MODELS) * len(rec.TABLE1_DATASETS) + len(rec.TC_MODELS) == 36


def test_model_names_and_profiles():
    assert rec.parse_model("st-cnn-tps") == ("st-cnn", "tps")
    assert rec.parse_model("st-fcn-proj") == ("st-fcn", "projective")
    assert rec.parse_model("cnn") == ("cnn", None)
    with pytest.raises(ValueError):
        rec.parse_model("st-cnn-foo")
    p = rec.PROFILES["paper"]
    assert (p.steps, p.batch_size, p.lr, p.milestones, p.gamma, p.optimizer, len(p.seeds)) == (
        150_000, 256, 0.01, (50_000, 100_000), 0.1, "sgd", 3)
    for ds in rec.DATASETS:  # every quick-profile model has its own step count / batch
        exp = rec.experiment(ds)
        for m in rec.models_for(ds):
            q = exp.profile("quick", m)
            assert q.steps == rec.QUICK_STEPS[ds][("st-cnn" if m.startswith("st-cnn") else rec.family(m))][0]
            assert q.milestones == (round(0.8 * q.steps),)
            assert (q.final_eval_limit == rec.QUICK_CNN_EVAL) == (rec.family(m) == "cnn")


@pytest.mark.parametrize("ds", ["RTS", "TC"])
def test_models_share_the_400k_budget_and_start_at_identity(ds):
    s = rec.SIZE[ds]
    x = torch.rand(2, 1, s, s)
    for m in rec.models_for(ds):
        net = rec.build_model(ds, m)
        n = sum(p.numel() for p in net.parameters())
        assert abs(n - 400_000) < 0.02 * 400_000, (m, n)
        assert net(x).shape == (2, 10)
        if m.startswith("st-"):
            y = net.transformed(x)[0]
            assert torch.allclose(y, x, atol=1e-5)  # zero regressor: identity (same size, no resampling)
            assert isinstance(net.pool, torch.nn.AvgPool2d)  # RTS and TC pool after the ST


def test_cli_single_dataset_smoke(tmp_path):
    code = main(["--dataset", "P", "--profile", "smoke", "--model", "fcn,st-cnn-tps", "--steps", "4",
                     "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "P" / "results.json").read_text())
    assert data["profile"] == "smoke" and list(data["models"]) == ["fcn", "st-cnn-tps"]
    assert data["models"]["st-cnn-tps"]["paper_error"] == 0.8 and data["models"]["fcn"]["iterations"] == 4
    table = (tmp_path / "table.md").read_text()
    assert "| ST-CNN TPS |" in table and "0.8 / **" in table and "not run" in table
    assert (tmp_path / "transformers.png").stat().st_size > 1000


def test_cli_all_grid_is_resumable(tmp_path, capsys):
    args = ["--all", "--datasets", "TC", "--model", "fcn,st-fcn-aff", "--profile", "smoke", "--steps", "3",
            "--out", str(tmp_path), "--no-progress", "--no-figure"]
    assert main(args) == 0
    table = (tmp_path / "table.md").read_text()
    assert "13.2 / **" in table and "2.0 / **" in table and "3.5 / not run" in table
    capsys.readouterr()
    assert main(args + ["--reverse"]) == 0  # a second process walking the grid backwards skips finished runs
    out = capsys.readouterr().out
    assert out.count("already complete") == 2
    assert out.index("TC st-fcn-aff: exit 0") < out.index("TC fcn: exit 0")
