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
