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
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


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


@dataclass(frozen=True)
class Profile:
    """A training schedule. ``milestones``: steps at which the lr is multiplied by ``gamma``."""

    name: str
    steps: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    loc_lr_mult: float = 1.0  # learning-rate multiplier for spatial-transformer parameters
    seeds: tuple[int, ...] = (0,)
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0  # 0: only at the end
    eval_limit: int | None = None  # test examples for intermediate evals
    final_eval_limit: int | None = None  # test examples for the final eval (None: the whole test set)
    warmup: int = 0  # linear lr warm-up steps
    note: str = ""

    def lr_at(self, step: int) -> float:
        k = sum(1 for m in self.milestones if step >= m)
        lr = self.lr * (self.gamma ** k)
        if self.warmup and step < self.warmup:
            lr *= (step + 1) / self.warmup
        return lr

    def replace(self, **kw) -> "Profile":
        """``dataclasses.replace`` ignoring ``None`` values; ``_scale_steps=N`` sets ``steps=N`` and
        scales the milestones and warm-up proportionally (the schedule keeps its shape)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        n = kw.pop("_scale_steps", None)
        if n is not None and n != self.steps:
            f = n / self.steps
            kw.setdefault("milestones", tuple(max(1, round(m * f)) for m in self.milestones))
            kw.setdefault("warmup", round(self.warmup * f))
            kw["steps"] = n
        return dataclasses.replace(self, **kw)

    def describe(self) -> str:
        opt = f"{self.optimizer}" + (f" momentum {self.momentum}" if self.optimizer == "sgd" else "")
        sched = (f"x{self.gamma} at {', '.join(f'{m:,}' for m in self.milestones)}" if self.milestones
                 else "constant")
        s = (f"{self.steps:,} steps, batch {self.batch_size}, {opt}, lr {self.lr} ({sched}"
             f"{f', {self.warmup} warm-up' if self.warmup else ''}), loc-net lr x{self.loc_lr_mult}, "
             f"seeds {list(self.seeds)}")
        return s


@dataclass
class Experiment:
    """What the harness needs to know about one experiment.

    * ``build_model(name)`` -> nn.Module (called under ``torch.manual_seed(seed)``).
    * ``train_data(name, seed, rank, world_size, device, batch_size)`` -> object with
      ``batch(step)`` returning ``(x, y)`` or an object with ``.images`` / ``.labels``; it must be
      a pure function of its arguments and ``step``; ``batch_size`` is per rank.
    * ``evaluate(model, device, limit)`` -> dict with at least ``"error"`` (percent).
    * ``loss_fn(logits, y)`` -> scalar (default cross-entropy); ``metric_fn(logits, y)`` -> number of
      correct predictions (default argmax accuracy).
    * ``profiles``: name -> :class:`Profile`; ``model_overrides``: (profile, model) -> Profile
      field overrides (e.g. a cheaper CNN in the quick profile).
    * ``paper``: model -> the paper's number (percent error), for the table.
    * ``visualise(models, out_dir, device)``: optional figure of trained models.
    """

    name: str
    models: tuple[str, ...]
    build_model: Callable[[str], nn.Module]
    train_data: Callable[..., Any]
    evaluate: Callable[..., dict]
    profiles: dict[str, Profile]
    paper: dict[str, float] = field(default_factory=dict)
    model_overrides: dict[tuple[str, str], dict] = field(default_factory=dict)
    loss_fn: Callable = F.cross_entropy
    metric_fn: Callable | None = None
    visualise: Callable | None = None
    paper_profile_note: str = ""
    metric_name: str = "error"

    def profile(self, profile: str, model: str, **overrides) -> Profile:
        if profile not in self.profiles:
            raise ValueError(f"profile must be one of {sorted(self.profiles)}, got {profile!r}")
        p = self.profiles[profile]
        p = p.replace(**self.model_overrides.get((profile, model), {}))
        return p.replace(**overrides)


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


class FixedSource:
    """Batches from a fixed training set, reshuffled every epoch by a ``DistributedSampler``
    (rank-disjoint shards under DDP). ``batch(step)`` is a pure function of (seed, rank, step)."""

    thread_prefetch = True  # see train_one's ``prefetch``

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device="cpu"):
        from torch.utils.data.distributed import DistributedSampler

        self.images, self.labels, self.batch_size, self.device = images, labels, batch_size, torch.device(device)
        self.sampler = DistributedSampler(range(len(labels)), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"training set of {len(labels)} is smaller than one batch of {batch_size} per rank")
        self._epoch, self._idx = None, None

    def batch(self, step: int):
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._idx, self._epoch = torch.tensor(list(iter(self.sampler))), epoch
        idx = self._idx[i * self.batch_size:(i + 1) * self.batch_size]
        return (self.images[idx].to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True))


class Prefetcher:
    """``get(step)`` returns ``data.batch(step)``, having started ``data.batch(step + 1)`` on a background
    thread, so rendering the next batch overlaps with training on this one (torch ops release the GIL).
    ``batch`` is a pure function of ``step``, so the batches are the ones the plain loop would draw; one
    batch is in flight at a time, so the data source is never called concurrently. ``enabled=False``
    calls ``data.batch`` inline."""

    def __init__(self, data, stop: int, enabled: bool = True):
        self.data, self.stop, self.enabled = data, int(stop), bool(enabled)
        self._pool = self._next = None
        self._next_step = -1
        if self.enabled:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def get(self, step: int):
        if not self.enabled:
            return self.data.batch(step)
        fut = self._next if self._next_step == step else self._pool.submit(self.data.batch, step)
        self._next, self._next_step = None, -1
        out = fut.result()
        if step + 1 < self.stop:  # submitted after taking this batch: the woken worker then competes for the
            # GIL with the training step, not with this hand-over (which otherwise waited ~5-10 ms for it)
            self._next, self._next_step = self._pool.submit(self.data.batch, step + 1), step + 1
        return out

    def close(self) -> None:
        if self._pool is not None:
            if self._next is not None:
                self._next.cancel()
            self._pool.shutdown(wait=True)
            self._pool = self._next = None


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch.images, batch.labels


@torch.no_grad()
def classification_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device,
                         batch_size: int = 1000, limit: int | None = None) -> dict:
    """Top-1 error (percent) of ``model`` on (images, labels); evaluation mode, no grad."""
    was = model.training
    model.eval()
    n = len(labels) if limit is None else min(limit, len(labels))
    wrong = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, n, batch_size):
        x = images[i:min(i + batch_size, n)].to(device)
        y = labels[i:min(i + batch_size, n)].to(device)
        wrong += (model(x).argmax(1) != y).sum()
    model.train(was)
    return {"error": 100.0 * wrong.item() / n, "n_test": n}


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


def versions() -> dict:
    """Provenance of a result: library versions, the commit, whether the tree was clean, threads, host."""
    import triton

    import stn_triton

    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    from repro.data.sets import VERSION as data_version

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "stn_triton": stn_triton.__version__, "git": commit,
            "git_clean": (status == "") if commit else None,
            "threads": torch.get_num_threads(), "host_cpus": os.cpu_count(), "machine": platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "data_version": data_version}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for provenance: results can differ across CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _atomic_save(obj, path: Path) -> None:
    from .checkpoint import save_checkpoint

    save_checkpoint(obj, path)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)


def train_one(exp: Experiment, model_name: str, profile: Profile, seed: int, out_dir: str | Path, *,
              device: str = "cpu", resume: bool = False, compile: bool = False, progress: bool = True,
              final_eval: bool = True, restart: bool = False, prefetch: bool | None = None) -> dict:
    """Train one (model, seed); returns its result dict. Checkpoints in ``out_dir/model/seedS``.

    ``resume``: continue from the checkpoint / return the finished result if there is one (and say
    which). ``restart``: delete this run's checkpoint and result first and train from step 0.
    A damaged checkpoint raises :class:`~repro.harness.checkpoint.CheckpointError`.
    ``prefetch``: draw the next batch on a background thread (:class:`Prefetcher`); default: on CPU, for
    data sources that set ``thread_prefetch = True`` (the MNIST streams, :class:`FixedSource`)."""
    from .checkpoint import load_checkpoint, remove_checkpoint

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
    if resume and done_path.exists():
        res = json.loads(done_path.read_text())
        if res.get("iterations") == profile.steps:
            if rank == 0:
                print(f"[{model_name} seed {seed}] already complete: error {res['error']:.2f}% (resume; {done_path})")
            return res
        if rank == 0:
            print(f"[{model_name} seed {seed}] {done_path} is for {res.get('iterations')} iterations, this schedule has "
                  f"{profile.steps}: not reused")

    if profile.batch_size % world:
        raise ValueError(f"batch size {profile.batch_size} is not divisible by the {world} DDP processes")
    torch.manual_seed(seed)
    model = exp.build_model(model_name).to(dev)
    n_params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    opt = make_optimizer(model, profile)
    step0, wall0, history = 0, 0.0, []
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=dev)
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
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": nxt,
                      "wall_s": wall0 + time.perf_counter() - t_start, "history": history,
                      "profile": dataclasses.asdict(profile), "seed": seed}, ckpt_path)

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
    if final_eval:
        if rank == 0:
            t = time.perf_counter()
            res.update(exp.evaluate(model, dev, profile.final_eval_limit))
            res["eval_time_s"] = round(time.perf_counter() - t, 1)
            done_path.write_text(json.dumps(res, indent=1))
        barrier()
    res["_model"] = model
    return res


# ----------------------------------------------------------------------------------------------
# results

def _fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def write_results(exp: Experiment, profile_name: str, device: str, model_results: dict, out_dir: Path,
                  profiles: dict[str, Profile], extra_notes: list[str] = ()) -> dict:
    """Merge into ``out_dir/results.json`` and rewrite ``results.md`` (paper vs ours). Holds an
    exclusive lock (a file in the temp folder named after ``out_dir``) so separate processes (one model each) can share
    an output folder."""
    import fcntl
    import hashlib
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"stn_results_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_results(exp, profile_name, device, model_results, out_dir, profiles, extra_notes)


def _write_results(exp, profile_name, device, model_results, out_dir, profiles, extra_notes):
    path = out_dir / "results.json"
    data = {}
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("profile") != profile_name or data.get("experiment") != exp.name:
            data = {}
    data.update({"experiment": exp.name, "profile": profile_name, "device": device})
    models = data.setdefault("models", {})
    models.update(model_results)
    data["models"] = {k: models[k] for k in exp.models if k in models} | {k: v for k, v in models.items() if k not in exp.models}
    path.write_text(json.dumps(data, indent=1) + "\n")

    lines = [f"# {exp.name}: profile `{profile_name}`, device `{device}`", "",
             "| model | paper error % | ours error % | difference | seeds | iterations | params | wall time | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in data["models"].items():
        paper = exp.paper.get(name)
        diff = None if paper is None else r["error"] - paper
        per = r.get("error_per_seed", [])
        ours = f"{r['error']:.2f}" + (f" (± {r['error_std']:.2f})" if len(per) > 1 else "")
        wall = r.get("wall_time_s")
        lines.append(f"| {name} | {_fmt(paper, 1)} | {ours} | {'' if diff is None else f'{diff:+.2f}'} | "
                     f"{r.get('seeds')} | {r.get('iterations'):,} | {r.get('params'):,} | "
                     f"{'' if wall is None else f'{wall / 60:.1f} min'} | {_fmt(r.get('images_per_s'), 0)} |")
    lines += ["", "Schedules:", ""]
    notes = []
    for name, r in data["models"].items():
        prof = profiles.get(name) or (Profile(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in r["schedule"].items()})
                                      if "schedule" in r else None)
        if prof is not None:
            lines.append(f"- `{name}`: {prof.describe()}")
            if prof.note and prof.note not in notes:
                notes.append(prof.note)
    if notes:
        lines += ["", *[f"Profile note: {n}." if not n.endswith(".") else f"Profile note: {n}" for n in notes]]
    if extra_notes:
        lines += ["", *extra_notes]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return data


def seed_record(seed: int, result: dict, versions_: dict) -> dict:
    """One seed's line in a results.json model entry (``runs``): its error, cost and provenance."""
    return {"seed": seed, "error": result["error"], "wall_time_s": result.get("wall_time_s"),
            "images_per_s": result.get("images_per_s"), "final_train_loss": result.get("final_train_loss"),
            "versions": versions_}


