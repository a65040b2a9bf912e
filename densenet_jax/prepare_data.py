"""Builds the TFDS `cifar10` or `cifar100` data dir from a local copy, for
machines without internet.

    python -m densenet_jax.prepare_data cifar-10-binary.tar.gz --data-dir DIR
    python -m densenet_jax.prepare_data cifar-100-python.tar.gz
    python -m densenet_jax.prepare_data cifar10-jpeg.tar.gz   # image folders
    python -m densenet_jax.prepare_data path/to/cifar10   # unpacked folders

SOURCE is one of the official archives (`cifar-10-binary.tar.gz`,
`cifar-10-python.tar.gz`, `cifar-100-binary.tar.gz`,
`cifar-100-python.tar.gz`) or a folder or tarball of 32x32 images laid out
as `train/<class>/*.png|jpg` and `test/<class>/*` (10 classes: CIFAR-10's
names; 100: CIFAR-100's). The images are written in the official binary
layout and TFDS' own builder prepares them, so the result is the data dir
TFDS would have downloaded (for an image-folder copy, the images of each
split in a fixed shuffled order). The data set is checked (counts per split
and class, image size) in a temporary folder beside the target, then moved
in place: a failure leaves no half-written data dir.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile

import numpy as np

from densenet_jax import cli, data, errors
from densenet_jax.cifar_files import Source, read_source, write_binary


@contextlib.contextmanager
def _any_checksum():
  """The archive is written here, so its checksum is not the official one:
  TFDS' checksum check is left out, for this build only."""
  from tensorflow_datasets.core.download import download_manager

  cls = download_manager.DownloadManager
  original = cls._register_or_validate_checksums

  def record(self, url, url_info, path):
    self._recorded_url_infos[url] = url_info

  cls._register_or_validate_checksums = record
  try:
    yield
  finally:
    cls._register_or_validate_checksums = original


def build(source: Source, data_dir, work) -> pathlib.Path:
  """Runs TFDS' builder on `source` in `work`; returns the version folder."""
  import tensorflow_datasets as tfds

  manual = pathlib.Path(work) / "manual"
  manual.mkdir()
  write_binary(source, manual)
  builder = tfds.builder(
    source.name, data_dir=str(data_dir), file_format="array_record"
  )
  with _any_checksum():
    builder.download_and_prepare(
      download_dir=str(pathlib.Path(work) / "downloads"),
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
    )
  return pathlib.Path(builder.data_dir)


def check(source: Source, data_dir) -> dict:
  """Reads the prepared data set back: the counts per split and class and
  the image size must be those of the source."""
  import tensorflow_datasets as tfds

  counts = {}
  for split in ("train", "test"):
    ds = tfds.data_source(source.name, split=split, data_dir=str(data_dir))
    read = data._read_source(ds, f"checking {split}", progress=True)
    if read.images.shape[1:] != (32, 32, 3):
      raise errors.UserError(
        f"prepared {source.name} {split} has images of shape "
        f"{read.images.shape[1:]}, not (32, 32, 3)"
      )
    counts[split] = np.bincount(read.labels, minlength=len(source.class_names))
    if not np.array_equal(counts[split], source.counts(split)):
      raise errors.UserError(
        f"prepared {source.name} {split} has {counts[split].tolist()} images "
        f"per class, the source {source.counts(split).tolist()}"
      )
  return counts


def prepare(source_path, data_dir) -> dict:
  """Reads, builds, checks and moves into `data_dir`; returns the counts."""
  source = read_source(source_path)
  data_dir = pathlib.Path(data_dir).expanduser()
  import tensorflow_datasets as tfds

  version = str(tfds.builder_cls(source.name).VERSION)
  target = data_dir / source.name / version
  if target.exists():
    raise errors.UserError(
      f"{target} already exists: remove it to prepare {source.name} again"
    )
  created = [p for p in (data_dir, data_dir / source.name) if not p.exists()]
  target.parent.mkdir(parents=True, exist_ok=True)
  work = pathlib.Path(tempfile.mkdtemp(prefix=".prepare-", dir=data_dir))
  try:
    built = build(source, work / "data", work)
    counts = check(source, work / "data")
    os.replace(built, target)
  except BaseException:
    for path in reversed(created):
      shutil.rmtree(path, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return {
    "name": source.name,
    "dir": str(target),
    "counts": counts,
    "class_names": source.class_names,
  }


def _report(result) -> None:
  names, counts = result["class_names"], result["counts"]
  width = max(len(n) for n in names)
  print(f"{'class':<{width}}  {'train':>6}  {'test':>6}")
  for i, name in enumerate(names):
    print(f"{name:<{width}}  {counts['train'][i]:>6}  {counts['test'][i]:>6}")
  print(
    f"{result['name']}: {counts['train'].sum():,} train and "
    f"{counts['test'].sum():,} test images of 32x32, checked; ready in "
    f"{result['dir']}"
  )


def parse_args(argv=None):
  parser = cli.ArgumentParser(
    prog="python -m densenet_jax.prepare_data",
    description=__doc__.split("\n\n")[0].replace("\n", " "),
  )
  parser.add_argument(
    "source",
    metavar="SOURCE",
    help="an official CIFAR archive (binary or python), or an image folder "
    "or tarball with train/<class>/ and test/<class>/",
  )
  parser.add_argument(
    "--data-dir",
    default=os.environ.get("TFDS_DATA_DIR")
    or str(pathlib.Path.home() / "tensorflow_datasets"),
    help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command; user errors exit non-zero with one line."""
  return cli.run(_main, argv)


def _main(argv):
  args = parse_args(argv)
  result = prepare(args.source, args.data_dir)
  _report(result)
  return result


if __name__ == "__main__":
  main()
