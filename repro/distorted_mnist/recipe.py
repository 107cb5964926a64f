"""Distorted MNIST (main paper section 4.1, Table 1; supplement section 1.3): FCN, CNN, ST-FCN and
ST-CNN with affine, projective and TPS transformers on R, RTS, P, E, and TC.

    python -m repro.distorted_mnist --dataset R --model st-cnn-aff         # one model, quick profile
    python -m repro.distorted_mnist --dataset TC --model all
    python -m repro.distorted_mnist --all                                   # Table-1 grid + TC (resumable)
    python -m repro.distorted_mnist --all --datasets R,P                    # a slice of the grid
    python -m repro.distorted_mnist --table                                 # rebuild table.md / figure only
    python -m repro.distorted_mnist --profile paper --device cuda --all

Models (``stn_triton.models.mnist``, each sized to the supplement's ~400k-parameter budget):
``fcn``, ``cnn``, ``st-fcn-{aff,proj,tps}``, ``st-cnn-{aff,proj,tps}``. The ST-CNN localisation net
runs on a 2x downsampled input; RTS and TC average-pool the transformer's output by 2 before the
classifier. TC has the paper's four models ``fcn``, ``cnn``, ``st-fcn-aff``, ``st-cnn-aff`` (the
paper's TC row does not name the transform; we use affine).

Data: training batches from ``repro.data.stream(dataset, --data)`` -- ``online`` (default: fresh
digits and distortions every batch) or ``fixed`` (the fixed 60k set ``make(dataset, "train", 0)``,
reshuffled every epoch); test: the fixed ``make(dataset, "test", seed=0)`` (10,000 images).

Outputs (``--out``, default ``runs/distorted_mnist`` at the repository root, untracked; publish a
finished grid with ``python -m repro.publish runs/distorted_mnist repro/results/distorted_mnist``): ``<dataset>/results.json|md`` per
data set (the harness's files; checkpoints ``<dataset>/<model>/seed<S>/``), ``table.md`` (the
paper's Table 1 shape, our number beside each of the paper's) and ``transformers.png`` (test inputs
and the ST-CNNs' outputs, for every data set).

Profiles
--------
* ``paper`` -- the supplement's schedule: SGD, batch 256, lr 0.01 / 10 every 50k iterations, 150k
  iterations, no weight decay, 3 seeds averaged. Momentum is not stated; 0.9 assumed.
* ``quick`` (default) -- sized so that the whole grid (36 runs) fits in well under an hour of
  one shared CPU core: Adam lr 1e-3 (x0.1 for the last 20 %), per-(data set, family) step
  counts and batch sizes from ``QUICK_STEPS`` (~1-4 minutes per run at the measured CPU speed),
  CNN-family models evaluated on the first 2,000 test images (FCN-family on all 10,000).
* ``smoke`` -- seconds, for the tests.

Departures from the paper
-------------------------

=================  ==================  ==================  ==============================================
option             paper               ours                why / measurement
=================  ==================  ==================  ==============================================
training data      not stated          ``--data online``   fresh distortions each batch; ``--data fixed``
                                                           (the fixed 60k set) is kept: it produced the
                                                           published ``paper_fixed/P`` and
                                                           ``ablations/fixed_data`` tables (findings.md)
SGD momentum       not stated          0.9                 the usual value for this schedule
TC transformer     not named           affine              the paper's TC row does not name it
quick profile      150k SGD steps      1-4 min of Adam     CPU budget (``QUICK_STEPS``); findings.md:
                                                           lengthening it alone closes the gap
=================  ==================  ==================  ==============================================

The paper's schedule (supplement section 1.3) is :data:`MNIST_PAPER`, shared with
:mod:`repro.mnist_addition.recipe`. Tables and the figure: :mod:`.table`; the command line:
:mod:`.__main__`.
"""
from __future__ import annotations

import torch

from repro.harness import Experiment, Profile, classification_error
from repro.paths import default_out

