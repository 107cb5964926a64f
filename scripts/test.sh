#!/usr/bin/env bash
# Set up a fresh virtual environment and run the test-suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the pin first: a loose torch pulls a CUDA build
python -m pip install -q -e ".[dev,repro]"
python -m pytest -q "$@"
