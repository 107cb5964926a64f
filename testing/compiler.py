"""Running the AOT compiler from tests: ``python -m bench.static`` in a child process without the
Triton interpreter (the test process has it on; the compiler needs the real JITFunctions)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_compiler_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root in a process without TRITON_INTERPRET
    (this one has the interpreter on, and the AOT compiler needs the real JITFunctions)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def static_report(*args):
    proc = run_compiler_module("bench.static", "--json", *args)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def check_rows(rows):
    assert rows
    for r in rows:
        where = f"{r['label']} sm_{r['arch']}"
        assert r["spill_bytes"] == 0, f"{where}: {r['spill_bytes']} bytes of local memory (spills)"
        assert r["registers"] <= 255, where
        assert r["global_loads"] > 0 and r["global_stores"] + r["atomics"] > 0, where
