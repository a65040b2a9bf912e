#!/usr/bin/env bash
# The throughput table of README's Speed section, on this machine's CPU:
# python -m densenet_jax.benchmark for the reference network at batch 128,
# fp32, on 1, 2 and 4 fake CPU devices (the global batch split over them:
# they share the same cores, so this checks the plumbing's overhead, not
# scaling), in bfloat16, eval at the trainer's eval batch of 500, and in
# pipeline mode on the real CIFAR-10 (host batches and augmentation alone
# and inside the train step). Each in a fresh process, one after another.
#
#   bash experiments/cpu_benchmarks.sh [OUTPUT_DIR]
#
# Writes OUTPUT_DIR/NAME.json (default experiments/results/benchmarks_cpu)
# and summary.md, the table of them all. Needs CIFAR-10 where TFDS finds it
# (or DATA_DIR=... for --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-experiments/results/benchmarks_cpu}
mkdir -p "$out"
bench() {
  local name=$1
  shift
  echo "== $name: $*"
  "$PY" -m densenet_jax.benchmark --steps 5 --repeats 3 "$@" \
    --json "$out/$name.json"
}
for n in 1 2 4; do
  bench "devices_$n" --devices "$n"
done
bench bfloat16 --dtype bfloat16
bench eval_batch_500 --mode eval --batch-size 500
bench pipeline_cifar10 --mode pipeline --dataset cifar10 \
  ${DATA_DIR:+--data-dir "$DATA_DIR"}
{
  echo "# CPU benchmarks, commit $(git rev-parse --short HEAD)"
  echo
  "$PY" -m densenet_jax.benchmark --summarize \
    "$out"/devices_{1,2,4}.json "$out"/{bfloat16,eval_batch_500,pipeline_cifar10}.json
} | tee "$out/summary.md"
