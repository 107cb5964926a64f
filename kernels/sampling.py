"""``@triton.jit`` helpers shared by the warp kernels: the sampling half of every kernel.

Conventions (identical to ``F.affine_grid`` + ``F.grid_sample``):

* output pixel (i, j) of an (H_out, W_out) image has normalised coordinate
  ``x_t = lin(j, W_out)``, ``y_t = lin(i, H_out)`` where ``lin`` spans [-1, 1] through the pixel
  centres (``align_corners=False``) or the corner pixels' centres (``align_corners=True``), and a
  single pixel sits at 0;
* a normalised source coordinate ``x_s`` maps to the pixel coordinate
  ``((x_s + 1) * W - 1) / 2`` (``align_corners=False``) or ``(x_s + 1) / 2 * (W - 1)`` (True);
* padding ``zeros`` (0) reads 0 outside, ``border`` (1) clips the coordinate, ``reflection`` (2)
  reflects it about the border (then clips), each with its sub-gradient, as PyTorch defines it;
  ``fill`` (3) is ``zeros`` whose out-of-range taps read the channel's fill value (``fill_ptr``,
  (C,) in ACC) instead of 0, so the image is sampled as if surrounded by that constant;
* modes: ``bilinear`` (2x2 taps; 2x2x2 for volumes), ``nearest`` (round half to even) and, for
  images, ``bicubic`` (4x4 taps, PyTorch's rules: see the bicubic section below), selected in
  :func:`sample_at` / :func:`backprop_at`.

Every helper also returns d(pixel coordinate)/d(normalised coordinate) so the backward kernels
can chain the sampling gradient back to the coordinates without a grid tensor.
"""
import triton
import triton.language as tl

from .policy import MODE_CODES, PADDING_CODES

# the kernels' names for the codes kernels.policy defines (zeros and nearest are the other branches)
PAD_BORDER = tl.constexpr(PADDING_CODES["border"])
PAD_REFLECTION = tl.constexpr(PADDING_CODES["reflection"])
PAD_FILL = tl.constexpr(PADDING_CODES["fill"])  # zeros' coordinates; out-of-range taps read the fill value instead of 0
MODE_BILINEAR = tl.constexpr(MODE_CODES["bilinear"])
MODE_NEAREST = tl.constexpr(MODE_CODES["nearest"])
MODE_BICUBIC = tl.constexpr(MODE_CODES["bicubic"])  # images only: 4x4 taps, PyTorch's A = -0.75 and tap rules


@triton.jit
def program_pixels(NUM_PBLOCKS, H_OUT, W_OUT, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr,
                   INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr):
    """The prologue of every warp kernel: program ``pid`` covers image ``n`` and the flat output
    pixels ``p`` (row-major, BLOCK_P of them, masked by ``p_mask``) of normalised output
    coordinates (x_t, y_t). With INDEX_64, pid, n and p are int64, so every offset derived from
    them is too."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    n = pid // NUM_PBLOCKS
    p = (pid - n * NUM_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < H_OUT * W_OUT
    x_t, y_t = output_coords(p, W_OUT, H_OUT, ALIGN_CORNERS, ACC)
    return pid, n, p, p_mask, x_t, y_t


@triton.jit
def out_plane(H_OUT, W_OUT, INDEX_64: tl.constexpr):
    """Output pixels per image, H_OUT * W_OUT, in int64 with INDEX_64 (the product can pass 2**31)."""
    h = H_OUT
    if INDEX_64:
        h = h.to(tl.int64)
    return h * W_OUT


@triton.jit
def channel_block(c0, c_range, INDEX_64: tl.constexpr):
    """Channel indices c0 + [0, BLOCK_C), int64 with INDEX_64 (``c * stride_c`` can pass 2**31)."""
    c = c0 + c_range
    if INDEX_64:
        c = c.to(tl.int64)
    return c


@triton.jit
def _lin(i, size, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr):
    """Normalised output coordinate, dtype ACC, of integer index ``i`` along an axis of ``size``."""
    f = i.to(ACC)
    if ALIGN_CORNERS:
        t = -1.0 + 2.0 * f / tl.maximum(size - 1, 1).to(ACC)
    else:
        t = (2.0 * f + 1.0) / size.to(ACC) - 1.0
    # a single output pixel sits at 0 (affine_grid's convention for both align_corners)
    return tl.where(size > 1, t, 0.0)


@triton.jit
def output_coords(p, W_OUT, H_OUT, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr):
    """Normalised output coordinates (x_t, y_t), dtype ACC, of flat output pixel indices ``p``."""
    ho = p // W_OUT
    wo = p - ho * W_OUT
    return _lin(wo, W_OUT, ALIGN_CORNERS, ACC), _lin(ho, H_OUT, ALIGN_CORNERS, ACC)


@triton.jit
def program_voxels(NUM_PBLOCKS, D_OUT, H_OUT, W_OUT, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr,
                   INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr):
    """:func:`program_pixels` for a volume: program ``pid`` covers volume ``n`` and the flat output
    voxels ``p`` (x fastest, then y, then z) with normalised coordinates (x_t, y_t, z_t)."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    n = pid // NUM_PBLOCKS
    p = (pid - n * NUM_PBLOCKS) * BLOCK_P + tl.arange(0, BLOCK_P)
    hw_out = H_OUT * W_OUT
    p_mask = p < D_OUT * hw_out
    do = p // hw_out
    x_t, y_t = output_coords(p - do * hw_out, W_OUT, H_OUT, ALIGN_CORNERS, ACC)
    return pid, n, p, p_mask, x_t, y_t, _lin(do, D_OUT, ALIGN_CORNERS, ACC)


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


COORD_LIMIT = tl.constexpr(1048576.0)  # 2**20: |normalised coordinate| is clamped here first


@triton.jit
def source_pixel(coord, size, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr):
    """Normalised source coordinate -> (pixel coordinate after padding, d pixel / d coord).

    Non-finite coordinates (NaN, +-inf) sample nothing in every padding mode: the pixel coordinate
    becomes -2 (all taps outside, so they read 0) and the derivative 0. Finite ones are first
    clamped to +-COORD_LIMIT (beyond it zeros reads 0 and border the edge anyway, and reflection
    would only fold rounding noise), so the result is finite and inside [-2, size + 1] and the
    integer taps derived from it can never overflow. ``torch_path`` applies the same rule.
    """
    finite = tl.abs(coord) < float("inf")  # False for NaN too
    coord = tl.minimum(tl.maximum(tl.where(finite, coord, 0.0), -COORD_LIMIT), COORD_LIMIT)
    if ALIGN_CORNERS:
        scale = (size - 1).to(coord.dtype) * 0.5
        pix = (coord + 1.0) * scale
    else:
        scale = size.to(coord.dtype) * 0.5
        pix = ((coord + 1.0) * size.to(coord.dtype) - 1.0) * 0.5
    grad = tl.where(finite & (tl.abs(coord) < COORD_LIMIT), scale, 0.0)
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
    pix = tl.where(finite, pix, -2.0)
    pix = tl.minimum(tl.maximum(pix, -2.0), size.to(pix.dtype) + 1.0)
    return pix, grad


