"""Co-localisation (supplement section 1.2, Table 2 and Figure 1): the recipe.

    python -m repro.colocalisation --variant both             # T then TC, digits 0-9, table.md + figures
    python -m repro.colocalisation --variant TC --digits 8

Task: for one digit class, the first 100 test images of ``repro.data.colocalisation_set(variant,
digit)`` (a 28x28 MNIST digit at a uniform random integer position in an 84x84 black canvas; TC
adds 16 random 6x6 crops of other digits). Neither labels nor boxes are used for optimisation.

* **Encoder** e(.) (:mod:`.encoder`): the section-4.1 CNN trained for digit classification on
  full-size MNIST training digits (+-2 px shifts, 0.99 % test error), trained once, cached by hash,
  frozen. The descriptor concatenates the two hidden layers' activations (after ReLU + max-pool)
  and the logits, each block L2-normalised (``--descriptor layer-l2``).
* **Localiser** (:mod:`.candidates`): an attention spatial transformer at the digit's scale (1/3)
  whose translation is the soft-argmax of the supplement's localisation layers (conv 8@9x9 stride 4
  - ReLU - max-pool 2 - FC 8 - ReLU - FC 8 - ReLU, a zero-initialised score) over a 15x15 grid of
  candidate windows 4 px apart (fully convolutional); every image starts at the centre window.
* **Loss**: supplement eq. (1), the triplet hinge
  sum_n sum_{m != n} max(0, |e(I_n^T) - e(I_m^T)|^2 - |e(I_n^T) - e(I_n^rand)|^2 + alpha),
  *relaxed over every pair of candidate windows* (each window of the anchor charged the hinge of
  its best match in the other image, a soft-min at temperature ``--tau`` weighted by where that
  image's localiser looks; :mod:`.candidates` says why), I_n^rand a random window of I_n;
  300 Adam steps of 64 random pairs (n, m != n).
* **Metric**: a digit is localised when IoU(predicted box, true 28x28 box) > 0.5 (:mod:`.geometry`).
  Beside it the table shows an *ink reference* (:func:`.geometry.ink_centroid_boxes`: no encoder,
  no learning): the level the metric reaches on these images by ink statistics alone.

Departures from the text (``repro/results/colocalisation/findings.md`` has every measurement):

================  =====================  =======================  ===============================================
option            paper                  ours (default)           why / the measurement
================  =====================  =======================  ===============================================
localiser         regressor of s and t   soft-argmax over 15x15   the regressor's gradient reaches only the
                  from the identity      candidate windows        pixels under its window: T 90-100 %, TC 0-15 %
                                         (eq. (1) relaxed)        (with our scale schedule; learned scale 0-2 %);
                                                                  candidates: T 97-100 %, TC 9 of 10 classes
``--alpha``       1                      2                        at 1, eq. (1) prefers 6x6 clutter fragments for
                                                                  TC digits 1 and 2 (0 %); 2 fixes digit 2 (99 %)
``--descriptor``  ``concat``             ``layer-l2``             plain concatenation scores empty windows lower
                                                                  than the true boxes
``--optimizer``   ``sgd``                ``adam``                 the text gives no schedule; learning rate, batch
                                                                  and steps are ours (:data:`PROFILES`)
encoder data      "trained for digit     MNIST train, +-2 px      a localised window holds a digit not exactly
                  classification"        shifts                   centred
================  =====================  =======================  ===============================================

The loss is the batch mean (eq. (1) sums: a constant factor); descriptors are projected on 384
principal directions for the relaxation (median relative error of the distances ~2-5 %, recorded).

Retired options (at 6db501a, the last commit that runs them; their measurements are in findings.md,
"Retired options"): the regression localiser with its coarse-to-fine scale schedule (``--localiser
regress``, profiles ``regress`` and ``quick``, ``--scale``, ``--start-scale``, ``--translation``,
``--hold``, ``--shrink``, ``--final-lr-mult``, ``--init-scale``, ``--negatives``, ``--padding``,
``--loc-stride``, ``--encoder-augment``, ``--final-encoder-augment``), ``--refine-steps``,
``--cand-stride``, ``--pca-dims`` and ``--encoder PATH``.

Files: :mod:`.geometry` (windows, boxes, IoU, the ink reference), :mod:`.encoder` (e(.), eq. (1)),
:mod:`.candidates` (the localiser and its optimisation), :mod:`.table` (table.md, the figure),
:mod:`.diagnose` (eq. (1) at fixed windows), :mod:`.__main__` (the command line).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from repro.colocalisation.candidates import colocalise_candidates
from repro.colocalisation.encoder import DESCRIPTORS, EncoderSpec, digit_encoder
from repro.data.sets import data_record
from repro.paths import default_out

NAME = "colocalisation"
DEFAULT_OUT = default_out(NAME)  # runs/colocalisation (untracked); publish with python -m repro.publish
VARIANTS = ("T", "TC")
PAPER = {"T": "100", "TC": "75–93 (range over classes)"}


@dataclass(frozen=True)
class CoProfile:
    name: str
    steps: int
    batch: int  # random pairs (n, m) per step
    lr: float
    optimizer: str = "adam"  # adam | sgd (the paper's)
    momentum: float = 0.9  # sgd only
    alpha: float = 2.0  # the margin of eq. (1); the paper's is 1
    descriptor: str = "layer-l2"  # layer-l2 | concat (the paper's)
    n_images: int = 100
    encoder_steps: int = 2000
    snapshot_every: int = 10
    localiser: str = "candidates"  # recorded in every result; the only one since the regressor's retirement
    cand_stride: int = 4  # px between candidate windows (a multiple of the localisation conv's 4)
    tau: float = 0.3  # temperature of the soft-min over the other image's windows
    pca_dims: int = 384  # descriptors projected onto this many principal directions
    note: str = ""

    def __post_init__(self):
        if self.descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {self.descriptor!r}")


PROFILES = {
    "full": CoProfile("full", steps=300, batch=64, lr=1e-2,
                      note="the candidate localiser (repro.colocalisation.candidates): 300 Adam steps of 64 random "
                           "pairs of eq. (1) relaxed over 15x15 candidate windows (4 px apart); encoder: the "
                           "section-4.1 CNN trained 2,000 Adam steps for digit classification on full-size MNIST "
                           "digits"),
    "smoke": CoProfile("smoke", steps=4, batch=2, lr=3e-3, n_images=6, encoder_steps=3, snapshot_every=2, pca_dims=16,
                       cand_stride=8, note="seconds; for tests"),
}


def encoder_spec(prof: CoProfile, seed: int = 0) -> EncoderSpec:
    """The encoder a profile asks for (one place: training and --restart)."""
    return EncoderSpec(steps=prof.encoder_steps, seed=seed)


def encoder(prof: CoProfile, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """The section-4.1 CNN trained for digit classification (:mod:`.encoder`), cached by hash."""
    return digit_encoder(encoder_spec(prof, seed), progress=progress)


def run_pairs(a, prof, enc, enc_info, out, variants, digits) -> None:
    """Localise every (variant, digit) pair (skipping finished ones under --resume), in this process
    or, with ``a.jobs > 1``, in that many worker processes (each loads the cached encoders).
    ``enc`` / ``enc_info``: the encoder and its record."""
    todo = []
    for v in variants:
        for d in digits:
            p = out / v / f"digit{d}.json"
            if a.resume and p.exists():
                r = json.loads(p.read_text())
                if (r.get("profile") == a.profile and r.get("steps") == prof.steps
                        and r.get("data") == data_record(f"coloc-{v}", a.data_options.get(v))):
                    print(f"[{v} digit {d}] done: {r['localised_pct']}% (resume)")
                    continue
            todo.append((v, d))
    job = {"profile_name": a.profile, "prof": prof, "enc_info": enc_info, "seed": a.seed, "out": str(out),
           "threads": torch.get_num_threads(), "progress": not a.no_progress, "data_options": a.data_options}
    jobs = min(a.jobs, len(todo))
    if jobs <= 1:
        for v, d in todo:
            _run_pair(job, v, d, enc)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    print(f"{len(todo)} (variant, digit) pairs in {jobs} worker processes, {job['threads']} thread(s) each", flush=True)
    # spawn: a fresh interpreter per worker (no forked torch thread pools); each pair writes its own file
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
        for f in [ex.submit(_run_pair, {**job, "progress": False}, v, d) for v, d in todo]:
            f.result()  # re-raises a worker's error here


def _run_pair(job: dict, v: str, d: int, enc: nn.Module | None = None) -> None:
    """One (variant, digit) optimisation, its result written to ``<out>/<v>/digit<d>.json``;
    ``enc`` None in a worker process (it loads the encoder from the cache)."""
    from repro.data import colocalisation_set
    from repro.harness.provenance import versions

    prof, seed = job["prof"], job["seed"]
    if enc is None:  # a worker process: its own thread count, the encoder from the cache the parent filled
        torch.set_num_threads(job["threads"])
        enc = encoder(prof, seed, progress=False)[0]
    data = data_record(f"coloc-{v}", job["data_options"].get(v))
    ds = colocalisation_set(v, d, seed=seed, n=prof.n_images, options=data["options"])
    print(f"[{v} digit {d}] {prof.steps} {prof.optimizer} steps x {prof.batch} pairs", flush=True)
    r = colocalise_candidates(ds.images, ds.boxes, enc, prof, seed=seed, log=print if job["progress"] else None)
    r.update({"variant": v, "digit": d, "profile": job["profile_name"], "schedule": asdict(prof),
              "encoder": job["enc_info"], "track": [0, 1, 2], "seed": seed, "threads": torch.get_num_threads(),
              "device": "cpu", "versions": versions(), "data": data})
    p = Path(job["out"]) / v / f"digit{d}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(r, indent=1))
    print(f"[{v} digit {d}] localised {r['localised_pct']}% (mean IoU {r['mean_iou']}) in {r['wall_time_s']} s",
          flush=True)
