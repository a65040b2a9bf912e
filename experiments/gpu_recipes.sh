#!/usr/bin/env bash
# The GPU runs as one prepared command: train recipes (default:
# `fast`, then `reference`) on real CIFAR-10 with the test set scored after
# every epoch, each stopped after a time limit, and record each run's time
# to 90.07% test accuracy and its best test accuracy in
# experiments/results/gpu_<recipe>/ (experiments/record_run.py).
#
#   bash experiments/gpu_recipes.sh [--quick | --prepare] [--minutes M]
#     [--archive FILE] [RECIPE ...]
#
# --minutes M  per-recipe limit (default 4.25: two recipes and the set-up
#              fit one 10-minute command); at the limit the trainer saves and
#              stops, and the same command later resumes the runs (and their
#              wall-time clocks) where they stopped.
# --archive F  also packs the results into the .tgz file F, to copy them
#              off the GPU machine: unpack it into experiments/results/.
# --quick      a CPU rehearsal of the whole script (tiny model, synthetic
#              data, 2 epochs, results in /tmp): checks the plumbing only.
# --prepare    fills .gpu_bundle/ for a GPU machine without network
#              (gpu_setup.sh).
#
# On the GPU machine, in this checkout (with .gpu_bundle/ when it has no
# network):
#
#   PYTHONUNBUFFERED=1 bash experiments/gpu_recipes.sh
#
# then commit experiments/results/gpu_*/. Checked on a CPU only (--quick,
# and the .npz data path); not run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/gpu_setup.sh
minutes=4.25
quick=0
archive=
recipes=()
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --minutes) minutes=$2; shift ;;
    --archive) archive=$2; shift ;;
    --prepare) gpu_prepare; exit 0 ;;
    *) recipes+=("$1") ;;
  esac
  shift
done
((${#recipes[@]})) || recipes=(fast reference)

extra=(--config.test_every_epoch=True)
results=experiments/results
if ((quick)); then
  extra+=(--dataset synthetic --model tiny --epochs 2
    --config.val_size=64 --config.train_size=128 --config.batch_size=32
    --config.eval_batch_size=50 --config.log_every_steps=1)
  results=/tmp/gpu_recipes_quick
  runs=/tmp/gpu_recipes_quick/runs
  minutes=2
else
  runs=runs
  gpu_setup
  extra+=("${DATA_ARGS[@]}")
fi

limit=$("$PY" -c "print(int(float('$minutes') * 60))")
for recipe in "${recipes[@]}"; do
  echo "== $recipe: at most $minutes minutes"
  "$PY" experiments/record_run.py --name "gpu_$recipe" \
    --workdir "$runs/gpu_$recipe" --results "$results" --time-limit "$limit" \
    -- "$PY" -m densenet_jax.train --config "$recipe" \
    --workdir "$runs/gpu_$recipe" "${extra[@]}"
done
if [[ -n $archive ]]; then
  tar czf "$archive" -C "$results" \
    $(cd "$results" && ls -d gpu_* 2>/dev/null)
fi
