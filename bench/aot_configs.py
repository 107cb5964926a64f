"""What ``bench.aot`` compiles: one :class:`~bench.aot.KernelConfig` per kernel specialisation.

The specialisations mirror what the launchers (``kernels/*.py``) pass at run time: pointer dtypes,
constexprs from ``kernels.policy`` and representative strides (a stride of 1 becomes a constant,
multiples of 16 get the divisibility hint, as the JIT does). Every kernel with an ``INDEX_64``
constexpr is also listed in its int64 specialisation (label suffix ``/int64``), which
``bench.aot.int32_offset_arithmetic`` checks on the compiled IR.
"""
from __future__ import annotations

import dataclasses

import triton.language as tl

from bench.aot import KernelConfig
from stn_triton.kernels import fixed_point, grid_sample, tps, warp, warp3d, warp_flow
from stn_triton.kernels.policy import MODE_CODES, PADDING_CODES, block_sizes, block_sizes_3d, block_sizes_bicubic


def layout_strides(prefixes, channels_last: bool, c: int = 64, h: int = 32, w: int = 32) -> dict:
    """Representative strides of (N, C, H, W) tensors in NCHW or NHWC, for AOT specialisation."""
    if channels_last:
        n_, c_, h_, w_ = h * w * c, 1, w * c, c
    else:
        n_, c_, h_, w_ = c * h * w, h * w, w, 1
    out = {"C": c, "H": h, "W": w, "H_OUT": h, "W_OUT": w}
    for p in prefixes:
        out.update({f"stride_{p}n": n_, f"stride_{p}c": c_, f"stride_{p}h": h_, f"stride_{p}w": w_})
    return out


def theta_strides(projective: bool) -> dict:
    """A contiguous (N, 2, 3) or (N, 3, 3) theta's strides, as a launch would specialise them."""
    return {"stride_tn": 9 if projective else 6, "stride_tr": 3, "stride_tc": 1}


def _int64(cfg: KernelConfig) -> KernelConfig:
    return dataclasses.replace(cfg, label=cfg.label + "/int64", constexprs=dict(cfg.constexprs, INDEX_64=True))


