"""stn-triton: fused Triton kernels for spatial transformer networks.

Public API: :func:`warp` (affine / projective), :func:`grid_sample` (any grid, a drop-in for
``F.grid_sample``), :func:`warp_flow` (dense displacement fields), :func:`tps_warp` and :func:`tps_grid` (thin-plate spline), :mod:`stn_triton.params` (localisation-output parameterisations),
:func:`use_backend`.
"""
# ``stn_triton.kernels`` and ``stn_triton.models`` are the repository's top-level ``kernels/`` and
# ``models/`` folders: in a checkout through the symbolic links stn_triton/kernels -> ../kernels and
# stn_triton/models -> ../models (so ``PYTHONPATH=.`` works, and static tools see the dependency),
# in a wheel as the subpackages pyproject.toml installs there. No other top-level folder is part of
# the package.
from . import params
from .backend import use_backend, requested_backend, resolve_backend
from .warp_api import warp
from .grid_sample_api import grid_sample
from .warp_flow_api import warp_flow
from .tps_api import tps_grid, tps_warp
from .modules import SpatialTransformer

__all__ = ["warp", "grid_sample", "warp_flow", "tps_warp", "tps_grid", "params", "SpatialTransformer", "use_backend", "requested_backend", "resolve_backend"]
__version__ = "0.1.0"
