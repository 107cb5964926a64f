"""The generic training harness: an :class:`Experiment` (model factory + data source + eval fn +
profile table + paper numbers) trained by :func:`train_one` / :func:`run`.

Design points:

* **Seeded and resumable.** The model is built under ``torch.manual_seed(seed)``; the training
  data source's ``batch(step)`` is a pure function of (seed, rank, step), so a run resumed from a
  checkpoint replays exactly the batches it would have seen and ends at the same parameters.
* **No host syncs per step.** Loss / accuracy accumulate on the device; ``.item()`` happens only
  every ``log_every`` steps (progress bar, non-finite check) -- so the step can run under
  ``torch.compile`` (``compile=True``) or be captured as a CUDA graph.
* **Non-finite loss** stops training with :class:`NonFiniteLoss`; checkpoints are written only
  after a finite check, so the last good checkpoint is the one on disk.
* **DDP.** Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
  ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU), each rank draws its own disjoint
  slice of the data (rank-split online stream, or :class:`FixedSource`'s
  ``DistributedSampler``), the batch size is the *global* batch, and rank 0 alone logs, evaluates
  and writes checkpoints / results.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, remove_checkpoint, save_checkpoint
from .profile import Experiment, Profile
from .provenance import seed_record, summarise_seeds, versions
from .sources import Prefetcher, unpack
from .tables import write_results


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointInTheWay(RuntimeError):
    """A run started without ``--resume`` or ``--restart`` found a checkpoint of an earlier run: training
    from step 0 would overwrite it, so it stops and says which of the two to give."""


class Interrupted(RuntimeError):
    """Training stopped on SIGINT / SIGTERM; ``path`` holds a checkpoint of ``step`` (``saved``)
    unless the loss was non-finite (then the last good checkpoint is kept)."""

    def __init__(self, msg: str, *, step: int, total: int, path: Path, signum: int, saved: bool):
        super().__init__(msg)
        self.step, self.total, self.path, self.signum, self.saved = step, total, path, signum, saved


class _StopOnSignal:
    """While active (main thread, single process), SIGINT / SIGTERM only set ``signum``; the
    training loop checks it after each step. A second signal stops at once (KeyboardInterrupt)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, enabled: bool):
        import signal
        import threading

        self.signum = None
        self._old = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# ----------------------------------------------------------------------------------------------
# distributed helpers

def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Initialise the process group if launched by torchrun; returns (rank, world_size, device)."""
    rank, local_rank, world = dist_env()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# training

def is_st_param(model: nn.Module) -> set[int]:
    from stn_triton.modules import SpatialTransformer

    ids = set()
    for m in model.modules():
        if isinstance(m, SpatialTransformer):
            ids.update(id(p) for p in m.parameters())
    return ids


def make_optimizer(model: nn.Module, p: Profile) -> torch.optim.Optimizer:
    st = is_st_param(model)
    main = [q for q in model.parameters() if q.requires_grad and id(q) not in st]
    loc = [q for q in model.parameters() if q.requires_grad and id(q) in st]
    groups = [{"params": main, "lr_mult": 1.0}]
    if loc:
        groups.append({"params": loc, "lr_mult": p.loc_lr_mult})
    if p.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    if p.optimizer == "adam":
        return torch.optim.Adam(groups, lr=p.lr, weight_decay=p.weight_decay)
    raise ValueError(f"optimizer must be sgd or adam, got {p.optimizer!r}")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]


def _progress(total: int, initial: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)


def checkpoint_in_the_way(ckpt_path: Path, model_name: str, seed: int) -> CheckpointInTheWay:
    """The error for a run started without --resume / --restart over an existing checkpoint."""
    try:
        found = f"checkpoint of step {load_checkpoint(ckpt_path, map_location='cpu')['step']}"
    except (CheckpointError, KeyError, TypeError) as e:
        found = f"damaged checkpoint ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    return CheckpointInTheWay(f"[{model_name} seed {seed}] {found} found ({ckpt_path}): --resume continues it, "
                              f"--restart discards it")


def measure_steps_per_s(exp: Experiment, model_name: str, profile: Profile, dev: torch.device, steps: int = 3,
                        warmup: int = 1) -> float:
    """Training steps per second of ``model_name`` at ``profile``'s batch on ``dev``: ``warmup`` untimed then
    ``steps`` timed steps of a throwaway copy (model, optimiser, data source), the global RNG left as it was."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        model = exp.build_model(model_name).to(dev)
        opt = make_optimizer(model, profile)
        data = exp.train_data(model_name, seed=0, rank=0, world_size=1, device=dev, batch_size=profile.batch_size)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        t0 = 0.0
        for step in range(warmup + steps):
            if step == warmup:
                sync()
                t0 = time.perf_counter()
            set_lr(opt, profile.lr_at(step))
            x, y = unpack(data.batch(step))
            loss = exp.loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return steps / max(time.perf_counter() - t0, 1e-9)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def print_estimates(exp: Experiment, profiles: dict[str, Profile], dev: torch.device, timed_steps: int = 3) -> None:
    """Before a long run: the expected training wall time of each model and seed, from steps/s measured
    on the spot (:func:`measure_steps_per_s`) -- not from earlier runs, whose machine may differ."""
    for m, prof in profiles.items():
        sps = measure_steps_per_s(exp, m, prof, dev, steps=timed_steps)
        per_seed = prof.steps / sps
        print(f"[{m}] expected wall time: ~{_duration(per_seed)} per seed ({prof.steps:,} steps of batch "
              f"{prof.batch_size} at {sps:.2f} steps/s, measured now over {timed_steps} steps on {dev.type}, "
              f"{torch.get_num_threads()} thread(s); evaluation not included); seeds {list(prof.seeds)}: "
              f"~{_duration(per_seed * len(prof.seeds))} in all", flush=True)


