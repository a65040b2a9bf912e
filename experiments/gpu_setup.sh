# Shared by the GPU scripts (gpu_recipes.sh, gpu_check.sh); source it.
#
# For a GPU machine without network access, whose Python has JAX but not
# TFDS, ml_collections or tensorboardX. On a machine with network,
# `--prepare` (gpu_prepare) fills .gpu_bundle/ in this checkout with their
# wheels, the JPEG CIFAR-10 archive and its converter from $CIFAR_SOURCE
# (default ../shared/data; 19 MB in all); copy the checkout with that folder
# to the GPU machine. There gpu_setup installs the wheels and points
# DATA_ARGS at real CIFAR-10: the local TFDS data dir when the machine has
# TFDS, else the archive decoded to a .npz (numpy and pillow).
PY=${PYTHON:-python3}
BUNDLE=.gpu_bundle
CIFAR_SOURCE=${CIFAR_SOURCE:-../shared/data}
# The package from this checkout, installed or not (experiments/*.py import it).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

gpu_prepare() {
  mkdir -p "$BUNDLE/wheels"
  "$PY" -m pip download --no-deps -q -d "$BUNDLE/wheels" \
    ml_collections==1.1.0 tensorboardX==2.6.5
  cp "$CIFAR_SOURCE/cifar10-jpeg.tar.gz" "$CIFAR_SOURCE/make_tfds_cifar10.py" \
    "$BUNDLE/"
  du -sh "$BUNDLE"
}

gpu_setup() {
  DATA_ARGS=()
  if [[ -d $BUNDLE/wheels ]]; then
    "$PY" -m pip install -q --no-index --no-deps "$BUNDLE"/wheels/*.whl
  fi
  if ! "$PY" -c "import tensorflow_datasets" 2>/dev/null; then
    local npz=/tmp/cifar10.npz
    [[ -f $npz ]] || "$PY" "$BUNDLE/make_tfds_cifar10.py" --no-tfds \
      --archive "$BUNDLE/cifar10-jpeg.tar.gz" --npz "$npz"
    DATA_ARGS=(--data-dir "$npz")
  fi
  "$PY" -c "import jax; print(jax.devices())"
}
