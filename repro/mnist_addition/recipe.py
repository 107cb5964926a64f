"""MNIST addition (supplement section 1.1, Table 1): FCN, CNN, ST-FCN and 2xST-FCN.

    python -m repro.mnist_addition                       # quick profile, all four models (CPU: see below)
    python -m repro.mnist_addition --transform tps --model st-fcn,2xst-fcn   # the published TPS rows
    python -m repro.mnist_addition --profile paper --device cuda --model 2xst-fcn
    torchrun --nproc_per_node=2 -m repro.mnist_addition --profile smoke --device cpu

Task: two 42x42 channels, each one independently RTS-distorted MNIST digit (``repro.data``
``addition``); predict the sum (19 classes). Training pairs come from
``repro.data.OnlineStream("addition")`` (fresh digits and distortions every batch; rank-split
under DDP); the test set is the fixed ``make("addition", "test", seed=0)`` (10,000 pairs).
Models: :mod:`stn_triton.models.addition`, each ~400k parameters, affine transformers.

Outputs (``--out``, default ``runs/mnist_addition`` at the repository root, untracked):
``results.json`` / ``results.md``, ``transformers.png``, checkpoints ``<model>/seed<S>/``. The
committed results in ``repro/results/mnist_addition`` change only when published:
``python -m repro.publish runs/mnist_addition repro/results/mnist_addition``.

Profiles
--------
* ``paper`` -- the supplement's schedule (section 1.3): SGD, batch 256, lr 0.01 divided by 10 every
  50k iterations, 150k iterations, no weight decay, 3 seeds averaged. Momentum is not stated in
  the paper; we use 0.9 (assumption).
* ``quick`` (default) -- for a 2-core CPU: Adam lr 1e-3 (x0.1 at 80%), batch 256, 7,000 iterations,
  1 seed (the published table pools seeds 0-2); the CNN only 300 iterations of batch 64 (one CNN step of 256 costs ~5 s on one busy
  core), so its number is far from converged and not comparable. See ``QUICK_NOTE``.
* ``smoke`` -- seconds, for the tests.

How the quick schedule was chosen (pilot runs of 600-2,500 iterations, online pairs, test error
on the fixed test set): every model first sits on a plateau at the label prior (training loss
2.79 nats = the entropy of the distribution of the sum of two uniform digits, test error ~90 %).
SGD with the paper's lr 0.01 / momentum 0.9 / batch 256 had not left it after 1,500 iterations
(FCN: loss 2.778, 89.6 %); Adam 1e-3 leaves it within ~500 iterations (FCN: 2.719 at 500, 86.2 %
at 1,500). Adam 3e-3 never left it (2xST-FCN, batch 64, 1,200 iterations); Adam 3e-4 was slower;
He initialisation and/or fixed input standardisation ((x - 0.06) / 0.2) did not help (stuck at
the prior for 1,200 iterations of batch 64), so the models keep PyTorch's default initialisation
and raw [0, 1] inputs. With a CPU budget of minutes the models are still early in training, far
from the paper's 150k iterations.

Why 7,000 iterations and not 3,500 (data version 2, seeds 0-2, one thread each): the 2xST-FCN
learns in two phases. Both transformers start at the identity; until they specialise (ST1 on one
channel's digit, ST2 on the other's) its test error stays near the ST-FCN's, then it falls
steeply. At 3,500 iterations that fall had happened in some seeds and not in others: 41.8 / 44.9 /
73.1 % (mean 53.3 +- 17.2), the last one at the ST-FCN's level, so one seed's number could not be
held against another's. A lower loc-net learning rate did not fix it (x0.3: seed 2 49.8 %, seed 0
59.6 % at 3,000 iterations; x0.1: seed 2 77.1 %). Twice the iterations did: seed 2, the slow one,
reached 45.4 % at 4,000 and 20.0 % at 7,000. The whole FCN family gets the same schedule (the
paper trains every model alike).

Departures from the paper (all profiles)
----------------------------------------

=====================  ==================  =================  ==========================================
option                 paper               ours               why / measurement
=====================  ==================  =================  ==========================================
training pairs         not stated          online stream      with a fixed 60k-pair set the FCN memorises
transformer            TPS in the figure   affine             the table does not say; ``--transform tps``
                       (table: not said)   (``--transform``)  is kept: it produced the published
                                                              ``repro/results/mnist_addition/tps`` table
SGD momentum           not stated          0.9                the usual value for this schedule
quick profile          150k SGD steps      7k Adam steps      CPU budget; SGD 0.01 had not left the label
                                                              prior after 1,500 steps (above)
=====================  ==================  =================  ==========================================

Retired options (measured, not the recipe; ``repro/results/mnist_addition/README.md``, "Retired
options"; commit 6db501a still runs them): ``--standardize`` (fixed input standardisation) and
``--init he`` (He initialisation) -- neither left the label prior in 1,200 steps (above);
``--transform projective|attention|tps(K)`` -- never measured on this task.
"""
from __future__ import annotations

from pathlib import Path

import torch

from repro.distorted_mnist.recipe import MNIST_PAPER
from repro.harness import Experiment, Profile, classification_error
from repro.harness.figures import save_figure
from repro.paths import default_out

NAME = "mnist_addition"
MODELS = ("fcn", "cnn", "st-fcn", "2xst-fcn")
PAPER = {"fcn": 47.7, "cnn": 14.7, "st-fcn": 18.5, "2xst-fcn": 5.8}
DEFAULT_OUT = default_out(NAME)  # runs/mnist_addition (untracked); publish with python -m repro.publish

TRANSFORMS = ("affine", "tps")  # --transform: ours (default) | the supplement figure's, published in results/.../tps