NAME = "distorted_mnist"
DATASETS = ("R", "RTS", "P", "E", "TC")
TABLE1_DATASETS = ("R", "RTS", "P", "E")
GRID_MODELS = ("fcn", "cnn", "st-fcn-aff", "st-fcn-proj", "st-fcn-tps", "st-cnn-aff", "st-cnn-proj", "st-cnn-tps")
TC_MODELS = ("fcn", "cnn", "st-fcn-aff", "st-cnn-aff")
TRANSFORMS = {"aff": "affine", "proj": "projective", "tps": "tps"}
SIZE = {"R": 28, "RTS": 42, "P": 28, "E": 28, "TC": 60}
ST_POOL = {"RTS", "TC"}  # supplement 1.3: average pooling after the ST for RTS and TC
DEFAULT_OUT = default_out(NAME)  # runs/distorted_mnist (untracked); publish with python -m repro.publish

# Main paper Table 1 (% error), from ../shared/seed/paper_numbers.md
_T1 = {"fcn": (2.1, 5.2, 3.1, 3.2), "cnn": (1.2, 0.8, 1.5, 1.4),
       "st-fcn-aff": (1.2, 0.8, 1.5, 2.7), "st-fcn-proj": (1.3, 0.9, 1.4, 2.6), "st-fcn-tps": (1.1, 0.8, 1.4, 2.4),
       "st-cnn-aff": (0.7, 0.5, 0.8, 1.2), "st-cnn-proj": (0.8, 0.6, 0.8, 1.3), "st-cnn-tps": (0.7, 0.5, 0.8, 1.1)}
PAPER = {ds: {m: v[i] for m, v in _T1.items()} for i, ds in enumerate(TABLE1_DATASETS)}
PAPER["TC"] = {"fcn": 13.2, "cnn": 3.5, "st-fcn-aff": 2.0, "st-cnn-aff": 1.7}
LABEL = {"fcn": "FCN", "cnn": "CNN", "st-fcn-aff": "ST-FCN Aff", "st-fcn-proj": "ST-FCN Proj",
         "st-fcn-tps": "ST-FCN TPS", "st-cnn-aff": "ST-CNN Aff", "st-cnn-proj": "ST-CNN Proj",
         "st-cnn-tps": "ST-CNN TPS"}


def models_for(dataset: str) -> tuple[str, ...]:
    return TC_MODELS if dataset == "TC" else GRID_MODELS


def family(model: str) -> str:
    """'fcn' or 'cnn' (the cost class of a model: ST-CNNs are CNN-priced, ST-FCNs FCN-priced)."""
    return "cnn" if model.endswith("cnn") or "-cnn" in model else "fcn"


def parse_model(model: str) -> tuple[str, str | None]:
    """'st-cnn-tps' -> ('st-cnn', 'tps'); 'fcn' -> ('fcn', None)."""
    if model in ("fcn", "cnn"):
        return model, None
    arch, _, t = model.rpartition("-")
    if arch not in ("st-fcn", "st-cnn") or t not in TRANSFORMS:
        raise ValueError(f"unknown model {model!r}; choose from {list(GRID_MODELS)}")
    return arch, TRANSFORMS[t]



# --- the paper's schedule (supplement section 1.3) ----------------------------------------------------
# SGD, lr 0.01 divided by 10 every 50k of 150k iterations, batch 256, three seeds; the supplement gives
# no momentum: 0.9 is assumed (and recorded in every result through ``note``). Used by the MNIST
# experiments: distorted MNIST (here) and MNIST addition.
MNIST_PAPER = Profile("paper", steps=150_000, batch_size=256, lr=0.01, milestones=(50_000, 100_000), gamma=0.1,
                      optimizer="sgd", momentum=0.9, seeds=(0, 1, 2), log_every=500, ckpt_every=5000,
                      note="supplement 1.3 schedule; momentum 0.9 assumed")

# --- quick profile ---------------------------------------------------------------------------------
# (steps, batch) per data set and cost family. Measured on the shared 2-core CPU, 1 thread, Adam
# (ms/step): 28 px FCN-family 26-45 @64, CNN-family 300-370 @64; RTS FCN-family 40-80 @32, CNN 1320 @32,
# ST-CNN ~880 @32 (pooled 21 px input, "same"-padded convs); TC FCN-family 40-120 @32, CNN 2860 @32,
# ST-CNN ~560-620 @32. Step counts target ~1 minute of training per run.
QUICK_STEPS = {
    "R": {"fcn": (1500, 64), "cnn": (350, 32), "st-cnn": (350, 32)},
    "P": {"fcn": (1500, 64), "cnn": (350, 32), "st-cnn": (350, 32)},
    "E": {"fcn": (1500, 64), "cnn": (350, 32), "st-cnn": (350, 32)},
    "RTS": {"fcn": (1200, 64), "cnn": (250, 16), "st-cnn": (500, 16)},
    "TC": {"fcn": (1200, 64), "cnn": (120, 16), "st-cnn": (600, 16)},
}
# (A first pass used RTS cnn 100 / st-cnn 150 and TC cnn 50 / st-cnn 200 steps: 64-90 % error, close to
# chance; those six runs were redone with the counts above, ~3-4 minutes each.)
QUICK_CNN_EVAL = 2000  # CNN-family models: first 2,000 test images in the quick profile

