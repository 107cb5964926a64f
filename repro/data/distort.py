"""The distorted-MNIST data sets of the STN paper: random parameters and batched rendering.

Every data set is produced in two steps, so that fixed sets and online streams share one code
path: :func:`sample_params` draws all random numbers on the CPU from a ``torch.Generator``
(cheap: a few numbers per image), and :func:`render` turns them into images on any device with
one batched warp of :mod:`repro.data.exact_render`, whose arithmetic is exact or fixed-order by
construction: the images are the same bits by seed on every CPU (any ``ATEN_CPU_CAPABILITY``,
any BLAS) and on CUDA, and do not depend on stn_triton (the library under test). Images are
float32 in [0, 1], source digits are MNIST uint8 / 255; source coordinates are rounded to 1/256
pixel (data version 2; version 1 used ``F.grid_sample`` on a matmul grid and was bit-identical
per machine only).

Conventions: ``theta`` maps normalised *output* coordinates to normalised *source*
coordinates (``F.affine_grid``, ``align_corners=False``: -1 and +1 are the outer pixel edges).
A pixel quantity d in an image of side S is 2 d / S in normalised units. A 28×28 digit is
warped straight into a larger canvas with one affine theta and ``size=`` (no pad + shift): for
rotation a, scale s and digit-centre offset c (output pixels, from the canvas centre),
``theta = [A | -A c_n]`` with ``A = (S_out / 28) / s · R(-a)`` and ``c_n = 2 c / S_out``.

Data sets (supplementary material §1.1–1.3; "pool" = the digits of the split: training digits
for train, test digits for test, never mixed):

* ``R`` (1×28×28, 10 classes): rotation a ~ U(-90°, +90°) about the centre.
* ``RTS`` (1×42×42, 10 classes): rotation a ~ U(-45°, +45°), scale s ~ U(0.7, 1.2), placed at
  a uniform random position in a 42×42 canvas: the centre offset c ~ U(-m, m) per axis with
  m = (42 - 28 s) / 2, i.e. the scaled (unrotated) 28×28 frame stays inside the canvas.
  Translation is continuous (bilinear).
* ``P`` (1×28×28, 10 classes): scale s ~ U(0.75, 1.0) about the centre, then each of the four
  corners moved by N(0, sigma) per axis (options ``corners``, default ``source``; ``sigma``,
  default 4.4 px; ``reject``, default none: see :mod:`repro.data.options`). ``corners=output``: the (scaled) digit frame's corners land at
  ``s·c + δ`` in the output, the homography takes them to the source corners c; ``source``: the
  canvas's corners c sample the source at ``c / s + δ``. The homography is solved per image in
  float64. With ``reject``, each image draws ``P_CANDIDATES`` candidates and keeps the first that
  passes (:func:`p_degenerate`); if none does (probability ~ rate^8) it keeps the last.
* ``E`` (1×28×28, 10 classes): scale s ~ U(0.75, 1.0), then the control points of a g×g TPS
  grid over [-1, 1]² (option ``grid``, 4: the text's 16) moved by N(0, sigma) per axis (option
  ``sigma``, 2.27 px; the text's 1.5 is an option) on one side of the spline (option ``side``):
  ``source`` (default): ``points = control_points / s + δ`` (``tps_warp`` points are where each
  output control point lands in the source); ``output``: the digit's control points c land in the
  output at ``s c + δ`` (``control`` = s c + δ per image, ``points`` = c; a spline solved per image).
* ``TC`` (1×60×60, 10 classes): the digit at a uniform random *integer* position with its
  whole 28×28 frame inside the 60×60 canvas (so bilinear sampling copies it exactly), plus six
  6×6 patches, each cut from another random digit of the pool (never the same image) at a
  uniform random position of the 28×28 image (option ``patch_from``: ``anywhere``, as DeepMind's
  ``mnist_cluttered.lua``; ``centre20``: inside the central 20×20, data version 2), pasted at a
  uniform random integer position in the canvas; digit and clutter combine by ``add`` then clip
  to 1 (``mnist_cluttered.lua``; the clutter sum is exact in integers, so the bits do not depend
  on the order) or ``max`` (version 2) (option ``combine``).
* ``addition`` (2×42×42, 19 classes): two digits, each independently RTS-distorted as above,
  one per channel; label = sum of the two digit labels (0..18), ``digit_labels`` (N, 2) kept.
* ``coloc-T`` / ``coloc-TC`` (1×84×84, 10 classes): the 28×28 digit at a uniform random
  integer position in an 84×84 black canvas (top-left x0, y0 ~ U{0..56}); ``coloc-TC`` adds 16
  random 6×6 crops of other pool digits as for TC. ``boxes`` (N, 4) = (x0, y0, x0 + 28, y0 + 28)
  in pixel-edge coordinates: the 28×28 frame the digit was copied into.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from . import exact_render
from . import options as data_options

DIGIT = 28
PATCH = 6
P_CANDIDATES = 8  # P with ``reject``: candidate draws per image


@dataclass(frozen=True)
class Spec:
    name: str
    channels: int
    size: tuple[int, int]
    num_classes: int
    clutter: int = 0  # number of 6×6 distractor patches
    has_boxes: bool = False
    has_digit_labels: bool = False


SPECS = {
    "R": Spec("R", 1, (28, 28), 10),
    "RTS": Spec("RTS", 1, (42, 42), 10),
    "P": Spec("P", 1, (28, 28), 10),
    "E": Spec("E", 1, (28, 28), 10),
    "TC": Spec("TC", 1, (60, 60), 10, clutter=6),
    "addition": Spec("addition", 2, (42, 42), 19, has_digit_labels=True),
    "coloc-T": Spec("coloc-T", 1, (84, 84), 10, has_boxes=True),
    "coloc-TC": Spec("coloc-TC", 1, (84, 84), 10, clutter=16, has_boxes=True),
}
NAMES = tuple(SPECS)


def spec(name: str) -> Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(NAMES)}") from None


def generator(*keys) -> torch.Generator:
    """A CPU generator seeded from any mix of ints and strings (order matters), via SeedSequence."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    state = np.random.SeedSequence([i & 0xFFFFFFFF for i in ints] + [len(ints)]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return g