def warp_configs() -> list[KernelConfig]:
    configs = []
    for storage, layout_cl in (("fp32", False), ("bf16", True), ("fp16", False)):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes(channels, layout_cl)
        layout = "nhwc" if layout_cl else "nchw"
        fwd_strides = layout_strides("xo", layout_cl, channels)
        bwd_strides = layout_strides("gxd", layout_cl, channels)
        for projective in (False, True):
            for mode, padding in (("bilinear", "zeros"), ("bilinear", "reflection"), ("nearest", "border"),
                                  ("bilinear", "fill"), ("nearest", "fill")):
                if padding == "fill" and (projective or storage == "fp16"):
                    continue  # fill: affine fp32 NCHW and bf16 NHWC, both modes, both ways
                common = dict(PROJECTIVE=projective, MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding],
                              ALIGN_CORNERS=False, ACC=tl.float32, INDEX_64=False, BLOCK_P=block_p, BLOCK_C=block_c)
                kind = "proj" if projective else "affine"
                configs.append(KernelConfig(
                    f"warp_fwd/{kind}/{mode}/{padding}/{storage}/{layout}", warp._warp_fwd_kernel,
                    {"x_ptr": storage, "theta_ptr": "fp32", "out_ptr": storage, "fill_ptr": "fp32"}, common,
                    {**fwd_strides, **theta_strides(projective)}))
                configs.append(KernelConfig(
                    f"warp_bwd/{kind}/{mode}/{padding}/{storage}/{layout}", warp._warp_bwd_kernel,
                    {"grad_out_ptr": storage, "x_ptr": storage, "theta_ptr": "fp32", "grad_x_ptr": "fp32",
                     "grad_theta_partial_ptr": "fp32", "dx_exp_ptr": "i32", "fill_ptr": "fp32"},
                    dict(common, NEED_X=True, NEED_THETA=mode == "bilinear", DETERMINISTIC=False),
                    {**bwd_strides, **theta_strides(projective)}))
    by_label = {c.label: c for c in configs}
    # int64 indexing, both directions and both transforms (deterministic included), once each
    for label in ("warp_fwd/affine/bilinear/zeros/fp32/nchw", "warp_fwd/proj/nearest/border/bf16/nhwc",
                  "warp_bwd/affine/bilinear/zeros/fp32/nchw", "warp_bwd/proj/bilinear/reflection/bf16/nhwc",
                  "warp_fwd/affine/bilinear/fill/bf16/nhwc", "warp_bwd/affine/bilinear/fill/fp32/nchw"):
        configs.append(_int64(by_label[label]))
    # theta-only backward
    block_p, block_c = block_sizes(3, False)
    base = dict(PROJECTIVE=False, MODE=0, PADDING=0, ALIGN_CORNERS=True, ACC=tl.float32, BLOCK_P=block_p, BLOCK_C=block_c)
    configs.append(KernelConfig("warp_bwd/affine/bilinear/zeros/fp32/nchw/theta-only", warp._warp_bwd_kernel,
                                {"grad_out_ptr": "fp32", "x_ptr": "fp32", "theta_ptr": "fp32", "grad_x_ptr": "fp32",
                                 "grad_theta_partial_ptr": "fp32", "dx_exp_ptr": "i32", "fill_ptr": "fp32"},
                                dict(base, INDEX_64=False, NEED_X=False, NEED_THETA=True, DETERMINISTIC=False),
                                {**layout_strides("gxd", False, 3), **theta_strides(False)}))
    for storage, cl in (("fp32", False), ("bf16", True)):
        block_p, block_c = block_sizes(64 if cl else 3, cl)
        det = KernelConfig(
            f"warp_bwd/affine/bilinear/zeros/{storage}/{'nhwc' if cl else 'nchw'}/deterministic", warp._warp_bwd_kernel,
            {"grad_out_ptr": storage, "x_ptr": storage, "theta_ptr": "fp32", "grad_x_ptr": "i64",
             "grad_theta_partial_ptr": "fp32", "dx_exp_ptr": "i32", "fill_ptr": "fp32"},
            dict(base, ALIGN_CORNERS=False, INDEX_64=False, NEED_X=True, NEED_THETA=True, DETERMINISTIC=True,
                 BLOCK_P=block_p, BLOCK_C=block_c),
            {**layout_strides("gxd", cl, 64 if cl else 3), **theta_strides(False)})
        configs.append(det)
    configs.append(_int64(configs[-1]))
    return configs


def tps_configs() -> list[KernelConfig]:
    """K is a runtime argument and BLOCK_K = block_k(K) is 8 for every K >= 8, so register use does
    not depend on K: the sweep is labelled K16, and the K = 64 launch configuration is listed too
    (fp32 NCHW and bf16 NHWC, bilinear, fwd + bwd). One fp64 (ACC = fp64) pair checks the float64
    path compiles (libdevice log). Coefficients arrive in float64 (the op's matmul)."""

    def pair(k, storage, layout_cl, mode, padding, acc="fp32"):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes(channels, layout_cl)
        fwd_spec = dict(layout_strides("xo", layout_cl, channels), K=k)
        bwd_spec = dict(layout_strides("gxd", layout_cl, channels), K=k)
        layout = "nhwc" if layout_cl else "nchw"
        common = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding], ALIGN_CORNERS=False,
                      ACC=tl.float64 if acc == "fp64" else tl.float32, INDEX_64=False,
                      BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_K=tps.block_k(k))
        tail = f"K{k}/{mode}/{padding}/{storage}/{layout}"
        return [
            KernelConfig(f"tps_fwd/{tail}", tps._tps_fwd_kernel,
                         {"x_ptr": storage, "coef_ptr": "fp64", "ctrl_ptr": "fp64", "out_ptr": storage}, common,
                         fwd_spec),
            KernelConfig(f"tps_bwd/{tail}", tps._tps_bwd_kernel,
                         {"grad_out_ptr": storage, "x_ptr": storage, "coef_ptr": "fp64", "ctrl_ptr": "fp64",
                          "grad_x_ptr": acc, "grad_coef_partial_ptr": acc, "dx_exp_ptr": "i32"},
                         dict(common, NEED_X=True, NEED_COEF=True, DETERMINISTIC=False), bwd_spec),
        ]

    configs = []
    for storage, layout_cl in (("fp32", False), ("bf16", True), ("fp16", False)):
        for mode, padding in (("bilinear", "zeros"), ("bilinear", "reflection"), ("nearest", "border")):
            configs += pair(16, storage, layout_cl, mode, padding)
    configs += pair(64, "fp32", False, "bilinear", "zeros")
    configs += pair(64, "bf16", True, "bilinear", "reflection")
    configs += pair(16, "fp64", False, "bilinear", "zeros", acc="fp64")
    configs += [_int64(c) for c in pair(16, "fp32", False, "bilinear", "zeros")]
    det = pair(16, "fp32", False, "bilinear", "zeros")[1]
    det = dataclasses.replace(det, label=det.label + "/deterministic", pointers=dict(det.pointers, grad_x_ptr="i64"),
                              constexprs=dict(det.constexprs, DETERMINISTIC=True))
    configs += [det, _int64(det)]
    return configs


