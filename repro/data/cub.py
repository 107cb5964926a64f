"""CUB-200-2011 (user-supplied), with the STN supplementary §1.5 augmentation and 10-crop views.

Nothing is downloaded: ``root`` is the extracted ``CUB_200_2011`` directory::

    root/
      images.txt               "<image_id> <relative path>"            (paths under images/)
      image_class_labels.txt   "<image_id> <class_id 1..200>"
      train_test_split.txt     "<image_id> <1 = train, 0 = test>"
      images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...

Labels are returned 0-based (class_id - 1). Pillow decodes the JPEGs (imported only here).

Views (``size`` = 224, or 448 for the 448px models; ``scale`` = 256 / 512 accordingly):

* training (``train=True``): the image resized so its *shorter* side is ``scale`` (aspect kept,
  the paper's "256 × S"), a uniformly random ``size`` × ``size`` crop, a horizontal flip with
  probability ½. ``ds[i]`` → (float32 (3, size, size), label).
* evaluation (``train=False``): the same resize, then the four corner crops and the centre crop,
  each with its horizontal flip: ``ds[i]`` → (float32 (10, 3, size, size), label); average the
  softmax over the 10 views.

Pixels are in [0, 1]; ``normalize=True`` subtracts / divides by the ImageNet mean / std
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) for ImageNet-pretrained backbones. Training
randomness comes from ``torch``'s global generator unless ``generator=`` is passed (DataLoader
workers seed it per worker).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
LAYOUT = (
    "expected the CUB-200-2011 layout: ROOT/images.txt ('<id> <path>'), ROOT/image_class_labels.txt ('<id> <class 1..200>'), "
    "ROOT/train_test_split.txt ('<id> <1 train | 0 test>') and ROOT/images/<class dir>/<file>.jpg "
    "(extract CUB_200_2011.tgz and pass its CUB_200_2011/ directory)"
)


class CUBLayoutError(FileNotFoundError):
    pass


def _read_pairs(path: Path) -> dict[int, str]:
    out = {}
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise CUBLayoutError(f"{path}:{ln}: expected '<image_id> <value>', got {line!r}; {LAYOUT}")
            out[int(parts[0])] = parts[1]
    return out


def read_index(root: str | os.PathLike) -> list[tuple[str, int, bool]]:
    """[(relative image path, 0-based label, is_train)] in image-id order."""
    root = Path(root)
    if not root.is_dir():
        raise CUBLayoutError(f"CUB root {root} not found; {LAYOUT}")
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing or not (root / "images").is_dir():
        raise CUBLayoutError(f"{root} lacks {', '.join(missing + ([] if (root / 'images').is_dir() else ['images/']))}; {LAYOUT}")
    paths = _read_pairs(root / "images.txt")
    labels = _read_pairs(root / "image_class_labels.txt")
    split = _read_pairs(root / "train_test_split.txt")
    if set(paths) != set(labels) or set(paths) != set(split):
        raise CUBLayoutError(f"{root}: images.txt, image_class_labels.txt and train_test_split.txt list different ids")
    out = []
    for i in sorted(paths):
        lab = int(labels[i])
        if not 1 <= lab <= 200:
            raise CUBLayoutError(f"{root}/image_class_labels.txt: class {lab} of image {i} is not in 1..200")
        if split[i].strip() not in ("0", "1"):
            raise CUBLayoutError(f"{root}/train_test_split.txt: image {i} has {split[i]!r}, expected 0 or 1")
        out.append((paths[i], lab - 1, split[i].strip() == "1"))
    return out


def _to_tensor(im) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def resize_shorter(im, scale: int):
    from PIL import Image

    w, h = im.size
    s = scale / min(w, h)
    return im.resize((max(scale, round(w * s)), max(scale, round(h * s))), Image.BILINEAR)


def ten_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """(10, C, size, size): four corners + centre, then the same five flipped horizontally."""
    _, h, w = img.shape
    tops = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    crops = [img[:, t:t + size, l:l + size] for t, l in tops]
    return torch.stack(crops + [c.flip(-1) for c in crops])


class CUB(torch.utils.data.Dataset):
    """CUB-200-2011 ``split`` ('train' 5994 / 'test' 5794 images); see the module docstring."""

    def __init__(self, root, split: str = "train", *, train: bool | None = None, size: int = 224,
                 scale: int | None = None, normalize: bool = False, generator: torch.Generator | None = None):
        try:
            from PIL import Image  # noqa: F401
        except ImportError:
            raise ImportError("CUB needs Pillow to decode JPEGs: pip install pillow (in stn-triton's `repro` extra)") from None
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        index = read_index(self.root)
        self.items = [(p, lab) for p, lab, is_train in index if is_train == (split == "train")]
        self.split, self.size = split, int(size)
        self.scale = int(scale) if scale is not None else (self.size * 8) // 7  # 224 -> 256, 448 -> 512
        self.train = (split == "train") if train is None else bool(train)
        self.normalize, self.generator = normalize, generator
        self.labels = torch.tensor([lab for _, lab in self.items], dtype=torch.int64)

    def __len__(self):
        return len(self.items)

    def load(self, i):
        from PIL import Image

        path = self.root / "images" / self.items[i][0]
        if not path.is_file():
            raise CUBLayoutError(f"{path} (listed in images.txt) not found; {LAYOUT}")
        with Image.open(path) as im:
            return resize_shorter(im.convert("RGB"), self.scale)

    def _norm(self, x):
        if not self.normalize:
            return x
        mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
        return (x - mean) / std

    def __getitem__(self, i):
        img = _to_tensor(self.load(i))
        label = self.items[i][1]
        if not self.train:
            return self._norm(ten_crop(img, self.size)), label
        _, h, w = img.shape
        g = self.generator
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        crop = img[:, top:top + self.size, left:left + self.size]
        if bool(torch.rand((), generator=g) < 0.5):
            crop = crop.flip(-1)
        return self._norm(crop.contiguous()), label
