"""Fixed data sets (``make``), online streams (``OnlineStream``) and co-localisation sets.

Fixed sets: one distorted image per digit of the split, in MNIST order (train 60000 from the
training digits, test 10000 from the test digits); for ``addition`` the first digit of image i
is digit i and the second a seeded random digit of the same split. All random numbers come from
a CPU generator seeded by (name, split, seed), so a set does not depend on the device it was
rendered on beyond float rounding. Images are stored (on disk and in memory) as uint8
round(255·x) and exposed as float32 / 255 in ``.images``; the cache is
``$STN_DATA_DIR/sets/{name}[-{options tag}]_{split}_seed{seed}_v{version}.npz`` (no pickle; the tag,
a hash of the generator options, only where they are not the defaults), written atomically with
the sha256 of its arrays and of what it is (name / options / split / seed / version); a file whose
content does not match (edited, truncated, another set's file, no hash) is rebuilt with a
one-line message.

Generator options (:mod:`repro.data.options`): every entry point takes ``options`` (a mapping or
``key=value`` strings; None: the defaults), resolves it once and carries the full dict;
:func:`data_record` is what a result records.


Online streams: ``OnlineStream(name, batch_size, seed, device, rank, world_size).batch(step)``
is a pure function of (name, seed, rank, world_size, step): the batch of rank r at step t is
global batch number g = t·world_size + r of the seed's stream, whose random numbers come from a
generator seeded by (name, "online", seed, g). So a resumed run reproduces the same batches, DDP
ranks get disjoint (independently drawn) batches, and the union over ranks at step t is
exactly what a single process would see at steps t·W … t·W + W − 1. Digits are drawn uniformly
with replacement from the 60k training digits (kept on ``device`` as uint8, shared between
streams), distortions are fresh every batch and rendered on ``device`` in one batched call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distort
from . import options as data_options
from .mnist import data_dir, load_hashed_npz, load_mnist, save_hashed_npz

# Data versions, per set: a set's version changes whenever its default bits do, so that an old cache
# file is rebuilt, never reused. 1: per-machine bits; 2: exact rendering (repro.data.exact_render), the
# same bits on every machine; 3: the defaults of issue #29 (repro.data.options) -- TC, coloc-TC:
# DeepMind's clutter (patches from anywhere in the digit, added then clipped); P: source corners,
# sigma 3.75 px; E: sigma 2.0 px; 4: P sigma 4.4 px, E 2.27 px (calibrated on the FCN row at the paper's schedule).
# The version-2 and version-3 readings remain as options, bit for bit (repro.data.options.VERSION2 / VERSION3).
VERSIONS = {"R": 2, "RTS": 2, "P": 4, "E": 4, "TC": 3, "addition": 2, "coloc-T": 2, "coloc-TC": 3}
CHUNK = 4096


def version(name: str) -> int:
    distort.spec(name)
    return VERSIONS[name]


def data_record(name: str, options=None) -> dict:
    """What a result records about its data: ``{"set", "version", "options"}`` (options in full)."""
    return {"set": name, "version": version(name), "options": data_options.resolve(name, options)}


@dataclass
class Batch:
    images: torch.Tensor  # float32 (B, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (B,)
    digit_labels: torch.Tensor | None = None  # int64 (B, 2), addition only
    boxes: torch.Tensor | None = None  # float32 (B, 4) x0, y0, x1, y1 pixel edges, co-localisation only

    def to(self, device) -> "Batch":
        mv = (lambda t: None if t is None else t.to(device))
        return Batch(mv(self.images), mv(self.labels), mv(self.digit_labels), mv(self.boxes))


_POOLS: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def digit_pool(split: str, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` as (uint8 (N, 28, 28), int64 (N,)) on ``device``, cached per process."""
    key = (split, str(torch.device(device)))
    if key not in _POOLS:
        x, y = load_mnist(split)
        _POOLS[key] = (x.to(device), y.to(device))
    return _POOLS[key]