def volume_strides(prefixes, channels_last: bool, c: int = 64, d: int = 16, h: int = 32, w: int = 32) -> dict:
    """Representative strides of (N, C, D, H, W) tensors in NCDHW or NDHWC (channels_last_3d)."""
    if channels_last:
        n_, c_, d_, h_, w_ = d * h * w * c, 1, h * w * c, w * c, c
    else:
        n_, c_, d_, h_, w_ = c * d * h * w, d * h * w, h * w, w, 1
    out = {"C": c, "D": d, "H": h, "W": w, "D_OUT": d, "H_OUT": h, "W_OUT": w}
    for p in prefixes:
        out.update({f"stride_{p}n": n_, f"stride_{p}c": c_, f"stride_{p}d": d_, f"stride_{p}h": h_,
                    f"stride_{p}w": w_})
    return out


def warp3d_configs() -> list[KernelConfig]:
    """The 3-D warp: fp32 NCDHW, bf16 NDHWC, fp16 NCDHW and one fp64, each mode / padding pair
    both ways; theta-only and deterministic backward; int64 specialisations of each direction."""
    theta = {"stride_tn": 12, "stride_tr": 4, "stride_tc": 1}
    configs = []
    for storage, layout_cl, acc in (("fp32", False, "fp32"), ("bf16", True, "fp32"), ("fp16", False, "fp32"),
                                    ("fp64", False, "fp64")):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes_3d(channels, layout_cl)
        layout = "ndhwc" if layout_cl else "ncdhw"
        pairs = (("bilinear", "zeros"),) if storage == "fp64" else \
            (("bilinear", "zeros"), ("bilinear", "reflection"), ("nearest", "border"))
        if storage in ("fp32", "bf16"):
            pairs += (("bilinear", "fill"), ("nearest", "fill"))
        for mode, padding in pairs:
            common = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding], ALIGN_CORNERS=False,
                          ACC=tl.float64 if acc == "fp64" else tl.float32, INDEX_64=False,
                          BLOCK_P=block_p, BLOCK_C=block_c)
            tail = f"{mode}/{padding}/{storage}/{layout}"
            configs.append(KernelConfig(
                f"warp3d_fwd/{tail}", warp3d._warp3d_fwd_kernel,
                {"x_ptr": storage, "theta_ptr": "fp32", "out_ptr": storage, "fill_ptr": acc}, common,
                {**volume_strides("xo", layout_cl, channels), **theta}))
            configs.append(KernelConfig(
                f"warp3d_bwd/{tail}", warp3d._warp3d_bwd_kernel,
                {"grad_out_ptr": storage, "x_ptr": storage, "theta_ptr": "fp32", "grad_x_ptr": acc,
                 "grad_theta_partial_ptr": acc, "dx_exp_ptr": "i32", "fill_ptr": acc},
                dict(common, NEED_X=True, NEED_THETA=mode == "bilinear", DETERMINISTIC=False),
                {**volume_strides("gxd", layout_cl, channels), **theta}))
    by_label = {c.label: c for c in configs}
    bwd = by_label["warp3d_bwd/bilinear/zeros/fp32/ncdhw"]
    configs.append(dataclasses.replace(bwd, label=bwd.label + "/theta-only",
                                       constexprs=dict(bwd.constexprs, NEED_X=False)))
    for label in ("warp3d_bwd/bilinear/zeros/fp32/ncdhw", "warp3d_bwd/bilinear/reflection/bf16/ndhwc"):
        b = by_label[label]
        configs.append(dataclasses.replace(b, label=b.label + "/deterministic", pointers=dict(b.pointers, grad_x_ptr="i64"),
                                           constexprs=dict(b.constexprs, DETERMINISTIC=True)))
    configs.append(_int64(configs[-1]))
    for label in ("warp3d_fwd/bilinear/zeros/fp32/ncdhw", "warp3d_fwd/nearest/border/bf16/ndhwc",
                  "warp3d_bwd/bilinear/zeros/fp32/ncdhw", "warp3d_bwd/nearest/border/fp16/ncdhw",
                  "warp3d_fwd/bilinear/fill/bf16/ndhwc", "warp3d_bwd/bilinear/fill/fp32/ncdhw"):
        configs.append(_int64(by_label[label]))
    return configs


