"""``python -m bench.host_overhead`` runs end to end (one round, one call: a smoke test, not a
timing) and reports every public op's three passes on both CPU paths, with the stub restoring the
real kernels afterwards."""
import pytest
import torch

from conftest import DEVICE


@pytest.mark.skipif(DEVICE == "cuda", reason="the CPU variant (stubbed Triton path + PyTorch path)")
def test_host_overhead_smoke(capsys):
    from bench import host_overhead
    from stn_triton.kernels import warp as kw

    real = kw._warp_fwd_kernel
    threads = torch.get_num_threads()
    try:
        assert host_overhead.main(["--rounds", "1", "--inner", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert kw._warp_fwd_kernel is real
    for case in host_overhead.OP_CASES:
        for pass_ in host_overhead.PASSES:
            assert out.count(f"| {case.name} | {pass_} |") == 2, (case.name, pass_)
    assert "| bare autograd.Function (allocates its output) | fwd+bwd |" in out  # the floors table
    assert "| non-finite rule's test: aminmax + 2 host reads | infer |" in out
