"""bench.tune: the launch-config sweep run on a GPU. Here (interpreter, CPU): every candidate
tiling it would time computes the same result as the default one, and the CLI behaves."""
import pytest
import torch

from bench import tune
from bench.cases import Case

TINY = Case("tiny", 2, 5, 6, 7, 5, 4, gpu_only=False)  # odd sizes: every tile is ragged


@pytest.mark.parametrize("kernel", tune.KERNELS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_every_candidate_matches_default(device, kernel, channels_last):
    inputs = tune.make_inputs(TINY, torch.float32, channels_last, kernel, 0, device)
    configs = tune.candidates(TINY.c, channels_last)
    reference = tune.launch(kernel, inputs, TINY, configs[0])
    for cfg in configs[1:]:
        assert tune.max_relative_error(tune.launch(kernel, inputs, TINY, cfg), reference) < 1e-5, cfg


def test_candidates_start_with_default_and_fit_channels():
    from stn_triton.kernels.policy import launch_config

    for c, cl in [(1, False), (3, False), (160, False), (3, True), (64, True)]:
        cands = tune.candidates(c, cl)
        assert cands[0] == launch_config(c, cl) and len(set(cands)) == len(cands)
        assert all(bc <= max(1 << (c - 1).bit_length(), 16 if cl else 1) for _, bc, _ in cands)


def test_cli_list_and_no_gpu(capsys):
    assert tune.main(["--list", "--quick"]) == 0
    assert "svhn-multi-c160" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert tune.main(["--quick"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_bad_launch_config_is_a_clear_error():
    from stn_triton.kernels.policy import launch_config

    with pytest.raises(ValueError, match="BLOCK_P must be a power of two"):
        launch_config(3, False, (100, 4))


def test_static_sweep_compiles_candidates(tmp_path):
    """`python -m bench.tune --static`: every candidate tiling of the channels_last forward
    compiles for sm_90 without spills (the AOT compiler needs a process without the interpreter)."""
    import json

    from testing.compiler import run_compiler_module

    out = tmp_path / "static.json"
    proc = run_compiler_module("bench.tune", "--static", "--kernels", "warp_fwd", "--layouts", "nhwc", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == [list(c) for c in tune.candidates(64, True)]
    assert all(r["spill_bytes"] == 0 and 0 < r["occupancy"] <= 1 for r in rows)
    assert {r["num_warps"] for r in rows} == {c[2] for c in tune.candidates(64, True)}
