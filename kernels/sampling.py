"""``@triton.jit`` helpers shared by the warp kernels: the sampling half of every kernel.

Conventions (identical to ``F.affine_grid`` + ``F.grid_sample``):

* output pixel (i, j) of an (H_out, W_out) image has normalised coordinate
  ``x_t = lin(j, W_out)``, ``y_t = lin(i, H_out)`` where ``lin`` spans [-1, 1] through the pixel
  centres (``align_corners=False``) or the corner pixels' centres (``align_corners=True``), and a
  single pixel sits at 0;
* a normalised source coordinate ``x_s`` maps to the pixel coordinate
  ``((x_s + 1) * W - 1) / 2`` (``align_corners=False``) or ``(x_s + 1) / 2 * (W - 1)`` (True);
* padding ``zeros`` (0) reads 0 outside, ``border`` (1) clips the coordinate, ``reflection`` (2)
  reflects it about the border (then clips), each with its sub-gradient, as PyTorch defines it.

Every helper also returns d(pixel coordinate)/d(normalised coordinate) so the backward kernels
can chain the sampling gradient back to the coordinates without a grid tensor.
"""
import triton
import triton.language as tl

PAD_ZEROS = tl.constexpr(0)
PAD_BORDER = tl.constexpr(1)
PAD_REFLECTION = tl.constexpr(2)
MODE_BILINEAR = tl.constexpr(0)
MODE_NEAREST = tl.constexpr(1)


@triton.jit
def output_coords(p, W_OUT, H_OUT, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr):
    """Normalised output coordinates (x_t, y_t), dtype ACC, of flat output pixel indices ``p``."""
    ho = p // W_OUT
    wo = p - ho * W_OUT
    wf = wo.to(ACC)
    hf = ho.to(ACC)
    if ALIGN_CORNERS:
        x_t = -1.0 + 2.0 * wf / tl.maximum(W_OUT - 1, 1).to(ACC)
        y_t = -1.0 + 2.0 * hf / tl.maximum(H_OUT - 1, 1).to(ACC)
    else:
        x_t = (2.0 * wf + 1.0) / W_OUT.to(ACC) - 1.0
        y_t = (2.0 * hf + 1.0) / H_OUT.to(ACC) - 1.0
    # a single output pixel sits at 0 (affine_grid's convention for both align_corners)
    x_t = tl.where(W_OUT > 1, x_t, 0.0)
    y_t = tl.where(H_OUT > 1, y_t, 0.0)
    return x_t, y_t


@triton.jit
def _clip(pix, size):
    """Clip to [0, size - 1]; gradient 1 strictly inside, 0 on or beyond the edges (PyTorch's)."""
    hi = (size - 1).to(pix.dtype)
    grad = tl.where((pix > 0.0) & (pix < hi), 1.0, 0.0)
    pix = tl.where(pix <= 0.0, 0.0, tl.where(pix >= hi, hi, pix))
    return pix, grad


@triton.jit
def _reflect(pix, twice_low, twice_high):
    """Reflect about [twice_low / 2, twice_high / 2] (PyTorch's reflect_coordinates_set_grad)."""
    # half-integers: exact in any float dtype
    lo = twice_low * 0.5
    span = (twice_high - twice_low) * 0.5
    safe_span = tl.where(span > 0.0, span, 1.0)
    v = pix - lo
    sign = tl.where(v < 0.0, -1.0, 1.0)
    v = tl.abs(v)
    flips = tl.floor(v / safe_span)
    extra = v - flips * safe_span
    odd = (flips - 2.0 * tl.floor(flips * 0.5)) != 0.0
    out = tl.where(odd, span - extra + lo, extra + lo)
    grad = tl.where(odd, -sign, sign)
    # degenerate span (a single pixel with align_corners=True): everything maps to 0
    out = tl.where(span > 0.0, out, 0.0)
    grad = tl.where(span > 0.0, grad, 0.0)
    return out, grad


@triton.jit
def source_pixel(coord, size, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr):
    """Normalised source coordinate -> (pixel coordinate after padding, d pixel / d coord).

    The result is finite and inside [-2, size + 1] whatever ``coord`` is (nan, inf, 1e30), so the
    integer taps derived from it can never overflow; such coordinates read only padding.
    """
    if ALIGN_CORNERS:
        scale = (size - 1).to(coord.dtype) * 0.5
        pix = (coord + 1.0) * scale
    else:
        scale = size.to(coord.dtype) * 0.5
        pix = ((coord + 1.0) * size.to(coord.dtype) - 1.0) * 0.5
    grad = scale + tl.zeros_like(pix)
    if PADDING == PAD_BORDER:
        pix, g = _clip(pix, size)
        grad = grad * g
    elif PADDING == PAD_REFLECTION:
        if ALIGN_CORNERS:
            pix, g = _reflect(pix, 0, 2 * (size - 1))
        else:
            pix, g = _reflect(pix, -1, 2 * size - 1)
        pix, g2 = _clip(pix, size)
        grad = grad * g * g2
    # nan -> far outside; then clamp so float -> int conversion is always in range
    pix = tl.where(pix == pix, pix, -2.0)
    pix = tl.minimum(tl.maximum(pix, -2.0), size.to(pix.dtype) + 1.0)
    return pix, grad


@triton.jit
def round_half_even(v):
    """``nearbyint`` (round half to even), what grid_sample's nearest mode uses."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)
