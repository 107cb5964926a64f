"""Named generator options of the distorted-MNIST sets (issue #29): the readings of the supplement's
text that it does not settle, each a knob with a stated default.

A data set is its name plus a full option dict: :func:`resolve` fills in the defaults, checks names,
types and choices, and returns a plain ``dict`` (sorted keys) that is carried from the command line
to the generator, the cache file and every ``result.json`` (``"data": {"set", "version",
"options"}``). Two option dicts that resolve to the same dict are the same data.

=========  ===============  =============  =====================================================
set        option           default        meaning
=========  ===============  =============  =====================================================
P          ``corners``      ``source``     which corners the N(0, sigma) noise moves: where the
                                           (scaled) digit's corners land in the output canvas
                                           (``output``: "stretching each corner of the digit",
                                           data version 2), or the source points the canvas's
                                           corners sample (``source``)
P          ``sigma``        4.4            corner noise, pixels per axis (the text: 5;
                                           calibrated, see below; version 3: 3.75)
P          ``reject``       ``none``       degenerate draws redrawn: ``none``, or a ``+``-joined
                                           subset of ``mirrored`` (orientation reversed at the
                                           canvas centre), ``horizon`` (w = 0 on the canvas),
                                           ``squashed`` (the digit frame's output quad narrower
                                           than ``min_extent`` of the canvas along x or y)
P          ``min_extent``   0.25           the ``squashed`` threshold (fraction of the canvas)
E          ``sigma``        2.27           control-point noise, pixels per axis (the text: 1.5;
                                           calibrated, see below; version 3: 2.0)
E          ``grid``         4              control points per side (the text: 16 = 4 x 4)
E          ``side``         ``source``     which side of the spline the noise moves: ``source``:
                                           the output's regular control points sample the
                                           source at ``c / s + noise`` (data versions 2-4);
                                           ``output``: the digit's control points c land in the
                                           output at ``s c + noise`` (the spline is solved per
                                           image)
TC,        ``patch_from``   ``anywhere``   where a 6x6 clutter patch is cut from its digit:
coloc-TC                                   ``anywhere`` in the 28x28 image (DeepMind's
                                           ``mnist_cluttered.lua``) or ``centre20`` (the central
                                           20x20, data version 2)
TC,        ``combine``      ``add``        how clutter and digit combine: ``add`` then clip to 1
coloc-TC                                   (``mnist_cluttered.lua``) or ``max`` (version 2)
=========  ===============  =============  =====================================================

The other sets (R, RTS, addition, coloc-T) have no options: the text fixes them.

How the defaults were chosen (``repro/results/data_fidelity.md``, every number there): TC's is
DeepMind's published generator. P and E keep the text's construction; their free knob (sigma) was
calibrated on one yardstick only, the FCN row, against the paper's FCN figures (P 3.1 %, E 3.2 %;
as ratios to R: P/R = 1.48, E/R = 1.52). Of P's two readings, ``source`` is the one that needs less
departure from the text's 5 px (the literal ``corners=output``, sigma 5 gives a short-budget ratio of
5.32). Version 3 calibrated sigma on a short budget (4,000 Adam steps of 128, three seeds: P 3.75 px
gives 1.43, E 2.0 px 1.59); at the paper's schedule (150k SGD steps) those sets came out easier than
the paper's (FCN P 2.15, E 2.34: the short budget overstates difficulty), so version 4 calibrates at
the paper's schedule itself: P at 3.75 / 5 px gives 2.15 / 4.01 %, E at 2.0 / 2.75 px 2.34 / 4.77 %,
and the interpolated P 4.4 px / E 2.27 px give 3.15 % / 3.12 % (seed 0). The ST-FCN and CNN rows were
not used: they validate the calibration. The literal readings stay available as options
(``corners=output,sigma=5`` / ``sigma=1.5``: data version 2 bit for bit), and version 3's defaults
(``sigma=3.75`` / ``sigma=2.0``: version 3 bit for bit).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    default: object
    choices: tuple = ()  # for str options; empty: any value of the default's type
    lo: float | None = None  # bounds of a numeric option (inclusive)
    hi: float | None = None


P_REJECT = ("mirrored", "horizon", "squashed")
_CLUTTER = {"patch_from": Option("anywhere", ("anywhere", "centre20")), "combine": Option("add", ("add", "max"))}
OPTIONS: dict[str, dict[str, Option]] = {
    "P": {"corners": Option("source", ("output", "source")), "sigma": Option(4.4, lo=0.0, hi=14.0),
          "reject": Option("none"), "min_extent": Option(0.25, lo=0.0, hi=1.0)},
    "E": {"sigma": Option(2.27, lo=0.0, hi=6.0), "grid": Option(4, lo=2, hi=8),
          "side": Option("source", ("source", "output"))},
    "TC": dict(_CLUTTER),
    "coloc-TC": dict(_CLUTTER),
}


# The options that reproduce data version 2's bits, for the sets whose defaults changed in version 3: what a
# result that records no data options (it predates them) was trained or evaluated on.
VERSION2 = {"P": {"corners": "output", "sigma": 5.0}, "E": {"sigma": 1.5},
            "TC": {"patch_from": "centre20", "combine": "max"}, "coloc-TC": {"patch_from": "centre20", "combine": "max"}}
# The options that reproduce data version 3's bits for the sets whose default changed in version 4 (P, E: sigma
# calibrated at the paper's schedule).
VERSION3 = {"P": {"sigma": 3.75}, "E": {"sigma": 2.0}}


def of_result(name: str, result: dict) -> dict:
    """The full options a result was made with: its ``data`` record, or (a result from before the records)
    the version-2 reading."""
    data = result.get("data")
    return resolve(name, data["options"] if data else VERSION2.get(name))


def readings(name: str, version: int) -> dict:
    """The full options that give version ``version`` of set ``name`` with today's generator: the readings
    that version had (version 1 had version 2's readings, rendered with per-machine bits)."""
    for last, table in ((2, VERSION2), (3, VERSION3)):
        if version <= last and name in table:
            return resolve(name, table[name])
    return resolve(name)


def _parse(name: str, key: str, opt: Option, value):
    """``value`` (from Python or a command-line string) as the option's type, checked."""
    kind = type(opt.default)
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            v = int(value)
        elif kind is float:
            v = float(value)
        else:
            v = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"data option {name}.{key} must be a {kind.__name__}, got {value!r}") from None
    if opt.choices and v not in opt.choices:
        raise ValueError(f"data option {name}.{key} must be one of {list(opt.choices)}, got {v!r}")
    if (opt.lo is not None and v < opt.lo) or (opt.hi is not None and v > opt.hi):
        raise ValueError(f"data option {name}.{key} must lie in [{opt.lo}, {opt.hi}], got {v!r}")
    if name == "P" and key == "reject" and v != "none":
        parts = v.split("+")
        bad = [p for p in parts if p not in P_REJECT]
        if bad or len(set(parts)) != len(parts):
            raise ValueError(f"data option P.reject must be 'none' or a '+'-joined subset of {list(P_REJECT)}, "
                             f"got {value!r}")
        v = "+".join(p for p in P_REJECT if p in parts)  # canonical order
    return v


def resolve(name: str, given=None) -> dict:
    """The full option dict of set ``name``: the defaults updated by ``given`` (a mapping, or an
    iterable of ``"key=value"`` strings as the command line gives them), validated; keys sorted."""
    known = OPTIONS.get(name, {})
    if given is None:
        given = {}
    elif not hasattr(given, "items"):
        pairs = {}
        for item in given:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ValueError(f"data option must look like key=value, got {item!r}")
            pairs[key.strip()] = value.strip()
        given = pairs
    unknown = sorted(set(given) - set(known))
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise ValueError(f"unknown data option(s) {unknown} for set {name!r}; it has: {have}")
    return {k: _parse(name, k, opt, given.get(k, opt.default)) for k, opt in sorted(known.items())}


def defaults(name: str) -> dict:
    return resolve(name)


def is_default(name: str, options: dict) -> bool:
    return options == defaults(name)


def tag(name: str, options: dict) -> str:
    """'' for the default options, else a short stable hash of the full option dict (cache names)."""
    if is_default(name, options):
        return ""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]


def describe(options: dict) -> str:
    """``key=value,...`` (sorted), '' for no options: how a table or a log line names a variant."""
    return ",".join(f"{k}={v}" for k, v in sorted(options.items()))