def _uniform(g, n, lo, hi):
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _other_index(g, primary: torch.Tensor, pool: int) -> torch.Tensor:
    """A random pool index different from ``primary`` (uniform over the other pool - 1)."""
    return (primary + 1 + torch.randint(0, pool - 1, primary.shape, generator=g)) % pool


# ----------------------------------------------------------------------------- transforms
def affine_theta(angle, scale, offset, out_size: int, in_size: int = DIGIT) -> torch.Tensor:
    """(N, 2, 3) float64 theta placing an in_size digit rotated by ``angle`` (rad), scaled by ``scale``,
    centred ``offset`` (N, 2) output pixels from the canvas centre, in an out_size canvas.

    Elementwise float64 arithmetic in a fixed order and the C library's cos / sin (see
    :mod:`repro.data.exact_render`): the same bits on every machine."""
    c, s = exact_render.cos_sin(angle)
    k = (out_size / in_size) / scale
    a00, a01, a10, a11 = c * k, s * k, -s * k, c * k  # R(-angle) / s
    cx, cy = offset[:, 0] * (2.0 / out_size), offset[:, 1] * (2.0 / out_size)
    b0, b1 = -(a00 * cx + a01 * cy), -(a10 * cx + a11 * cy)
    return torch.stack([torch.stack([a00, a01, b0], -1), torch.stack([a10, a11, b1], -1)], -2)


