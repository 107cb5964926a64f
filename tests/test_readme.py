"""The README's commands and CI agree, and the README's example runs."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme = _read("README.md")
    ci_lines = [ln.strip() for ln in _read(".ci", "run").splitlines() if ln.strip() and not ln.startswith("#")]
    test_cmd = ci_lines[-1]
    assert "pytest" in test_cmd
    assert f"    {test_cmd}\n" in readme, "README's test command and .ci/run differ"


def test_readme_main_command_installs_the_pin_first():
    readme = _read("README.md")
    cmd = next(ln.strip() for ln in readme.splitlines() if "repro.mnist_addition" in ln and "pip install" in ln)
    assert cmd.index("torch==2.13.0") < cmd.index("pip install -e")


def test_readme_example_runs_on_cpu():
    import stn_triton  # noqa: F401

    code = re.search(r"```python\n(.*?)```", _read("README.md"), re.S).group(1).replace('device="cuda"', 'device="cpu"')
    exec(compile(code, "README example", "exec"), {})


def test_readme_example_runs_as_written_without_a_gpu():
    """The example picks the device itself: unmodified, it runs on a machine without CUDA."""
    import torch

    code = re.search(r"```python\n(.*?)```", _read("README.md"), re.S).group(1)
    assert 'device="cuda"' not in code and "torch.cuda.is_available()" in code
    ns = {}
    exec(compile(code, "README example", "exec"), ns)
    assert ns["y"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_readme_says_what_runs_without_a_gpu():
    readme = _read("README.md")
    assert "Without a GPU" in readme and "pure-PyTorch path" in readme and "TRITON_INTERPRET=1" in readme


def test_readme_names_the_data_cache_as_the_code_does(monkeypatch):
    from pathlib import Path

    from repro.data.mnist import data_dir

    monkeypatch.delenv("STN_DATA_DIR", raising=False)
    assert data_dir() == Path.home() / ".cache" / "stn-triton"
    readme = _read("README.md")
    assert "~/.cache/stn-triton" in readme and "STN_DATA_DIR" in readme and "300 MB" in readme


def test_readme_main_job_output_and_publishing():
    readme = _read("README.md")
    main = readme[readme.index("## The two commands"):readme.index("Run the tests")]
    assert "runs/mnist_addition/" in main and "repro/results/mnist_addition/" not in main.split("publish")[0]
    assert "python -m repro.publish runs/mnist_addition repro/results/mnist_addition" in readme
    assert "--restart" in readme and "Ctrl-C" in readme


def test_license_is_mit_as_the_metadata_says():
    lic = _read("LICENSE")
    assert lic.startswith("MIT License") and "Copyright (c) 2026 stn-triton contributors" in lic
    assert 'license = { text = "MIT" }' in _read("pyproject.toml")
