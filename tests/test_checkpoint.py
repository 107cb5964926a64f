"""Checkpoints: written atomically with a content hash, verified on load (weights_only), corrupt or
truncated files stop with an error naming the file and the way out, old-format files (no hash)
still load with a warning, ``--restart`` starts over."""
import random

import pytest
import torch

from repro.harness import checkpoint as C
from repro.harness import train_one
from repro.harness.cli import main as cli_main

from testing.toy_experiment import toy_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(tmp_path, steps=20):
    exp = toy_experiment()
    prof = exp.profiles["t"].replace(steps=steps)
    train_one(exp, "mlp", prof, 0, tmp_path, progress=False, final_eval=False)
    return exp, tmp_path / "mlp" / "seed0" / "checkpoint.pt"


def test_roundtrip_is_weights_only_and_hashed(tmp_path):
    _, ck = _trained(tmp_path)
    data = C.load_checkpoint(ck)
    assert data["step"] == 20 and set(data) >= {"model", "optimizer", "history", "profile", "seed"}
    outer = torch.load(ck, weights_only=True)  # the file itself needs no pickled code
    assert outer["format"] == C.FORMAT and len(outer["sha256"]) == 64
    assert not list(tmp_path.rglob("*.tmp"))


def _flip(path, n=64, seed=0):
    b = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(len(b)), n):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_stops_naming_file_and_way_out(tmp_path, damage):
    exp, ck = _trained(tmp_path)
    if damage == "flip":
        _flip(ck)
    else:
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(C.CheckpointError) as e:
        train_one(exp, "mlp", exp.profiles["t"], 0, tmp_path, resume=True, progress=False)
    msg = str(e.value)
    assert str(ck) in msg and "--restart" in msg and "delete" in msg.lower()


def test_flipped_payload_bytes_are_caught_by_the_hash(tmp_path):
    _, ck = _trained(tmp_path)
    outer = torch.load(ck, weights_only=True)
    outer["payload"][100:164] ^= 0xFF  # a valid file whose content changed
    torch.save(outer, ck)
    with pytest.raises(C.CheckpointError, match="sha256"):
        C.load_checkpoint(ck)


def test_old_format_checkpoint_loads_with_a_warning(tmp_path, capsys):
    exp, ck = _trained(tmp_path)
    data = C.load_checkpoint(ck)
    torch.save(data, ck)  # what the harness wrote before hashes: the plain dict
    resumed = train_one(exp, "mlp", exp.profiles["t"], 0, tmp_path, resume=True, progress=False)
    err = capsys.readouterr()
    assert "resumed from step 20" in err.out
    assert "old-format checkpoint" in err.err and str(ck) in err.err
    full = train_one(exp, "mlp", exp.profiles["t"], 0, tmp_path / "full", progress=False)
    for k, v in full["_model"].state_dict().items():
        torch.testing.assert_close(v, resumed["_model"].state_dict()[k], rtol=0, atol=0)


def test_cli_reports_corrupt_checkpoint_and_restart_recovers(tmp_path, capsys):
    exp, ck = _trained(tmp_path)
    _flip(ck)
    args = ["--profile", "t", "--model", "mlp", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(exp, str(tmp_path), args + ["--resume"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(ck) in err and "--restart" in err
    assert cli_main(exp, str(tmp_path), args + ["--restart"]) == 0
    assert C.load_checkpoint(ck)["step"] == 40
