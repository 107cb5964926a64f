"""stn-triton: fused Triton kernels for spatial transformer networks.

Public API: :func:`warp` (affine / projective), :func:`tps_warp` and :func:`tps_grid`
(thin-plate spline), :mod:`stn_triton.params` (localisation-output parameterisations),
:func:`use_backend`.
"""
import os as _os

# Repository checkout (``PYTHONPATH=.`` or an editable install): the top-level ``kernels/`` and
# ``models/`` folders live beside this package, not inside it, and are installed as
# ``stn_triton.kernels`` / ``stn_triton.models`` by pyproject.toml. Make the same names resolve
# from a checkout by adding the repository root to this package's search path.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")):
    _root = _os.path.dirname(_here)
    if _os.path.isdir(_os.path.join(_root, "kernels")):
        __path__.append(_root)  # noqa: F821  (package __path__)

from . import params  # noqa: E402
from .backend import use_backend, requested_backend, resolve_backend  # noqa: E402
from .warp_api import warp  # noqa: E402
from .tps_api import tps_grid, tps_warp  # noqa: E402
from .modules import SpatialTransformer  # noqa: E402

__all__ = ["warp", "tps_warp", "tps_grid", "params", "SpatialTransformer", "use_backend", "requested_backend", "resolve_backend"]
__version__ = "0.1.0"
