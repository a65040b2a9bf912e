"""Image files of any mode and size -> 32x32 uint8 RGB, or a clear error."""

import numpy as np
import pytest
from PIL import Image

from densenet_jax import errors, images


def save(tmp_path, name, array, mode=None):
  path = tmp_path / name
  Image.fromarray(array, mode).save(path)
  return path


def test_a_32x32_rgb_image_is_read_unchanged(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  path = save(tmp_path, "cifar.png", pixels)
  np.testing.assert_array_equal(images.read_image(path), pixels)


def test_other_sizes_keep_the_centre_square(tmp_path):
  wide = np.zeros((40, 120, 3), np.uint8)
  wide[:, :40] = (255, 0, 0)
  wide[:, 40:80] = (0, 255, 0)
  wide[:, 80:] = (0, 0, 255)
  out = images.read_image(save(tmp_path, "wide.jpg", wide))
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  green = np.array([0, 255, 0])
  assert np.abs(out[:, 2:-2].astype(int) - green).max() < 40  # JPEG noise


def test_grayscale_palette_and_16_bit_become_rgb(tmp_path):
  gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
  out = images.read_image(save(tmp_path, "gray.png", gray))
  assert out.shape == (32, 32, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  palette = Image.fromarray(gray).convert("P")
  palette.save(tmp_path / "palette.gif")
  assert images.read_image(tmp_path / "palette.gif").shape == (32, 32, 3)
  deep = Image.fromarray(np.full((32, 32), 40000, np.uint16))
  deep.save(tmp_path / "deep.png")
  assert deep.mode.startswith("I")
  out = images.read_image(tmp_path / "deep.png")
  assert out.shape == (32, 32, 3) and out.max() == 40000 >> 8


def test_transparency_is_composited_onto_white(tmp_path):
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[:16] = (255, 0, 0, 255)  # opaque red top, transparent bottom
  out = images.read_image(save(tmp_path, "rgba.png", rgba))
  np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(out[-1, -1], (255, 255, 255))
  gray_alpha = Image.fromarray(rgba[..., 3]).convert("LA")
  gray_alpha.save(tmp_path / "la.png")
  assert images.read_image(tmp_path / "la.png").shape == (32, 32, 3)


def test_unreadable_files_name_the_file(tmp_path):
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(errors.UserError, match="notes.txt: not an image"):
    images.read_images([tmp_path / "notes.txt"])
  good = save(tmp_path, "good.jpg", np.zeros((64, 64, 3), np.uint8))
  cut = tmp_path / "cut.jpg"
  cut.write_bytes(good.read_bytes()[:300])
  with pytest.raises(errors.UserError, match="cannot read image .*cut.jpg"):
    images.read_images([good, cut])
  with pytest.raises(errors.UserError, match="missing.png does not exist"):
    images.read_image(tmp_path / "missing.png")
  with pytest.raises(errors.UserError, match="is a directory"):
    images.read_image(tmp_path)