def homography(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) H with H [dst, 1] ~ [src, 1] for four point pairs (N, 4, 2); H[2, 2] = 1."""
    n = dst.shape[0]
    x, y = dst[..., 0], dst[..., 1]
    u, v = src[..., 0], src[..., 1]
    z, o = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, o, z, z, z, -u * x, -u * y], -1)
    rows_v = torch.stack([z, z, z, x, y, o, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # (N, 8, 8)
    rhs = torch.cat([u, v], 1)[..., None]
    h = exact_render.solve(a, rhs)[..., 0]  # no LAPACK: the same bits on every machine
    return torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], 1).reshape(n, 3, 3)


def control_points(k: int = 16) -> torch.Tensor:
    """The default TPS control points: sqrt(K)×sqrt(K) grid over [-1, 1]², x fastest, (K, 2) float64."""
    return torch.tensor(exact_render.control_points(k), dtype=torch.float64)


def _rts_theta(g, n, out_size):
    angle = _uniform(g, n, -math.pi / 4, math.pi / 4)
    scale = _uniform(g, n, 0.7, 1.2)
    m = (out_size - DIGIT * scale) / 2
    offset = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * m[:, None]
    return affine_theta(angle, scale, offset, out_size)


def _clutter(g, primary, pool, count, canvas, patch_from):
    n = primary.shape[0]
    if count == 0:
        return None
    src = _other_index(g, primary[:, None].expand(n, count).reshape(-1), pool)
    if patch_from == "centre20":  # crop inside the central 20×20
        lo, hi = (DIGIT - 20) // 2, (DIGIT - 20) // 2 + 20 - PATCH
    else:  # anywhere in the 28×28 digit
        lo, hi = 0, DIGIT - PATCH
    crop = torch.randint(lo, hi + 1, (n * count, 2), generator=g)  # (x, y) top-left in the digit
    dest = torch.randint(0, canvas - PATCH + 1, (n * count, 2), generator=g)  # (x, y) in the canvas
    return {"clutter_src": src.reshape(n, count), "clutter_crop": crop.reshape(n, count, 2),
            "clutter_dest": dest.reshape(n, count, 2)}


_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def _apply(theta: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(N, K, 2) points mapped by the (N, 3, 3) homographies, elementwise (same bits everywhere)."""
    x, y = pts[..., 0], pts[..., 1]
    t = theta[:, :, None, :]  # (N, 3, 1, 3)
    u = t[:, 0, :, 0] * x + t[:, 0, :, 1] * y + t[:, 0, :, 2]
    v = t[:, 1, :, 0] * x + t[:, 1, :, 1] * y + t[:, 1, :, 2]
    w = t[:, 2, :, 0] * x + t[:, 2, :, 1] * y + t[:, 2, :, 2]
    return torch.stack([u / w, v / w], -1)


def mirrored(theta: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the projective map (N, 3, 3) output -> source reverses orientation at the
    output centre (0, 0). With (u, v, w) = theta [x, y, 1], the Jacobian of (u/w, v/w) there is
    (A w0 - p0 c) / w0^2, A = theta[:2, :2], p0 = theta[:2, 2], c = theta[2, :2], w0 = theta[2, 2];
    its determinant's sign is that of det(A w0 - p0 c) (elementwise: the same bits everywhere)."""
    w0 = theta[:, 2, 2]
    j = theta[:, :2, :2] * w0[:, None, None] - theta[:, :2, 2, None] * theta[:, 2, None, :2]
    return j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0] < 0


def horizon_crosses(theta: torch.Tensor) -> torch.Tensor:
    """(N,) bool: w = theta[2] . [x, y, 1] is 0 somewhere on the canvas [-1, 1]^2 (w is linear,
    so it is iff its values at the four corners are not all of one sign)."""
    w = torch.stack([theta[:, 2, 0] * x + theta[:, 2, 1] * y + theta[:, 2, 2] for x, y in _CORNERS], 1)
    return ~((w > 0).all(1) | (w < 0).all(1))


def frame_extent(quad: torch.Tensor) -> torch.Tensor:
    """(N,) the smaller of the mean width and mean height of the (N, 4, 2) quad (corners in
    _CORNERS order: top-left, top-right, bottom-right, bottom-left) as a fraction of the canvas."""
    width = (quad[:, 1, 0] + quad[:, 2, 0] - quad[:, 0, 0] - quad[:, 3, 0]) / 4
    height = (quad[:, 2, 1] + quad[:, 3, 1] - quad[:, 0, 1] - quad[:, 1, 1]) / 4
    return torch.minimum(width, height)


def p_degenerate(theta: torch.Tensor, quad: torch.Tensor, reject: str, min_extent: float) -> torch.Tensor:
    """(N,) bool: the draw fails P's ``reject`` tests (``quad``: the output corners of the source frame)."""
    bad = torch.zeros(theta.shape[0], dtype=torch.bool)
    parts = () if reject == "none" else reject.split("+")
    if "mirrored" in parts:
        bad |= mirrored(theta)
    if "horizon" in parts:
        bad |= horizon_crosses(theta)
    if "squashed" in parts:
        bad |= ~(frame_extent(quad) >= min_extent)  # NaN extents count as squashed
    return bad


