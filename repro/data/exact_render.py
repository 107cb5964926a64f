"""Bit-exact rendering of the distorted-MNIST digits: the same bits on every CPU and on CUDA.

Why this module exists
----------------------
The data sets are pinned by hash (``tests/test_data_sets.py``), so that a run is reproducible by
seed. Rendering with stock PyTorch does not give that across machines: ``F.grid_sample``'s CPU
kernel rounds differently under ``ATEN_CPU_CAPABILITY`` = default / avx2 / avx512 (FMA, evaluation
order), and a grid from ``matmul`` / ``einsum`` depends on which BLAS kernel the CPU gets. (Both
were seen: the hashes pinned on one machine failed on an AVX-512 EPYC for every set.)

How: every rounding that could differ is removed instead of being made to agree.

* **Coordinates** are computed per image in float64 with explicit elementwise operations in a
  fixed order (each one IEEE-rounded, the same on every ISA and on CUDA; no matmul, no reduction,
  no transcendental function of torch's: ``cos`` / ``sin`` / ``log`` come from Python's ``math``),
  then **rounded to a multiple of 1/256 source pixel** (a shift of at most 1/512 px) and clamped to
  a window just outside the digit (non-finite coordinates go outside: they sample 0, the library's
  rule).
* **Sampling** is ``F.grid_sample`` (bilinear, zeros, ``align_corners=False``) on the digit as
  *integer-valued* float32 (0..255), zero-padded to 32×32 so that the normalised coordinates are
  dyadic. Then all of grid_sample's arithmetic is exact: unnormalising is a power-of-two scale and
  shift; the bilinear weights have at most 16 fraction bits; each value·weight product fits in
  24 bits; the four-term sum stays below 255·2¹⁶ < 2²⁴. An exact result is the same in any
  order, with or without FMA. One division by 255 (correctly rounded) gives the image.
* **TPS** (set E): the spline's coefficients are formed by explicit sums and rounded to 2⁻¹⁶, the
  radial basis table (computed once with ``math.log``) too, so that the float64 product
  basis @ coefficients is exact whatever BLAS computes it (products < 2¹³ on a 2⁻³² grid, sums
  < 2¹⁸: 50 bits < 53). An image whose coefficients are larger (a spline per image, E's
  ``side=output`` reading, nearly folds where two control points come close) gets a coarser
  power-of-two grid for its coefficients, chosen so that the same bound holds
  (:func:`_coef_on_grid`); below 2⁸ the grid is 2⁻¹⁶ as before.
* Small linear systems (the homography of set P, the TPS system) are solved by Gauss-Jordan
  elimination with partial pivoting written out in elementwise operations (no LAPACK).

What remains platform-dependent: Python's ``math.cos`` / ``sin`` / ``log`` are the C library's
(glibc on Linux); a last-bit difference there moves a coordinate across a 1/256-px rounding
boundary with probability ~1e-11 per coordinate.
"""
from __future__ import annotations

import math

import torch

DIGIT = 28
PAD = 2  # zero border: the digit is sampled inside a 32×32 (power-of-two) frame
FRAME = DIGIT + 2 * PAD
SUB = 256  # coordinates are multiples of 1 / SUB source pixel
LO, HI = -2.0 * PAD, FRAME + 2.0 * PAD  # outside these all four taps are padding: clamp there
# normalised coordinate of padded-frame pixel coordinate q / SUB (align_corners=False):
# (2 q / SUB + 1) / FRAME - 1 = (q - OFFSET) / SCALE with the integers below
#   = (q - OFFSET) / SCALE; a normalised 28-frame coordinate x_s is at q - OFFSET = x_s · QUANT.
SCALE = SUB * FRAME // 2
OFFSET = SCALE - SUB // 2
QUANT = SUB * DIGIT // 2
Q_LO, Q_HI = LO * SUB - OFFSET, HI * SUB - OFFSET
COEF_GRID = 2.0 ** -16  # TPS coefficients and basis are rounded to this grid (see module docstring)
COEF_GRID_EXP = -16
EXACT_BITS = 50  # bits a product sum may use (of float64's 53): the bound in the module docstring


