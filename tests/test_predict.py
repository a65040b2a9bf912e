"""predict: image files of any mode, the first test images, bad input."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from densenet_jax import data, images, inference, predict


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """A JPEG, a large PNG, a grayscale and an RGBA image."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (32, 32, 3), np.uint8)
  Image.fromarray(rgb).save(folder / "small.jpg")
  Image.fromarray(np.kron(rgb, np.ones((3, 2, 1), np.uint8))).save(
    folder / "large.png"
  )
  Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
  Image.fromarray(rng.integers(0, 256, (50, 50, 4), np.uint8)).save(
    folder / "rgba.png"
  )
  return sorted(folder.iterdir())


def test_predicts_top_k_classes_of_image_files(
  trained_workdir, image_files, capsys, unchanged
):
  with unchanged(trained_workdir):
    results = predict.main(
      ["--workdir", str(trained_workdir), "--top-k", "4"]
      + [str(p) for p in image_files]
    )
  model = inference.load(trained_workdir)
  expected = model.predict(images.read_images(image_files))
  assert [r["image"] for r in results] == [str(p) for p in image_files]
  for result, probs in zip(results, expected):
    names = [name for name, _ in result["top_k"]]
    ps = [p for _, p in result["top_k"]]
    assert len(names) == 4 and ps == sorted(ps, reverse=True)
    assert names[0] == model.class_names[probs.argmax()]
    np.testing.assert_allclose(ps, np.sort(probs)[::-1][:4], rtol=1e-6)
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 4 and out[0].startswith(str(image_files[0]))


def test_without_files_the_first_test_images_with_true_labels(
  trained_workdir, capsys
):
  results = predict.main(["--workdir", str(trained_workdir), "--num", "5"])
  labels = data.load("synthetic", val_size=64).splits["test"].labels[:5]
  assert [r["label"] for r in results] == [f"class{i}" for i in labels]
  assert all(len(r["top_k"]) == 3 for r in results)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("test[0]  true class") and out[-1].endswith("right")


@pytest.mark.parametrize(
  "args, expected",
  [
    (["{bad}"], "cannot read image .*notes.txt: not an image format"),
    (["{missing}"], "image .*missing.jpg does not exist"),
    (["--top-k", "0"], "argument --top-k: must be a positive integer, not 0"),
    (["--num", "-3"], "argument --num: must be a positive integer, not -3"),
    (["--split", "dev"], "argument --split: invalid choice: 'dev'"),
  ],
)
def test_bad_input_fails_clearly_and_changes_nothing(
  trained_workdir, image_files, tmp_path, args, expected, cli_error, unchanged
):
  (tmp_path / "notes.txt").write_text("hello")
  paths = {"bad": tmp_path / "notes.txt", "missing": tmp_path / "missing.jpg"}
  args = [a.format(**paths) for a in args]
  with unchanged(trained_workdir):
    message = cli_error(
      predict.main,
      ["--workdir", trained_workdir, image_files[0], *args, image_files[1]],
    )
  assert re.search(expected, message), message


def test_missing_workdir(tmp_path, image_files, cli_error):
  message = cli_error(
    predict.main, ["--workdir", tmp_path / "nope", image_files[0]]
  )
  assert message == f"error: workdir {tmp_path / 'nope'} does not exist"


def test_python_m_entry_point(trained_workdir, image_files):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run(
    [sys.executable, "-m", "densenet_jax.predict"]
    + ["--workdir", str(trained_workdir), str(image_files[0])],
    capture_output=True,
    text=True,
    cwd=repo,
    env=env,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  assert run.stdout.startswith(str(image_files[0]))
  assert len(run.stdout.split()) == 7  # path and 3 (class, probability)
  bad = subprocess.run(
    [sys.executable, "-m", "densenet_jax.predict"]
    + ["--workdir", str(trained_workdir / "nope")],
    capture_output=True,
    text=True,
    cwd=repo,
    env=env,
    timeout=300,
  )
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines() == [
    f"error: workdir {trained_workdir / 'nope'} does not exist"
  ]
