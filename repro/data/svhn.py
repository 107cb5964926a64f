"""SVHN multi-digit (format 1), preprocessed as Goodfellow et al. 2013 / STN supplementary §1.4.

Nothing is downloaded: point ``root`` at the user's copy of SVHN *format 1*::

    root/
      train/  1.png 2.png ... digitStruct.mat
      test/   1.png ...       digitStruct.mat
      extra/  1.png ...       digitStruct.mat   (optional)

``digitStruct.mat`` is a MATLAB v7.3 (HDF5) file read with h5py: ``/digitStruct/name`` holds
references to the file names, ``/digitStruct/bbox`` references to groups with ``label``,
``left``, ``top``, ``width``, ``height`` (each a (k, 1) array of references to scalars when an
image has k > 1 digits, or the scalar itself when k = 1); label 10 means the digit 0.

Preprocessing (per image): the union of the digit boxes is expanded by 30 % about its centre
(width and height × 1.3), clipped to the image, cropped and resized to ``size`` × ``size``
(64 or 128; bilinear, Pillow). Images with more than 5 digits are dropped (as Goodfellow et al.).
Labels: ``labels`` int64 (N, 5), the digits left to right with 10 = "no digit" padding (for five
parallel 11-way classifiers), ``lengths`` int64 (N,) in 1..5. The ``val`` split is 5000 images of
``train`` chosen by a seeded permutation; ``train`` is the rest (``train+extra`` adds ``extra``).
Preprocessed arrays are cached as uint8 ``.npz`` under ``$STN_DATA_DIR/svhn/``, keyed by the
root's absolute path, the split directory and the size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .mnist import data_dir, load_hashed_npz, save_hashed_npz

MAX_DIGITS = 5
BLANK = 10
EXPAND = 1.3
LAYOUT = (
    "expected SVHN format 1: ROOT/train/, ROOT/test/ (and optionally ROOT/extra/), each holding the PNG images "
    "1.png, 2.png, ... and the MATLAB v7.3 file digitStruct.mat (from http://ufldl.stanford.edu/housenumbers/ "
    "train.tar.gz / test.tar.gz / extra.tar.gz, extracted into ROOT)"
)


class SVHNLayoutError(FileNotFoundError):
    pass


def _require_h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover
        raise ImportError("reading SVHN's digitStruct.mat needs h5py: pip install h5py") from None
    return h5py


def _require_pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        raise ImportError("decoding SVHN / CUB images needs Pillow: pip install pillow (in stn-triton's `repro` extra)") from None
    return Image


def read_digit_struct(path: str | os.PathLike) -> list[dict]:
    """Parse digitStruct.mat into [{"name": str, "label": [...], "left": [...], ...}, ...]."""
    h5py = _require_h5py()
    path = Path(path)
    if not path.is_file():
        raise SVHNLayoutError(f"{path} not found; {LAYOUT}")
    out = []
    with h5py.File(path, "r") as f:
        if "digitStruct" not in f or "name" not in f["digitStruct"] or "bbox" not in f["digitStruct"]:
            raise SVHNLayoutError(f"{path} has no /digitStruct/name and /digitStruct/bbox; {LAYOUT}")
        ds = f["digitStruct"]
        names, boxes = ds["name"], ds["bbox"]

        def values(d):
            arr = d[()]
            if d.dtype == h5py.ref_dtype or arr.dtype == object:
                return [float(np.asarray(f[r][()]).reshape(-1)[0]) for r in np.asarray(arr).reshape(-1)]
            return [float(v) for v in np.asarray(arr).reshape(-1)]

        for i in range(names.shape[0]):
            name = "".join(chr(int(c)) for c in np.asarray(f[names[i][0]][()]).reshape(-1))
            g = f[boxes[i][0]]
            rec = {"name": name}
            for key in ("label", "left", "top", "width", "height"):
                rec[key] = values(g[key])
            out.append(rec)
    return out


def crop_box(rec: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """The union of the digit boxes expanded by 30 %, clipped to the image: (x0, y0, x1, y1)."""
    x0 = min(rec["left"])
    y0 = min(rec["top"])
    x1 = max(l + w for l, w in zip(rec["left"], rec["width"]))
    y1 = max(t + h for t, h in zip(rec["top"], rec["height"]))
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * EXPAND, (y1 - y0) * EXPAND
    bx0, by0 = max(0, int(round(cx - w / 2))), max(0, int(round(cy - h / 2)))
    bx1, by1 = min(width, int(round(cx + w / 2))), min(height, int(round(cy + h / 2)))
    if bx1 <= bx0 or by1 <= by0:  # a degenerate annotation: use the whole image
        return 0, 0, width, height
    return bx0, by0, bx1, by1


def encode_labels(labels: list[float]) -> tuple[list[int], int]:
    digits = [0 if int(round(v)) == 10 else int(round(v)) for v in labels]
    return digits + [BLANK] * (MAX_DIGITS - len(digits)), len(digits)


def preprocess_dir(directory: str | os.PathLike, size: int = 64, limit: int | None = None):
    """(uint8 (N, 3, size, size), int64 labels (N, 5), int64 lengths (N,), names) for one split dir."""
    Image = _require_pil()
    directory = Path(directory)
    if not directory.is_dir():
        raise SVHNLayoutError(f"SVHN split directory {directory} not found; {LAYOUT}")
    recs = read_digit_struct(directory / "digitStruct.mat")
    if limit is not None:
        recs = recs[:limit]
    imgs, labels, lengths, names = [], [], [], []
    for rec in recs:
        if len(rec["label"]) > MAX_DIGITS or len(rec["label"]) == 0:
            continue
        p = directory / rec["name"]
        if not p.is_file():
            raise SVHNLayoutError(f"{p} (named in digitStruct.mat) not found; {LAYOUT}")
        with Image.open(p) as im:
            im = im.convert("RGB")
            box = crop_box(rec, im.width, im.height)
            im = im.crop(box).resize((size, size), Image.BILINEAR)
            imgs.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        lab, n = encode_labels(rec["label"])
        labels.append(lab)
        lengths.append(n)
        names.append(rec["name"])
    images = np.stack(imgs) if imgs else np.zeros((0, 3, size, size), np.uint8)
    return images, np.asarray(labels, np.int64).reshape(-1, MAX_DIGITS), np.asarray(lengths, np.int64), names


def _cached_dir(root: Path, sub: str, size: int, cache: bool, cache_dir=None):
    key = hashlib.sha256(f"{root.resolve()}|{sub}|{size}".encode()).hexdigest()[:16]
    path = data_dir(cache_dir) / "svhn" / f"{sub}_{size}px_{key}.npz"
    meta = f"svhn/{sub}/{size}px"
    if cache and path.is_file():
        try:  # the cache records the sha256 of its arrays; an altered or unhashed one is rebuilt
            z = load_hashed_npz(path, meta)
            return z["images"], z["labels"], z["lengths"]
        except Exception as e:  # noqa: BLE001
            print(f"[repro.data] rebuilding cache {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    images, labels, lengths, _ = preprocess_dir(root / sub, size)
    if cache:
        save_hashed_npz(path, {"images": images, "labels": labels, "lengths": lengths}, meta)
    return images, labels, lengths


class SVHN(torch.utils.data.Dataset):
    """SVHN multi-digit crops. ``split``: 'train' (train minus the 5k validation images), 'val',
    'test', 'extra', 'train+extra'. ``ds[i]`` → (float32 (3, S, S) in [0, 1], labels (5,), length);
    the whole split as tensors: ``.images`` (uint8 (N, 3, S, S)), ``.labels``, ``.lengths``."""

    def __init__(self, root, split: str = "train", size: int = 64, *, val_size: int = 5000, seed: int = 0,
                 cache: bool = True, cache_dir=None, limit: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise SVHNLayoutError(f"SVHN root {root} not found; {LAYOUT}")
        if split not in ("train", "val", "test", "extra", "train+extra"):
            raise ValueError(f"split must be train / val / test / extra / train+extra, got {split!r}")
        self.root, self.split, self.size = root, split, int(size)
        if split == "test":
            parts = [_cached_dir(root, "test", self.size, cache, cache_dir)]
        elif split == "extra":
            parts = [_cached_dir(root, "extra", self.size, cache, cache_dir)]
        else:
            x, y, n = _cached_dir(root, "train", self.size, cache, cache_dir)
            if val_size >= len(x):
                raise ValueError(f"val_size {val_size} >= the {len(x)} usable training images")
            perm = np.random.default_rng(seed).permutation(len(x))
            idx = np.sort(perm[:val_size] if split == "val" else perm[val_size:])
            parts = [(x[idx], y[idx], n[idx])]
            if split == "train+extra":
                parts.append(_cached_dir(root, "extra", self.size, cache, cache_dir))
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        self.lengths = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        if limit is not None:
            self.images, self.labels, self.lengths = self.images[:limit], self.labels[:limit], self.lengths[:limit]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i].to(torch.float32) / 255.0, self.labels[i], self.lengths[i]