@triton.jit
def round_half_even(v):
    """``nearbyint`` (round half to even), what grid_sample's nearest mode uses."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def weights_2x2(fx, fy):
    """The bilinear weights of the 2x2 taps (nw, ne, sw, se) as [BLOCK_P, 1] columns."""
    return (((1.0 - fx) * (1.0 - fy))[:, None], (fx * (1.0 - fy))[:, None], ((1.0 - fx) * fy)[:, None],
            (fx * fy)[:, None])


@triton.jit
def bilinear_taps(ix, iy, H, W, p_mask, INDEX_64: tl.constexpr):
    """The 2x2 taps of pixel coordinates (ix, iy): top-left integer corner (x0, y0), fractions
    (fx, fy) and the in-bounds masks of the four taps as [BLOCK_P, 1] columns (nw, ne, sw, se)."""
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    fx = ix - x0f
    fy = iy - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    if INDEX_64:
        x0 = x0.to(tl.int64)
        y0 = y0.to(tl.int64)
    mx0 = (x0 >= 0) & (x0 < W)
    mx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    my0 = p_mask & (y0 >= 0) & (y0 < H)
    my1 = p_mask & (y0 + 1 >= 0) & (y0 + 1 < H)
    return x0, y0, fx, fy, (my0 & mx0)[:, None], (my0 & mx1)[:, None], (my1 & mx0)[:, None], (my1 & mx1)[:, None]


@triton.jit
def nearest_tap(ix, iy, H, W, p_mask, INDEX_64: tl.constexpr):
    """The nearest pixel (round half to even) and its in-bounds mask as a [BLOCK_P, 1] column."""
    xn = round_half_even(ix).to(tl.int32)
    yn = round_half_even(iy).to(tl.int32)
    if INDEX_64:
        xn = xn.to(tl.int64)
        yn = yn.to(tl.int64)
    return xn, yn, (p_mask & (xn >= 0) & (xn < W) & (yn >= 0) & (yn < H))[:, None]


@triton.jit
def load_2x2(x_c, m_nw, m_ne, m_sw, m_se, c_mask, stride_xh, stride_xw, fill, ACC: tl.constexpr,
             FILL: tl.constexpr):
    """The four taps of a 2x2 neighbourhood ([BLOCK_P, BLOCK_C] each, top-left at ``x_c``) in ACC;
    out-of-range taps read 0 (masked, never loaded), or with FILL the [1, BLOCK_C] ``fill``."""
    v_nw = tl.load(x_c, mask=m_nw & c_mask, other=0.0).to(ACC)
    v_ne = tl.load(x_c + stride_xw, mask=m_ne & c_mask, other=0.0).to(ACC)
    v_sw = tl.load(x_c + stride_xh, mask=m_sw & c_mask, other=0.0).to(ACC)
    v_se = tl.load(x_c + stride_xh + stride_xw, mask=m_se & c_mask, other=0.0).to(ACC)
    if FILL:
        v_nw = tl.where(m_nw & c_mask, v_nw, fill)
        v_ne = tl.where(m_ne & c_mask, v_ne, fill)
        v_sw = tl.where(m_sw & c_mask, v_sw, fill)
        v_se = tl.where(m_se & c_mask, v_se, fill)
    return v_nw, v_ne, v_sw, v_se


@triton.jit
def fill_block(fill_ptr, c, C, ACC: tl.constexpr, FILL: tl.constexpr):
    """The fill values of channels ``c`` as a [1, BLOCK_C] row (FILL), else 0 (unused)."""
    if FILL:
        return tl.load(fill_ptr + c, mask=c < C, other=0.0).to(ACC)[None, :]
    else:
        return 0.0


@triton.jit
def blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se):
    """The bilinear blend of a 2x2 tile (weights as [BLOCK_P, 1] columns)."""
    acc = w_nw * v_nw
    acc += w_ne * v_ne
    acc += w_sw * v_sw
    acc += w_se * v_se
    return acc


@triton.jit
def slopes_2x2(g, v_nw, v_ne, v_sw, v_se, fx, fy):
    """d(bilinear blend)/d(ix, iy) of a 2x2 tile times ``g``, summed over channels ([BLOCK_P] each)."""
    d_ix = tl.sum(g * ((v_ne - v_nw) * (1.0 - fy) + (v_se - v_sw) * fy), axis=1)
    d_iy = tl.sum(g * ((v_sw - v_nw) * (1.0 - fx) + (v_se - v_ne) * fx), axis=1)
    return d_ix, d_iy


@triton.jit
def scatter_2x2(d_c, g, fx, fy, m_nw, m_ne, m_sw, m_se, c_mask, stride_dh, stride_dw, nonfinite, s1, s2,
                DETERMINISTIC: tl.constexpr):
    """Scatter ``g`` times the four bilinear weights into the 2x2 neighbourhood at ``d_c``."""
    scatter_add(d_c, g * (1.0 - fx) * (1.0 - fy), m_nw & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(d_c + stride_dw, g * fx * (1.0 - fy), m_ne & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(d_c + stride_dh, g * (1.0 - fx) * fy, m_sw & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(d_c + stride_dh + stride_dw, g * fx * fy, m_se & c_mask, nonfinite, s1, s2, DETERMINISTIC)


@triton.jit
def copy_nearest_channels(x_img, off, m, out_ptr, out_off, p_mask, fill_ptr, C, stride_xc, stride_oc,
                          FILL: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr):
    """The nearest-mode channel loop of images and volumes: copy every channel of the tap at
    ``off`` (in-bounds mask ``m``; outside it reads 0, or the fill value) to the outputs."""
    c_range = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = channel_block(c0, c_range, INDEX_64)
        c_mask = (c < C)[None, :]
        fill = fill_block(fill_ptr, c, C, ACC, FILL)
        v = tl.load(x_img + (c * stride_xc)[None, :] + off, mask=m & c_mask, other=0.0)
        if FILL:
            v = tl.where(m & c_mask, v.to(ACC), fill)
        o_ptrs = out_ptr + out_off[:, None] + (c * stride_oc)[None, :]
        tl.store(o_ptrs, v.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask)


@triton.jit
def sample_channels(
    x_img, out_ptr, out_off, p_mask, ix, iy, fill_ptr,
    C, H, W, stride_xc, stride_xh, stride_xw, stride_oc,
    MODE: tl.constexpr, FILL: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Sample every channel of one image at pixel coordinates (ix, iy) and store the result.

    ``x_img`` points at image n; ``out_ptr + out_off`` ([BLOCK_P] offsets, image n included) at
    the outputs. The taps (2x2 bilinear or 1 nearest) are computed once and shared by all channels,
    which are walked in tiles of [BLOCK_P, BLOCK_C]; out-of-range taps read 0 (masked, never loaded).
    """
    c_range = tl.arange(0, BLOCK_C)
    if MODE == MODE_BILINEAR:
        x0, y0, fx, fy, m_nw, m_ne, m_sw, m_se = bilinear_taps(ix, iy, H, W, p_mask, INDEX_64)
        w_nw, w_ne, w_sw, w_se = weights_2x2(fx, fy)
        off_nw = (y0 * stride_xh + x0 * stride_xw)[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = channel_block(c0, c_range, INDEX_64)
            c_mask = (c < C)[None, :]
            fill = fill_block(fill_ptr, c, C, ACC, FILL)
            v_nw, v_ne, v_sw, v_se = load_2x2(x_img + (c * stride_xc)[None, :] + off_nw, m_nw, m_ne, m_sw, m_se,
                                              c_mask, stride_xh, stride_xw, fill, ACC, FILL)
            acc = blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se)
            o_ptrs = out_ptr + out_off[:, None] + (c * stride_oc)[None, :]
            tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask)
    else:
        xn, yn, m = nearest_tap(ix, iy, H, W, p_mask, INDEX_64)
        off = (yn * stride_xh + xn * stride_xw)[:, None]
        copy_nearest_channels(x_img, off, m, out_ptr, out_off, p_mask, fill_ptr, C, stride_xc, stride_oc,
                              FILL, ACC, INDEX_64, BLOCK_C)


