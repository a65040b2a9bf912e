#!/usr/bin/env bash
# The tutorial's own Keras recipe and the reference recipe, side by side on
# one machine: the same CIFAR-10 (TFDS data dir), the same 351 steps per
# epoch, each from the same seeds; per-epoch training loss and validation
# accuracy of both in experiments/results/side_by_side/.
#
#   bash experiments/side_by_side.sh [EPOCHS [SEED ...]]   # default: 1 epoch, seeds 0 1
#
# Set TFDS_DATA_DIR for a data dir other than ~/tensorflow_datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-1}
shift || true
seeds=${*:-0 1}
results=experiments/results/side_by_side
runs=runs/side_by_side
mkdir -p "$results"
for seed in $seeds; do
  python experiments/keras_tutorial.py --epochs "$epochs" --seed "$seed" \
    --output "$runs/keras_seed$seed"
  mkdir -p "$results/keras_seed$seed"
  cp "$runs/keras_seed$seed"/{metrics.csv,history.json} "$results/keras_seed$seed/"
  python experiments/record_run.py --name "side_by_side/jax_seed$seed" \
    --workdir "$runs/jax_seed$seed" -- \
    python -m densenet_jax.train --config reference --epochs "$epochs" \
    --seed "$seed" --workdir "$runs/jax_seed$seed"
done
python experiments/side_by_side_table.py "$results"
