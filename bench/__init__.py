"""Benchmarks (``pytest bench/``) and the static compile report (``python -m bench.static``)."""