NONFINITE = tl.constexpr(1 << 30)  # fixed-point exponent sentinel: the image's grad_out is not all finite


@triton.jit
def pow2(e, ACC: tl.constexpr):
    """2**e exactly, built from its bits (e an integer inside ACC's normal exponent range)."""
    if ACC == tl.float64:
        return ((e.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        return ((e.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def fixed_point_factors(exp_ptr, n, ACC: tl.constexpr):
    """Image n's fixed-point scale 2**e as two exact factors (2**e itself can leave ACC's range:
    e reaches ~190 for fp32 gradients near the smallest normal), and whether its grad_out holds a
    non-finite value (then it is scattered as float64; see ``kernels/fixed_point.py``)."""
    e = tl.load(exp_ptr + n)
    nonfinite = e == NONFINITE
    e = tl.where(nonfinite, 0, e)
    e1 = e >> 1  # floor(e / 2)
    return nonfinite, pow2(e1, ACC), pow2(e - e1, ACC)


@triton.jit
def scatter_add(ptrs, values, mask, nonfinite, s1, s2, DETERMINISTIC: tl.constexpr):
    """Atomic ``*ptrs += values``.

    DETERMINISTIC: the buffer holds int64 fixed-point numbers, round(value * s1 * s2), the scale
    a power of two chosen per image so that no sum can overflow (``kernels/fixed_point.py``);
    integer addition is associative, so the result is bit-identical whatever order the programs
    run in. An image whose grad_out holds NaN or inf (``nonfinite``) is instead added as float64
    into the same bits: there the values are not finite anyway, and a float sum propagates them
    the way the atomic path does. Otherwise a relaxed float atomic add.
    """
    if DETERMINISTIC:
        if nonfinite:
            tl.atomic_add(ptrs.to(tl.pointer_type(tl.float64)), values.to(tl.float64), mask=mask, sem="relaxed")
        else:
            v = (values * s1) * s2  # exact: powers of two
            v = tl.where(v >= 0.0, tl.floor(v + 0.5), -tl.floor(0.5 - v))  # round half away from zero
            tl.atomic_add(ptrs, v.to(tl.int64), mask=mask, sem="relaxed")
    else:
        tl.atomic_add(ptrs, values, mask=mask, sem="relaxed")


@triton.jit
def backprop_channels(
    grad_out_ptr, g_off, x_img, dx_img, p_mask, ix, iy, nonfinite, s1, s2, fill_ptr,
    C, H, W, stride_gc, stride_xc, stride_xh, stride_xw, stride_dc, stride_dh, stride_dw,
    MODE: tl.constexpr, FILL: tl.constexpr, NEED_X: tl.constexpr, NEED_COORDS: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Backward of :func:`sample_channels` for one image.

    Reads grad_out once per [BLOCK_P, BLOCK_C] tile. NEED_X: scatters grad * tap weight into the
    fp32/fp64 buffer ``dx_img`` with atomic adds (or, DETERMINISTIC, into an int64 fixed-point
    buffer: see :func:`scatter_add`). NEED_COORDS: returns (d_ix, d_iy), the gradient
    w.r.t. the *pixel* coordinates reduced over channels ([BLOCK_P] each, zeros for nearest,
    whose output is piecewise constant in the coordinates).
    """
    c_range = tl.arange(0, BLOCK_C)
    d_ix = tl.zeros([BLOCK_P], dtype=ACC)
    d_iy = tl.zeros([BLOCK_P], dtype=ACC)
    if MODE == MODE_BILINEAR:
        x0, y0, fx, fy, m_nw, m_ne, m_sw, m_se = bilinear_taps(ix, iy, H, W, p_mask, INDEX_64)
        fx = fx[:, None]
        fy = fy[:, None]
        d_nw = (y0 * stride_dh + x0 * stride_dw)[:, None]
        off_nw = (y0 * stride_xh + x0 * stride_xw)[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = channel_block(c0, c_range, INDEX_64)
            c_mask = (c < C)[None, :]
            fill = fill_block(fill_ptr, c, C, ACC, FILL)
            g = tl.load(grad_out_ptr + g_off + (c * stride_gc)[None, :],
                        mask=p_mask[:, None] & c_mask, other=0.0).to(ACC)
            if NEED_X:
                scatter_2x2(dx_img + (c * stride_dc)[None, :] + d_nw, g, fx, fy, m_nw, m_ne, m_sw, m_se, c_mask,
                            stride_dh, stride_dw, nonfinite, s1, s2, DETERMINISTIC)
            if NEED_COORDS:
                v_nw, v_ne, v_sw, v_se = load_2x2(x_img + (c * stride_xc)[None, :] + off_nw, m_nw, m_ne, m_sw, m_se,
                                                  c_mask, stride_xh, stride_xw, fill, ACC, FILL)
                s_ix, s_iy = slopes_2x2(g, v_nw, v_ne, v_sw, v_se, fx, fy)
                d_ix += s_ix
                d_iy += s_iy
    else:
        if NEED_X:
            xn, yn, m = nearest_tap(ix, iy, H, W, p_mask, INDEX_64)
            d_off = (yn * stride_dh + xn * stride_dw)[:, None]
            for c0 in range(0, C, BLOCK_C):
                c = channel_block(c0, c_range, INDEX_64)
                c_mask = (c < C)[None, :]
                g = tl.load(grad_out_ptr + g_off + (c * stride_gc)[None, :],
                            mask=p_mask[:, None] & c_mask, other=0.0).to(ACC)
                scatter_add(dx_img + (c * stride_dc)[None, :] + d_off, g, m & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    return d_ix, d_iy



# ----------------------------------------------------------------------------- bicubic (images)
# PyTorch's bicubic grid_sample, rule for rule: the coordinate is unnormalised but *not* padded;
# the 4x4 taps floor(ix) - 1 .. floor(ix) + 2 are each mapped through the padding (border clips,
# reflection reflects then clips the integer tap; zeros / fill leave it, and a tap outside reads 0 /
# the fill value), weighted by the cubic convolution kernel with A = -0.75. The gradient w.r.t. the
# coordinate is the weights' slope times the tap values (no padding factor: the taps are integers);
# grad_x goes to each tap where padding put it. A non-finite coordinate reads nothing in every
# padding mode (all 16 taps masked: 0, or the fill value) and has zero gradient.
CUBIC_A = tl.constexpr(-0.75)


@triton.jit
def unnormalize(coord, size, ALIGN_CORNERS: tl.constexpr):
    """(pixel coordinate without padding, d pixel / d coord, finite) of normalised ``coord``;
    finite coordinates clamped to +-COORD_LIMIT first (as :func:`source_pixel`)."""
    finite = tl.abs(coord) < float("inf")
    coord = tl.minimum(tl.maximum(tl.where(finite, coord, 0.0), -COORD_LIMIT), COORD_LIMIT)
    if ALIGN_CORNERS:
        scale = (size - 1).to(coord.dtype) * 0.5
        pix = (coord + 1.0) * scale
    else:
        scale = size.to(coord.dtype) * 0.5
        pix = ((coord + 1.0) * size.to(coord.dtype) - 1.0) * 0.5
    # a non-finite coordinate sits at the integer pixel -2 (fraction 0: one-hot cubic weights, so
    # fill padding reads exactly the fill value; its taps are masked in every mode anyway)
    return tl.where(finite, pix, -2.0), tl.where(finite & (tl.abs(coord) < COORD_LIMIT), scale, 0.0), finite


@triton.jit
def cubic_weights(t):
    """The four cubic-convolution weights of taps -1, 0, 1, 2 at fraction t (PyTorch's
    get_cubic_upsample_coefficients)."""
    x = t + 1.0
    w0 = ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
    w1 = ((CUBIC_A + 2.0) * t - (CUBIC_A + 3.0)) * t * t + 1.0
    s = 1.0 - t
    w2 = ((CUBIC_A + 2.0) * s - (CUBIC_A + 3.0)) * s * s + 1.0
    x = 2.0 - t
    w3 = ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
    return w0, w1, w2, w3


@triton.jit
def cubic_slopes(t):
    """d(weight)/dt of :func:`cubic_weights`."""
    x = t + 1.0
    d0 = (3.0 * CUBIC_A * x - 10.0 * CUBIC_A) * x + 8.0 * CUBIC_A
    d1 = (3.0 * (CUBIC_A + 2.0) * t - 2.0 * (CUBIC_A + 3.0)) * t
    s = 1.0 - t
    d2 = -((3.0 * (CUBIC_A + 2.0) * s - 2.0 * (CUBIC_A + 3.0)) * s)
    x = 2.0 - t
    d3 = -((3.0 * CUBIC_A * x - 10.0 * CUBIC_A) * x + 8.0 * CUBIC_A)
    return d0, d1, d2, d3


@triton.jit
def cubic_tap(f, size, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr, INDEX_64: tl.constexpr):
    """(index, in-bounds) of the integer-valued float tap ``f`` after the padding's tap rule."""
    if PADDING == PAD_BORDER:
        f, _g = _clip(f, size)
    elif PADDING == PAD_REFLECTION:
        if ALIGN_CORNERS:
            f, _g = _reflect(f, 0, 2 * (size - 1))
        else:
            f, _g = _reflect(f, -1, 2 * size - 1)
        f, _g = _clip(f, size)
    else:  # zeros / fill: a tap outside stays outside; bounded so that the integer cast cannot overflow
        f = tl.minimum(tl.maximum(f, -1.0), size.to(f.dtype))
    i = f.to(tl.int32)
    if INDEX_64:
        i = i.to(tl.int64)
    return i, (i >= 0) & (i < size)


@triton.jit
def cubic_taps(pix, size, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr, INDEX_64: tl.constexpr):
    """The fraction and the four (index, in-bounds) taps of one axis around pixel coordinate ``pix``."""
    f0 = tl.floor(pix)
    i0, m0 = cubic_tap(f0 - 1.0, size, PADDING, ALIGN_CORNERS, INDEX_64)
    i1, m1 = cubic_tap(f0, size, PADDING, ALIGN_CORNERS, INDEX_64)
    i2, m2 = cubic_tap(f0 + 1.0, size, PADDING, ALIGN_CORNERS, INDEX_64)
    i3, m3 = cubic_tap(f0 + 2.0, size, PADDING, ALIGN_CORNERS, INDEX_64)
    return pix - f0, i0, i1, i2, i3, m0, m1, m2, m3


@triton.jit
def _cubic_load(ptr, m, c_mask, fill, ACC: tl.constexpr, FILL: tl.constexpr):
    v = tl.load(ptr, mask=m & c_mask, other=0.0).to(ACC)
    if FILL:
        v = tl.where(m & c_mask, v, fill)
    return v


@triton.jit
def cubic_row(row, o0, o1, o2, o3, m0, m1, m2, m3, w0, w1, w2, w3, c_mask, fill, ACC: tl.constexpr,
              FILL: tl.constexpr):
    """Sum over the four taps of one row (column offsets o*, masks m* [BLOCK_P, 1]) of weight * value."""
    acc = w0 * _cubic_load(row + o0, m0, c_mask, fill, ACC, FILL)
    acc += w1 * _cubic_load(row + o1, m1, c_mask, fill, ACC, FILL)
    acc += w2 * _cubic_load(row + o2, m2, c_mask, fill, ACC, FILL)
    acc += w3 * _cubic_load(row + o3, m3, c_mask, fill, ACC, FILL)
    return acc


@triton.jit
def cubic_scatter_row(row, o0, o1, o2, o3, m0, m1, m2, m3, g, w0, w1, w2, w3, c_mask, nonfinite, s1, s2,
                      DETERMINISTIC: tl.constexpr):
    scatter_add(row + o0, g * w0, m0 & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(row + o1, g * w1, m1 & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(row + o2, g * w2, m2 & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    scatter_add(row + o3, g * w3, m3 & c_mask, nonfinite, s1, s2, DETERMINISTIC)


@triton.jit
def sample_bicubic(
    x_img, out_ptr, out_off, p_mask, x_s, y_s, fill_ptr,
    C, H, W, stride_xc, stride_xh, stride_xw, stride_oc,
    PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """:func:`sample_channels` for bicubic: the 16 taps are computed once, the channels walked in blocks."""
    ix, _dx, fin_x = unnormalize(x_s, W, ALIGN_CORNERS)
    iy, _dy, fin_y = unnormalize(y_s, H, ALIGN_CORNERS)
    tx, xi0, xi1, xi2, xi3, mx0, mx1, mx2, mx3 = cubic_taps(ix, W, PADDING, ALIGN_CORNERS, INDEX_64)
    ty, yi0, yi1, yi2, yi3, my0, my1, my2, my3 = cubic_taps(iy, H, PADDING, ALIGN_CORNERS, INDEX_64)
    ok = p_mask & fin_x & fin_y
    wx0, wx1, wx2, wx3 = cubic_weights(tx[:, None])
    wy0, wy1, wy2, wy3 = cubic_weights(ty[:, None])
    o0, o1, o2, o3 = ((xi0 * stride_xw)[:, None], (xi1 * stride_xw)[:, None], (xi2 * stride_xw)[:, None],
                      (xi3 * stride_xw)[:, None])
    n0, n1, n2, n3 = (ok & mx0)[:, None], (ok & mx1)[:, None], (ok & mx2)[:, None], (ok & mx3)[:, None]
    r0, r1, r2, r3 = ((yi0 * stride_xh)[:, None], (yi1 * stride_xh)[:, None], (yi2 * stride_xh)[:, None],
                      (yi3 * stride_xh)[:, None])
    FILL: tl.constexpr = PADDING == PAD_FILL
    c_range = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = channel_block(c0, c_range, INDEX_64)
        c_mask = (c < C)[None, :]
        fill = fill_block(fill_ptr, c, C, ACC, FILL)
        base = x_img + (c * stride_xc)[None, :]
        acc = wy0 * cubic_row(base + r0, o0, o1, o2, o3, n0 & my0[:, None], n1 & my0[:, None], n2 & my0[:, None],
                              n3 & my0[:, None], wx0, wx1, wx2, wx3, c_mask, fill, ACC, FILL)
        acc += wy1 * cubic_row(base + r1, o0, o1, o2, o3, n0 & my1[:, None], n1 & my1[:, None], n2 & my1[:, None],
                               n3 & my1[:, None], wx0, wx1, wx2, wx3, c_mask, fill, ACC, FILL)
        acc += wy2 * cubic_row(base + r2, o0, o1, o2, o3, n0 & my2[:, None], n1 & my2[:, None], n2 & my2[:, None],
                               n3 & my2[:, None], wx0, wx1, wx2, wx3, c_mask, fill, ACC, FILL)
        acc += wy3 * cubic_row(base + r3, o0, o1, o2, o3, n0 & my3[:, None], n1 & my3[:, None], n2 & my3[:, None],
                               n3 & my3[:, None], wx0, wx1, wx2, wx3, c_mask, fill, ACC, FILL)
        o_ptrs = out_ptr + out_off[:, None] + (c * stride_oc)[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask)


@triton.jit
def backprop_bicubic(
    grad_out_ptr, g_off, x_img, dx_img, p_mask, x_s, y_s, nonfinite, s1, s2, fill_ptr,
    C, H, W, stride_gc, stride_xc, stride_xh, stride_xw, stride_dc, stride_dh, stride_dw,
    PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr, NEED_X: tl.constexpr, NEED_COORDS: tl.constexpr,
    DETERMINISTIC: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Backward of :func:`sample_bicubic`: scatters into grad_x (NEED_X) and returns the gradient
    w.r.t. the *normalised* coordinates (NEED_COORDS), reduced over channels, 0 on masked pixels."""
    ix, dx, fin_x = unnormalize(x_s, W, ALIGN_CORNERS)
    iy, dy, fin_y = unnormalize(y_s, H, ALIGN_CORNERS)
    tx, xi0, xi1, xi2, xi3, mx0, mx1, mx2, mx3 = cubic_taps(ix, W, PADDING, ALIGN_CORNERS, INDEX_64)
    ty, yi0, yi1, yi2, yi3, my0, my1, my2, my3 = cubic_taps(iy, H, PADDING, ALIGN_CORNERS, INDEX_64)
    ok = p_mask & fin_x & fin_y
    wx0, wx1, wx2, wx3 = cubic_weights(tx[:, None])
    wy0, wy1, wy2, wy3 = cubic_weights(ty[:, None])
    ex0, ex1, ex2, ex3 = cubic_slopes(tx[:, None])
    ey0, ey1, ey2, ey3 = cubic_slopes(ty[:, None])
    n0, n1, n2, n3 = (ok & mx0)[:, None], (ok & mx1)[:, None], (ok & mx2)[:, None], (ok & mx3)[:, None]
    k0, k1, k2, k3 = my0[:, None], my1[:, None], my2[:, None], my3[:, None]
    FILL: tl.constexpr = PADDING == PAD_FILL
    d_ix = tl.zeros([BLOCK_P], dtype=ACC)
    d_iy = tl.zeros([BLOCK_P], dtype=ACC)
    c_range = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = channel_block(c0, c_range, INDEX_64)
        c_mask = (c < C)[None, :]
        fill = fill_block(fill_ptr, c, C, ACC, FILL)
        g = tl.load(grad_out_ptr + g_off + (c * stride_gc)[None, :], mask=p_mask[:, None] & c_mask,
                    other=0.0).to(ACC)
        g = tl.where(ok[:, None], g, 0.0)
        if NEED_X:
            d = dx_img + (c * stride_dc)[None, :]
            q0, q1, q2, q3 = ((xi0 * stride_dw)[:, None], (xi1 * stride_dw)[:, None], (xi2 * stride_dw)[:, None],
                              (xi3 * stride_dw)[:, None])
            cubic_scatter_row(d + (yi0 * stride_dh)[:, None], q0, q1, q2, q3, n0 & k0, n1 & k0, n2 & k0, n3 & k0,
                              g * wy0, wx0, wx1, wx2, wx3, c_mask, nonfinite, s1, s2, DETERMINISTIC)
            cubic_scatter_row(d + (yi1 * stride_dh)[:, None], q0, q1, q2, q3, n0 & k1, n1 & k1, n2 & k1, n3 & k1,
                              g * wy1, wx0, wx1, wx2, wx3, c_mask, nonfinite, s1, s2, DETERMINISTIC)
            cubic_scatter_row(d + (yi2 * stride_dh)[:, None], q0, q1, q2, q3, n0 & k2, n1 & k2, n2 & k2, n3 & k2,
                              g * wy2, wx0, wx1, wx2, wx3, c_mask, nonfinite, s1, s2, DETERMINISTIC)
            cubic_scatter_row(d + (yi3 * stride_dh)[:, None], q0, q1, q2, q3, n0 & k3, n1 & k3, n2 & k3, n3 & k3,
                              g * wy3, wx0, wx1, wx2, wx3, c_mask, nonfinite, s1, s2, DETERMINISTIC)
        if NEED_COORDS:
            base = x_img + (c * stride_xc)[None, :]
            o0, o1, o2, o3 = ((xi0 * stride_xw)[:, None], (xi1 * stride_xw)[:, None], (xi2 * stride_xw)[:, None],
                              (xi3 * stride_xw)[:, None])
            # per row j: r_j = sum_i wx_i v_ij, e_j = sum_i ex_i v_ij; out = sum_j wy_j r_j
            row = base + (yi0 * stride_xh)[:, None]
            r = cubic_row(row, o0, o1, o2, o3, n0 & k0, n1 & k0, n2 & k0, n3 & k0, wx0, wx1, wx2, wx3, c_mask, fill,
                          ACC, FILL)
            e = cubic_row(row, o0, o1, o2, o3, n0 & k0, n1 & k0, n2 & k0, n3 & k0, ex0, ex1, ex2, ex3, c_mask, fill,
                          ACC, FILL)
            sx = wy0 * e
            sy = ey0 * r
            row = base + (yi1 * stride_xh)[:, None]
            r = cubic_row(row, o0, o1, o2, o3, n0 & k1, n1 & k1, n2 & k1, n3 & k1, wx0, wx1, wx2, wx3, c_mask, fill,
                          ACC, FILL)
            e = cubic_row(row, o0, o1, o2, o3, n0 & k1, n1 & k1, n2 & k1, n3 & k1, ex0, ex1, ex2, ex3, c_mask, fill,
                          ACC, FILL)
            sx += wy1 * e
            sy += ey1 * r
            row = base + (yi2 * stride_xh)[:, None]
            r = cubic_row(row, o0, o1, o2, o3, n0 & k2, n1 & k2, n2 & k2, n3 & k2, wx0, wx1, wx2, wx3, c_mask, fill,
                          ACC, FILL)
            e = cubic_row(row, o0, o1, o2, o3, n0 & k2, n1 & k2, n2 & k2, n3 & k2, ex0, ex1, ex2, ex3, c_mask, fill,
                          ACC, FILL)
            sx += wy2 * e
            sy += ey2 * r
            row = base + (yi3 * stride_xh)[:, None]
            r = cubic_row(row, o0, o1, o2, o3, n0 & k3, n1 & k3, n2 & k3, n3 & k3, wx0, wx1, wx2, wx3, c_mask, fill,
                          ACC, FILL)
            e = cubic_row(row, o0, o1, o2, o3, n0 & k3, n1 & k3, n2 & k3, n3 & k3, ex0, ex1, ex2, ex3, c_mask, fill,
                          ACC, FILL)
            sx += wy3 * e
            sy += ey3 * r
            d_ix += tl.sum(g * sx, axis=1)
            d_iy += tl.sum(g * sy, axis=1)
    return tl.where(ok, d_ix * dx, 0.0), tl.where(ok, d_iy * dy, 0.0)


@triton.jit
def _all_nan_unless_finite(ok, x_s, y_s):
    """With fill padding a pixel with any non-finite coordinate reads exactly the fill value: every
    axis is made non-finite (NaN) where ``ok`` is False, so each sits at the integer pixel -2 with
    fraction 0 and the interpolation weights are exactly one-hot (a fraction on a finite axis would
    blend the fill value with weights that sum to 1 only up to rounding)."""
    return tl.where(ok, x_s, float("nan")), tl.where(ok, y_s, float("nan"))


@triton.jit
def sample_at(
    x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s,
    C, H, W, W_OUT,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Forward epilogue of every warp kernel: sample image ``n`` at the normalised source
    coordinates (x_s, y_s) of output pixels ``p`` (flat, row-major) and store all channels."""
    if PADDING == PAD_FILL:  # see _all_nan_unless_finite
        x_s, y_s = _all_nan_unless_finite((tl.abs(x_s) < float("inf")) & (tl.abs(y_s) < float("inf")), x_s, y_s)
    ho = p // W_OUT  # n and p are int64 with INDEX_64 (program_pixels): so is every offset
    out_off = n * stride_on + ho * stride_oh + (p - ho * W_OUT) * stride_ow
    if MODE == MODE_BICUBIC:
        sample_bicubic(
            x_ptr + n * stride_xn, out_ptr, out_off, p_mask, x_s, y_s, fill_ptr,
            C, H, W, stride_xc, stride_xh, stride_xw, stride_oc,
            PADDING, ALIGN_CORNERS, ACC, INDEX_64, BLOCK_C,
        )
    else:
        ix, _ = source_pixel(x_s, W, PADDING, ALIGN_CORNERS)
        iy, _ = source_pixel(y_s, H, PADDING, ALIGN_CORNERS)
        sample_channels(
            x_ptr + n * stride_xn, out_ptr, out_off, p_mask, ix, iy, fill_ptr,
            C, H, W, stride_xc, stride_xh, stride_xw, stride_oc,
            MODE, PADDING == PAD_FILL, ACC, INDEX_64, BLOCK_C,
        )


@triton.jit
def backprop_at(
    grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s,
    C, H, W, W_OUT,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_COORDS: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Backward of :func:`sample_at` for every warp kernel.

    NEED_X: scatters into ``grad_x`` (float atomics, or int64 fixed point with the per-image scale
    exponent at ``dx_exp_ptr`` when DETERMINISTIC). Returns (g_xs, g_ys): the gradient w.r.t. the
    *normalised* source coordinates, reduced over channels, 0 on masked pixels (and everywhere
    unless NEED_COORDS); the caller chains it to its transform's parameters.
    """
    nonfinite, s1, s2 = False, 1.0, 1.0
    if DETERMINISTIC:
        nonfinite, s1, s2 = fixed_point_factors(dx_exp_ptr, n, ACC)
    ho = p // W_OUT
    g_off = (n * stride_gn + ho * stride_gh + (p - ho * W_OUT) * stride_gw)[:, None]
    if MODE == MODE_BICUBIC:
        return backprop_bicubic(
            grad_out_ptr, g_off, x_ptr + n * stride_xn, grad_x_ptr + n * stride_dn, p_mask, x_s, y_s, nonfinite,
            s1, s2, fill_ptr, C, H, W, stride_gc, stride_xc, stride_xh, stride_xw, stride_dc, stride_dh, stride_dw,
            PADDING, ALIGN_CORNERS, NEED_X, NEED_COORDS, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
        )
    ix, dix = source_pixel(x_s, W, PADDING, ALIGN_CORNERS)
    iy, diy = source_pixel(y_s, H, PADDING, ALIGN_CORNERS)
    d_ix, d_iy = backprop_channels(
        grad_out_ptr, g_off, x_ptr + n * stride_xn, grad_x_ptr + n * stride_dn, p_mask, ix, iy, nonfinite, s1, s2,
        fill_ptr, C, H, W, stride_gc, stride_xc, stride_xh, stride_xw, stride_dc, stride_dh, stride_dw,
        MODE, PADDING == PAD_FILL, NEED_X, NEED_COORDS, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    return tl.where(p_mask, d_ix * dix, 0.0), tl.where(p_mask, d_iy * diy, 0.0)


# ----------------------------------------------------------------------------- volumes (trilinear)
# The same helpers with a z axis: source_pixel unnormalises and pads z exactly as x and y, and a
# 2x2x2 neighbourhood is two 2x2 tiles (bilinear_taps / load_2x2 / scatter_2x2) one z-stride apart,
# blended by (1 - fz, fz).


@triton.jit
def _z_taps(iz, D, p_mask, INDEX_64: tl.constexpr):
    """Lower z slice z0, fraction fz and the pixel masks of slices z0 and z0 + 1 ([BLOCK_P])."""
    z0f = tl.floor(iz)
    fz = iz - z0f
    z0 = z0f.to(tl.int32)
    if INDEX_64:
        z0 = z0.to(tl.int64)
    return z0, fz, p_mask & (z0 >= 0) & (z0 < D), p_mask & (z0 + 1 >= 0) & (z0 + 1 < D)


@triton.jit
def _nearest_tap_3d(ix, iy, iz, D, H, W, p_mask, INDEX_64: tl.constexpr):
    zn = round_half_even(iz).to(tl.int32)
    if INDEX_64:
        zn = zn.to(tl.int64)
    xn, yn, m = nearest_tap(ix, iy, H, W, p_mask & (zn >= 0) & (zn < D), INDEX_64)
    return xn, yn, zn, m


@triton.jit
def sample_channels_3d(
    x_img, out_ptr, out_off, p_mask, ix, iy, iz, fill_ptr,
    C, D, H, W, stride_xc, stride_xd, stride_xh, stride_xw, stride_oc,
    MODE: tl.constexpr, FILL: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`sample_channels` for a volume: 2x2x2 trilinear taps (``bilinear`` mode) or 1 nearest."""
    c_range = tl.arange(0, BLOCK_C)
    if MODE == MODE_BILINEAR:
        z0, fz, mz0, mz1 = _z_taps(iz, D, p_mask, INDEX_64)
        x0, y0, fx, fy, m_nw0, m_ne0, m_sw0, m_se0 = bilinear_taps(ix, iy, H, W, mz0, INDEX_64)
        _x0, _y0, _fx, _fy, m_nw1, m_ne1, m_sw1, m_se1 = bilinear_taps(ix, iy, H, W, mz1, INDEX_64)
        w_nw, w_ne, w_sw, w_se = weights_2x2(fx, fy)
        wz1 = fz[:, None]
        wz0 = 1.0 - wz1
        off = (z0 * stride_xd + y0 * stride_xh + x0 * stride_xw)[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = channel_block(c0, c_range, INDEX_64)
            c_mask = (c < C)[None, :]
            fill = fill_block(fill_ptr, c, C, ACC, FILL)
            x_c = x_img + (c * stride_xc)[None, :] + off
            v_nw, v_ne, v_sw, v_se = load_2x2(x_c, m_nw0, m_ne0, m_sw0, m_se0, c_mask, stride_xh, stride_xw, fill,
                                              ACC, FILL)
            acc = wz0 * blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se)
            v_nw, v_ne, v_sw, v_se = load_2x2(x_c + stride_xd, m_nw1, m_ne1, m_sw1, m_se1, c_mask, stride_xh,
                                              stride_xw, fill, ACC, FILL)
            acc += wz1 * blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se)
            o_ptrs = out_ptr + out_off[:, None] + (c * stride_oc)[None, :]
            tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask)
    else:
        xn, yn, zn, m = _nearest_tap_3d(ix, iy, iz, D, H, W, p_mask, INDEX_64)
        off = (zn * stride_xd + yn * stride_xh + xn * stride_xw)[:, None]
        copy_nearest_channels(x_img, off, m, out_ptr, out_off, p_mask, fill_ptr, C, stride_xc, stride_oc,
                              FILL, ACC, INDEX_64, BLOCK_C)


@triton.jit
def backprop_channels_3d(
    grad_out_ptr, g_off, x_img, dx_img, p_mask, ix, iy, iz, nonfinite, s1, s2, fill_ptr,
    C, D, H, W, stride_gc, stride_xc, stride_xd, stride_xh, stride_xw, stride_dc, stride_dd, stride_dh, stride_dw,
    MODE: tl.constexpr, FILL: tl.constexpr, NEED_X: tl.constexpr, NEED_COORDS: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`backprop_channels` for a volume: returns (d_ix, d_iy, d_iz)."""
    c_range = tl.arange(0, BLOCK_C)
    d_ix = tl.zeros([BLOCK_P], dtype=ACC)
    d_iy = tl.zeros([BLOCK_P], dtype=ACC)
    d_iz = tl.zeros([BLOCK_P], dtype=ACC)
    if MODE == MODE_BILINEAR:
        z0, fz, mz0, mz1 = _z_taps(iz, D, p_mask, INDEX_64)
        x0, y0, fx, fy, m_nw0, m_ne0, m_sw0, m_se0 = bilinear_taps(ix, iy, H, W, mz0, INDEX_64)
        _x0, _y0, _fx, _fy, m_nw1, m_ne1, m_sw1, m_se1 = bilinear_taps(ix, iy, H, W, mz1, INDEX_64)
        w_nw, w_ne, w_sw, w_se = weights_2x2(fx, fy)
        fx = fx[:, None]
        fy = fy[:, None]
        wz1 = fz[:, None]
        wz0 = 1.0 - wz1
        d_off = (z0 * stride_dd + y0 * stride_dh + x0 * stride_dw)[:, None]
        x_off = (z0 * stride_xd + y0 * stride_xh + x0 * stride_xw)[:, None]
        for c0 in range(0, C, BLOCK_C):
            c = channel_block(c0, c_range, INDEX_64)
            c_mask = (c < C)[None, :]
            fill = fill_block(fill_ptr, c, C, ACC, FILL)
            g = tl.load(grad_out_ptr + g_off + (c * stride_gc)[None, :],
                        mask=p_mask[:, None] & c_mask, other=0.0).to(ACC)
            if NEED_X:
                d_c = dx_img + (c * stride_dc)[None, :] + d_off
                scatter_2x2(d_c, g * wz0, fx, fy, m_nw0, m_ne0, m_sw0, m_se0, c_mask, stride_dh, stride_dw,
                            nonfinite, s1, s2, DETERMINISTIC)
                scatter_2x2(d_c + stride_dd, g * wz1, fx, fy, m_nw1, m_ne1, m_sw1, m_se1, c_mask, stride_dh,
                            stride_dw, nonfinite, s1, s2, DETERMINISTIC)
            if NEED_COORDS:
                x_c = x_img + (c * stride_xc)[None, :] + x_off
                v_nw, v_ne, v_sw, v_se = load_2x2(x_c, m_nw0, m_ne0, m_sw0, m_se0, c_mask, stride_xh, stride_xw, fill,
                                              ACC, FILL)
                s_ix0, s_iy0 = slopes_2x2(g * wz0, v_nw, v_ne, v_sw, v_se, fx, fy)
                b0 = blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se)
                v_nw, v_ne, v_sw, v_se = load_2x2(x_c + stride_xd, m_nw1, m_ne1, m_sw1, m_se1, c_mask, stride_xh,
                                                  stride_xw, fill, ACC, FILL)
                s_ix1, s_iy1 = slopes_2x2(g * wz1, v_nw, v_ne, v_sw, v_se, fx, fy)
                b1 = blend_2x2(v_nw, v_ne, v_sw, v_se, w_nw, w_ne, w_sw, w_se)
                d_ix += s_ix0 + s_ix1
                d_iy += s_iy0 + s_iy1
                d_iz += tl.sum(g * (b1 - b0), axis=1)
    else:
        if NEED_X:
            xn, yn, zn, m = _nearest_tap_3d(ix, iy, iz, D, H, W, p_mask, INDEX_64)
            d_off = (zn * stride_dd + yn * stride_dh + xn * stride_dw)[:, None]
            for c0 in range(0, C, BLOCK_C):
                c = channel_block(c0, c_range, INDEX_64)
                c_mask = (c < C)[None, :]
                g = tl.load(grad_out_ptr + g_off + (c * stride_gc)[None, :],
                            mask=p_mask[:, None] & c_mask, other=0.0).to(ACC)
                scatter_add(dx_img + (c * stride_dc)[None, :] + d_off, g, m & c_mask, nonfinite, s1, s2, DETERMINISTIC)
    return d_ix, d_iy, d_iz


@triton.jit
def _voxel_offset(n, p, H_OUT, W_OUT, stride_n, stride_d, stride_h, stride_w):
    """Offset of output voxel p (flat, x fastest) of volume n; int64 with INDEX_64 (n, p are)."""
    hw_out = H_OUT * W_OUT
    do = p // hw_out
    r = p - do * hw_out
    ho = r // W_OUT
    return n * stride_n + do * stride_d + ho * stride_h + (r - ho * W_OUT) * stride_w


@triton.jit
def sample_at_3d(
    x_ptr, out_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s,
    C, D, H, W, H_OUT, W_OUT,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw, stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`sample_at` for a volume at normalised source coordinates (x_s, y_s, z_s)."""
    if PADDING == PAD_FILL:  # see _all_nan_unless_finite
        ok = (tl.abs(x_s) < float("inf")) & (tl.abs(y_s) < float("inf")) & (tl.abs(z_s) < float("inf"))
        x_s, y_s = _all_nan_unless_finite(ok, x_s, y_s)
        z_s = tl.where(ok, z_s, float("nan"))
    ix, _ = source_pixel(x_s, W, PADDING, ALIGN_CORNERS)
    iy, _ = source_pixel(y_s, H, PADDING, ALIGN_CORNERS)
    iz, _ = source_pixel(z_s, D, PADDING, ALIGN_CORNERS)
    out_off = _voxel_offset(n, p, H_OUT, W_OUT, stride_on, stride_od, stride_oh, stride_ow)
    sample_channels_3d(
        x_ptr + n * stride_xn, out_ptr, out_off, p_mask, ix, iy, iz, fill_ptr,
        C, D, H, W, stride_xc, stride_xd, stride_xh, stride_xw, stride_oc,
        MODE, PADDING == PAD_FILL, ACC, INDEX_64, BLOCK_C,
    )


@triton.jit
def backprop_at_3d(
    grad_out_ptr, x_ptr, grad_x_ptr, dx_exp_ptr, fill_ptr, n, p, p_mask, x_s, y_s, z_s,
    C, D, H, W, H_OUT, W_OUT,
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dn, stride_dc, stride_dd, stride_dh, stride_dw,
    MODE: tl.constexpr, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    NEED_X: tl.constexpr, NEED_COORDS: tl.constexpr, DETERMINISTIC: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`backprop_at` for a volume: returns (g_xs, g_ys, g_zs)."""
    ix, dix = source_pixel(x_s, W, PADDING, ALIGN_CORNERS)
    iy, diy = source_pixel(y_s, H, PADDING, ALIGN_CORNERS)
    iz, diz = source_pixel(z_s, D, PADDING, ALIGN_CORNERS)
    nonfinite, s1, s2 = False, 1.0, 1.0
    if DETERMINISTIC:
        nonfinite, s1, s2 = fixed_point_factors(dx_exp_ptr, n, ACC)
    g_off = _voxel_offset(n, p, H_OUT, W_OUT, stride_gn, stride_gd, stride_gh, stride_gw)[:, None]
    d_ix, d_iy, d_iz = backprop_channels_3d(
        grad_out_ptr, g_off, x_ptr + n * stride_xn, grad_x_ptr + n * stride_dn, p_mask, ix, iy, iz, nonfinite, s1, s2,
        fill_ptr, C, D, H, W, stride_gc, stride_xc, stride_xd, stride_xh, stride_xw, stride_dc, stride_dd, stride_dh,
        stride_dw, MODE, PADDING == PAD_FILL, NEED_X, NEED_COORDS, DETERMINISTIC, ACC, INDEX_64, BLOCK_P, BLOCK_C,
    )
    return (tl.where(p_mask, d_ix * dix, 0.0), tl.where(p_mask, d_iy * diy, 0.0),
            tl.where(p_mask, d_iz * diz, 0.0))