# ----------------------------------------------------------------------------- small exact helpers
def cos_sin(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of a float64 tensor with the C library's functions (torch's are ISA-dependent)."""
    a = angle.tolist()
    return (torch.tensor([math.cos(v) for v in a], dtype=torch.float64),
            torch.tensor([math.sin(v) for v in a], dtype=torch.float64))


def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with a @ x = b for a batch of float64 systems a (..., n, n), b (..., n, m): Gauss-Jordan
    elimination with partial pivoting, every step an elementwise op (the same bits on every ISA)."""
    n = a.shape[-1]
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    aug = torch.cat([a.expand(*lead, n, n), b.expand(*lead, *b.shape[-2:])], -1).reshape(-1, n, n + b.shape[-1])
    batch = torch.arange(aug.shape[0])
    for k in range(n):
        piv = k + aug[:, k:, k].abs().argmax(-1)  # (B,) the row with the largest |a[i, k]|, i >= k
        row_k = aug[:, k].clone()  # swap rows k and piv (two row copies, not a gather of the whole system)
        aug[:, k] = aug[batch, piv]
        aug[batch, piv] = row_k
        factor = aug[:, :, k] / aug[:, k:k + 1, k]  # (B, n)
        factor[:, k] = 0.0
        aug.sub_(factor[:, :, None] * aug[:, k:k + 1, :])
    x = aug[:, :, n:] / torch.diagonal(aug[:, :, :n], dim1=-2, dim2=-1)[..., None]
    return x.reshape(*lead, n, b.shape[-1])


def _pixel_axis(size: int, device) -> torch.Tensor:
    """Normalised output coordinate of each pixel of an axis (align_corners=False), float64."""
    return (torch.arange(size, dtype=torch.float64, device=device) * 2.0 + 1.0) / size - 1.0


def _quantise(q: torch.Tensor) -> torch.Tensor:
    """``q`` = normalised source coordinate × QUANT (any float dtype and shape) -> the float32
    normalised coordinate, in the padded frame, of the nearest 1/SUB source pixel, clamped to
    [LO, HI] pixels (non-finite -> LO: all taps outside, samples 0). In place where it can be."""
    if q.dtype != torch.float32:
        q = torch.nan_to_num(q, nan=Q_LO, posinf=Q_HI, neginf=Q_LO).to(torch.float32)
    return q.round_().clamp_(Q_LO, Q_HI).mul_(1.0 / SCALE)  # exact: integers < 2^24, power-of-two scale