def _p_theta(g, n, size, o):
    """P's homographies (N, 3, 3) for the resolved options ``o`` (see the module docstring)."""
    k = 1 if o["reject"] == "none" else P_CANDIDATES
    scale = _uniform(g, n * k, 0.75, 1.0)
    corners = torch.tensor(_CORNERS, dtype=torch.float64)[None].expand(n * k, 4, 2)
    noise = torch.randn(n * k, 4, 2, generator=g, dtype=torch.float64) * (o["sigma"] * 2 / size)
    if o["corners"] == "output":
        quad = corners * scale[:, None, None] + noise  # where the source frame's corners land
        theta = homography(quad, corners)
    else:
        theta = homography(corners, corners / scale[:, None, None] + noise)
        quad = _apply(homography(corners / scale[:, None, None] + noise, corners), corners)
    if k == 1:
        return theta
    bad = p_degenerate(theta, quad, o["reject"], o["min_extent"]).reshape(n, k)
    # the first candidate that passes; the last one if none does
    first_ok = torch.where(bad, k - 1, torch.arange(k)).amin(1)
    return theta.reshape(n, k, 3, 3)[torch.arange(n), first_ok]


def sample_params(name: str, primary: torch.Tensor, pool: int, g: torch.Generator,
                  options: dict | None = None) -> dict[str, torch.Tensor]:
    """All random choices for images whose first digit is pool index ``primary`` (N,), on the CPU,
    for the set's generator ``options`` (:func:`repro.data.options.resolve`; None: the defaults)."""
    sp = spec(name)
    o = data_options.resolve(name, options)
    primary = primary.to(torch.int64).cpu()
    n = primary.shape[0]
    out = {"index": primary}
    h = sp.size[0]
    if name == "R":
        angle = _uniform(g, n, -math.pi / 2, math.pi / 2)
        out["theta"] = affine_theta(angle, torch.ones(n, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64), h)
    elif name == "RTS":
        out["theta"] = _rts_theta(g, n, h)
    elif name == "P":
        out["theta"] = _p_theta(g, n, h, o)
    elif name == "E":
        scale = _uniform(g, n, 0.75, 1.0)
        k = o["grid"] ** 2
        cps = control_points(k)
        noise = torch.randn(n, k, 2, generator=g, dtype=torch.float64) * (o["sigma"] * 2 / DIGIT)
        if o["side"] == "source":
            out["points"] = cps[None] / scale[:, None, None] + noise
        else:  # the digit's control points c land at s c + noise in the output: a spline per image
            out["control"] = cps[None] * scale[:, None, None] + noise
            out["points"] = cps[None].expand(n, k, 2).clone()
    elif name == "addition":
        second = torch.randint(0, pool, (n,), generator=g)
        out["index2"] = second
        out["theta"] = _rts_theta(g, 2 * n, h).reshape(n, 2, 2, 3)
    elif name in ("TC", "coloc-T", "coloc-TC"):
        top_left = torch.randint(0, h - DIGIT + 1, (n, 2), generator=g)  # (x0, y0)
        offset = (top_left + DIGIT / 2 - h / 2).to(torch.float64)
        out["top_left"] = top_left
        out["theta"] = affine_theta(torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64), offset, h)
    clutter = _clutter(g, primary, pool, sp.clutter, h, o.get("patch_from"))
    if clutter:
        out.update(clutter)
    return out


def take(params: dict[str, torch.Tensor], sel) -> dict[str, torch.Tensor]:
    return {k: v[sel] for k, v in params.items()}


# ----------------------------------------------------------------------------- rendering
@dataclass
class Rendered:
    images: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    digit_labels: torch.Tensor | None = None  # int64 (N, 2), addition only
    boxes: torch.Tensor | None = None  # float32 (N, 4) x0, y0, x1, y1 pixels, co-localisation only