def seed_records(entry: dict) -> list[dict]:
    """The per-seed records of a results.json model entry. Entries written before ``runs`` existed
    hold one seed, whose provenance is the entry's own."""
    if "runs" in entry:
        return [dict(r) for r in entry["runs"]]
    if len(entry.get("seeds", [])) != 1:
        raise ValueError(f"a results.json entry without 'runs' must hold one seed, this one holds {entry.get('seeds')}")
    return [seed_record(entry["seeds"][0], {**entry, "final_train_loss": (entry.get("final_train_loss") or [None])[0]},
                        entry.get("versions", {}))]


def summarise_seeds(records: list[dict]) -> dict:
    """A model's result over its seeds, from :func:`seed_record` s: mean error and sample standard
    deviation (0 for one seed), the per-seed lists in seed order, total wall time, mean images/s."""
    records = sorted(records, key=lambda r: r["seed"])
    errs = [r["error"] for r in records]
    mean = sum(errs) / len(errs)
    std = (sum((e - mean) ** 2 for e in errs) / max(len(errs) - 1, 1)) ** 0.5
    ips = [r["images_per_s"] for r in records if r.get("images_per_s")]
    walls = [r["wall_time_s"] for r in records if r.get("wall_time_s") is not None]
    return {"error": round(mean, 3), "error_std": round(std, 3), "error_per_seed": errs,
            "seeds": [r["seed"] for r in records], "wall_time_s": round(sum(walls), 1),
            "images_per_s": round(sum(ips) / len(ips), 1) if ips else None,
            "final_train_loss": [r.get("final_train_loss") for r in records], "runs": records}


