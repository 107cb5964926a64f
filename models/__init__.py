"""The paper's networks (installed as ``stn_triton.models``; import it under that name).

* :mod:`stn_triton.models.mnist` -- distorted-MNIST FCN / CNN / ST-FCN / ST-CNN (supplement 1.3).
* :mod:`stn_triton.models.addition` -- MNIST addition FCN / CNN / ST-FCN / 2xST-FCN (supplement 1.1).
* :mod:`stn_triton.models.budget` -- parameter counting and the width solver for equal budgets.
"""
from .budget import PAPER_BUDGET, count_params, fit_width  # noqa: F401
from . import addition, mnist  # noqa: F401

__all__ = ["PAPER_BUDGET", "count_params", "fit_width", "addition", "mnist"]
