"""Ahead-of-time compilation of every kernel for sm_80 and sm_90 on this GPU-less machine.

The interpreter accepts code the compiler rejects, so this is the check that the kernels build for
real GPUs; the bar is zero spilled (local) bytes. The compiler needs the real JITFunctions, so
the compile runs in a subprocess without TRITON_INTERPRET (``python -m bench.static --json``).
The default run compiles one specialisation of each kernel per architecture plus the channels_last
forward; ``-m slow`` compiles every registered specialisation.
"""
import pytest

from testing.compiler import check_rows, static_report


def test_every_kernel_compiles_for_sm80_sm90_without_spills():
    rows = static_report("--quick")
    check_rows(rows)
    kernels = {r["kernel"] for r in rows}
    assert {"_warp_fwd_kernel", "_warp_bwd_kernel", "_warp3d_fwd_kernel", "_warp3d_bwd_kernel",
            "_grid_sample_fwd_kernel", "_grid_sample_bwd_kernel", "_grid_sample3d_fwd_kernel",
            "_grid_sample3d_bwd_kernel", "_warp_flow_fwd_kernel", "_warp_flow_bwd_kernel", "_warp_flow3d_fwd_kernel",
            "_warp_flow3d_bwd_kernel"} <= kernels
    assert {r["arch"] for r in rows} == {80, 90}


def test_int64_specialisations_compute_every_offset_in_int64():
    """With INDEX_64 every pointer offset must be 64-bit: the channel terms c * stride_c were int32
    (a 1x3x32768^2 fp32 image wraps). Every kernel has int64 specialisations in the report."""
    rows = static_report("--arch", "90", "--match", "/int64", "fixed_to_float", "fixed_point_exponent")
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_warp_fwd_kernel", "_warp_bwd_kernel", "_warp3d_fwd_kernel", "_warp3d_bwd_kernel",
                       "_tps_fwd_kernel", "_tps_bwd_kernel", "_grid_sample_fwd_kernel", "_grid_sample_bwd_kernel",
                       "_grid_sample3d_fwd_kernel", "_grid_sample3d_bwd_kernel", "_warp_flow_fwd_kernel",
                       "_warp_flow_bwd_kernel", "_warp_flow3d_fwd_kernel", "_warp_flow3d_bwd_kernel",
                       "_fixed_to_float_kernel", "_exponent_kernel"}, kernels
    for r in rows:
        assert r["int32_offsets"] == [], f"{r['label']}: " + "\n".join(r["int32_offsets"])


def test_int32_offset_checker_flags_32bit_arithmetic():
    from bench.aot import int32_offset_arithmetic

    ttir = """
    %c2_i32 = arith.constant 2 : i32 loc(#loc1)
    %u = arith.muli %n, %stride_tn : i32 loc(#loc2)
    %p0 = tt.addptr %theta_ptr, %u : !tt.ptr<f32>, i32 loc(#loc3)
    %p1 = tt.addptr %p0, %c2_i32 : !tt.ptr<f32>, i32 loc(#loc4)
    %p2 = tt.addptr %p0, %stride_tr : !tt.ptr<f32>, i32 loc(#loc5)
    %c = arith.muli %cc, %s : tensor<4xi32> loc(#loc6)
    %cs = tt.expand_dims %c {axis = 0 : i32} : tensor<4xi32> -> tensor<1x4xi32> loc(#loc7)
    %p3 = tt.addptr %xs, %cs : tensor<1x4x!tt.ptr<f32>>, tensor<1x4xi32> loc(#loc8)
    %w = arith.muli %n64, %s64 : i64 loc(#loc9)
    %p4 = tt.addptr %x_ptr, %w : !tt.ptr<f32>, i64 loc(#loc10)
    """
    bad = int32_offset_arithmetic(ttir)
    assert len(bad) == 2 and "%p0" in bad[0] and "%p3" in bad[1], bad  # constants, arguments and i64 pass


def test_volume_and_fill_backward_compile_without_spills():
    """Beyond --quick (the first 3-D specialisation of each direction) and the int64 test: the 3-D
    channels_last_3d backward with fill padding and the 2-D fill backward, on both targets (the
    full list: ``-m slow`` and ``python -m bench.static``)."""
    rows = static_report("--match", "warp3d_bwd/bilinear/fill/bf16/ndhwc", "warp_bwd/affine/bilinear/fill/bf16/nhwc")
    check_rows(rows)
    assert len(rows) == 4 and {r["kernel"] for r in rows} == {"_warp3d_bwd_kernel", "_warp_bwd_kernel"}


def test_channels_last_taps_are_vectorised():
    """NHWC: each tap reads BLOCK_C contiguous channels, so the compiler must emit wide loads."""
    rows = static_report("--match", "warp_fwd/affine/bilinear/zeros/bf16/nhwc", "--arch", "90")
    assert rows and any(int(width) > 32 for width in rows[0]["load_widths"]), rows[0]["load_widths"]


@pytest.mark.slow
def test_every_specialisation_compiles_without_spills():
    check_rows(static_report())


@pytest.mark.parametrize("regs,warps,smem,arch,expected", [
    (32, 4, 0, 90, 1.0),         # 1024 registers per warp: all 64 warp slots fill
    (144, 4, 1024, 90, 0.1875),  # 4608 per warp -> 14 warps by registers -> 3 blocks of 4
    (204, 4, 1024, 90, 0.125),   # 6656 per warp (rounded to 256) -> 9 warps -> 2 blocks
    (16, 1, 0, 80, 0.5),         # 32 resident blocks of one warp at most
    (32, 4, 100 * 1024, 90, 0.125),  # shared memory: 2 blocks of 101 KiB fit in 228 KiB
])
def test_occupancy_rules(regs, warps, smem, arch, expected):
    from bench.aot import occupancy

    assert occupancy(regs, warps, smem, arch) == expected
