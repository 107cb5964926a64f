"""pytest bench/: throughput of stn_triton against PyTorch, in one run.

On a CUDA machine every case is timed with CUDA events (``triton.testing.do_bench``, median,
warm-up, L2 flushed between calls, rotating input sets larger than L2) and reported with GB/s,
the fraction of the device's measured copy bandwidth, and the ratio to torch eager measured in the
same test. Without a GPU the suite still runs the small shapes on the CPU (PyTorch path only) and
the GPU comparisons are reported as skipped.
"""
import os
import subprocess

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


# The headline table ``bash bench/run_gpu.sh first-light`` measures (``pytest bench/ --headline``):
# affine fwd and fwd + bwd at the paper's MNIST and SVHN shapes and one large shape, fp32 and bf16,
# NCHW, against eager and torch.compile; TPS K = 16 at the SVHN shape.
HEADLINE_CASES = {"mnist", "svhn64", "large-c64"}
HEADLINE_TPS_CASES = {"svhn64"}


def pytest_addoption(parser):
    parser.addoption("--headline", action="store_true",
                     help="only the headline cases (what `bash bench/run_gpu.sh first-light` measures)")


def is_headline(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = params.get("case")
    if case is None:
        return False
    name = item.originalname if hasattr(item, "originalname") else item.name
    if name == "test_affine":
        return (case.name in HEADLINE_CASES and params["pass_"] in ("fwd", "fwd_bwd")
                and not params["channels_last"] and params["provider"] in ("stn_triton", "torch_eager", "torch_compile"))
    if name == "test_tps":
        return (case.name in HEADLINE_TPS_CASES and params["k"] == 16
                and params["provider"] in ("stn_triton", "torch_eager", "torch_compile"))
    return False


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--headline"):
        return
    keep = [it for it in items if is_headline(it)]
    config.hook.pytest_deselected(items=[it for it in items if not is_headline(it)])
    items[:] = keep


def pytest_report_header(config):
    if HAS_CUDA:
        return f"stn-triton bench: CUDA device {torch.cuda.get_device_name()} -- GPU comparisons enabled"
    return ("stn-triton bench: NO CUDA DEVICE -- GPU comparisons (Triton kernels, torch.compile, kornia) are SKIPPED; "
            "only small CPU shapes of the PyTorch path run")


def pytest_terminal_summary(terminalreporter):
    if not HAS_CUDA:
        terminalreporter.write_line(
            "stn-triton bench: no CUDA device, so no GPU comparison was made; numbers above are CPU timings "
            "of the PyTorch path, not performance claims.", yellow=True)


def git_commit() -> str:
    if os.environ.get("STN_GIT_COMMIT"):
        return os.environ["STN_GIT_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@pytest.fixture(scope="session")
def env_info():
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "commit": git_commit()}
    if HAS_CUDA:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, cuda=torch.version.cuda, sm=f"{props.major}{props.minor}",
                    driver=_driver_version(), l2_bytes=getattr(props, "L2_cache_size", None))
    else:
        info.update(device="cpu")
    return info


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@pytest.fixture(scope="session")
def copy_bandwidth():
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written), or None."""
    if not HAS_CUDA:
        return None
    from triton.testing import do_bench

    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9
