"""SIGINT / SIGTERM during training: a checkpoint of the current step is saved (also before the
first periodic one), the command exits with a one-line message saying how to resume, and the
resumed run ends at the same parameters as an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.harness import train_one
from repro.harness.checkpoint import load_checkpoint
from repro.harness.loop import Interrupted

from testing.toy_experiment import ToyStream, toy_experiment

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


class _SignalAt(ToyStream):
    """The toy stream, sending ``sig`` to this process while drawing batch ``at``."""

    def __init__(self, *a, at, sig, **kw):
        super().__init__(*a, **kw)
        self.at, self.sig = at, sig

    def batch(self, step):
        if step == self.at:
            os.kill(os.getpid(), self.sig)
        return super().batch(step)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_current_step_and_resume_matches(tmp_path, sig):
    before = signal.getsignal(sig)
    exp = toy_experiment()
    prof = exp.profiles["t"].replace(ckpt_every=1000)  # no periodic checkpoint before the end
    full = train_one(exp, "st", prof, 0, tmp_path / "full", progress=False)
    exp.train_data = lambda m, seed, rank, world_size, device, batch_size: _SignalAt(
        batch_size, seed, rank, world_size, device, at=7, sig=sig)
    with pytest.raises(Interrupted) as e:
        train_one(exp, "st", prof, 0, tmp_path / "int", progress=False)
    ck = tmp_path / "int" / "st" / "seed0" / "checkpoint.pt"
    assert e.value.step == 8 and e.value.signum == sig and e.value.path == ck
    assert load_checkpoint(ck)["step"] == 8
    assert signal.getsignal(sig) is before  # handlers restored
    exp.train_data = toy_experiment().train_data
    resumed = train_one(exp, "st", prof, 0, tmp_path / "int", resume=True, progress=False)
    for k, v in full["_model"].state_dict().items():
        torch.testing.assert_close(v, resumed["_model"].state_dict()[k], rtol=0, atol=0, msg=k)


def _recipe(out, *extra):
    cmd = [sys.executable, "-m", "repro.mnist_addition", "--profile", "smoke", "--model", "fcn", "--steps", "400",
           "--out", str(out), "--no-progress", "--threads", "1", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    p = _recipe(out)
    so, se = p.communicate(timeout=600)
    assert p.returncode == 0, se[-3000:]
    return load_checkpoint(out / "fcn" / "seed0" / "checkpoint.pt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_recipe_child_interrupted_then_resumed(tmp_path, sig, uninterrupted):
    ck = tmp_path / "fcn" / "seed0" / "checkpoint.pt"
    p = _recipe(tmp_path)
    t0 = time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 300:  # training is under way
        time.sleep(0.02)
    p.send_signal(sig)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 128 + sig, (so, se)
    assert "Traceback" not in se and "KeyboardInterrupt" not in se
    lines = [ln for ln in se.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and "--resume" in lines[0] and "python -m repro.mnist_addition" in lines[0], se
    step = load_checkpoint(ck)["step"]
    assert 10 <= step < 400 and f"step {step}" in lines[0]
    p = _recipe(tmp_path, "--resume")
    so, se = p.communicate(timeout=600)
    assert p.returncode == 0, se[-3000:]
    assert f"resumed from step {step}" in so
    final = load_checkpoint(ck)
    assert final["step"] == uninterrupted["step"] == 400
    for k, v in uninterrupted["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=0, atol=0, msg=k)