QUICK_NOTE = ("deviation from the paper, sized for a 2-core CPU: Adam (lr 1e-3, /10 for the last 20%) instead of "
              "SGD 0.01, 7k instead of 150k iterations, 1 seed instead of 3; CNN: 300 iterations of batch 64 "
              "only (one CNN step costs ~5 s at batch 256 on one CPU core), so it is far from converged and its "
              "number is not comparable")

PROFILES = {
    "paper": MNIST_PAPER,
    "quick": Profile("quick", steps=7000, batch_size=256, lr=1e-3, milestones=(5600,), gamma=0.1,
                     optimizer="adam", seeds=(0,), log_every=100, ckpt_every=500, eval_every=1000, eval_limit=2000,
                     note=QUICK_NOTE),
    "smoke": Profile("smoke", steps=30, batch_size=32, lr=1e-3, optimizer="adam", seeds=(0,), log_every=10,
                     ckpt_every=10, final_eval_limit=500, note="seconds; for tests"),
}
MODEL_OVERRIDES: dict = {
    ("quick", "cnn"): dict(steps=300, batch_size=64, milestones=(240,), log_every=20, ckpt_every=100, eval_every=0),
}


FCN_FAMILY = ("fcn", "st-fcn", "2xst-fcn")
SUPPLEMENT_MIN_WIDTH = 128  # "The FCNs have between 128 and 256 units per layer" (supplement 1.3)


def build_model(name: str, transform: str = "affine", min_width: int | None = None, verbose: bool = False):
    """``name`` sized to the 400k budget; ``min_width``: the FCN family's classifier is at least this wide
    (the budget then gives way: at 2x42x42 inputs the FCN's fitted width is 109, 2xST-FCN's 90)."""
    from stn_triton.models import addition

    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    model = addition.build(name, transform=transform, verbose=verbose)
    if min_width is not None and name in FCN_FAMILY and model.width < min_width:
        model = addition.build(name, transform=transform, width=int(min_width), verbose=verbose)
    return model


def config(transform: str = "affine", min_width: int | None = None) -> dict:
    """What a result records about the models (``Experiment.config``)."""
    return {"transform": transform, "min_width": min_width}


def train_data(model_name, *, seed, rank, world_size, device, batch_size):
    from repro.data import OnlineStream

    return OnlineStream("addition", batch_size, seed=seed, device=device, rank=rank, world_size=world_size)


def test_set():
    from repro.data import make

    return make("addition", "test", seed=0)


def evaluate(model, device, limit=None):
    ds = test_set()
    return classification_error(model, ds.images, ds.labels, device, batch_size=500, limit=limit)


def visualise(models: dict, out_dir: Path, device, n: int = 6) -> Path | None:
    """Supplement Table 1 (right): test inputs (two channels, a blue bar between them) and each
    spatial transformer's 2-channel output, for every trained ST model."""
    st_models = {k: m for k, m in models.items() if k.startswith(("st-", "2xst")) and hasattr(m, "transformed")}
    if not st_models:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = test_set()
    x = ds.images[:n].to(device)
    cols = 1 + sum(len(m.sts) for m in st_models.values())
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 1.3 * n + 0.6), squeeze=False)

    def pair(t):  # (2, H, W) -> RGB image, channels side by side with a blue bar
        a = t.detach().float().cpu().clamp(0, 1)
        h = a.shape[-2]
        bar = torch.zeros(h, 3)
        left = a[0][..., None].expand(h, a.shape[-1], 3)
        right = a[1][..., None].expand(h, a.shape[-1], 3)
        barc = bar[:, None, :].clone()
        barc[..., 2] = 1.0
        barc = barc.expand(h, 3, 3)
        return torch.cat([left, barc, right], 1).numpy()

    titles = ["input (2 channels)"]
    outs = []
    for k, m in st_models.items():
        m.eval()
        with torch.no_grad():
            ys = m.transformed(x)
        for j, y in enumerate(ys):
            titles.append(f"{k} ST{j + 1}" if len(ys) > 1 else f"{k} ST")
            outs.append(y)
    for i in range(n):
        axes[i, 0].imshow(pair(x[i]))
        for j, y in enumerate(outs):
            axes[i, j + 1].imshow(pair(y[i]))
        axes[i, 0].set_ylabel(f"{int(ds.digit_labels[i, 0])}+{int(ds.digit_labels[i, 1])}={int(ds.labels[i])}")
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=9)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("MNIST addition: inputs and spatial-transformer outputs (test examples)", fontsize=10)
    return save_figure(fig, Path(out_dir) / "transformers.png")


def experiment(transform: str = "affine", min_width: int | None = None) -> Experiment:
    """The recipe with its model options (recorded in every result as ``config``, beside its ``data``)."""
    import functools

    from repro.data.sets import data_record

    return Experiment(name=NAME, models=MODELS,
                      build_model=functools.partial(build_model, transform=transform, min_width=min_width),
                      train_data=train_data, evaluate=evaluate, profiles=PROFILES, paper=PAPER,
                      model_overrides=MODEL_OVERRIDES, visualise=visualise,
                      data={**data_record("addition"), "mode": "online"}, config=config(transform, min_width))


EXPERIMENT = experiment()  # the default recipe

NOTES = [
    "Deviations from the paper: online training pairs (fresh every batch); affine transformers (the "
    "supplement's figure shows TPS); SGD momentum 0.9 assumed in the paper profile; the quick profile "
    "uses Adam and far fewer iterations (see its schedule line). Paper numbers: supplement Table 1, 150k "
    "iterations, 3 seeds.",
]
