"""SVHN (format 1) and CUB-200-2011 readers on tiny fake data sets in the exact on-disk formats."""
import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")

from repro.data import cub as C  # noqa: E402
from repro.data import svhn as S  # noqa: E402
from testing.fake_svhn import fake_svhn  # noqa: E402


def test_svhn_digit_struct_and_preprocessing(tmp_path):
    root = fake_svhn(tmp_path / "svhn")
    recs = S.read_digit_struct(root / "train" / "digitStruct.mat")
    assert len(recs) == 12 and recs[0]["name"] == "1.png"
    assert recs[0]["label"] == [10.0] and recs[2]["left"] == [5.0, 15.0, 25.0]
    images, labels, lengths, names = S.preprocess_dir(root / "train", size=64)
    assert len(names) == 10  # the two 6-digit images are dropped
    assert images.shape == (10, 3, 64, 64) and images.dtype == np.uint8
    assert lengths.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    assert labels[0].tolist() == [0, 10, 10, 10, 10]  # label 10 is digit 0; 10 pads
    assert labels[1].tolist() == [1, 2, 10, 10, 10]
    # crop = union of boxes expanded by 30 %: for 3 digits x 5..33, y 8..28 -> 36.4 x 26 px about (19, 18)
    assert S.crop_box(recs[2], 200, 100) == (1, 5, 37, 31)
    assert S.crop_box(recs[2], 20, 20) == (1, 5, 20, 20)  # clipped to the image


def test_svhn_splits_and_cache(tmp_path):
    root = fake_svhn(tmp_path / "svhn")
    tr = S.SVHN(root, "train", size=32, val_size=3, cache_dir=tmp_path / "cache")
    va = S.SVHN(root, "val", size=32, val_size=3, cache_dir=tmp_path / "cache")
    te = S.SVHN(root, "test", size=32, cache_dir=tmp_path / "cache")
    assert len(tr) == 7 and len(va) == 3 and len(te) == 4
    img, lab, n = tr[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and float(img.max()) <= 1
    assert lab.shape == (5,) and 1 <= int(n) <= 5
    assert list((tmp_path / "cache" / "svhn").glob("train_32px_*.npz"))
    tr2 = S.SVHN(root, "train", size=32, val_size=3, cache_dir=tmp_path / "cache")
    assert torch.equal(tr.images, tr2.images)
    ally = torch.cat([tr.labels, va.labels])
    assert len({tuple(y.tolist()) for y in ally}) == 10  # disjoint, covering train (labels are unique here)


def test_svhn_layout_errors(tmp_path):
    with pytest.raises(S.SVHNLayoutError, match="format 1"):
        S.SVHN(tmp_path / "missing", "train")
    (tmp_path / "r" / "train").mkdir(parents=True)
    with pytest.raises(S.SVHNLayoutError, match="digitStruct.mat"):
        S.SVHN(tmp_path / "r", "train", cache=False)


def fake_cub(root, n=6):
    (root / "images" / "001.A").mkdir(parents=True)
    (root / "images" / "002.B").mkdir(parents=True)
    lines_img, lines_lab, lines_split = [], [], []
    for i in range(1, n + 1):
        cls = 1 + i % 2
        rel = f"{'001.A' if cls == 1 else '002.B'}/img_{i}.jpg"
        arr = np.zeros((300 + 10 * i, 400, 3), np.uint8)
        arr[:, :200] = (255, 0, 0)  # left half red: flips are visible
        Image.fromarray(arr).save(root / "images" / rel)
        lines_img.append(f"{i} {rel}")
        lines_lab.append(f"{i} {cls}")
        lines_split.append(f"{i} {1 if i <= 4 else 0}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    return root


def test_cub_views(tmp_path):
    root = fake_cub(tmp_path / "CUB_200_2011")
    tr = C.CUB(root, "train", generator=torch.Generator().manual_seed(0))
    te = C.CUB(root, "test")
    assert len(tr) == 4 and len(te) == 2 and tr.labels.tolist() == [1, 0, 1, 0]
    x, y = tr[0]
    assert x.shape == (3, 224, 224) and y == 1
    flips = {bool(tr[0][0][0, 0, 0] < 0.5) for _ in range(20)}  # some crops flipped, some not ... or cut right half
    assert len(flips) == 2
    v, y = te[0]
    assert v.shape == (10, 3, 224, 224)
    assert torch.equal(v[5], v[0].flip(-1)) and torch.equal(v[9], v[4].flip(-1))
    img = C.resize_shorter(Image.new("RGB", (400, 350)), 256)
    assert min(img.size) == 256 and img.size[0] == round(400 * 256 / 350)
    big = C.CUB(root, "train", size=448)
    assert big.scale == 512 and big[1][0].shape == (3, 448, 448)
    n = C.CUB(root, "test", normalize=True)[0][0]
    assert float(n.min()) < 0


def test_cub_layout_errors(tmp_path):
    with pytest.raises(C.CUBLayoutError, match="images.txt"):
        C.CUB(tmp_path, "train")
    root = fake_cub(tmp_path / "c")
    (root / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(C.CUBLayoutError, match="different ids"):
        C.CUB(root, "train")
