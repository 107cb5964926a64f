"""Triton kernels and their plain-Python launchers (installed as ``stn_triton.kernels``).

Layout: ``sampling`` holds the ``@triton.jit`` helpers every warp shares (output grid,
unnormalisation, padding, tap weights); ``warp`` the affine/projective kernels; ``tps`` the
thin-plate-spline kernels. Launchers validate nothing user-facing (``stn_triton`` does that);
they pick block sizes, allocate outputs and launch.
"""