def _digits(pool_images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(len(idx), 1, 28, 28) uint8 digits from the uint8 (P, 28, 28) pool on its device."""
    return pool_images[idx.to(pool_images.device)].unsqueeze(1)


def _warp(x_u8: torch.Tensor, theta: torch.Tensor, size, top_left=None) -> torch.Tensor:
    if top_left is not None:  # TC / co-localisation: an integer translation is an exact copy
        return exact_render.paste(x_u8, top_left, size)
    if theta.shape[-2] == 3:
        return exact_render.projective(x_u8, theta, size)
    return exact_render.affine(x_u8, theta, size)


def _paste_clutter(canvas: torch.Tensor, pool_images: torch.Tensor, p: dict, combine: str) -> None:
    """Paste 6×6 crops of other digits into ``canvas`` (N, 1, H, W) in place: ``combine`` 'max', or
    'add' (the clutter summed exactly in integers, then added once; :func:`render` clips to 1)."""
    dev = canvas.device
    n, _, hgt, wid = canvas.shape
    src = p["clutter_src"].reshape(-1).to(dev)
    crop = p["clutter_crop"].reshape(-1, 2).to(dev)
    dest = p["clutter_dest"].reshape(-1, 2).to(dev)
    ar = torch.arange(PATCH, device=dev)
    # one flat gather: pixel (row, col) of pool digit src is element src·784 + row·28 + col
    at = (src * (DIGIT * DIGIT) + crop[:, 1] * DIGIT + crop[:, 0])[:, None, None] + ar[:, None] * DIGIT + ar
    patches = pool_images.reshape(-1)[at]  # (M, 6, 6) uint8
    img = torch.arange(n, device=dev).repeat_interleave(p["clutter_src"].shape[1])
    flat = (img[:, None, None] * (hgt * wid) + (dest[:, 1:2] + ar)[:, :, None] * wid + (dest[:, 0:1] + ar)[:, None, :])
    if combine == "max":
        canvas.view(-1).scatter_reduce_(0, flat.reshape(-1), patches.reshape(-1).to(torch.float32).div_(255.0),
                                        reduce="amax")
        return
    ink = torch.zeros(canvas.numel(), dtype=torch.int32, device=dev)  # integer sum: exact in any order
    ink.scatter_add_(0, flat.reshape(-1), patches.reshape(-1).to(torch.int32))
    canvas.view(-1).add_(ink.to(torch.float32).div_(255.0))


def render_digits(name: str, p: dict[str, torch.Tensor], pool_images: torch.Tensor) -> torch.Tensor:
    """The distorted digits alone (N, C, H, W), float32 in [0, 1] before clutter, on the pool's device:
    what :func:`render` pastes clutter onto (and what ``repro.data.probe`` measures). The values may
    still hold NaN where a projective horizon crosses the canvas; :func:`render` zeroes them."""
    size = spec(name).size
    idx = p["index"].to(pool_images.device)
    if name == "addition":
        both = torch.stack([idx, p["index2"].to(pool_images.device)], 1).reshape(-1)
        return _warp(_digits(pool_images, both), p["theta"].reshape(-1, 2, 3), size).reshape(-1, 2, *size)
    if name == "E":
        return exact_render.tps(_digits(pool_images, idx), p["points"], size, control=p.get("control"))
    return _warp(_digits(pool_images, idx), p["theta"], size, p.get("top_left"))


def render(name: str, p: dict[str, torch.Tensor], pool_images: torch.Tensor, pool_labels: torch.Tensor,
           options: dict | None = None) -> Rendered:
    """Images for the parameters ``p`` (from :func:`sample_params` with the same ``options``) on
    ``pool_images.device``.

    ``pool_images``: uint8 (P, 28, 28) digits of the split, ``pool_labels``: int64 (P,), same device.
    """
    sp = spec(name)
    o = data_options.resolve(name, options)
    dev = pool_images.device
    idx = p["index"].to(dev)
    labels = pool_labels[idx]
    digit_labels = boxes = None
    images = render_digits(name, p, pool_images)
    if name == "addition":
        digit_labels = torch.stack([labels, pool_labels[p["index2"].to(dev)]], 1)
        labels = digit_labels.sum(1)
    if sp.clutter:
        _paste_clutter(images, pool_images, p, o["combine"])
    if sp.has_boxes:
        tl = p["top_left"].to(dev, torch.float32)
        boxes = torch.cat([tl, tl + DIGIT], 1)
    # A projective theta whose horizon (w = 0) crosses the canvas gives non-finite source coordinates
    # there; F.grid_sample renders them NaN (one NaN pixel in P's online batch 3939 of seed 0 made
    # the paper-profile FCN's loss NaN). stn_triton's rule, which the CUDA rendering follows: such
    # pixels sample 0. Only those pixels change; every finite pixel keeps its bits.
    images = torch.nan_to_num_(images, nan=0.0)
    return Rendered(images.clamp_(0.0, 1.0), labels, digit_labels, boxes)
