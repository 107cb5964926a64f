#!/usr/bin/env bash
# Everything only a GPU can show, in one call on a lent GPU machine (torch + triton preinstalled,
# no registry: the working tree runs with PYTHONPATH=.). Usage, from the repository root:
#
#   STN_GIT_COMMIT=<sha> bash bench/run_gpu.sh [first-light|tests|bench|tune|recipes|all]   (default: all)
#
# Run `first-light` FIRST, alone: it fits one call (estimate on an H100 / H200, ~4 min of the
# 6 it is sized for): start-up and imports ~0.5 min; bench.first_light, 14 checks of the compiled
# kernels against the PyTorch path = ~28 Triton JIT compiles (~1-3 s each) ~1 min; the headline
# `pytest bench/ --headline` table, 42 rows (affine fwd and fwd + bwd at the paper's MNIST and SVHN
# shapes and 64x64x224^2, fp32 and bf16, vs eager and torch.compile; TPS K = 16): ~14 more JIT
# compiles (~0.5 min), 14 torch.compile graphs (12 affine, 2 TPS; ~5-10 s each with inductor,
# ~2 min), timing ~0.5 min. Writes first_light.json, headline.json (pytest-benchmark) and
# headline.md (bench.summarize) under $OUT.
#
# The device runs one command for at most 10 minutes, and `pytest bench/` with every case
# (torch.compile compiles each shape once) may take longer: split it across calls with
# STN_BENCH_ARGS, e.g. STN_BENCH_ARGS='-k "test_affine and not deterministic and fp32"', then the
# same with bf16, then '-k "test_tps or e2e or deterministic"'; each call writes its own bench.json.
#
# Writes under $OUT (or bench/results/run-<stamp>/ when OUT is unset):
#   env.txt          device, driver, versions, commit
#   gpu_tests.log    the test-suite on cuda (STN_TEST_CUDA=1: compiled kernels, GPU-only tests)
#   tune.json/.md    launch-config sweep (python -m bench.tune): default vs best tiling per case
#   bench.json       pytest-benchmark JSON of `pytest bench/` (copy it to bench/results/ and
#                    regenerate the summary with `python -m bench.summarize bench/results/<file>.json`)
#   recipes/         paper-profile recipe results, when asked for (set STN_RECIPE_OUT to a folder
#                    carried between calls, e.g. runs/mnist_addition_paper, to resume there)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
stage="${1:-all}"
out="${OUT:-bench/results/run-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
status=0

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: ${STN_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__)"
} | tee "$out/env.txt"

if [[ "$stage" == first-light ]]; then
  echo "== first light: compiled kernels vs the PyTorch path"
  timeout 150 python -m bench.first_light --json "$out/first_light.json" 2>&1 | tee "$out/first_light.log" | tail -16
  status=$((status | ${PIPESTATUS[0]}))
  echo "== headline table: pytest bench/ --headline"
  timeout 240 python -m pytest bench --headline -q -p no:cacheprovider --benchmark-json="$out/headline.json" \
      --benchmark-columns=median,rounds 2>&1 | tail -4
  status=$((status | ${PIPESTATUS[0]}))
  python -m bench.summarize "$out/headline.json" | tee "$out/headline.md" | tail -50
fi

if [[ "$stage" == tests || "$stage" == all ]]; then
  echo "== GPU tests"
  # --maxfail, not -x: one borderline tolerance should not cost the rest of the call's results
  STN_TEST_CUDA=1 python -m pytest tests -q --maxfail=25 -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -25
  status=$((status | ${PIPESTATUS[0]}))
fi

if [[ "$stage" == bench || "$stage" == all ]]; then
  echo "== pytest bench/"
  # shellcheck disable=SC2086  (STN_BENCH_ARGS is deliberately word-split: it holds pytest options)
  eval python -m pytest bench -q -p no:cacheprovider --benchmark-json="$out/bench.json" \
      --benchmark-columns=median,rounds ${STN_BENCH_ARGS:-} 2>&1 | tail -5
  status=$((status | ${PIPESTATUS[0]}))
  python -m bench.summarize "$out/bench.json" | tee "$out/summary.md" | tail -60
fi

if [[ "$stage" == tune || "$stage" == all ]]; then
  echo "== launch-config sweep"
  # shellcheck disable=SC2086  (STN_TUNE_ARGS holds options, e.g. --quick or --kernels warp_fwd warp_bwd)
  python -m bench.tune --json "$out/tune.json" ${STN_TUNE_ARGS:-} 2>&1 | tee "$out/tune.md" | tail -40
  status=$((status | ${PIPESTATUS[0]}))
fi

if [[ "$stage" == recipes || "$stage" == all ]]; then
  # --resume: a call cut off by the device's 10-minute limit continues where it stopped when rerun
  echo "== paper-profile recipes (one seed each, resumable)"
  mkdir -p "$out/recipes"
  for model in fcn st-fcn 2xst-fcn cnn; do
    python -m repro.mnist_addition --profile paper --device cuda --model "$model" --seeds 0 --resume \
        --out "${STN_RECIPE_OUT:-$out/recipes/mnist_addition}" 2>&1 | tail -3
    status=$((status | ${PIPESTATUS[0]}))
  done
fi
exit $status
