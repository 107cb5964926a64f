"""bench.summarize turns a pytest-benchmark JSON into bench/README.md's tables (formatting only:
the numbers here are made up and never leave this test)."""
import json

from bench.summarize import summarize

ENV = dict(device="FakeGPU", driver="0", cuda="0", torch="t", triton="tr", commit="abc", copy_bandwidth_gbps=1000.0)


def entry(**extra):
    return {"extra_info": {**ENV, **extra}}


def test_summarize_tables(tmp_path):
    common = dict(transform="affine", case="mnist", pass_="fwd", dtype="fp32", layout="nchw", torch_eager_ms=2.0)
    benchmarks = [
        entry(provider="stn_triton", median_ms=1.0, speedup_vs_eager=2.0, gbps=500.0, copy_bw_fraction=0.5, **common),
        entry(provider="torch_compile", median_ms=1.5, **common),
        entry(provider="stn_triton_deterministic", case="svhn64", dtype="bf16", layout="nhwc", median_ms=1.2,
              atomic_ms=1.0, deterministic_cost=1.2, transform="affine", pass_="fwd_bwd", gbps=1.0),
        entry(model="2xst-fcn", backend="triton", median_ms=1.0, steps_per_s=30.0),
        entry(model="2xst-fcn", backend="torch", median_ms=2.0, steps_per_s=10.0),
        {"extra_info": {}},  # a skipped/foreign row is ignored
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    text = summarize(str(path))
    assert "Device: FakeGPU" in text
    assert "| affine | mnist | fwd | fp32 | nchw | 1.0000 | 2.0000 | 1.5000 | 500 | 50% | 2.00x | 1.50x |" in text
    assert "| svhn64 | bf16 | nhwc | 1.2000 | 1.0000 | 1.20x |" in text
    assert "| 2xst-fcn | 30.0 | 10.0 | 3.00x |" in text


def test_cpu_run_is_labelled(tmp_path):
    e = dict(ENV, device="cpu", transform="affine", case="mnist", pass_="fwd", dtype="fp32", layout="nchw",
             provider="stn_triton", median_ms=1.0, torch_eager_ms=1.0, speedup_vs_eager=1.0, gbps=1.0,
             copy_bw_fraction=None)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": [{"extra_info": e}]}))
    assert "CPU run" in summarize(str(path))
