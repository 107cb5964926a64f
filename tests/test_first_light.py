"""The GPU first-light stage works before it meets a GPU: its checks run (through the interpreter
here) and pass on correct kernels, and ``--headline`` selects exactly the promised table."""
import subprocess
import sys

import pytest

from conftest import DEVICE
from testing.compiler import ROOT

first_light = pytest.importorskip("bench.first_light")


@pytest.mark.parametrize("index", [0, 9, 11])  # affine, projective, TPS
def test_first_light_check_passes_on_small_inputs(index):
    transform, dtype, layout, mode, padding, ac, shape, size = first_light.CHECKS[index]
    small = (transform, dtype, layout, mode, padding, ac, (2, min(shape[1], 3), 7, 9), (6, 5))
    row = first_light.check(small, seed=1, device=DEVICE)
    assert row["ok"] and row["finite"], row


def test_headline_selection():
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "--headline", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    affine = [i for i in ids if "test_affine[" in i]
    tps = [i for i in ids if "test_tps[" in i]
    assert len(affine) == 3 * 3 * 2 * 2 and len(tps) == 3 * 2, proc.stdout[-2000:]
    for provider in ("stn_triton", "torch_eager", "torch_compile"):
        assert sum(provider in i for i in affine) == 12
    assert all("bwd_theta" not in i and "nhwc" not in i for i in affine)
    assert all(i.endswith("-16]") for i in tps)
