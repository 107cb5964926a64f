"""Where a training step's time goes, per recipe model: ``python -m bench.train_step``.

For each model (the recipes' own builders, online streams and optimiser -- the paper profile's SGD,
batch 256 by default) it times, interleaving the variants within every repetition and reporting
medians (ms per step) and ratios taken in the same process:

* ``data_ref``  rendering one online batch the way the code of b860a90 did (``stn_triton.warp`` /
  ``tps_warp`` on the CPU path, through the custom ops), from the same parameters;
* ``data``      ``stream.batch(step)`` as the harness calls it now;
* ``plain``     forward + backward + optimiser step on pre-rendered batches, every spatial
  transformer's warp replaced by ``F.grid_sample(x, F.affine_grid(theta))`` (the reference);
* ``warp``      the same with ``stn_triton.warp`` (the model as it trains), with phases
  ``fwd`` / ``bwd`` / ``opt`` timed separately in the same repetitions;
* ``serial``    the harness's step (``repro.harness.core``'s loop body) with the online batch drawn
  inline;
* ``prefetch``  the same with :class:`repro.harness.core.Prefetcher` (the next batch rendered on a
  background thread while this one trains); ``wait`` is the time the loop waits for its batch.

Ratios printed: ``warp / plain`` (the CPU warp path inside the model; target <= 1.05),
``serial / plain`` and ``prefetch / plain`` (the whole online step against the plain model on
pre-rendered tensors; target <= 1.15), ``data_ref / data`` (rendering speed-up).
Also: the cost of one checkpoint save (amortised over the profile's ``ckpt_every``) and of one
logging host sync. ``--profile-warp`` prints torch.profiler tables of the warp and plain steps.

Not a test, and the numbers depend on the machine: run it on a quiet one (``--threads 2`` is the
issue's setting). Timings use ``time.perf_counter`` (CPU ops are synchronous).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time

import torch
import torch.nn.functional as F

MODELS = [("RTS", "fcn"), ("RTS", "st-fcn-aff"), ("TC", "fcn"), ("TC", "st-fcn-aff"),
          ("addition", "fcn"), ("addition", "st-fcn"), ("addition", "2xst-fcn")]


def plain_warp(x, theta, size=None, *, mode="bilinear", padding_mode="zeros", align_corners=False):
    """The reference composition: ``F.affine_grid`` + ``F.grid_sample``."""
    size = tuple(x.shape[-2:]) if size is None else tuple(size)
    grid = F.affine_grid(theta, (x.shape[0], x.shape[1], *size), align_corners=align_corners)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


@contextlib.contextmanager
def warp_impl(kind: str):
    """``kind`` 'plain': spatial transformers warp with :func:`plain_warp`; 'warp': ``stn_triton.warp``."""
    import stn_triton.modules as mods

    orig = mods.warp
    if kind == "plain":
        mods.warp = plain_warp
    try:
        yield
    finally:
        mods.warp = orig


def reference_render(name, p, pool_x, pool_y):
    """The online rendering of b860a90 (through ``stn_triton.warp`` / ``tps_warp``), for ``data_ref``."""
    import stn_triton
    from repro.data import distort

    sp = distort.spec(name)
    size = sp.size
    idx = p["index"]
    if name == "addition":
        both = torch.stack([idx, p["index2"]], 1).reshape(-1)
        x = pool_x[both].unsqueeze(1).to(torch.float32).div_(255.0)
        images = stn_triton.warp(x, p["theta"].reshape(-1, 2, 3).to(torch.float32), size).reshape(-1, 2, *size)
    elif name == "E":
        x = pool_x[idx].unsqueeze(1).to(torch.float32).div_(255.0)
        images = stn_triton.tps_warp(x, p["points"].to(torch.float32), size)
    else:
        x = pool_x[idx].unsqueeze(1).to(torch.float32).div_(255.0)
        images = stn_triton.warp(x, p["theta"].to(torch.float32), size)
    if sp.clutter:
        # the old per-element 3-index gather of the crops; same values as distort._paste_clutter
        n, _, hgt, wid = images.shape
        src, crop, dest = (p["clutter_src"].reshape(-1), p["clutter_crop"].reshape(-1, 2),
                           p["clutter_dest"].reshape(-1, 2))
        ar = torch.arange(distort.PATCH)
        patches = pool_x[src[:, None, None], (crop[:, 1:2] + ar)[:, :, None], (crop[:, 0:1] + ar)[:, None, :]]
        patches = patches.to(torch.float32).div_(255.0)
        img = torch.arange(n).repeat_interleave(p["clutter_src"].shape[1])
        flat = img[:, None, None] * (hgt * wid) + (dest[:, 1:2] + ar)[:, :, None] * wid + (dest[:, 0:1] + ar)[:, None, :]
        images.view(-1).scatter_reduce_(0, flat.reshape(-1), patches.reshape(-1), reduce="amax")
    return images.clamp_(0.0, 1.0), pool_y[idx]


def setup(dataset: str, model_name: str, batch: int, profile: str = "paper"):
    from repro import distorted_mnist as dm
    from repro import mnist_addition as ma
    from repro.harness.core import make_optimizer

    exp = ma.EXPERIMENT if dataset == "addition" else dm.experiment(dataset, "online")
    prof = exp.profile(profile, model_name, batch_size=batch)
    torch.manual_seed(0)
    model = exp.build_model(model_name)
    opt = make_optimizer(model, prof)
    data = exp.train_data(model_name, seed=0, rank=0, world_size=1, device=torch.device("cpu"), batch_size=batch)
    return exp, prof, model, opt, data


class Case:
    """One model: its step variants, each timed over ``steps`` consecutive steps per call."""

    def __init__(self, dataset, model_name, batch, n_pre=4):
        from repro.harness.core import unpack

        self.label = f"{dataset} {model_name}"
        self.dataset, self.name = dataset, model_name
        self.exp, self.prof, self.model, self.opt, self.data = setup(dataset, model_name, batch)
        self.pre = [unpack(self.data.batch(10_000 + i)) for i in range(n_pre)]
        self.metric = self.exp.metric_fn or (lambda logits, y: (logits.argmax(1) == y).sum())
        self.loss_sum, self.correct = torch.zeros(()), torch.zeros(())
        self.step = 0
        self.feed, self.pstep = None, 20_000
        self.model.train()

    def _train(self, x, y, phases=None):
        """The harness loop body (repro.harness.core.train_one), optionally timing its phases."""
        from repro.harness.core import set_lr

        t0 = time.perf_counter()
        set_lr(self.opt, self.prof.lr_at(self.step))
        logits = self.model(x)
        loss = self.exp.loss_fn(logits, y)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        self.loss_sum += loss.detach()
        self.correct += self.metric(logits.detach(), y)
        if phases is not None:
            phases["fwd"].append(t1 - t0)
            phases["bwd"].append(t2 - t1)
            phases["opt"].append(t3 - t2)
        self.step += 1

    def run(self, variant: str, steps: int, phases=None) -> float:
        """Seconds per step of ``variant``."""
        from repro.harness.core import Prefetcher, unpack

        t = time.perf_counter()
        if variant == "data_ref":
            for i in range(steps):
                with torch.no_grad():
                    reference_render(self.data.name, self.data.params(self.step + i), self.data._pool_x,
                                     self.data._pool_y)
        elif variant == "data":
            for i in range(steps):
                self.data.batch(self.step + i)
        elif variant in ("plain", "warp"):
            with warp_impl(variant):
                for i in range(steps):
                    x, y = self.pre[i % len(self.pre)]
                    self._train(x, y, phases if variant == "warp" else None)
        elif variant == "serial":
            for _ in range(steps):
                x, y = unpack(self.data.batch(self.step))
                self._train(x, y)
        elif variant == "prefetch":
            # one Prefetcher for the whole run, as in the harness, on its own step counter (the other
            # variants in between leave its prefetched batch waiting, as a long step would)
            if self.feed is None:
                self.feed = Prefetcher(self.data, 1 << 40)
            waits = phases.setdefault("wait", []) if phases is not None else []
            for _ in range(steps):
                tw = time.perf_counter()
                x, y = unpack(self.feed.get(self.pstep))
                waits.append(time.perf_counter() - tw)
                self.pstep += 1
                self._train(x, y)
        else:
            raise ValueError(variant)
        return (time.perf_counter() - t) / steps


VARIANTS = ("data_ref", "data", "plain", "warp", "serial", "prefetch")


def checkpoint_cost(case: Case) -> float:
    import dataclasses

    buf = io.BytesIO()
    t = time.perf_counter()
    torch.save({"model": case.model.state_dict(), "optimizer": case.opt.state_dict(), "step": case.step,
                "profile": dataclasses.asdict(case.prof)}, buf)
    return time.perf_counter() - t


def profile_warp(case: Case, steps: int = 5) -> None:
    from torch.profiler import profile

    for variant in ("warp", "plain"):
        case.run(variant, 2)
        with profile() as prof:
            case.run(variant, steps)
        print(f"\n--- {case.label}: {variant} step, {steps} steps, ops by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=44))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians are printed)")
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per repetition")
    ap.add_argument("--models", default="all", help="comma-separated 'dataset:model' (e.g. RTS:fcn), or all")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--profile-warp", action="store_true", help="torch.profiler tables of the warp / plain steps")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    todo = MODELS if a.models == "all" else [tuple(m.split(":")) for m in a.models.split(",")]
    variants = [v for v in a.variants.split(",") if v]
    print(f"bench.train_step: batch {a.batch}, {a.threads} thread(s), {a.reps} reps x {a.steps} steps, "
          f"torch {torch.__version__}, host CPUs {__import__('os').cpu_count()}")
    rows = []
    for ds, m in todo:
        case = Case(ds, m, a.batch)
        for v in variants:  # warm-up
            case.run(v, 1)
        if a.profile_warp and "st" in m:
            profile_warp(case)
        times = {v: [] for v in variants}
        phases = {"fwd": [], "bwd": [], "opt": []}
        for _ in range(a.reps):
            for v in variants:
                times[v].append(case.run(v, a.steps, phases))
        med = {v: 1e3 * statistics.median(ts) for v, ts in times.items()}
        ph = {k: 1e3 * statistics.median(ts) for k, ts in phases.items() if ts}
        ck = 1e3 * checkpoint_cost(case)
        t = time.perf_counter()
        torch.stack([case.loss_sum, case.correct]).tolist()
        sync = 1e3 * (time.perf_counter() - t)
        if case.feed is not None:
            case.feed.close()
        rows.append((case.label, med, ph, ck / case.prof.ckpt_every, sync / case.prof.log_every))
        r = lambda a_, b_: (f"{med[a_] / med[b_]:.2f}" if a_ in med and b_ in med else "-")  # noqa: E731
        print(f"{case.label:22s} " + " ".join(f"{v} {med[v]:6.1f}" for v in variants)
              + " | " + " ".join(f"{k} {x:5.1f}" for k, x in ph.items())
              + f" | warp/plain {r('warp', 'plain')} serial/plain {r('serial', 'plain')} "
                f"prefetch/plain {r('prefetch', 'plain')} data_ref/data {r('data_ref', 'data')}"
              + f" | ckpt {ck:.0f} ms (/{case.prof.ckpt_every} steps), log sync {sync:.2f} ms", flush=True)
    print("\n| model | data_ref | data | wait (prefetch) | plain | warp | fwd / bwd / opt | serial | prefetch "
          "| warp/plain | serial/plain | prefetch/plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, med, ph, _, _ in rows:
        g = lambda k, d=med: f"{d[k]:.1f}" if k in d else "–"  # noqa: E731
        q = lambda a_, b_: f"{med[a_] / med[b_]:.2f}" if a_ in med and b_ in med else "–"  # noqa: E731
        print(f"| {label} | {g('data_ref')} | {g('data')} | {g('wait', ph)} | {g('plain')} | {g('warp')} | "
              f"{g('fwd', ph)} / {g('bwd', ph)} / {g('opt', ph)} | {g('serial')} | {g('prefetch')} | "
              f"{q('warp', 'plain')} | {q('serial', 'plain')} | {q('prefetch', 'plain')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