def run(exp: Experiment, *, profile: str, models: list[str], seeds: list[int] | None, out_dir: str | Path,
        device: str = "cpu", resume: bool = False, compile: bool = False, overrides: dict | None = None,
        progress: bool = True, notes: list[str] = (), visualise: bool = True, restart: bool = False) -> dict:
    """Train ``models`` for every seed, average, write results.json / results.md (rank 0)."""
    out_dir = Path(out_dir)
    rank, world, dev = setup_distributed(device)
    results, profs, trained = {}, {}, {}
    for m in models:
        prof = exp.profile(profile, m, **(overrides or {}))
        if seeds:
            prof = prof.replace(seeds=tuple(seeds))
        profs[m] = prof
        per = []
        for s in prof.seeds:
            r = train_one(exp, m, prof, s, out_dir, device=device, resume=resume, compile=compile, progress=progress,
                          restart=restart)
            trained[m] = r.pop("_model", None)
            per.append(r)
        if rank == 0:
            v = versions()
            summary = summarise_seeds([seed_record(s, r, v) for s, r in zip(prof.seeds, per)])
            results[m] = {**summary, "iterations": prof.steps, "params": per[0]["params"],
                          "schedule": dataclasses.asdict(prof), "world_size": world, "versions": v,
                          "paper_error": exp.paper.get(m)}
            print(f"[{m}] error {summary['error']:.2f}% over seeds {summary['seeds']} (paper {exp.paper.get(m)})")
            write_results(exp, profile, str(dev.type if world == 1 else f"{dev.type} x{world}"), results, out_dir,
                          profs, notes)
    if rank == 0 and visualise and exp.visualise is not None and trained:
        exp.visualise({k: v for k, v in trained.items() if v is not None}, out_dir, dev)
    barrier()
    return results