def _grid_strides(size: tuple, prefix: str = "s") -> dict:
    """A contiguous (N, *size, dims) sampling grid's strides (batch, spatial outer to inner, coordinate)."""
    dims = len(size)
    names = ("d", "h", "w")[-dims:]
    strides, acc = {}, dims
    for name, extent in zip(reversed(names), reversed(size)):
        strides[f"stride_{prefix}{name}"] = acc
        acc *= extent
    return {**strides, f"stride_{prefix}n": acc, f"stride_{prefix}c": 1}


def grid_sample_configs() -> list[KernelConfig]:
    """Sampling at a given grid (``kernels/grid_sample.py``), images and volumes: fp32 NCHW, bf16 NHWC
    and fp16 NCHW (fp64 once for volumes), each mode / padding pair (fill included) both ways, the
    grid-only and deterministic backward, and int64 specialisations of each direction."""
    configs = []
    for storage, layout_cl in (("fp32", False), ("bf16", True), ("fp16", False)):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes(channels, layout_cl)
        layout = "nhwc" if layout_cl else "nchw"
        pairs = (("bilinear", "zeros"), ("bilinear", "reflection"), ("nearest", "border"))
        if storage != "fp16":
            pairs += (("bilinear", "fill"), ("nearest", "fill"))
        for mode, padding in pairs:
            common = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding], ALIGN_CORNERS=False,
                          ACC=tl.float32, INDEX_64=False, BLOCK_P=block_p, BLOCK_C=block_c)
            tail = f"{mode}/{padding}/{storage}/{layout}"
            configs.append(KernelConfig(
                f"grid_sample_fwd/{tail}", grid_sample._grid_sample_fwd_kernel,
                {"x_ptr": storage, "grid_ptr": "fp32", "out_ptr": storage, "fill_ptr": "fp32"}, common,
                {**layout_strides("xo", layout_cl, channels), **_grid_strides((32, 32))}))
            configs.append(KernelConfig(
                f"grid_sample_bwd/{tail}", grid_sample._grid_sample_bwd_kernel,
                {"grad_out_ptr": storage, "x_ptr": storage, "grid_ptr": "fp32", "grad_x_ptr": "fp32",
                 "grad_grid_ptr": "fp32", "dx_exp_ptr": "i32", "fill_ptr": "fp32"},
                dict(common, NEED_X=True, NEED_GRID=mode == "bilinear", DETERMINISTIC=False),
                {**layout_strides("gxd", layout_cl, channels), **_grid_strides((32, 32))}))
    for storage, layout_cl, acc in (("fp32", False, "fp32"), ("bf16", True, "fp32"), ("fp64", False, "fp64")):
        channels = 64 if layout_cl else 3
        block_p, block_c = block_sizes_3d(channels, layout_cl)
        layout = "ndhwc" if layout_cl else "ncdhw"
        pairs = (("bilinear", "zeros"),) if storage == "fp64" else \
            (("bilinear", "zeros"), ("nearest", "border"), ("bilinear", "fill"))
        for mode, padding in pairs:
            common = dict(MODE=MODE_CODES[mode], PADDING=PADDING_CODES[padding], ALIGN_CORNERS=False,
                          ACC=tl.float64 if acc == "fp64" else tl.float32, INDEX_64=False,
                          BLOCK_P=block_p, BLOCK_C=block_c)
            tail = f"{mode}/{padding}/{storage}/{layout}"
            configs.append(KernelConfig(
                f"grid_sample3d_fwd/{tail}", grid_sample._grid_sample3d_fwd_kernel,
                {"x_ptr": storage, "grid_ptr": acc, "out_ptr": storage, "fill_ptr": acc}, common,
                {**volume_strides("xo", layout_cl, channels), **_grid_strides((16, 32, 32))}))
            configs.append(KernelConfig(
                f"grid_sample3d_bwd/{tail}", grid_sample._grid_sample3d_bwd_kernel,
                {"grad_out_ptr": storage, "x_ptr": storage, "grid_ptr": acc, "grad_x_ptr": acc,
                 "grad_grid_ptr": acc, "dx_exp_ptr": "i32", "fill_ptr": acc},
                dict(common, NEED_X=True, NEED_GRID=mode == "bilinear", DETERMINISTIC=False),
                {**volume_strides("gxd", layout_cl, channels), **_grid_strides((16, 32, 32))}))
    by_label = {c.label: c for c in configs}
    bwd = by_label["grid_sample_bwd/bilinear/zeros/fp32/nchw"]
    configs.append(dataclasses.replace(bwd, label=bwd.label + "/grid-only", constexprs=dict(bwd.constexprs, NEED_X=False)))
    for label in ("grid_sample_bwd/bilinear/zeros/fp32/nchw", "grid_sample3d_bwd/bilinear/zeros/fp32/ncdhw"):
        b = by_label[label]
        configs.append(dataclasses.replace(b, label=b.label + "/deterministic", pointers=dict(b.pointers, grad_x_ptr="i64"),
                                           constexprs=dict(b.constexprs, DETERMINISTIC=True)))
    for label in ("grid_sample_fwd/bilinear/zeros/fp32/nchw", "grid_sample_bwd/bilinear/reflection/bf16/nhwc",
                  "grid_sample_fwd/bilinear/fill/bf16/nhwc", "grid_sample_bwd/bilinear/fill/fp32/nchw",
                  "grid_sample3d_fwd/nearest/border/bf16/ndhwc", "grid_sample3d_bwd/bilinear/zeros/fp32/ncdhw"):
        configs.append(_int64(by_label[label]))
    return configs