def _resolve_device(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class FixedSet:
    """A fixed data set: uint8 storage, float32 ``.images`` on access."""

    def __init__(self, name, split, seed, images_u8, labels, digit_labels=None, boxes=None, options=None):
        self.name, self.split, self.seed = name, split, seed
        self.options = data_options.resolve(name, options)
        sp = distort.spec(name)
        self.channels, self.size, self.num_classes = sp.channels, sp.size, sp.num_classes
        self.images_u8 = images_u8  # uint8 (N, C, H, W)
        self.labels = labels
        self.digit_labels = digit_labels
        self.boxes = boxes
        self._images = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def images(self) -> torch.Tensor:
        """float32 (N, C, H, W) in [0, 1] (computed once, then kept)."""
        if self._images is None:
            self._images = self.images_u8.to(torch.float32).div_(255.0)
        return self._images

    def get(self, index, device="cpu") -> Batch:
        """The images ``index`` (tensor / slice) as a :class:`Batch` on ``device`` (float32)."""
        pick = (lambda t: None if t is None else t[index].to(device))
        return Batch(self.images_u8[index].to(device).to(torch.float32).div_(255.0), pick(self.labels),
                     pick(self.digit_labels), pick(self.boxes))

    def __repr__(self):
        return (f"FixedSet({self.name!r}, {self.split!r}, seed={self.seed}, n={len(self)}, "
                f"shape={tuple(self.images_u8.shape[1:])})")


def cache_path(name: str, split: str, seed: int, cache_dir=None, options=None) -> Path:
    tag = data_options.tag(name, data_options.resolve(name, options))
    stem = f"{name}-{tag}" if tag else name
    return data_dir(cache_dir) / "sets" / f"{stem}_{split}_seed{seed}_v{version(name)}.npz"


def build(name: str, split: str, seed: int = 0, device=None, chunk: int = CHUNK, n: int | None = None,
          select: torch.Tensor | None = None, options=None) -> FixedSet:
    """Generate a fixed set (no cache). ``n`` limits it to the first n images; ``select`` (indices)
    to those images. Either gives exactly the corresponding images of the full set (every image's
    random numbers are drawn up front for the whole split)."""
    sp = distort.spec(name)
    options = data_options.resolve(name, options)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    device = _resolve_device(device)
    pool_x, pool_y = digit_pool(split, device)
    total = pool_x.shape[0]
    g = distort.generator(name, split, int(seed))
    params = distort.sample_params(name, torch.arange(total), total, g, options)
    if select is None:
        select = torch.arange(total if n is None else min(int(n), total))
    params = distort.take(params, select.to(torch.int64).cpu())
    count = select.numel()
    imgs = torch.empty((count, sp.channels, *sp.size), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    digit_labels = torch.empty(count, 2, dtype=torch.int64) if sp.has_digit_labels else None
    boxes = torch.empty(count, 4, dtype=torch.float32) if sp.has_boxes else None
    with torch.no_grad():
        for s in range(0, count, chunk):
            sl = slice(s, min(s + chunk, count))
            r = distort.render(name, distort.take(params, sl), pool_x, pool_y, options)
            imgs[sl] = r.images.mul_(255.0).round_().to(torch.uint8).cpu()
            labels[sl] = r.labels.cpu()
            if digit_labels is not None:
                digit_labels[sl] = r.digit_labels.cpu()
            if boxes is not None:
                boxes[sl] = r.boxes.cpu()
    return FixedSet(name, split, int(seed), imgs, labels, digit_labels, boxes, options)


def _save(path: Path, ds: FixedSet) -> None:
    arrays = {"images": ds.images_u8.numpy(), "labels": ds.labels.numpy()}
    if ds.digit_labels is not None:
        arrays["digit_labels"] = ds.digit_labels.numpy()
    if ds.boxes is not None:
        arrays["boxes"] = ds.boxes.numpy()
    save_hashed_npz(path, arrays, _meta(ds.name, ds.split, ds.seed, ds.options))


def _meta(name, split, seed, options) -> str:
    """What a cache file is of, hashed with its arrays (a file copied to another name fails)."""
    opts = data_options.describe(options)
    return f"{name}/{split}/seed{int(seed)}/v{version(name)}" + (f"/{opts}" if opts else "")


def _load(path: Path, name, split, seed, options) -> FixedSet:
    arrays = load_hashed_npz(path, _meta(name, split, seed, options))
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    sp = distort.spec(name)
    if t["images"].dim() != 4 or tuple(t["images"].shape[1:]) != (sp.channels, *sp.size):
        raise ValueError(f"holds images of shape {tuple(t['images'].shape)}, expected (N, {sp.channels}, "
                         f"{sp.size[0]}, {sp.size[1]})")
    return FixedSet(name, split, seed, t["images"], t["labels"], t.get("digit_labels"), t.get("boxes"), options)


_MEMO: dict[tuple, FixedSet] = {}


def make(name: str, split: str, seed: int = 0, *, device=None, cache: bool = True, cache_dir=None,
         verbose: bool = False, options=None) -> FixedSet:
    """The fixed data set ``name`` / ``split`` / ``seed`` with generator ``options`` (built on ``device``
    once, then cached on disk).

    Returns an object with ``.images`` float32 (N, C, H, W) in [0, 1], ``.labels`` int64 (N,),
    ``.digit_labels`` (addition: int64 (N, 2), else None), ``.boxes`` (co-localisation: float32
    (N, 4) x0, y0, x1, y1 pixel edges, else None), ``.channels``, ``.size``, ``.num_classes``.
    Memoised per process.
    """
    distort.spec(name)
    options = data_options.resolve(name, options)
    key = (name, data_options.describe(options), split, int(seed), str(data_dir(cache_dir)), cache)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_path(name, split, seed, cache_dir, options)
    ds = None
    if cache and path.is_file():
        try:
            ds = _load(path, name, split, int(seed), options)
        except Exception as e:  # corrupt / partial / altered cache: rebuild
            print(f"[repro.data] rebuilding cache {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if ds is None:
        t0 = time.perf_counter()
        ds = build(name, split, seed, device, options=options)
        if verbose:
            print(f"[repro.data] built {name}/{split}/seed{seed}: {len(ds)} images in {time.perf_counter() - t0:.1f} s")
        if cache:
            _save(path, ds)
    _MEMO[key] = ds
    return ds


def colocalisation_set(variant: str, digit: int, seed: int = 0, split: str = "test", n: int = 100, *,
                       options=None, **kw) -> FixedSet:
    """The paper's co-localisation data set: the first ``n`` images of class ``digit`` in
    ``make(variant, split, seed, options=options)`` (``variant``: 'T' / 'TC' or 'coloc-T' / 'coloc-TC')."""
    name = variant if variant.startswith("coloc-") else f"coloc-{variant}"
    if name not in ("coloc-T", "coloc-TC"):
        raise ValueError(f"variant must be 'T' or 'TC', got {variant!r}")
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit}")
    options = data_options.resolve(name, options)
    key = (name, data_options.describe(options), split, int(seed), str(data_dir(kw.get("cache_dir"))),
           kw.get("cache", True))
    if key in _MEMO or (kw.get("cache", True) and cache_path(name, split, seed, kw.get("cache_dir"), options).is_file()):
        ds = make(name, split, seed, options=options, **kw)
        sel = torch.nonzero(ds.labels == int(digit)).flatten()[:n]
        if sel.numel() < n:
            raise ValueError(f"only {sel.numel()} images of digit {digit} in {name}/{split}")
        return FixedSet(name, split, seed, ds.images_u8[sel], ds.labels[sel], None, ds.boxes[sel], options)
    # not built yet: render just these n images (identical to the full set's, see build())
    _, pool_y = digit_pool(split, "cpu")
    sel = torch.nonzero(pool_y == int(digit)).flatten()[:n]
    if sel.numel() < n:
        raise ValueError(f"only {sel.numel()} images of digit {digit} in {name}/{split}")
    return build(name, split, seed, kw.get("device"), select=sel, options=options)


class OnlineStream:
    """Fresh distorted training batches: ``batch(step)`` is a pure function of the constructor
    arguments and ``step`` (see the module docstring)."""

    thread_prefetch = True  # the harness may render the next batch on a background thread (own generator)

    def __init__(self, name: str, batch_size: int, seed: int = 0, device="cpu", rank: int = 0,
                 world_size: int = 1, split: str = "train", options=None):
        sp = distort.spec(name)
        self.options = data_options.resolve(name, options)
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.name, self.batch_size, self.seed = name, int(batch_size), int(seed)
        self.device = torch.device(device)
        self.rank, self.world_size, self.split = int(rank), int(world_size), split
        self.channels, self.size, self.num_classes = sp.channels, sp.size, sp.num_classes
        self._pool_x, self._pool_y = digit_pool(split, self.device)

    def params(self, step: int) -> dict[str, torch.Tensor]:
        g_index = int(step) * self.world_size + self.rank
        g = distort.generator(self.name, "online", self.split, self.seed, g_index)
        pool = self._pool_x.shape[0]
        primary = torch.randint(0, pool, (self.batch_size,), generator=g)
        return distort.sample_params(self.name, primary, pool, g, self.options)

    def batch(self, step: int) -> Batch:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        with torch.no_grad():
            r = distort.render(self.name, self.params(step), self._pool_x, self._pool_y, self.options)
        return Batch(r.images, r.labels, r.digit_labels, r.boxes)

    def __iter__(self):
        step = 0
        while True:
            yield self.batch(step)
            step += 1

    def __repr__(self):
        return (f"OnlineStream({self.name!r}, batch_size={self.batch_size}, seed={self.seed}, device={self.device}, "
                f"rank={self.rank}, world_size={self.world_size})")


class FixedStream:
    """Batches from the fixed set ``make(name, split, seed)``, with :class:`OnlineStream`'s interface.

    ``batch(step)`` is a pure function of (name, seed, rank, world_size, step): global batch
    g = step·world_size + rank covers positions g·B … g·B + B − 1 of an endless sequence of
    epochs, each a permutation of the set seeded by (name, "fixed-order", seed, epoch). The set is
    kept on ``device`` as uint8 and converted per batch.
    """

    thread_prefetch = True

    def __init__(self, name: str, batch_size: int, seed: int = 0, device="cpu", rank: int = 0,
                 world_size: int = 1, split: str = "train", order_seed: int | None = None, options=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        ds = make(name, split, seed, options=options)
        self.options = ds.options
        self.name, self.batch_size, self.seed = name, int(batch_size), int(seed)
        self.order_seed = self.seed if order_seed is None else int(order_seed)
        self.device = torch.device(device)
        self.rank, self.world_size, self.split = int(rank), int(world_size), split
        self.channels, self.size, self.num_classes = ds.channels, ds.size, ds.num_classes
        self._images = ds.images_u8.to(self.device)
        mv = (lambda t: None if t is None else t.to(self.device))
        self._labels, self._digit_labels, self._boxes = mv(ds.labels), mv(ds.digit_labels), mv(ds.boxes)
        self._n = ds.labels.shape[0]
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = distort.generator(self.name, "fixed-order", self.split, self.order_seed, epoch)
            self._perm_cache[epoch] = torch.randperm(self._n, generator=g)
        return self._perm_cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = (int(step) * self.world_size + self.rank) * self.batch_size
        pos = torch.arange(start, start + self.batch_size)
        epochs, offs = pos // self._n, pos % self._n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self._perm(e)[offs[m]]
        return out

    def batch(self, step: int) -> Batch:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        idx = self.indices(step).to(self.device)
        pick = (lambda t: None if t is None else t[idx])
        return Batch(self._images[idx].to(torch.float32).div_(255.0), self._labels[idx], pick(self._digit_labels),
                     pick(self._boxes))

    @property
    def steps_per_epoch(self) -> float:
        return self._n / (self.batch_size * self.world_size)


def stream(name: str, mode: str, batch_size: int, seed: int = 0, device="cpu", rank: int = 0, world_size: int = 1,
           options=None):
    """Training batches for a recipe: ``mode`` 'online' (:class:`OnlineStream`) or 'fixed' (:class:`FixedStream`)."""
    if mode == "online":
        return OnlineStream(name, batch_size, seed, device, rank, world_size, options=options)
    if mode == "fixed":
        return FixedStream(name, batch_size, seed, device, rank, world_size, options=options)
    raise ValueError(f"mode must be 'online' or 'fixed', got {mode!r}")
