"""Generic training harness shared by the recipes (mnist_addition, distorted_mnist, ...).

An :class:`Experiment` bundles a model factory, a training-data source factory, an evaluation
function, a table of :class:`Profile` schedules and the paper's numbers; :func:`run` trains and
writes ``results.json`` / ``results.md``; :func:`cli.main` is the command line every recipe
shares (``--profile --model --seed(s) --device --out --resume --restart --compile``), runnable
under ``torchrun`` unchanged. Checkpoints are hashed and verified (:mod:`.checkpoint`); SIGINT /
SIGTERM save one and exit with :class:`Interrupted`.
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .core import (Experiment, FixedSource, Interrupted, NonFiniteLoss, Profile, classification_error, run, train_one,
                   write_results)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "Experiment", "Interrupted", "Profile", "FixedSource", "NonFiniteLoss", "classification_error", "run", "train_one",
           "write_results"]
