"""The TF2/Keras tutorial's DenseNet and training script, in tf_keras.

    python experiments/keras_tutorial.py --epochs 1 --seed 0 \
      --output runs/keras_tutorial [--data-dir DIR] [--steps-per-epoch K]

The network and recipe that densenet_jax re-creates, written as the tutorial
writes them with the TF2-era Keras API (tf_keras): Adam with its defaults,
sparse categorical cross-entropy on softmax outputs, batch 128,
keras_preprocessing 1.1.2's ImageDataGenerator (rotation 40, shifts 0.2,
shear 0.2, zoom 0.2, horizontal flips, 'nearest' fill), `fit` with 351 steps
per epoch over the first 45,000 CIFAR-10 training images in the original
file order (Keras' `load_data()` order), early stopping with patience 4 on
the training loss, validation on the last 5,000 images.

Writes to --output: metrics.csv and history.json (per epoch: training loss
and accuracy as `fit` reports them, validation loss and accuracy on all
5,000 images and on the first 39 batches of 128 = 4,992 images, which is
what the tutorial's `fit(validation_data=..., validation_steps=...)` scores,
and the epoch's time), the test loss and accuracy at the end, and the
weights as `model.save_weights("model.h5")` writes them, which
`python -m densenet_jax.import_keras` turns into a densenet_jax workdir.

Tests import `densenet` from here (tests/test_keras.py): the same function
as the one this script trains.
"""

import argparse
import csv
import json
import os
import pathlib
import platform
import random
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

BATCH_SIZE = 128
TRAIN_IMAGES = 45000  # the first 45,000 training images train
STEPS_PER_EPOCH = 351  # floor(45,000 / 128)
VALIDATION_STEPS = 39  # the tutorial's: floor(5,000 / 128) batches


def conv_block(x, growth_rate):
  x1 = layers.BatchNormalization(epsilon=1.001e-5)(x)
  x1 = layers.Activation("relu")(x1)
  x1 = layers.Conv2D(2 * growth_rate, 1, use_bias=False)(x1)
  x1 = layers.BatchNormalization(epsilon=1.001e-5)(x1)
  x1 = layers.Activation("relu")(x1)
  x1 = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False)(x1)
  return layers.Concatenate()([x, x1])


def dense_block(x, blocks, growth_rate=32):
  for _ in range(blocks):
    x = conv_block(x, growth_rate)
  return x


def transition_block(x, reduction):
  x = layers.BatchNormalization(epsilon=1.001e-5)(x)
  x = layers.Activation("relu")(x)
  x = layers.Conv2D(int(x.shape[-1] * reduction), 1, use_bias=False)(x)
  return layers.AveragePooling2D(2, strides=2)(x)


def densenet(blocks=(4, 8, 16), growth_rate=32, num_classes=10):
  """The tutorial's DenseNet: 1,359,842 trainable parameters (defaults)."""
  inputs = keras.Input(shape=(32, 32, 3))
  x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
  x = layers.BatchNormalization()(x)
  for n in blocks:
    x = dense_block(x, n, growth_rate)
    x = transition_block(x, 0.5)
  x = layers.BatchNormalization(epsilon=1.001e-5)(x)
  x = layers.Activation("relu")(x)
  x = layers.GlobalAveragePooling2D()(x)
  outputs = layers.Dense(num_classes, activation="softmax")(x)
  return keras.Model(inputs, outputs)


def image_data_generator():
  """keras_preprocessing 1.1.2's ImageDataGenerator with the tutorial's
  settings; its iterators are tf_keras Sequences, as tf.keras 2.0-2.8 made
  them (`tf.keras.preprocessing.image` wrapped this very package)."""
  import keras_preprocessing

  keras_preprocessing.set_keras_submodules(
    backend=keras.backend, utils=keras.utils
  )
  from keras_preprocessing.image import ImageDataGenerator

  return ImageDataGenerator(
    rotation_range=40,
    width_shift_range=0.2,
    height_shift_range=0.2,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
  )


def _read_split(source):
  records = source.__getitems__(list(range(len(source))))
  ids = np.array([int(r["id"].decode().rpartition("_")[2]) for r in records])
  images = np.stack([r["image"] for r in records])
  labels = np.array([r["label"] for r in records], np.int64)
  return ids, images, labels


def load_cifar10(data_dir=None):
  """(x_train, y_train), (x_test, y_test) as uint8 images and int labels, in
  the order of `keras.datasets.cifar10.load_data()`: TFDS's `id` feature
  (train_NNNNN) numbers the images in the original files' order."""
  import tensorflow_datasets as tfds

  splits = []
  for split in ("train", "test"):
    source = tfds.data_source("cifar10", split=split, data_dir=data_dir)
    ids, images, labels = _read_split(source)
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(len(ids))):
      raise SystemExit(f"error: cifar10 {split} ids are not 0..{len(ids) - 1}")
    splits.append((images[order], labels[order]))
  return splits


