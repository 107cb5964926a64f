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
# ~2 min), timing ~0.5 min; bench.host_overhead (host µs per call, real and with the launches
# stubbed, beside the eager compositions; 8 JIT compiles) ~0.5 min. Writes first_light.json,
# headline.json (pytest-benchmark), headline.md (bench.summarize) and host_overhead.md under $OUT.
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
#   recipes/         paper-profile recipe results (set STN_RECIPE_OUT to a folder carried between
#                    calls, e.g. runs/paper, to resume there; publish with python -m repro.publish)
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
  echo "== host cost per call: python -m bench.host_overhead (real vs launch stubbed, vs the eager compositions)"
  timeout 90 python -m bench.host_overhead --rounds 10 --inner 100 2>&1 | tee "$out/host_overhead.md" | tail -60
  status=$((status | ${PIPESTATUS[0]}))
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
  # The CNN family at the paper profile (what a 2-core CPU cannot afford), in the order of their
  # value. Each row first prints a one-line estimate from a 200-step pilot (steps/s on this GPU;
  # online batches are rendered on the GPU), then trains with --resume into STN_RECIPE_OUT, so a
  # call cut off by the device's 10-minute limit continues where it stopped when rerun with the
  # same folder carried. Finished rows are skipped ("already complete").
  echo "== paper-profile recipes (one seed each, resumable; STN_RECIPE_ROWS to choose rows)"
  rec_out="${STN_RECIPE_OUT:-$out/recipes}"
  mkdir -p "$rec_out"
  rows="${STN_RECIPE_ROWS:-mnist_addition:cnn distorted_mnist:RTS:st-cnn-aff distorted_mnist:RTS:cnn distorted_mnist:R:cnn distorted_mnist:R:st-cnn-aff distorted_mnist:P:st-cnn-aff distorted_mnist:E:st-cnn-aff distorted_mnist:TC:st-cnn-aff distorted_mnist:TC:cnn mnist_addition:st-fcn mnist_addition:2xst-fcn}"
  for row in $rows; do
    IFS=: read -r recipe a b <<< "$row"
    if [[ "$recipe" == distorted_mnist ]]; then args=(--dataset "$a" --model "$b"); else args=(--model "$a"); fi
    pilot="$out/pilot/$row"
    python -m repro."$recipe" "${args[@]}" --profile paper --device cuda --seed 0 --steps 200 --restart --no-progress \
        --out "$pilot" > "$out/pilot.log" 2>&1
    python - "$pilot" "$row" <<'PY'
import json, pathlib, sys
found = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).rglob("result.json")]
if found and found[0].get("images_per_s"):
    steps_s = found[0]["images_per_s"] / found[0]["schedule"]["batch_size"] if "schedule" in found[0] else found[0]["images_per_s"] / 256
    print(f"estimate {sys.argv[2]}: {steps_s:.1f} steps/s over the 200-step pilot -> 150k steps in {150000 / steps_s / 60:.0f} min")
else:
    print(f"estimate {sys.argv[2]}: pilot failed (see pilot.log)")
PY
    python -m repro."$recipe" "${args[@]}" --profile paper --device cuda --seed 0 --resume --no-progress \
        --out "$rec_out/$recipe" 2>&1 | tail -3
    status=$((status | ${PIPESTATUS[0]}))
  done
fi

exit $status