def _sample(digits_u8: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of uint8 (N, C, 28, 28) digits at quantised coordinates (N, H, W): exact."""
    x = torch.nn.functional.pad(digits_u8.to(torch.float32), (PAD, PAD, PAD, PAD))
    grid = torch.stack([gx, gy], -1)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.div_(255.0)


# ----------------------------------------------------------------------------- the transforms
def affine(digits_u8: torch.Tensor, theta: torch.Tensor, size) -> torch.Tensor:
    """Affine warp, ``theta`` float64 (N, 2, 3) as ``F.affine_grid``: float32 (N, C, H, W) in [0, 1]."""
    h, w = size
    dev = digits_u8.device
    t = (theta.to(dev, torch.float64) * QUANT).to(torch.float32)  # (N, 2, 3), scaled to 1/SUB-pixel units
    xt, yt = _pixel_axis(w, dev).to(torch.float32), _pixel_axis(h, dev).to(torch.float32)
    coords = []
    for r in range(2):  # source = theta[r, 0] x_t + theta[r, 2] + theta[r, 1] y_t: separable in x_t, y_t
        along_x = t[:, r, 0, None, None] * xt[None, None, :] + t[:, r, 2, None, None]  # (N, 1, W)
        along_y = t[:, r, 1, None, None] * yt[None, :, None]  # (N, H, 1)
        coords.append(_quantise(along_x + along_y))
    return _sample(digits_u8, *coords)


def projective(digits_u8: torch.Tensor, theta: torch.Tensor, size) -> torch.Tensor:
    """Projective warp, ``theta`` float64 (N, 3, 3): source = (u / w, v / w), [u, v, w] = theta [x_t, y_t, 1]."""
    h, w = size
    dev = digits_u8.device
    t = theta.to(dev, torch.float64)
    xt, yt = _pixel_axis(w, dev), _pixel_axis(h, dev)
    uvw = [t[:, r, 0, None, None] * xt[None, None, :] + t[:, r, 2, None, None] + t[:, r, 1, None, None] * yt[None, :, None]
           for r in range(3)]
    return _sample(digits_u8, _quantise(uvw[0] / uvw[2] * QUANT), _quantise(uvw[1] / uvw[2] * QUANT))


_TPS_TABLES: dict = {}


def control_points(k: int = 16) -> list[tuple[float, float]]:
    """sqrt(K)×sqrt(K) grid over [-1, 1]², x fastest (Python floats, exact: i·2/(g-1) - 1)."""
    g = int(round(math.sqrt(k)))
    lin = [i * 2.0 / (g - 1) - 1.0 for i in range(g)]
    return [(x, y) for y in lin for x in lin]


def _radial(d2: float) -> float:
    return d2 * math.log(d2) if d2 > 0 else 0.0


def _tps_tables(k: int, h: int, w: int):
    """(M, basis): M (K + 3, K) float64 maps the K source points to the spline's coefficients
    (rows: K radial weights, a0, a_x, a_y); basis (H·W, K + 3) float64 holds [U(|p - c_k|²)…, 1, x, y]
    of every output pixel, rounded to COEF_GRID. Both in Python floats and the elimination above."""
    key = (k, h, w)
    if key not in _TPS_TABLES:
        cps = control_points(k)
        lhs = [[_radial((ci[0] - cj[0]) ** 2 + (ci[1] - cj[1]) ** 2) for cj in cps] + [1.0, ci[0], ci[1]] for ci in cps]
        lhs += [[1.0] * k + [0.0] * 3, [c[0] for c in cps] + [0.0] * 3, [c[1] for c in cps] + [0.0] * 3]
        rhs = [[1.0 if i == j else 0.0 for j in range(k)] for i in range(k)] + [[0.0] * k for _ in range(3)]
        m = solve(torch.tensor(lhs, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
        xs = [(2.0 * j + 1.0) / w - 1.0 for j in range(w)]
        ys = [(2.0 * i + 1.0) / h - 1.0 for i in range(h)]
        basis = torch.tensor([[_radial((x - c[0]) ** 2 + (y - c[1]) ** 2) for c in cps] + [1.0, x, y]
                              for y in ys for x in xs], dtype=torch.float64)
        _TPS_TABLES[key] = (m, _on_coef_grid(basis))
    return _TPS_TABLES[key]


def _on_coef_grid(t: torch.Tensor) -> torch.Tensor:
    return (t / COEF_GRID).round_() * COEF_GRID


def _on_coef_grid_(t: torch.Tensor) -> torch.Tensor:
    """:func:`_on_coef_grid` in place (the same bits)."""
    return t.div_(COEF_GRID).round_().mul_(COEF_GRID)


def _below_exponent(t: torch.Tensor) -> torch.Tensor:
    """(N,) int: the smallest e with |t[n]| < 2**e over each image's elements (exact: max and frexp)."""
    return torch.frexp(t.abs().reshape(t.shape[0], -1).amax(1))[1].to(torch.int64)


def _coef_on_grid(coef: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
    """The (N, K + 3, 2) coefficients rounded per image to 2**-16, or to the finest coarser power-of-two
    grid 2**g for which basis @ coef stays exact. The basis is on a 2**-16 grid below 2**eb (``eb``
    (N,), or (1,) for the shared table: :func:`_below_exponent` of it), the coefficients below
    2**ec; the products lie on a 2**(g - 16) grid below 2**(eb + ec), and their sum over
    K + 3 <= 2**t terms fits in t + eb + ec + 16 - g <= EXACT_BITS bits (so does every partial sum:
    the product is exact in any summation order). With the default grid's coefficients (< 2**8,
    basis < 2**5) g is -16. Non-finite coefficients (a singular system) stay non-finite: those
    pixels sample 0 (``_quantise``)."""
    t = (coef.shape[1] - 1).bit_length()
    ec = _below_exponent(coef)
    g = torch.clamp(t + eb + ec - COEF_GRID_EXP - EXACT_BITS, min=COEF_GRID_EXP)
    step = torch.ldexp(torch.ones(coef.shape[0], dtype=torch.float64), g)[:, None, None]
    return (coef / step).round_() * step


def _radial_rounded(d2: torch.Tensor) -> torch.Tensor:
    """U(d²) = d² log d² (0 at 0) of a float64 tensor, rounded to COEF_GRID. ``torch.log`` may differ
    in the last bit between instruction sets; after the rounding a value changes only where it lies
    within that bit of a rounding boundary (~1e-11 per value, as the C library's log of the shared
    tables; see the module docstring)."""
    return _on_coef_grid(torch.where(d2 > 0, d2 * torch.log(d2.clamp_min(1e-300)), torch.zeros_like(d2)))


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|² of broadcast (..., 2) float64 points, in elementwise operations (a fixed order). The
    coordinates are made contiguous first: broadcasting strided (..., 2) slices is ~4x slower."""
    dx = a[..., 0].contiguous() - b[..., 0].contiguous()
    dy = a[..., 1].contiguous() - b[..., 1].contiguous()
    return dx.mul_(dx).add_(dy.mul_(dy))


def _tps_system_per_image(control: torch.Tensor) -> torch.Tensor:
    """M (N, K + 3, K) of :func:`_tps_tables` for a batch of control points (N, K, 2) float64 (the
    output-side reading of set E: a spline per image), by the elimination above; the system's radial
    entries rounded to COEF_GRID (the same on every ISA but for :func:`_radial_rounded`'s boundary cases)."""
    n, k, _ = control.shape
    u = _radial_rounded(_sq_dist(control[:, :, None, :], control[:, None, :, :]))  # (N, K, K)
    ones = torch.ones(n, k, 1, dtype=torch.float64)
    top = torch.cat([u, ones, control], 2)  # (N, K, K + 3)
    bottom = torch.cat([torch.cat([ones, control], 2).transpose(1, 2), torch.zeros(n, 3, 3, dtype=torch.float64)], 2)
    rhs = torch.cat([torch.eye(k, dtype=torch.float64), torch.zeros(3, k, dtype=torch.float64)])
    return solve(torch.cat([top, bottom], 1), rhs.expand(n, k + 3, k))


def _tps_radial_per_image(control: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The radial part of the basis, (N, H·W, K) float64, of :func:`_tps_tables` for a batch of
    control points (N, K, 2) and the output pixels' axes ``xs`` (W,), ``ys`` (H,)
    (:func:`_pixel_axis`), rounded to COEF_GRID: U(|p - c_k|²) with |p - c_k|² = dx² + dy² as
    :func:`_sq_dist` rounds it, dx² (N, W, K) and dy² (N, H, K) squared once per column / row and
    added by broadcasting (one full-size pass instead of five). U is 0 where the distance is 0 (as
    -0.0: the same value in every sum); the control points are finite (``sample_params``)."""
    dx = xs[None, :, None] - control[:, None, :, 0]  # (N, W, K)
    dy = ys[None, :, None] - control[:, None, :, 1]  # (N, H, K)
    d2 = dx.mul_(dx)[:, None, :, :] + dy.mul_(dy)[:, :, None, :]  # (N, H, W, K)
    u = d2.clamp_min(1e-300).log_().mul_(d2)  # d2 log d2 in place: :func:`_radial_rounded`'s values
    return _on_coef_grid_(u).reshape(control.shape[0], ys.shape[0] * xs.shape[0], -1)


def _tps_source_per_image(control: torch.Tensor, coef: torch.Tensor, h: int, w: int,
                          chunk: int = 16) -> torch.Tensor:
    """Source coordinates (N, H, W, 2) float64 of one spline per image: basis @ coef with the basis
    [U(|p - c_k|²)…, 1, x, y] of :func:`_tps_tables` per image and the coefficients on the grid
    :func:`_coef_on_grid` picks for it. The product is exact, so it is summed in whatever order is
    cheapest: the radial part by ``bmm``, the affine part added after. ``chunk`` images at a time
    keep the (chunk, H·W, K) radial table in cache. A log per pixel, control point and image is most
    of E ``side=output``'s rendering; with the separable distances, the in-place radial and this
    chunking a batch of 256 renders in ~30 ms instead of ~100 ms (one thread, min of 7, beside two
    training runs), bit for bit the same images (pinned hashes)."""
    n, k = control.shape[0], control.shape[1]
    xs, ys = _pixel_axis(w, "cpu"), _pixel_axis(h, "cpu")  # once, not per chunk
    pix = _on_coef_grid(torch.stack([xs.repeat(h), ys.repeat_interleave(w)], 1))
    src = torch.empty(n, h * w, 2, dtype=torch.float64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        u = _tps_radial_per_image(control[s:e], xs, ys)
        # the basis's largest magnitude: U's maximum, or the column of ones (U >= -1/e, |x|, |y| < 1)
        eb = torch.frexp(u.reshape(e - s, -1).amax(1).clamp_min(1.0))[1].to(torch.int64)
        c = _coef_on_grid(coef[s:e], eb)
        torch.bmm(u, c[:, :k], out=src[s:e])
        src[s:e] += c[:, k:k + 1] + c[:, k + 1:k + 2] * pix[:, 0:1] + c[:, k + 2:k + 3] * pix[:, 1:2]
    return src.reshape(n, h, w, 2)


def tps(digits_u8: torch.Tensor, points: torch.Tensor, size, control: torch.Tensor | None = None) -> torch.Tensor:
    """Thin-plate-spline warp; ``points`` float64 (N, K, 2) are where the control points land in the
    source (as ``stn_triton.tps_warp``). The control points (in the output frame): the default √K×√K
    grid (tables shared by every image), or ``control`` (N, K, 2) float64, one spline per image."""
    h, w = size
    n, k, _ = points.shape
    if control is None:
        m, basis = _tps_tables(k, h, w)
        m = m[None]
    else:
        control = control.to(torch.float64).cpu()
        m = _tps_system_per_image(control)
    pts = points.to(torch.float64).cpu()
    coef = torch.zeros(n, k + 3, 2, dtype=torch.float64)
    for j in range(k):  # coef = M @ points, summed in a fixed order
        coef = coef + m[:, :, j, None] * pts[:, None, j, :]
    dev = digits_u8.device
    if control is None:
        coef = _coef_on_grid(coef, _below_exponent(basis[None]))
        src = torch.matmul(basis.to(dev), coef.to(dev).permute(1, 0, 2).reshape(k + 3, 2 * n))  # exact: see module doc
        src = src.reshape(h, w, n, 2).permute(2, 0, 1, 3)
    else:
        src = _tps_source_per_image(control, coef, h, w).to(dev)
    return _sample(digits_u8, _quantise(src[..., 0] * QUANT), _quantise(src[..., 1] * QUANT))


def paste(digits_u8: torch.Tensor, top_left: torch.Tensor, size) -> torch.Tensor:
    """The digits copied at integer ``top_left`` (N, 2) (x0, y0) into a zero canvas: exactly what
    :func:`affine` gives for a pure integer translation (every tap lands on a pixel centre)."""
    n, c = digits_u8.shape[:2]
    h, w = size
    dev = digits_u8.device
    tl = top_left.to(dev, torch.int64)
    ar = torch.arange(DIGIT, device=dev)
    flat = ((tl[:, 1, None, None] + ar[:, None]) * w + (tl[:, 0, None, None] + ar[None, :])).reshape(n, 1, -1)
    canvas = torch.zeros(n, c, h * w, dtype=torch.float32, device=dev)
    canvas.scatter_(2, flat.expand(n, c, -1), digits_u8.reshape(n, c, -1).to(torch.float32).div_(255.0))
    return canvas.view(n, c, h, w)
