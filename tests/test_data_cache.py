"""Data caches are hash-checked: a validly rewritten MNIST ``.npz`` or cached distorted set (inverted
pixels, wrong labels, only 10 images, another seed's file, no hash) is rebuilt with a one-line
message, not used; an intact cache is read back bit-identically."""
import numpy as np
import pytest
import torch

from repro.data import mnist as M
from repro.data import sets


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    M.atomic_savez(path, arrays)


def _invert(a):
    for k in a:
        if k.endswith("images"):
            a[k] = 255 - a[k]


def _relabel(a):
    for k in a:
        if k.endswith("labels"):
            a[k] = (a[k] + 1) % 10


def _ten(a):
    for k in list(a):
        if k != "sha256":
            a[k] = a[k][:10]


def _unhash(a):
    a.pop("sha256", None)
    _invert(a)


TAMPER = {"inverted": _invert, "relabelled": _relabel, "ten-images": _ten, "no-hash": _unhash}


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist_cache")
    try:
        arrays, source = M.load_mnist_arrays(cache_dir=root, allow_pip=False)
    except M.MnistError as e:
        pytest.skip(f"real MNIST unavailable without pip: {str(e)[:200]}")
    assert source in ("installed-wheel", "wheel")
    return root, arrays


def test_mnist_cache_records_and_checks_its_hash(mnist_cache):
    root, ref = mnist_cache
    path = root / "mnist" / M.CACHE_NAME
    with np.load(path) as z:
        assert "sha256" in z.files and z["sha256"].dtype == np.uint8 and z["sha256"].shape == (32,)
    arrays, source = M.load_mnist_arrays(cache_dir=root, allow_pip=False)
    assert source == "cache"
    for k in ref:
        assert np.array_equal(arrays[k], ref[k]) and arrays[k].dtype == ref[k].dtype


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_mnist_cache_is_rebuilt(mnist_cache, how, capsys):
    root, ref = mnist_cache
    path = root / "mnist" / M.CACHE_NAME
    _rewrite(path, TAMPER[how])
    arrays, source = M.load_mnist_arrays(cache_dir=root, allow_pip=False)
    assert source != "cache"
    for k in ref:
        assert np.array_equal(arrays[k], ref[k])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "rebuild" in err[0]
    assert M.load_mnist_arrays(cache_dir=root, allow_pip=False)[1] == "cache"  # the rebuilt cache is good


@pytest.fixture
def small_pool(monkeypatch):
    x, y = M.load_mnist("test")
    monkeypatch.setattr(sets, "digit_pool", lambda split, device="cpu": (x[:300], y[:300]))  # keep it fast
    monkeypatch.setattr(sets, "_MEMO", {})


def _fresh(monkeypatch, tmp_path, seed=5, name="addition"):
    monkeypatch.setattr(sets, "_MEMO", {})
    return sets.make(name, "test", seed=seed, cache_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_set_cache_is_rebuilt(tmp_path, monkeypatch, small_pool, how, capsys):
    a = _fresh(monkeypatch, tmp_path)
    path = sets.cache_path("addition", "test", 5, tmp_path)
    with np.load(path) as z:
        assert "sha256" in z.files
    capsys.readouterr()
    _rewrite(path, TAMPER[how])
    b = _fresh(monkeypatch, tmp_path)
    out = (capsys.readouterr().out + "").strip().splitlines()
    assert len(out) == 1 and str(path) in out[0] and "rebuild" in out[0]
    assert torch.equal(a.images_u8, b.images_u8) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.digit_labels, b.digit_labels)
    c = _fresh(monkeypatch, tmp_path)  # the rebuilt cache reads back silently, bit-identical
    assert capsys.readouterr().out == "" and torch.equal(a.images_u8, c.images_u8)


def test_another_seeds_cache_file_is_not_trusted(tmp_path, monkeypatch, small_pool, capsys):
    a5 = _fresh(monkeypatch, tmp_path, seed=5, name="P")
    a6 = _fresh(monkeypatch, tmp_path, seed=6, name="P")
    p5, p6 = (sets.cache_path("P", "test", s, tmp_path) for s in (5, 6))
    p6.write_bytes(p5.read_bytes())
    capsys.readouterr()
    b6 = _fresh(monkeypatch, tmp_path, seed=6, name="P")
    assert "rebuild" in capsys.readouterr().out
    assert torch.equal(b6.images_u8, a6.images_u8) and not torch.equal(b6.images_u8, a5.images_u8)


def test_tampered_svhn_cache_is_rebuilt(tmp_path, capsys):
    pytest.importorskip("h5py")
    pytest.importorskip("PIL")
    from repro.data import svhn as S
    from testing.fake_svhn import fake_svhn

    root = fake_svhn(tmp_path / "r")
    a = S.SVHN(root, "test", size=32, cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "svhn").glob("test_32px_*.npz")
    _rewrite(path, _invert)
    capsys.readouterr()
    b = S.SVHN(root, "test", size=32, cache_dir=tmp_path / "cache")
    assert "rebuild" in capsys.readouterr().out
    assert torch.equal(torch.as_tensor(a.images), torch.as_tensor(b.images))