def warp_flow_configs() -> list[KernelConfig]:
    """Displacement-field warping (``kernels/warp_flow.py``): the grid_sample matrix with a
    channel-first flow (contiguous (N, 2|3, *size)) in place of the grid."""
    configs = []
    for cfg in grid_sample_configs():
        if "/int64" in cfg.label or "/deterministic" in cfg.label or "/grid-only" in cfg.label:
            continue
        volume = cfg.label.startswith("grid_sample3d")
        fwd = "_fwd" in cfg.label
        fn = {(False, True): warp_flow._warp_flow_fwd_kernel, (False, False): warp_flow._warp_flow_bwd_kernel,
              (True, True): warp_flow._warp_flow3d_fwd_kernel, (True, False): warp_flow._warp_flow3d_bwd_kernel}[
            (volume, fwd)]
        size = (16, 32, 32) if volume else (32, 32)
        flow_strides = {"stride_fn": 3 * 16 * 32 * 32 if volume else 2 * 32 * 32,
                        "stride_fc": 16 * 32 * 32 if volume else 32 * 32,
                        **({"stride_fd": 32 * 32} if volume else {}), "stride_fh": 32, "stride_fw": 1}
        specs = {k: v for k, v in cfg.specialize.items() if not k.startswith("stride_s")}
        pointers = {("flow_ptr" if k == "grid_ptr" else "grad_flow_ptr" if k == "grad_grid_ptr" else k): v
                    for k, v in cfg.pointers.items()}
        constexprs = {("NEED_FLOW" if k == "NEED_GRID" else k): v for k, v in cfg.constexprs.items()}
        label = cfg.label.replace("grid_sample3d", "warp_flow3d").replace("grid_sample", "warp_flow")
        configs.append(KernelConfig(label, fn, pointers, constexprs, {**specs, **flow_strides}))
    by_label = {c.label: c for c in configs}
    for label in ("warp_flow_fwd/bilinear/zeros/fp32/nchw", "warp_flow_bwd/bilinear/fill/fp32/nchw",
                  "warp_flow3d_fwd/bilinear/zeros/fp32/ncdhw", "warp_flow3d_bwd/bilinear/zeros/fp32/ncdhw"):
        configs.append(_int64(by_label[label]))
    b = by_label["warp_flow_bwd/bilinear/zeros/fp32/nchw"]
    configs.append(dataclasses.replace(b, label=b.label + "/deterministic", pointers=dict(b.pointers, grad_x_ptr="i64"),
                                       constexprs=dict(b.constexprs, DETERMINISTIC=True)))
    return configs


