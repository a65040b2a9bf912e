# Shared by the GPU scripts (gpu_recipes.sh, gpu_check.sh); source it.
#
# The device machine has no network, no TFDS, and no ml_collections or
# tensorboardX in its image. `--prepare` (gpu_prepare) fills the carried
# folder here with their wheels, the JPEG CIFAR-10 archive and its converter
# from ../shared/data (19 MB); on the device, gpu_setup installs the wheels
# and points DATA_ARGS at real CIFAR-10: the local TFDS data dir when the
# machine has TFDS, else the archive decoded to a .npz (numpy and pillow).
PY=${PYTHON:-python3}
CARRY=.gpu_carry
# The package from this checkout, installed or not (experiments/*.py import it).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

gpu_prepare() {
  mkdir -p "$CARRY/wheels"
  "$PY" -m pip download --no-deps -q -d "$CARRY/wheels" \
    ml_collections==1.1.0 tensorboardX==2.6.5
  cp ../shared/data/cifar10-jpeg.tar.gz ../shared/data/make_tfds_cifar10.py \
    "$CARRY/"
  du -sh "$CARRY"
}

gpu_setup() {
  DATA_ARGS=()
  if [[ -d $CARRY/wheels ]]; then
    "$PY" -m pip install -q --no-index --no-deps "$CARRY"/wheels/*.whl
  fi
  if ! "$PY" -c "import tensorflow_datasets" 2>/dev/null; then
    local npz=/tmp/cifar10.npz
    [[ -f $npz ]] || "$PY" "$CARRY/make_tfds_cifar10.py" --no-tfds \
      --archive "$CARRY/cifar10-jpeg.tar.gz" --npz "$npz"
    DATA_ARGS=(--data-dir "$npz")
  fi
  "$PY" -c "import jax; print(jax.devices())"
}
