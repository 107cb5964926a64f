"""Where a training step's time goes, per recipe model: ``python -m bench.train_step``.

For each model (the recipes' own builders, online streams and optimiser -- the paper profile's SGD,
batch 256 by default) it times, interleaving the variants within every repetition (in a seeded random
order, fresh every repetition) and reporting
medians (ms per step) and ratios taken in the same process:

* ``data_ref``  rendering one online batch the way the code of b860a90 did (``stn_triton.warp`` /
  ``tps_warp`` on the CPU path, through the custom ops), from the same parameters;
* ``data``      ``stream.batch(step)`` as the harness calls it now;
* ``plain``     forward + backward + optimiser step on pre-rendered batches, every spatial
  transformer's warp replaced by ``F.grid_sample(x, F.affine_grid(theta))`` (the reference);
* ``warp``      the same with ``stn_triton.warp`` (the model as it trains), with phases
  ``fwd`` / ``bwd`` / ``opt`` timed separately in the same repetitions;
* ``serial_ref`` the harness's step as it was (b860a90's rendering inline);
* ``serial``    the harness's step (``repro.harness.loop``'s loop body) with the online batch drawn
  inline;
* ``prefetch``  the same with :class:`repro.harness.sources.Prefetcher` (the next batch rendered on a
  background thread while this one trains); ``wait`` is the time the loop waits for its batch.

For the FCNs ``plain`` and ``warp`` are the same code: their ratio is a control (how far apart two
identical variants land on this machine). Ratios printed: ``warp / plain`` (the CPU warp path inside the model; target <= 1.05),
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
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

CLOCK = {"now": time.perf_counter}

MODELS = [("RTS", "fcn"), ("RTS", "st-fcn-aff"), ("TC", "fcn"), ("TC", "st-fcn-aff"),
          ("addition", "fcn"), ("addition", "st-fcn"), ("addition", "2xst-fcn"),
          ("P", "st-fcn-proj"), ("P", "st-fcn-tps")]


def plain_warp(x, theta, size=None, *, mode="bilinear", padding_mode="zeros", align_corners=False,
               fill_value=None):
    """The reference composition: ``F.affine_grid`` + ``F.grid_sample`` (no fill padding); for a
    projective theta (N, 3, 3) the homogeneous grid ``affine_grid`` would build, divided by w."""
    if fill_value is not None:
        raise ValueError(f"plain_warp: fill_value={fill_value!r} has no F.grid_sample equivalent")
    size = tuple(x.shape[-2:]) if size is None else tuple(size)
    if theta.shape[1] == 3:
        # F.affine_grid of the (u, v) rows and of the w row (repeated): the same homogeneous grid
        uv = F.affine_grid(theta[:, :2], (x.shape[0], x.shape[1], *size), align_corners=align_corners)
        w = F.affine_grid(theta[:, 2:].expand(-1, 2, -1), (x.shape[0], x.shape[1], *size), align_corners=align_corners)
        grid = uv / w
    else:
        grid = F.affine_grid(theta, (x.shape[0], x.shape[1], *size), align_corners=align_corners)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def plain_tps_warp(x, points, size=None, *, control_points=None, mode="bilinear", padding_mode="zeros",
                   align_corners=False):
    """The reference composition for thin-plate splines: ``torch_path.tps_grid`` (solve, Phi @ coef,
    all differentiable torch ops) + ``F.grid_sample``."""
    from stn_triton import torch_path

    size = tuple(x.shape[-2:]) if size is None else tuple(size)
    k = points.shape[1]
    cp = (torch_path.default_control_points(k, torch.float64, x.device) if control_points is None
          else control_points.to(torch.float64))
    grid = torch_path.tps_grid(points, cp, *size, align_corners=align_corners, out_dtype=x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


@contextlib.contextmanager
def warp_impl(kind: str):
    """``kind`` 'plain': spatial transformers warp with :func:`plain_warp` / :func:`plain_tps_warp`;
    'warp': ``stn_triton.warp`` / ``tps_warp``."""
    import stn_triton.modules as mods

    orig = mods.warp, mods.tps_warp
    if kind == "plain":
        mods.warp, mods.tps_warp = plain_warp, plain_tps_warp
    try:
        yield
    finally:
        mods.warp, mods.tps_warp = orig


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
    from repro.distorted_mnist import recipe as dm
    from repro.mnist_addition import recipe as ma
    from repro.harness.loop import make_optimizer

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
        from repro.harness.sources import unpack

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
        """The harness loop body (repro.harness.loop.train_one), optionally timing its phases."""
        from repro.harness.loop import set_lr

        now = CLOCK["now"]
        t0 = now()
        set_lr(self.opt, self.prof.lr_at(self.step))
        logits = self.model(x)
        loss = self.exp.loss_fn(logits, y)
        t1 = now()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = now()
        self.opt.step()
        t3 = now()
        self.loss_sum += loss.detach()
        self.correct += self.metric(logits.detach(), y)
        if phases is not None:
            phases["fwd"].append(t1 - t0)
            phases["bwd"].append(t2 - t1)
            phases["opt"].append(t3 - t2)
        self.step += 1

    def run(self, variant: str, steps: int, phases=None) -> float:
        """Seconds per step of ``variant``."""
        from repro.harness.sources import Prefetcher, unpack

        now = CLOCK["now"]
        t = now()
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
        elif variant == "serial_ref":  # the step before this work: b860a90's rendering inline
            for _ in range(steps):
                with torch.no_grad():
                    x, y = reference_render(self.data.name, self.data.params(self.step), self.data._pool_x,
                                            self.data._pool_y)
                self._train(x, y)
        elif variant == "prefetch":
            # one Prefetcher for the whole run, as in the harness, on its own step counter (the other
            # variants in between leave its prefetched batch waiting, as a long step would)
            if self.feed is None:
                self.feed = Prefetcher(self.data, 1 << 40)
            waits = phases.setdefault("wait", []) if phases is not None else []
            for _ in range(steps):
                tw = now()
                x, y = unpack(self.feed.get(self.pstep))
                waits.append(now() - tw)
                self.pstep += 1
                self._train(x, y)
        else:
            raise ValueError(variant)
        return (now() - t) / steps


VARIANTS = ("data_ref", "data", "plain", "warp", "serial_ref", "serial", "prefetch")


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


class _ProposedWarp(torch.autograd.Function):
    """A prototype of the recommended CPU path (affine, bilinear, zeros, align_corners=False), for the
    breakdown only: the grid built batch-major (cached base, one bmm: the values of F.affine_grid),
    kept for the backward instead of rebuilt, grad theta as one bmm with the base."""

    _base: dict = {}

    @staticmethod
    def forward(ctx, x, theta, size):
        n, h, w = theta.shape[0], size[0], size[1]
        key = (h, w, theta.dtype)
        if key not in _ProposedWarp._base:
            import stn_triton.torch_path as tp
            _ProposedWarp._base[key] = tp.base_grid(h, w, False, theta.dtype)  # (P, 3)
        base = _ProposedWarp._base[key]
        grid = torch.matmul(base, theta.transpose(1, 2)).view(n, h, w, 2)  # (N, P, 2) contiguous
        ctx.save_for_backward(x, grid, base)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, go):
        x, grid, base = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        gx, gg = torch.ops.aten.grid_sampler_2d_backward(go.contiguous(), x, grid, 0, 0, False, [need_x, True])
        gt = torch.matmul(gg.view(grid.shape[0], -1, 2).transpose(1, 2), base)  # (N, 2, 3)
        return (gx if need_x else None), gt, None


def proposed_warp(x, theta, size):
    return _ProposedWarp.apply(x, theta, size)


WARP_SHAPES = {"RTS": (1, 42), "TC": (1, 60), "addition": (2, 42)}


def warp_breakdown(reps: int = 9, batch: int = 256) -> None:
    """Where ``stn_triton.warp``'s CPU path loses to ``F.affine_grid`` + ``F.grid_sample`` at the models'
    shapes (x without grad, theta with grad, as in the models): the whole op each way, then its pieces."""
    import stn_triton
    import stn_triton.torch_path as tp

    now = CLOCK["now"]

    def med(f, k=reps):
        f()
        ts = []
        for _ in range(k):
            t = now()
            f()
            ts.append(now() - t)
        return 1e3 * statistics.median(ts)

    print(f"\nwarp vs plain, batch {batch}, ms (median of {reps}); x no grad, theta grad")
    print("| shape | plain fwd | warp fwd | plain fwd+bwd | warp fwd+bwd | ratio fwd | ratio fwd+bwd "
          "| grid_sample fwd strided / contiguous grid | grid_sampler bwd strided / contiguous "
          "| einsum grid (+ .contiguous()) | affine_grid | custom-op fwd+bwd at 1x1x2x2 | plain at 1x1x2x2 "
          "| proposed fwd / fwd+bwd | proposed / plain fwd / fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (c, h) in WARP_SHAPES.items():
        x = torch.rand(batch, c, h, h)
        th0 = torch.eye(2, 3).expand(batch, 2, 3) + 0.1 * torch.randn(batch, 2, 3)
        th = th0.clone().requires_grad_(True)
        go = torch.rand(batch, c, h, h)

        def fb(fn):
            def run():
                th.grad = None
                fn(x, th, (h, h)).backward(go)
            return run

        def fw(fn):
            def run():
                with torch.no_grad():
                    fn(x, th0, (h, h))
            return run

        warp = lambda a, b, s: stn_triton.warp(a, b, s)  # noqa: E731
        r = {k: [] for k in ("pf", "wf", "pb", "wb", "qf", "qb")}
        for _ in range(3):  # interleaved rounds
            r["pf"].append(med(fw(plain_warp)))
            r["wf"].append(med(fw(warp)))
            r["qf"].append(med(fw(proposed_warp)))
            r["pb"].append(med(fb(plain_warp)))
            r["wb"].append(med(fb(warp)))
            r["qb"].append(med(fb(proposed_warp)))
        m = {k: statistics.median(v) for k, v in r.items()}
        g_str = tp.transform_grid(th0, h, h, False)
        g_con = g_str.contiguous()
        gs_s = med(lambda: F.grid_sample(x, g_str, align_corners=False))
        gs_c = med(lambda: F.grid_sample(x, g_con, align_corners=False))
        gb_s = med(lambda: torch.ops.aten.grid_sampler_2d_backward(go, x, g_str, 0, 0, False, [False, True]))
        gb_c = med(lambda: torch.ops.aten.grid_sampler_2d_backward(go, x, g_con, 0, 0, False, [False, True]))
        eg = med(lambda: tp.transform_grid(th0, h, h, False))
        egc = med(lambda: tp.transform_grid(th0, h, h, False).contiguous())
        ag = med(lambda: F.affine_grid(th0, (batch, c, h, h), align_corners=False))
        xs, ts_ = torch.rand(1, 1, 2, 2), torch.eye(2, 3)[None].clone().requires_grad_(True)
        tiny_w = med(lambda: stn_triton.warp(xs, ts_).sum().backward(), k=3 * reps)
        tiny_p = med(lambda: plain_warp(xs, ts_).sum().backward(), k=3 * reps)
        print(f"| {name} {batch}x{c}x{h}x{h} | {m['pf']:.2f} | {m['wf']:.2f} | {m['pb']:.2f} | {m['wb']:.2f} | "
              f"{m['wf'] / m['pf']:.2f} | {m['wb'] / m['pb']:.2f} | {gs_s:.2f} / {gs_c:.2f} | {gb_s:.2f} / {gb_c:.2f} | "
              f"{eg:.2f} ({egc:.2f}) | {ag:.2f} | {tiny_w:.3f} | {tiny_p:.3f} | {m['qf']:.2f} / {m['qb']:.2f} | "
              f"{m['qf'] / m['pf']:.2f} / {m['qb'] / m['pb']:.2f} |", flush=True)
        with torch.no_grad():  # the prototype computes the same warp
            assert torch.allclose(proposed_warp(x, th0, (h, h)), plain_warp(x, th0, (h, h)), atol=1e-5)
    print(f"(transform_grid's strides at {batch}x42x42: {tuple(tp.transform_grid(th0[:, :, :], 42, 42, False).stride())}; "
          f"contiguous would be {tuple(torch.empty(batch, 42, 42, 2).stride())})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians are printed)")
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per repetition")
    ap.add_argument("--models", default="all", help="comma-separated 'dataset:model' (e.g. RTS:fcn), or all")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter (what a run sees); cpu: time.process_time (CPU seconds of this "
                         "process: steadier on a loaded machine with --threads 1, blind to overlap, so not for "
                         "'prefetch')")
    ap.add_argument("--warp-breakdown", action="store_true",
                    help="only the warp op vs the plain composition at the models' shapes, and its pieces")
    ap.add_argument("--profile-warp", action="store_true", help="torch.profiler tables of the warp / plain steps")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    CLOCK["now"] = time.perf_counter if a.clock == "wall" else time.process_time
    if a.warp_breakdown:
        warp_breakdown(batch=a.batch)
        return 0
    todo = MODELS if a.models == "all" else [tuple(m.split(":")) for m in a.models.split(",")]
    variants = [v for v in a.variants.split(",") if v]
    print(f"bench.train_step: batch {a.batch}, {a.threads} thread(s), {a.reps} reps x {a.steps} steps, "
          f"{a.clock} clock, torch {torch.__version__}, host CPUs {__import__('os').cpu_count()}")
    rows = []
    for ds, m in todo:
        case = Case(ds, m, a.batch)
        for v in variants:  # warm-up
            case.run(v, 1)
        if a.profile_warp and "st" in m:
            profile_warp(case)
        times = {v: [] for v in variants}
        phases = {"fwd": [], "bwd": [], "opt": []}
        order = random.Random(0)
        for _ in range(a.reps):  # a fresh (seeded) order every repetition: no variant always follows the same one
            for v in order.sample(variants, len(variants)):
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
    print("\n| model | data_ref | data | wait (prefetch) | plain | warp | fwd / bwd / opt | serial_ref | serial "
          "| prefetch | warp/plain | serial_ref/plain | serial/plain | prefetch/plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, med, ph, _, _ in rows:
        g = lambda k, d=med: f"{d[k]:.1f}" if k in d else "–"  # noqa: E731
        q = lambda a_, b_: f"{med[a_] / med[b_]:.2f}" if a_ in med and b_ in med else "–"  # noqa: E731
        print(f"| {label} | {g('data_ref')} | {g('data')} | {g('wait', ph)} | {g('plain')} | {g('warp')} | "
              f"{g('fwd', ph)} / {g('bwd', ph)} / {g('opt', ph)} | {g('serial_ref')} | {g('serial')} | "
              f"{g('prefetch')} | {q('warp', 'plain')} | {q('serial_ref', 'plain')} | {q('serial', 'plain')} | "
              f"{q('prefetch', 'plain')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