def train_one(exp: Experiment, model_name: str, profile: Profile, seed: int, out_dir: str | Path, *,
              device: str = "cpu", resume: bool = False, compile: bool = False, progress: bool = True,
              final_eval: bool = True, restart: bool = False, prefetch: bool | None = None) -> dict:
    """Train one (model, seed); returns its result dict. Checkpoints in ``out_dir/model/seedS``.

    ``resume``: continue from the checkpoint / return the finished result if there is one (and say
    which). ``restart``: delete this run's checkpoint and result first and train from step 0.
    A damaged checkpoint raises :class:`~repro.harness.checkpoint.CheckpointError`.
    ``prefetch``: draw the next batch on a background thread (:class:`Prefetcher`); default: on CPU, for
    data sources that set ``thread_prefetch = True`` (the MNIST streams, :class:`FixedSource`)."""
    rank, world, dev = setup_distributed(device)
    run_dir = Path(out_dir) / model_name / f"seed{seed}"
    ckpt_path = run_dir / "checkpoint.pt"
    done_path = run_dir / "result.json"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if restart:
            removed = [p.name for p in (ckpt_path, done_path) if remove_checkpoint(p)]
            if removed:
                print(f"[{model_name} seed {seed}] --restart: deleted {', '.join(removed)} in {run_dir}")
            resume = False
    barrier()
    resume = resume and not restart
    if not resume and not restart and ckpt_path.exists():  # never train from 0 over an earlier run's checkpoint
        raise checkpoint_in_the_way(ckpt_path, model_name, seed)
    if resume and done_path.exists():
        res = json.loads(done_path.read_text())
        if res.get("iterations") == profile.steps and res.get("data") == exp.data and res.get("config") == exp.config:
            if rank == 0:
                print(f"[{model_name} seed {seed}] already complete: error {res['error']:.2f}% (resume; {done_path})")
            return res
        if rank == 0:
            print(f"[{model_name} seed {seed}] {done_path} is for {res.get('iterations')} iterations, data "
                  f"{res.get('data')}, config {res.get('config')}; this run has {profile.steps}, {exp.data}, "
                  f"{exp.config}: not reused")

    if profile.batch_size % world:
        raise ValueError(f"batch size {profile.batch_size} is not divisible by the {world} DDP processes")
    torch.manual_seed(seed)
    model = exp.build_model(model_name).to(dev)
    n_params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    opt = make_optimizer(model, profile)
    step0, wall0, history = 0, 0.0, []
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=dev)
        if ck.get("data") != exp.data or ck.get("config") != exp.config:
            raise CheckpointError(f"{ckpt_path} was trained on data {ck.get('data')} with config {ck.get('config')}, "
                                  f"this run asks for {exp.data}, {exp.config}: give another --out, or --restart to "
                                  "train from step 0")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step0, wall0, history = ck["step"], ck.get("wall_s", 0.0), list(ck.get("history", []))
        if rank == 0:
            print(f"[{model_name} seed {seed}] resumed from step {step0} of {profile.steps} ({ckpt_path})")
    elif resume and rank == 0:
        print(f"[{model_name} seed {seed}] nothing to resume (no checkpoint in {run_dir}): training from step 0")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    data = exp.train_data(model_name, seed=seed, rank=rank, world_size=world, device=dev,
                          batch_size=profile.batch_size // world)
    metric = exp.metric_fn or (lambda logits, y: (logits.argmax(1) == y).sum())

    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev)
    seen = 0
    bar = _progress(profile.steps, step0, f"{model_name} s{seed}", progress and rank == 0)
    t_last, last_log_step = time.perf_counter(), step0
    t_start = time.perf_counter()
    imgs_per_s = float("nan")
    net.train()
    step = step0
    # checkpoint-and-stop on SIGINT / SIGTERM (single process; under torchrun ranks could stop at
    # different steps and deadlock in the gradient all-reduce, so a signal stops them as before)
    stop = _StopOnSignal(enabled=world == 1)

    def checkpoint(nxt):
        save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": nxt,
                      "wall_s": wall0 + time.perf_counter() - t_start, "history": history,
                      "profile": dataclasses.asdict(profile), "seed": seed, "data": exp.data,
                         "config": exp.config}, ckpt_path)

    if prefetch is None:  # sources opt in: their batch(step) must be safe to run beside the step on a thread
        prefetch = dev.type == "cpu" and bool(getattr(data, "thread_prefetch", False))
    feed = Prefetcher(data, profile.steps, prefetch)
    try:
        for step in range(step0, profile.steps):
            set_lr(opt, profile.lr_at(step))
            x, y = unpack(feed.get(step))
            logits = net(x)
            loss = exp.loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            correct += metric(logits.detach(), y)
            seen += y.shape[0]
            nxt = step + 1
            if nxt % profile.log_every == 0 or nxt == profile.steps:
                stats = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=dev)])
                if world > 1:
                    dist.all_reduce(stats)
                ls, cr, nn_ = stats.tolist()  # the one host sync per logging interval
                steps_done = nxt - last_log_step
                mean_loss = ls / (steps_done * world)
                if not math.isfinite(mean_loss):
                    kept = (f"The last good checkpoint is kept at {ckpt_path} (resume with --resume, e.g. after "
                            f"lowering --lr)." if ckpt_path.exists() else
                            f"No checkpoint was written yet (the first is due at step {profile.ckpt_every}).")
                    raise NonFiniteLoss(
                        f"[{model_name} seed {seed}] non-finite training loss ({mean_loss}) in steps "
                        f"{last_log_step}..{nxt}; stopped. {kept}")
                now = time.perf_counter()
                imgs_per_s = nn_ / max(now - t_last, 1e-9)
                acc = 100.0 * cr / max(nn_, 1)
                history.append({"step": nxt, "loss": round(mean_loss, 5), "train_acc": round(acc, 3),
                                "lr": profile.lr_at(step)})
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.1f}%", img_s=f"{imgs_per_s:,.0f}")
                    bar.update(steps_done)
                loss_sum.zero_()
                correct.zero_()
                seen, t_last, last_log_step = 0, now, nxt
                if profile.eval_every and nxt % profile.eval_every == 0 and nxt != profile.steps:
                    if rank == 0:
                        ev = exp.evaluate(model, dev, profile.eval_limit)
                        history[-1]["test_error"] = ev["error"]
                        msg = f"[{model_name} seed {seed}] step {nxt}: loss {mean_loss:.3f}, test error {ev['error']:.2f}%"
                        (bar.write(msg) if bar is not None else print(msg))
                    barrier()
                if rank == 0 and (nxt % profile.ckpt_every == 0 or nxt == profile.steps):
                    checkpoint(nxt)
            if stop.signum is not None:
                import signal

                name = signal.Signals(stop.signum).name
                saved = seen == 0 or math.isfinite(loss_sum.item())  # never checkpoint a non-finite state
                if saved and not (ckpt_path.exists() and last_log_step == nxt and
                                  (nxt % profile.ckpt_every == 0 or nxt == profile.steps)):
                    checkpoint(nxt)
                where = (f"checkpoint of step {nxt} of {profile.steps} saved to {ckpt_path}" if saved else
                         f"non-finite loss since step {last_log_step}: the last good checkpoint is kept at {ckpt_path}")
                raise Interrupted(f"[{model_name} seed {seed}] interrupted ({name}): {where}", step=nxt,
                                  total=profile.steps, path=ckpt_path, signum=stop.signum, saved=saved)
    finally:
        stop.restore()
        feed.close()
        if bar is not None:
            bar.close()
    wall = wall0 + time.perf_counter() - t_start
    train_steps_run = profile.steps - step0
    res = {"model": model_name, "seed": seed, "iterations": profile.steps, "params": n_params,
           "wall_time_s": round(wall, 1), "world_size": world,
           "images_per_s": round(train_steps_run * profile.batch_size / max(time.perf_counter() - t_start, 1e-9), 1)
           if train_steps_run else None,
           "final_train_loss": history[-1]["loss"] if history else None, "history": history}
    res.update({k: v for k, v in (("data", exp.data), ("config", exp.config)) if v is not None})
    if final_eval:
        if rank == 0:
            t = time.perf_counter()
            res.update(exp.evaluate(model, dev, profile.final_eval_limit))
            res["eval_time_s"] = round(time.perf_counter() - t, 1)
            done_path.write_text(json.dumps(res, indent=1))
        barrier()
    res["_model"] = model
    return res


