"""The generic training harness on a tiny synthetic experiment: training reduces the loss,
resume reproduces an uninterrupted run, non-finite loss stops cleanly, DDP on gloo (2 processes)."""
import json
import os
import socket

import pytest
import torch
from torch import nn

from repro.harness import FixedSource, NonFiniteLoss, Profile, run, train_one
from repro.harness.checkpoint import load_checkpoint
from repro.harness.loop import make_optimizer
from testing.toy_experiment import ToyStream, toy_experiment, toy_model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_reduces_loss(tmp_path):
    exp = toy_experiment()
    r = train_one(exp, "mlp", exp.profiles["t"], 0, tmp_path, progress=False)
    h = r["history"]
    assert h[-1]["loss"] < h[0]["loss"] and r["error"] < 30
    assert (tmp_path / "mlp" / "seed0" / "checkpoint.pt").exists()
    assert h[-1]["lr"] == pytest.approx(0.005)  # the milestone divided the lr by 10


def test_resume_reproduces_uninterrupted_run(tmp_path):
    exp = toy_experiment()
    full = train_one(exp, "st", exp.profiles["t"], 0, tmp_path / "a", progress=False)
    half = exp.profiles["t"].replace(steps=20)
    train_one(exp, "st", half, 0, tmp_path / "b", progress=False, final_eval=False)
    resumed = train_one(exp, "st", exp.profiles["t"], 0, tmp_path / "b", resume=True, progress=False)
    for (k, a), (_, b) in zip(full["_model"].state_dict().items(), resumed["_model"].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert full["error"] == resumed["error"]
    # a finished run is skipped on --resume
    again = train_one(exp, "st", exp.profiles["t"], 0, tmp_path / "b", resume=True, progress=False)
    assert again["error"] == resumed["error"] and "_model" not in again


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    exp = toy_experiment()
    prof = exp.profiles["t"]

    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] > 25 else loss

    exp.loss_fn = loss_fn
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        train_one(exp, "mlp", prof, 0, tmp_path, progress=False)
    ck = load_checkpoint(tmp_path / "mlp" / "seed0" / "checkpoint.pt")
    assert ck["step"] == 20
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_loc_net_lr_multiplier():
    model = toy_model("st")
    opt = make_optimizer(model, Profile("x", 1, 1, lr=0.1, loc_lr_mult=0.1))
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr_mult"] == 0.1
    n_st = sum(p.numel() for p in model[0].parameters())
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == n_st


def test_fixed_source_is_pure_and_rank_disjoint():
    x = torch.arange(100).float().view(100, 1, 1, 1)
    y = torch.arange(100)
    a = FixedSource(x, y, 10, seed=1, rank=0, world_size=2)
    b = FixedSource(x, y, 10, seed=1, rank=1, world_size=2)
    ya = torch.cat([a.batch(s)[1] for s in range(5)])
    yb = torch.cat([b.batch(s)[1] for s in range(5)])
    assert len(set(ya.tolist()) | set(yb.tolist())) == 100  # one epoch, disjoint, complete
    assert torch.equal(FixedSource(x, y, 10, seed=1).batch(7)[1], FixedSource(x, y, 10, seed=1).batch(7)[1])


def test_run_writes_results(tmp_path):
    exp = toy_experiment(steps=20)
    run(exp, profile="t", models=["mlp"], seeds=[0, 1], out_dir=tmp_path, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "toy" and data["profile"] == "t" and data["device"] == "cpu"
    r = data["models"]["mlp"]
    assert set(r) >= {"error", "seeds", "iterations", "versions", "wall_time_s", "images_per_s"}
    assert r["seeds"] == [0, 1] and len(r["error_per_seed"]) == 2
    md = (tmp_path / "results.md").read_text()
    assert "| mlp | 1.0 |" in md


# ---------------------------------------------------------------------------------------------- DDP

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    exp = toy_experiment(steps=20)
    res = train_one(exp, "st", exp.profiles["t"], 0, out, progress=False)
    torch.save(res["_model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)  # replicas stay in sync
    res = json.loads((tmp_path / "st" / "seed0" / "result.json").read_text())  # rank 0 wrote it
    assert res["world_size"] == 2 and res["error"] < 50


def test_prefetch_trains_identically(tmp_path):
    """The background-thread prefetch draws the same batches: bit-identical parameters either way."""
    exp = toy_experiment(steps=25)
    a = train_one(exp, "st", exp.profiles["t"], 0, tmp_path / "a", progress=False, final_eval=False, prefetch=True)
    b = train_one(exp, "st", exp.profiles["t"], 0, tmp_path / "b", progress=False, final_eval=False, prefetch=False)
    for (k, x), (_, y) in zip(a["_model"].state_dict().items(), b["_model"].state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)
    assert a["history"] == b["history"]


def test_no_prefetch_flag_draws_inline(tmp_path, monkeypatch):
    """``--no-prefetch`` reaches the loop: batches are drawn inline (one core), not on a thread."""
    from repro.harness import loop
    from repro.harness.cli import main as cli_main
    from testing import toy_experiment as toy

    monkeypatch.setattr(toy.ToyStream, "thread_prefetch", True, raising=False)  # as the MNIST streams
    seen = []
    real = loop.Prefetcher
    monkeypatch.setattr(loop, "Prefetcher", lambda data, stop, enabled=True: seen.append(enabled) or real(data, stop, enabled))
    args = ["--profile", "t", "--model", "mlp", "--no-progress"]
    assert cli_main(toy.toy_experiment(steps=4), str(tmp_path), args + ["--out", str(tmp_path / "a"), "--no-prefetch"]) == 0
    assert cli_main(toy.toy_experiment(steps=4), str(tmp_path), args + ["--out", str(tmp_path / "b")]) == 0
    assert seen[0] is False and seen[1] is True


def test_prefetcher_returns_the_requested_batch():
    from repro.harness.sources import Prefetcher

    src = ToyStream(8, seed=3)
    feed = Prefetcher(src, stop=10)
    try:
        for step in (0, 1, 2, 5, 6, 9, 3):  # in order (prefetched) and out of order (drawn on demand)
            x, y = feed.get(step)
            ex, ey = src.batch(step)
            assert torch.equal(x, ex) and torch.equal(y, ey)
    finally:
        feed.close()
    assert torch.equal(Prefetcher(src, 10, enabled=False).get(4)[0], src.batch(4)[0])


def test_non_finite_loss_before_the_first_checkpoint_says_so(tmp_path):
    """The message named a 'last good checkpoint' that did not exist (paper-profile P FCN, step 3939)."""
    exp = toy_experiment()
    prof = exp.profiles["t"]
    exp.loss_fn = lambda logits, y: nn.functional.cross_entropy(logits, y) * float("nan")
    with pytest.raises(NonFiniteLoss, match="No checkpoint was written yet"):
        train_one(exp, "mlp", prof, 0, tmp_path, progress=False)
    assert not (tmp_path / "mlp" / "seed0" / "checkpoint.pt").exists()
