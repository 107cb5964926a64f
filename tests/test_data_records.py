"""Inferred data records for results made before records existed (repro.data_records, issue #29):
the data version at a commit, the readings of each version, the backfill of a results folder, and
that every published result of a versioned data set now records its data."""
import json

import pytest

from repro import data_records
from repro.data import options, sets
from repro.paths import PUBLISHED_DIR

V1_SOURCE = "import torch\n\nVERSION = 1\nCHUNK = 4096\n"
V3_SOURCE = 'X = 1\nVERSIONS = {"R": 2, "RTS": 2, "P": 3, "E": 3,\n            "TC": 3, "addition": 2}\n'


def test_versions_in_both_layouts():
    assert data_records.versions_in(V1_SOURCE) == 1
    assert data_records.versions_in(V3_SOURCE) == {"R": 2, "RTS": 2, "P": 3, "E": 3, "TC": 3, "addition": 2}
    with pytest.raises(ValueError, match="no VERSIONS"):
        data_records.versions_in("nothing here")


def test_readings_of_each_version():
    assert options.readings("P", 1) == options.readings("P", 2) == options.resolve("P", options.VERSION2["P"])
    assert options.readings("P", 3) == options.resolve("P", options.VERSION3["P"])
    assert options.readings("P", sets.version("P")) == options.resolve("P")
    assert options.readings("TC", 2) == options.resolve("TC", options.VERSION2["TC"])
    assert options.readings("TC", 3) == options.resolve("TC")
    assert options.readings("R", 1) == {} and options.readings("addition", 2) == {}


def _entry(seed_commits):
    runs = [{"seed": s, "error": 1.0 + s, "versions": {"git": c}} for s, c in seed_commits]
    return {"error": 1.5, "seeds": [s for s, _ in seed_commits], "runs": runs}


def test_backfill_writes_inferred_records(tmp_path):
    sources = {"aaa": V1_SOURCE, "bbb": V3_SOURCE}
    d = tmp_path / "P"
    (d / "fcn" / "seed0").mkdir(parents=True)
    (d / "fcn" / "seed0" / "result.json").write_text(json.dumps({"model": "fcn", "seed": 0, "error": 1.0}))
    recorded = {"set": "P", "version": 4, "options": options.resolve("P")}
    (d / "results.json").write_text(json.dumps({"experiment": "distorted_mnist_P", "models": {
        "fcn": _entry([(0, "aaa"), (1, "aaa")]), "st-fcn-aff": _entry([(0, "bbb")]),
        "cnn": {**_entry([(0, "bbb")]), "data": recorded}}}, indent=1) + "\n")
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "results.json").write_text(json.dumps({"experiment": "svhn", "models": {"m": _entry([(0, "x")])}}))
    changed = data_records.backfill(tmp_path, sources.__getitem__)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in changed) == ["P/fcn/seed0/result.json", "P/results.json"]
    models = json.loads((d / "results.json").read_text())["models"]
    assert models["fcn"]["data"]["version"] == 1 and models["fcn"]["data"]["options"] == options.readings("P", 1)
    assert "commit aaa" in models["fcn"]["data"]["inferred"]
    assert models["st-fcn-aff"]["data"]["version"] == 3 and models["st-fcn-aff"]["data"]["options"]["sigma"] == 3.75
    assert models["cnn"]["data"] == recorded  # a recorded entry is left alone
    seed0 = json.loads((d / "fcn" / "seed0" / "result.json").read_text())
    assert seed0["data"] == models["fcn"]["data"]
    assert (d / "results.json").read_text().endswith("\n") and not (d / "fcn/seed0/result.json").read_text().endswith("\n")
    assert data_records.backfill(tmp_path, sources.__getitem__) == []  # idempotent


def test_backfill_refuses_mixed_versions_and_missing_commits(tmp_path):
    sources = {"aaa": V1_SOURCE, "bbb": V3_SOURCE}
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "distorted_mnist_P", "models": {
        "fcn": _entry([(0, "aaa"), (1, "bbb")])}}))
    with pytest.raises(SystemExit, match="different data versions"):
        data_records.backfill(tmp_path, sources.__getitem__)
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "mnist_addition", "models": {
        "fcn": {"error": 1.0, "seeds": [0], "runs": [{"seed": 0, "error": 1.0, "versions": {}}]}}}))
    with pytest.raises(SystemExit, match="records no commit"):
        data_records.backfill(tmp_path, sources.__getitem__)


def test_every_published_result_of_a_versioned_set_records_its_data():
    missing = []
    for rj in sorted(PUBLISHED_DIR.rglob("results.json")):
        doc = json.loads(rj.read_text())
        if not isinstance(doc, dict) or data_records.data_set_of(doc.get("experiment", "")) is None:
            continue
        for model, entry in doc.get("models", {}).items():
            data = entry.get("data")
            if not data or set(data) < {"set", "version", "options"}:
                missing.append(f"{rj.relative_to(PUBLISHED_DIR)}: {model}")
    assert not missing, missing
