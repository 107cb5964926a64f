"""Difficulty probes of the distorted-MNIST sets: ``python -m repro.data probe SET [--n 10000]``.

Statistics over ``n`` fresh draws from the set's distribution on the MNIST training digits (the
parameters ``sample_params`` draws, from a generator of its own, and the digits ``render_digits``
renders from them, before clutter), each beside what it measures:

* ``ink_kept``: ink of the rendered digit / ink of its source MNIST digit (ink = the sum of the
  pixel values; < 1 where part of the digit leaves the canvas or is squashed, ~scale² otherwise);
  ``lost_over_75pct``: the fraction of draws keeping less than a quarter of the ink.
* ``width_ratio``: the rendered digit's width / the source digit's (columns holding a pixel
  > 0.5); ``squashed_below_quarter``: the fraction below 0.25 (a digit with no such pixel left
  counts as width 0).
* P only -- ``mirrored``: the fraction whose homography reverses orientation at the canvas centre
  (the sign of the Jacobian of output -> source there); ``horizon_crosses``: the fraction where
  w = 0 (the horizon) lies on the canvas, tested at its four corners (w changes sign or is 0);
  both are the generator's own tests (:func:`repro.data.distort.mirrored`, ``horizon_crosses``),
  which its ``reject`` option applies.
* E only -- ``control_point_noise_px``: the mean distance, in pixels, of the 16 perturbed control
  points from the scaled regular grid fitted to them by least squares (what the N(0, sigma) noise
  moved; the text's sigma is 1.5 px per axis, so ~1.88 px expected): source pixels for
  ``side=source``, output pixels for ``side=output``.
* E only -- ``extreme_spline``: the fraction of draws whose spline coefficients reach 2**8 (a
  nearly folded spline: two control points close together; the exact renderer then rounds that
  image's coefficients on a coarser grid).
* clutter sets -- ``clutter_ink``: the ink that clutter adds per image (the clipped image minus the digit).

What these probes do not do yet (issue #29, item 2): the short FCN run per set whose error is
reported as a ratio to R's. Channels of the ``addition`` set are measured as separate digits.
"""
from __future__ import annotations

import torch

from . import distort
from .sets import data_record, digit_pool

PROBED = ("R", "RTS", "P", "E", "TC", "addition", "coloc-T", "coloc-TC")
CHUNK = 1000  # draws rendered at once


def _width(img: torch.Tensor) -> torch.Tensor:
    """(M,) columns of each (M, H, W) image holding a pixel > 0.5: max - min + 1, 0 if none."""
    cols = (img > 0.5).any(dim=1)  # (M, W)
    ar = torch.arange(img.shape[-1])
    lo = torch.where(cols, ar, img.shape[-1]).amin(1)
    hi = torch.where(cols, ar, -1).amax(1)
    return (hi - lo + 1).clamp_min(0).to(torch.float64)


def extreme_spline(p: dict) -> torch.Tensor:
    """(N,) bool: the E draw's spline coefficients reach 2**8 (see the module docstring)."""
    from . import exact_render

    control = p.get("control")
    points = p["points"].to(torch.float64)
    if control is None:
        m = exact_render._tps_tables(points.shape[1], distort.DIGIT, distort.DIGIT)[0][None]
    else:
        m = exact_render._tps_system_per_image(control.to(torch.float64))  # the basis is not needed
    coef = torch.einsum("nij,njc->nic", m.expand(points.shape[0], -1, -1), points)
    return ~(coef.abs().amax((1, 2)) < 2.0 ** 8)


def control_point_noise_px(points: torch.Tensor) -> torch.Tensor:
    """(N,) mean distance (source pixels) of the (N, 16, 2) E control points from s * grid, s the
    least-squares scale (the generator places them at grid / scale + noise)."""
    grid = distort.control_points(points.shape[1]).to(points.dtype)
    s = (points * grid).sum((1, 2)) / (grid * grid).sum()
    return (points - s[:, None, None] * grid).norm(dim=-1).mean(1) * (distort.DIGIT / 2)


def probe(name: str, n: int = 10_000, seed: int = 0, options=None) -> dict:
    """The statistics above over ``n`` draws of set ``name`` with generator ``options`` (CPU)."""
    record = data_record(name, options)  # a clear error for an unknown name or option
    options = record["options"]
    pool_x, _ = digit_pool("train")
    g = distort.generator("probe", name, seed)
    acc: dict[str, list[torch.Tensor]] = {}

    def add(key, value):
        acc.setdefault(key, []).append(value.to(torch.float64).reshape(-1))

    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        primary = torch.randint(0, pool_x.shape[0], (m,), generator=g)
        p = distort.sample_params(name, primary, pool_x.shape[0], g, options)
        digits = torch.nan_to_num(distort.render_digits(name, p, pool_x), nan=0.0).clamp(0, 1)
        src_idx = torch.stack([p["index"], p["index2"]], 1).reshape(-1) if name == "addition" else p["index"]
        src = pool_x[src_idx].to(torch.float64) / 255.0
        out = digits.reshape(-1, *digits.shape[-2:]).to(torch.float64)
        ink = out.sum((1, 2)) / src.sum((1, 2))
        add("ink_kept", ink)
        add("lost_over_75pct", ink < 0.25)
        wr = _width(out) / _width(src).clamp_min(1)
        add("width_ratio", wr)
        add("squashed_below_quarter", wr < 0.25)
        if name == "P":
            add("mirrored", distort.mirrored(p["theta"]))
            add("horizon_crosses", distort.horizon_crosses(p["theta"]))
        if name == "E":
            add("control_point_noise_px", control_point_noise_px(p.get("control", p["points"])))
            add("extreme_spline", extreme_spline(p))
        if distort.spec(name).clutter:
            full = digits.clone()  # the clutter pasted onto the digits already rendered, as render() does
            distort._paste_clutter(full, pool_x, p, options["combine"])
            add("clutter_ink", (full.clamp(0, 1) - digits).to(torch.float64).sum((1, 2, 3)))
        done += m
    stats = {k: round(float(torch.cat(v).mean()), 4) for k, v in acc.items()}
    return {"data": record, "draws": n, "seed": seed, "stats": stats}
