"""``bench.aten_non_finite`` classifies one case end to end (a child process; a smoke test of the
script that documents why the PyTorch path keeps its non-finite rule)."""
from bench import aten_non_finite


def test_one_case_is_classified():
    assert aten_non_finite.case("nearest", "zeros", "nan") == "0, grad 0"