def run(exp: Experiment, *, profile: str, models: list[str], seeds: list[int] | None, out_dir: str | Path,
        device: str = "cpu", resume: bool = False, compile: bool = False, overrides: dict | None = None,
        progress: bool = True, notes: list[str] = (), visualise: bool = True, restart: bool = False,
        estimate: bool = False, prefetch: bool | None = None) -> dict:
    """Train ``models`` for every seed, average, write results.json / results.md (rank 0).

    Before anything trains: a run started without ``resume`` / ``restart`` whose checkpoint exists stops
    the whole command (:class:`CheckpointInTheWay`); ``estimate`` prints each model's expected wall time
    (:func:`print_estimates`, on rank 0); ``prefetch``: as :func:`train_one`'s."""
    out_dir = Path(out_dir)
    rank, world, dev = setup_distributed(device)
    results, profs, trained = {}, {}, {}
    for m in models:
        prof = exp.profile(profile, m, **(overrides or {}))
        if seeds:
            prof = prof.replace(seeds=tuple(seeds))
        profs[m] = prof
    if not resume and not restart:
        for m, prof in profs.items():
            for s in prof.seeds:
                ck = out_dir / m / f"seed{s}" / "checkpoint.pt"
                if ck.exists():
                    raise checkpoint_in_the_way(ck, m, s)
    if estimate and rank == 0:
        print_estimates(exp, profs, dev)
    barrier()
    for m, prof in profs.items():
        per = []
        for s in prof.seeds:
            r = train_one(exp, m, prof, s, out_dir, device=device, resume=resume, compile=compile, progress=progress,
                          restart=restart, prefetch=prefetch)
            trained[m] = r.pop("_model", None)
            per.append(r)
        if rank == 0:
            v = versions()
            summary = summarise_seeds([seed_record(s, r, v) for s, r in zip(prof.seeds, per)])
            results[m] = {**summary, "iterations": prof.steps, "params": per[0]["params"],
                          "schedule": dataclasses.asdict(prof), "world_size": world, "versions": v,
                          "paper_error": exp.paper.get(m),
                          **{k: v for k, v in (("data", exp.data), ("config", exp.config)) if v is not None}}
            print(f"[{m}] error {summary['error']:.2f}% over seeds {summary['seeds']} (paper {exp.paper.get(m)})")
            write_results(exp, profile, str(dev.type if world == 1 else f"{dev.type} x{world}"), results, out_dir,
                          profs, notes)
    if rank == 0 and visualise and exp.visualise is not None and trained:
        exp.visualise({k: v for k, v in trained.items() if v is not None}, out_dir, dev)
    barrier()
    return results

