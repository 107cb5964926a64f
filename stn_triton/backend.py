"""Backend selection: which implementation a call runs on.

Rules (read at *call time*, never cached in a module global):

1. ``stn_triton.use_backend(name)`` (a context manager, backed by a ``ContextVar`` so it is
   thread- and task-local) wins while it is active;
2. otherwise the environment variable ``STN_BACKEND`` (``auto`` | ``triton`` | ``torch``);
3. ``auto`` (the default) picks the Triton kernels for CUDA tensors and the pure-PyTorch path
   for everything else.

``triton`` on a CPU tensor is only possible in the Triton interpreter (``TRITON_INTERPRET=1``
set before triton is imported); that is how the test-suite runs the real kernels without a GPU.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re

import torch

BACKENDS = ("auto", "triton", "torch")

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("stn_backend", default=None)


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed stn_triton calls on backend ``name`` (``auto`` | ``triton`` | ``torch``)."""
    token = _override.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override.reset(token)


# ``os.environ.get`` of an unset variable costs ~0.5-1.3 µs (``Mapping.get`` raises and catches a KeyError
# inside), paid on every call of every op. ``os.environ`` keeps its live contents in ``_data`` keyed by the
# encoded name (CPython's ``os._Environ``, every version since 3.2), so reading that dict is the same read,
# ~40 ns; where it is not there (another Python), the public read.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_BACKEND_KEY = os.environ.encodekey("STN_BACKEND") if _ENVIRON_DATA is not None else None


def _environment_backend() -> str:
    """``$STN_BACKEND`` as it is now (``auto`` when unset)."""
    if _ENVIRON_DATA is None:
        return os.environ.get("STN_BACKEND", "auto")
    raw = _ENVIRON_DATA.get(_BACKEND_KEY)
    return "auto" if raw is None else os.environ.decodevalue(raw)


def requested_backend() -> str:
    """The backend asked for right now (``auto`` | ``triton`` | ``torch``)."""
    name = _override.get()
    if name is not None:
        return name
    value = _environment_backend()
    if value == "auto":
        return value
    return _check_name(value.strip().lower() or "auto", "STN_BACKEND")


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


@functools.cache
def check_interpreter_compatible() -> None:
    """Fail clearly where the Triton interpreter is known to break, instead of deep inside a kernel.

    Triton < 3.7's interpreter turns loop bounds such as ``range(0, C, BLOCK_C)`` into Python ints
    with ``int(array_of_one_element)``, which numpy >= 2.4 rejects (triton 3.7 squeezes first).
    Compiled kernels on a GPU are unaffected. Cached: package versions do not change in a process.
    """
    import numpy
    import triton

    if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
        raise RuntimeError(
            f"the Triton interpreter of triton {triton.__version__} cannot run these kernels with "
            f"numpy {numpy.__version__} (it converts 1-element arrays to int, which numpy >= 2.4 "
            "rejects). Install numpy<2.4 or triton>=3.7 to run the kernels on CPU tensors."
        )


def resolve_backend(device: torch.device) -> str:
    """Return ``"triton"`` or ``"torch"`` for tensors on ``device``."""
    name = requested_backend()
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "triton" and device.type != "cuda" and not interpreter_active():
        raise RuntimeError(
            f"backend 'triton' was requested for a tensor on {device}, but the Triton kernels run "
            "only on CUDA devices, or on CPU tensors inside the Triton interpreter "
            "(set TRITON_INTERPRET=1 before importing triton). Use backend 'auto' or 'torch'."
        )
    if name == "triton" and device.type != "cuda":
        check_interpreter_compatible()
    return name