def bicubic_configs() -> list[KernelConfig]:
    """mode="bicubic" (images: 4x4 taps) in every 2-D kernel that offers it -- the affine and projective
    warp, grid_sample and warp_flow -- fp32 NCHW and bf16 NHWC, zeros / reflection / fill, both ways,
    plus the deterministic and int64 backward of grid_sample."""
    configs = []
    sources = [c for c in (*warp_configs(), *grid_sample_configs(), *warp_flow_configs())
               if c.label.split("/")[0] in ("warp_fwd", "warp_bwd", "grid_sample_fwd", "grid_sample_bwd",
                                            "warp_flow_fwd", "warp_flow_bwd")
               and "/bilinear/" in c.label and c.label.split("/")[-1] in ("nchw", "nhwc")
               and any(f"/{pad}/" in c.label for pad in ("zeros", "reflection", "fill"))]
    for cfg in sources:
        channels_last = cfg.label.endswith("nhwc")
        block_p, block_c = block_sizes_bicubic(64 if channels_last else 3, channels_last)
        constexprs = dict(cfg.constexprs, MODE=MODE_CODES["bicubic"], BLOCK_P=block_p, BLOCK_C=block_c)
        configs.append(dataclasses.replace(cfg, label=cfg.label.replace("/bilinear/", "/bicubic/"), constexprs=constexprs))
    by_label = {c.label: c for c in configs}
    b = by_label["grid_sample_bwd/bicubic/zeros/fp32/nchw"]
    det = dataclasses.replace(b, label=b.label + "/deterministic", pointers=dict(b.pointers, grad_x_ptr="i64"),
                              constexprs=dict(b.constexprs, DETERMINISTIC=True))
    configs += [det, _int64(det), _int64(by_label["warp_fwd/proj/bicubic/reflection/bf16/nhwc"])]
    return configs


def fixed_point_configs() -> list[KernelConfig]:
    """Both fixed-point kernels always index in int64 (no INDEX_64 constexpr)."""
    configs = []
    for dtype, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        acc_tl = tl.float64 if acc == "fp64" else tl.float32
        configs.append(KernelConfig(
            f"fixed_to_float/{dtype}", fixed_point._fixed_to_float_kernel,
            {"buf_ptr": "i64", "exp_ptr": "i32", "out_ptr": dtype},
            {"ACC": acc_tl, "BLOCK": 1024}, {"CHW": 3 * 224 * 224, "NUM_BLOCKS": 147}))
        configs.append(KernelConfig(
            f"fixed_point_exponent/{dtype}", fixed_point._exponent_kernel,
            {"grad_ptr": dtype, "exp_ptr": "i32"}, {"ACC": acc_tl, "BLOCK": fixed_point.EXP_BLOCK},
            {"C": 3, "H": 224, "W": 224, "stride_gn": 3 * 224 * 224, "stride_gc": 224 * 224, "stride_gh": 224,
             "stride_gw": 1, "LOG2_PIXELS": 16}))
    return configs


def all_configs() -> list[KernelConfig]:
    """Every kernel's AOT specialisations."""
    return [*warp_configs(), *warp3d_configs(), *tps_configs(), *grid_sample_configs(), *warp_flow_configs(),
            *bicubic_configs(), *fixed_point_configs()]
