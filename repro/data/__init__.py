"""Data for the STN reproduction (see the submodules' docstrings for exact generation)."""
from .mnist import MnistError, MnistHashError, load_mnist

__all__ = ["load_mnist", "MnistError", "MnistHashError"]
