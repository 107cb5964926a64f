"""Test configuration: the Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is imported anywhere, so it is set here, at the top of
the root conftest, which pytest imports before any test module. On a machine with a CUDA GPU
set STN_TEST_CUDA=1 (bench/run_gpu.sh does) to run the same tests on ``cuda`` with the compiled
kernels instead.
"""
import os

ON_GPU = os.environ.get("STN_TEST_CUDA", "0") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"  # for tests that cannot take the fixture (hypothesis)
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import stn_triton  # noqa: E402


@pytest.fixture
def device() -> str:
    """Where kernel tests run: CPU through the interpreter, or CUDA when STN_TEST_CUDA=1."""
    if ON_GPU and not torch.cuda.is_available():
        pytest.skip("STN_TEST_CUDA=1 but no CUDA device")
    return "cuda" if ON_GPU else "cpu"


@pytest.fixture
def triton_backend():
    """Force the Triton kernels (interpreted on CPU) for the duration of a test."""
    with stn_triton.use_backend("triton"):
        yield


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for the duration of a test."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models train faster on one intra-op thread, far faster on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