def scores(model, images, labels) -> dict:
  """Keras' loss and accuracy of a split, batch 128, on all its images and
  on the first VALIDATION_STEPS batches (what validation_steps scores)."""
  probs = model.predict(images, batch_size=BATCH_SIZE, verbose=0)
  loss = keras.losses.sparse_categorical_crossentropy(labels, probs).numpy()
  correct = probs.argmax(-1) == labels
  n = VALIDATION_STEPS * BATCH_SIZE
  return {
    "loss": float(loss.mean()),
    "accuracy": float(correct.mean()),
    "loss_4992": float(loss[:n].mean()),
    "accuracy_4992": float(correct[:n].mean()),
  }


class EpochLog(keras.callbacks.Callback):
  """Scores the validation images after each epoch and writes every row so
  far to metrics.csv and history.json."""

  def __init__(self, x_val, y_val, output, header):
    super().__init__()
    self.x_val, self.y_val = x_val, y_val
    self.output, self.header = output, header
    self.rows = []

  def on_epoch_begin(self, epoch, logs=None):
    self.started = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    train_s = time.perf_counter() - self.started
    val = scores(self.model, self.x_val, self.y_val)
    row = {
      "epoch": epoch + 1,
      "loss": float(logs["loss"]),
      "accuracy": float(logs["accuracy"]),
      "val_loss": val["loss"],
      "val_accuracy": val["accuracy"],
      "val_loss_4992": val["loss_4992"],
      "val_accuracy_4992": val["accuracy_4992"],
      "train_time_s": train_s,
      "epoch_time_s": time.perf_counter() - self.started,
    }
    self.rows.append(row)
    print(json.dumps(row), flush=True)
    self.write()

  def write(self, test=None):
    with open(self.output / "metrics.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
      writer.writeheader()
      writer.writerows(self.rows)
    history = dict(self.header, history=self.rows, test=test)
    (self.output / "history.json").write_text(json.dumps(history, indent=2))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, required=True)
  parser.add_argument("--seed", type=int, required=True)
  parser.add_argument("--output", type=pathlib.Path, required=True)
  parser.add_argument("--data-dir", help="TFDS data dir (default: TFDS's)")
  parser.add_argument(
    "--steps-per-epoch",
    type=int,
    default=STEPS_PER_EPOCH,
    help="the tutorial's 351; fewer for a quick try",
  )
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  args.output.mkdir(parents=True, exist_ok=True)
  random.seed(args.seed)
  np.random.seed(args.seed)
  keras.utils.set_random_seed(args.seed)  # python, numpy and TensorFlow

  (x_full, y_full), (x_test, y_test) = load_cifar10(args.data_dir)
  x_full = x_full.astype("float32") / 255
  x_test = x_test.astype("float32") / 255
  x_train, y_train = x_full[:TRAIN_IMAGES], y_full[:TRAIN_IMAGES]
  x_val, y_val = x_full[TRAIN_IMAGES:], y_full[TRAIN_IMAGES:]

  model = densenet()
  model.compile(
    optimizer=keras.optimizers.Adam(),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
  )
  datagen = image_data_generator()
  datagen.fit(x_train)
  header = {
    "command": "python experiments/keras_tutorial.py "
    + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    "seed": args.seed,
    "steps_per_epoch": args.steps_per_epoch,
    "batch_size": BATCH_SIZE,
    "train_images": len(x_train),
    "validation_images": len(x_val),
    "tensorflow": __import__("tensorflow").__version__,
    "tf_keras": keras.__version__,
    "machine": platform.processor() or platform.machine(),
  }
  log = EpochLog(x_val, y_val, args.output, header)
  model.fit(
    datagen.flow(x_train, y_train, batch_size=BATCH_SIZE, seed=args.seed),
    steps_per_epoch=args.steps_per_epoch,
    epochs=args.epochs,
    callbacks=[keras.callbacks.EarlyStopping(monitor="loss", patience=4), log],
    verbose=2,
  )
  model.save_weights(str(args.output / "model.h5"))
  test = scores(model, x_test, y_test)
  test = {"loss": test["loss"], "accuracy": test["accuracy"]}
  log.write(test)
  print(f"test loss {test['loss']:.4f} accuracy {test['accuracy']:.4f}")
  print(f"wrote {args.output}/metrics.csv, history.json and model.h5")
  return log.rows, test


if __name__ == "__main__":
  main()
