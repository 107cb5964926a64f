"""SVHN time per training step: ``python -m repro.svhn --benchmark`` times forward + backward + SGD
step of the three models (the paper: ST-CNN Multi only 6 % slower than the CNN) and writes
``timing.json`` and ``timing.md`` (:func:`render_timing`, a function of timing.json, so that
``python -m repro.publish --regenerate`` rebuilds the published one)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from repro.svhn.recipe import MODELS


def _step_fn(model_name, size, width, batch, dev):
    from stn_triton.models.svhn import SVHNNet, svhn_loss

    torch.manual_seed(0)
    model = SVHNNet(model_name, in_size=size, width=width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 11, (batch, 5), device=dev)

    def step():
        loss = svhn_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def benchmark(out_dir: Path, *, size: int, width: float, batch: int, steps: int, device: str,
              warmup: int = 2) -> dict:
    """Seconds per training step (forward + backward + SGD update) of the three models.

    The three models are built once and stepped round-robin (``warmup`` untimed rounds, then
    ``steps`` timed rounds), so background load drifts over all of them alike; the minimum over
    rounds is the headline (least disturbed by other processes), the median is recorded too.
    """
    import stn_triton

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    fns = {m: _step_fn(m, size, width, batch, dev) for m in MODELS}
    ts: dict[str, list[float]] = {m: [] for m in MODELS}
    for r in range(warmup + steps):
        for m in MODELS:
            sync()
            t = time.perf_counter()
            fns[m]()
            sync()
            if r >= warmup:
                ts[m].append(time.perf_counter() - t)
    best = {m: min(v) for m, v in ts.items()}
    med = {m: sorted(v)[len(v) // 2] for m, v in ts.items()}
    backend = stn_triton.resolve_backend(dev)
    res = {"device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev), "backend": backend,
           "threads": torch.get_num_threads(), "size": size, "width": width, "batch": batch, "steps": steps,
           "seconds_per_step_min": best, "seconds_per_step_median": med,
           "relative_to_cnn_min": {m: best[m] / best["cnn"] for m in MODELS},
           "relative_to_cnn_median": {m: med[m] / med["cnn"] for m in MODELS},
           "paper": "ST-CNN Multi reported as 6% slower than the CNN (forward + backward)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "timing.json").write_text(json.dumps(res, indent=1) + "\n")
    text = render_timing(res)
    (out_dir / "timing.md").write_text(text)
    print(text, end="")
    return res


def render_timing(res: dict) -> str:
    """timing.md from a timing.json (:func:`benchmark`'s record)."""
    best, med = res["seconds_per_step_min"], res["seconds_per_step_median"]
    lines = [f"# SVHN time per training step ({res['device']}, {res['threads']} thread(s), warp backend "
             f"`{res['backend']}`, {res['size']}px, width {res['width']}, batch {res['batch']}; {res['steps']} "
             f"round-robin steps per model)", "",
             "| model | min s / step | vs CNN | median s / step | vs CNN |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {best[m]:.4f} | {100 * (best[m] / best['cnn'] - 1):+.1f}% | {med[m]:.4f} | "
              f"{100 * (med[m] / med['cnn'] - 1):+.1f}% |" for m in best]
    lines += ["", "Paper: ST-CNN Multi only 6% slower than the CNN (forward + backward, their GPU implementation)."]
    return "\n".join(lines) + "\n"
