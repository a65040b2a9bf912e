#!/usr/bin/env bash
# The GPU check as one command that fits 10 minutes on one H100:
# train-step and eval throughput of the reference network (python -m
# densenet_jax.benchmark: synthetic batches resident on the device) in
# float32 and bfloat16 at batch 128, 256 and 512, then one full training
# epoch of the reference recipe (351 steps of batch 128 with the Keras
# augmentation, then validation, on real CIFAR-10), whose epoch time
# metrics.csv records. Results in $RESULTS_DIR/gpu_check/ (default
# experiments/results/gpu_check/):
# bench_<dtype>_<batch>.json, the epoch's record (record_run.py) and
# summary.md, the table of it all.
#
#   bash experiments/gpu_check.sh [--quick | --prepare]
#
# --quick    a CPU rehearsal (tiny preset, batches 16 and 32, one epoch of
#            the small synthetic data set, results in /tmp/gpu_check_quick):
#            checks the plumbing only.
# --prepare  fills .gpu_bundle/ for a GPU machine without network
#            (gpu_setup.sh).
#
# On the GPU machine, in this checkout (with .gpu_bundle/ when it has no
# network):
#
#   PYTHONUNBUFFERED=1 bash experiments/gpu_check.sh
#
# then commit experiments/results/gpu_check/ (or copy it there from the
# RESULTS_DIR the run wrote to).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/gpu_setup.sh
quick=0
case ${1:-} in
  --quick) quick=1 ;;
  --prepare) gpu_prepare; exit 0 ;;
  "") ;;
  *) echo "usage: bash experiments/gpu_check.sh [--quick | --prepare]" >&2
     exit 2 ;;
esac

if ((quick)); then
  results=/tmp/gpu_check_quick
  model=tiny
  batches=(16 32)
  bench=(--steps 1 --repeats 1)
  train=(--dataset synthetic --model tiny --config.val_size=64
    --config.batch_size=32 --config.eval_batch_size=50)
else
  # Each result is written as soon as it is measured: what finished is
  # kept even if the command is stopped.
  results=${RESULTS_DIR:-experiments/results}
  model=reference
  batches=(128 256 512)
  bench=(--steps 20 --repeats 3)
  gpu_setup
  train=("${DATA_ARGS[@]}")
fi
out=$results/gpu_check
rm -rf "$out"
mkdir -p "$out"

for dtype in float32 bfloat16; do
  for batch in "${batches[@]}"; do
    echo "== benchmark: $model, $dtype, batch $batch"
    "$PY" -m densenet_jax.benchmark --model "$model" --dtype "$dtype" \
      --batch-size "$batch" "${bench[@]}" --json "$out/bench_${dtype}_$batch.json"
  done
done

echo "== one training epoch of the reference recipe"
"$PY" experiments/record_run.py --name epoch --workdir "$out/run" \
  --results "$out" -- "$PY" -m densenet_jax.train --config reference \
  --workdir "$out/run" --epochs 1 "${train[@]}"
rm -rf "$out/run"

{
  echo "# GPU check: $model, commit $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  "$PY" -m densenet_jax.benchmark --summarize "$out"/bench_*.json
  echo
  "$PY" - "$out/epoch/metrics.csv" <<'PY'
import csv, sys

epoch = next(csv.DictReader(open(sys.argv[1])))
print(
  f"One epoch of the reference recipe: {float(epoch['epoch_time_s']):.1f} s "
  f"(compilation included), training loss {float(epoch['loss']):.3f}, "
  f"validation accuracy {float(epoch['val_accuracy']):.4f}."
)
PY
} | tee "$out/summary.md"