QUICK_NOTE = ("quick profile (deviation from the paper, for a shared 2-core CPU): Adam lr 1e-3 instead of SGD "
              "0.01, ~1-4 minutes of training per model (step counts and batch sizes per data set and cost family "
              "in QUICK_STEPS), single seed; CNN-family models tested on the first 2,000 test images")

PROFILES = {
    "paper": MNIST_PAPER,
    "quick": Profile("quick", steps=1500, batch_size=64, lr=1e-3, milestones=(1200,), gamma=0.1,
                     optimizer="adam", seeds=(0,), log_every=50, ckpt_every=250, note=QUICK_NOTE),
    "smoke": Profile("smoke", steps=20, batch_size=16, lr=1e-3, optimizer="adam", seeds=(0,), log_every=5,
                     ckpt_every=10, final_eval_limit=200, note="seconds; for tests"),
}


def quick_overrides(dataset: str) -> dict:
    ov = {}
    for m in models_for(dataset):
        fam = "st-cnn" if m.startswith("st-cnn") else family(m)
        steps, batch = QUICK_STEPS[dataset].get(fam, QUICK_STEPS[dataset]["cnn" if fam == "st-cnn" else fam])
        o = {"steps": steps, "batch_size": batch, "milestones": (round(0.8 * steps),),
             "log_every": max(5, min(50, steps // 10)), "ckpt_every": max(10, min(250, steps // 4))}
        if family(m) == "cnn":
            o["final_eval_limit"] = QUICK_CNN_EVAL
        ov[("quick", m)] = o
    return ov


# --- experiment ------------------------------------------------------------------------------------
def build_model(dataset: str, model: str, verbose: bool = False) -> torch.nn.Module:
    from stn_triton.models import mnist

    arch, transform = parse_model(model)
    return mnist.build(arch, in_size=SIZE[dataset], transform=transform or "affine", st_pool=dataset in ST_POOL,
                       verbose=verbose)


def test_set(dataset: str, options=None):
    from repro.data import make

    return make(dataset, "test", seed=0, options=options)


DATA_MODES = ("online", "fixed")  # --data: ours (default) | the fixed 60k set (published: paper_fixed, ablations)


def experiment(dataset: str, data_mode: str = "online", data_options=None) -> Experiment:
    """The experiment for ``dataset`` with generator ``data_options`` (``repro.data.options``; resolved
    here, once, and recorded in every result)."""
    from repro.data.sets import data_record

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if data_mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}, got {data_mode!r}")
    mode = data_mode
    data = {**data_record(dataset, data_options), "mode": mode}
    options = data["options"]

    def train_data(model_name, *, seed, rank, world_size, device, batch_size):
        from repro.data import stream

        return stream(dataset, mode, batch_size, seed=seed, device=device, rank=rank, world_size=world_size,
                      options=options)

    def evaluate(model, device, limit=None):
        ds = test_set(dataset, options)
        return classification_error(model, ds.images, ds.labels, device, batch_size=500, limit=limit)

    return Experiment(name=f"{NAME}_{dataset}", models=models_for(dataset),
                      build_model=lambda m: build_model(dataset, m), train_data=train_data, evaluate=evaluate,
                      profiles=PROFILES, paper=PAPER[dataset], model_overrides=quick_overrides(dataset),
                      visualise=None, data=data)


def notes(data_mode: str) -> list[str]:
    return [f"Deviations from the paper: {data_mode} training data (the supplement does not say whether its "
            "distorted sets were fixed or regenerated); Adam and ~1-minute schedules in the quick profile; SGD "
            "momentum 0.9 assumed in the paper profile. Paper numbers: main paper Table 1 (150k iterations, mean "
            "of 3 seeds)."]
