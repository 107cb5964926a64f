"""The training harness shared by the recipes, one module per job:

* :mod:`.profile` -- :class:`Profile` (a schedule) and :class:`Experiment` (what a recipe hands over);
* :mod:`.loop` -- :func:`train_one` / :func:`run`: the seeded, resumable, DDP-ready training loop;
* :mod:`.sources` -- :class:`FixedSource`, the background :class:`~.sources.Prefetcher`;
* :mod:`.evaluation` -- :func:`classification_error`;
* :mod:`.provenance` -- versions / commit of a result, per-seed records and their summary;
* :mod:`.tables` -- ``results.json`` / ``results.md`` (:func:`write_results`);
* :mod:`.checkpoint` -- hashed, atomic checkpoints; :mod:`.cli` -- the command line every recipe
  shares (``--profile --model --seed(s) --device --out --resume --restart --compile``);
  :mod:`.figures` -- headless PNGs.

SIGINT / SIGTERM save a checkpoint and exit with :class:`Interrupted`.
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluation import classification_error
from .loop import Interrupted, NonFiniteLoss, run, train_one
from .profile import Experiment, Profile
from .sources import FixedSource
from .tables import write_results

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "Experiment", "Interrupted", "Profile", "FixedSource",
           "NonFiniteLoss", "classification_error", "run", "train_one", "write_results"]
