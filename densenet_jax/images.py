"""Image files -> the model's input: uint8 RGB arrays of 32x32 pixels.

Any format and mode Pillow reads is accepted: the EXIF orientation is
applied, grayscale and palette images become RGB, transparent pixels are
composited onto white, 16-bit images are scaled to 8 bits, and the image is
centre-cropped to a square and resized to 32x32 with bicubic filtering
(`PIL.ImageOps.fit`). A 32x32 image, such as a CIFAR one, is left unchanged.
"""

import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from densenet_jax import errors

SIZE = 32


def to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode -> RGB; transparency over a white background."""
  if image.mode.startswith("I;16"):
    high_byte = np.asarray(image, np.uint32) >> 8
    image = Image.fromarray(high_byte.astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image.convert("RGB")


def read_image(path, size: int = SIZE) -> np.ndarray:
  """A (size, size, 3) uint8 array of an image file, or a UserError naming
  the file and what is wrong with it."""
  path = pathlib.Path(path)
  if not path.exists():
    raise errors.UserError(f"image {path} does not exist")
  if path.is_dir():
    raise errors.UserError(f"image {path} is a directory, not an image file")
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file fails here, not later
      image = to_rgb(ImageOps.exif_transpose(image))
  except UnidentifiedImageError:
    raise errors.UserError(
      f"cannot read image {path}: not an image format Pillow knows"
    ) from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise errors.UserError(
      f"cannot read image {path}: {type(e).__name__}: {e}"
    ) from None
  image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
  return np.asarray(image, np.uint8)


def read_images(paths, size: int = SIZE) -> np.ndarray:
  """(N, size, size, 3) uint8; every file is read before any is used, so
  one bad file stops the command before any work."""
  return np.stack([read_image(p, size) for p in paths])
