"""What the package is made of: stn_triton plus exactly the top-level kernels/ and models/ folders,
found the same way from a plain checkout (PYTHONPATH=., as the GPU machines run it), an editable
install and the wheel -- never the other top-level folders, never through a runtime path trick."""
import os
import subprocess
import sys
import zipfile

import pytest

from testing.compiler import ROOT


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT, **env})


def test_checkout_resolves_only_kernels_and_models():
    proc = _python(
        "import importlib, os, stn_triton\n"
        "import stn_triton.kernels.warp as w, stn_triton.models.mnist as m\n"
        "print(len(stn_triton.__path__), os.path.realpath(w.__file__), os.path.realpath(m.__file__))\n"
        "for name in ('repro', 'bench', 'tests', 'stn_triton'):\n"
        "    try:\n"
        "        importlib.import_module('stn_triton.' + name)\n"
        "        print('IMPORTED', name)\n"
        "    except ImportError:\n"
        "        pass\n")
    assert proc.returncode == 0, proc.stderr
    n_paths, warp_file, mnist_file = proc.stdout.split()[:3]
    assert n_paths == "1"
    assert warp_file == os.path.join(ROOT, "kernels", "warp.py")
    assert mnist_file == os.path.join(ROOT, "models", "mnist.py")
    assert "IMPORTED" not in proc.stdout, proc.stdout


def test_subpackages_are_visible_links_not_path_tricks():
    pkg = os.path.join(ROOT, "stn_triton")
    for name in ("kernels", "models"):
        link = os.path.join(pkg, name)
        assert os.path.islink(link) and os.readlink(link) == os.path.join("..", name)
    init = open(os.path.join(pkg, "__init__.py")).read()
    assert "__path__" not in init.replace("``", "")  # no search-path manipulation


def test_no_dev_tooling_in_the_runtime_package():
    """AOT compilation, cuobjdump parsing and the AOT tables are benchmark tooling (bench/)."""
    for folder in ("kernels", "stn_triton"):
        for f in os.listdir(os.path.join(ROOT, folder)):
            if f.endswith(".py"):
                text = open(os.path.join(ROOT, folder, f)).read()
                for word in ("aot_configs", "cuobjdump", "ASTSource", "from bench", "import bench"):
                    assert word not in text, f"{folder}/{f} mentions {word}"


@pytest.mark.slow
def test_wheel_holds_kernels_and_models_under_stn_triton(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"stn_triton"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "stn_triton/kernels/warp.py" in names and "stn_triton/models/mnist.py" in names
