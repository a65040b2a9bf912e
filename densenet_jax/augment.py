"""Keras ImageDataGenerator augmentation as pure, jittable JAX functions.

The reference recipe augments with

    ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
                       height_shift_range=0.2, shear_range=0.2,
                       zoom_range=0.2, horizontal_flip=True,
                       fill_mode="nearest")

in TensorFlow 2.1, i.e. `keras_preprocessing` 1.1.x. This module
reproduces its semantics, following that version's
`ImageDataGenerator.get_random_transform` and `apply_affine_transform`
(Keras 3's copy differs: it centres the transform at size/2 - 0.5 and
swaps the row and column shifts):

- rotation: theta ~ U(-rotation_range, rotation_range) degrees;
- shifts: `tx` ~ U(-height_shift_range, height_shift_range) times the
  height moves rows, `ty` from width_shift_range times the width columns;
- shear: U(-shear_range, shear_range) in degrees (not radians, not a
  fraction), applied as the matrix [[1, -sin s], [0, cos s]];
- zoom: zx, zy drawn independently from U(1 - zoom_range, 1 + zoom_range);
  a factor above 1 shows more of the image (zooms out);
- the matrices compose as rotation @ shift @ shear @ zoom about the point
  (height/2 + 0.5, width/2 + 0.5) (keras_preprocessing's
  `transform_matrix_offset_center`, half a pixel past the centre), mapping
  output (row, col) pixels to input coordinates, sampled bilinearly
  (Keras' interpolation_order=1) with 'nearest' fill (edge pixels extend);
- then a horizontal flip with probability 1/2.

Beyond the tutorial, for the paper's and fast recipes (0 turns each off):

- `crop_padding_px`: the image zero-padded by that many pixels on each side,
  then cropped back to its size at a uniform random offset (the DenseNet
  paper's "random crop" with 4-pixel padding), before the flip;
- `cutout_size_px`: a square of that side, centred on a uniform random pixel
  and clipped at the borders, set to 0 (DeVries & Taylor, 2017), last;
- `alternating_flips`: each image's flip is not drawn per step but given
  with the batch (data.train_batches' `flip`: random in the first epoch,
  then the opposite of the epoch before), so that every pair of epochs
  shows each image both ways (airbench's alternating flip).

With all of Keras' ranges at 0 the affine resampling is skipped.

Each image's randomness comes from its own key, so a batch is augmented the
same way however it is split over devices.
"""

import jax
import jax.numpy as jnp
import ml_collections

# ImageDataGenerator's arguments, in its units (degrees, fractions); all 0
# leaves out the affine resampling.
AFFINE_FIELDS = (
  "rotation_range_deg",
  "width_shift_range",
  "height_shift_range",
  "shear_range_deg",
  "zoom_range",
)


def settings(section) -> ml_collections.FrozenConfigDict:
  """A config's `augment` section, frozen: hashable, for the compiled steps'
  cache key. A section written before crops, cutout and alternating flips
  existed gets them off."""
  return ml_collections.FrozenConfigDict(
    {"crop_padding_px": 0, "cutout_size_px": 0, "alternating_flips": False}
    | dict(section)
  )


def has_affine(config) -> bool:
  return any(config[name] for name in AFFINE_FIELDS)


def random_transform(key, config, height: int, width: int):
  """Draws one image's parameters, as Keras' `get_random_transform` does."""
  keys = jax.random.split(key, 6)

  def uniform(k, r, shape=()):
    return jax.random.uniform(k, shape, minval=-r, maxval=r)

  zoom = 1.0 + uniform(keys[4], config.zoom_range, (2,))
  return dict(
    theta=uniform(keys[0], config.rotation_range_deg),
    tx=uniform(keys[1], config.height_shift_range) * height,
    ty=uniform(keys[2], config.width_shift_range) * width,
    shear=uniform(keys[3], config.shear_range_deg),
    zx=zoom[0],
    zy=zoom[1],
    flip=jax.random.bernoulli(keys[5]) & config.horizontal_flip,
  )


def affine_matrix(theta, tx, ty, shear, zx, zy, height, width):
  """keras_preprocessing's 3x3 output->input matrix in (row, col) pixel
  coordinates."""
  theta = jnp.deg2rad(theta)
  shear = jnp.deg2rad(shear)
  one, zero = jnp.ones_like(theta), jnp.zeros_like(theta)

  def mat(rows):
    return jnp.stack([jnp.stack(r) for r in rows])

  rotation = mat(
    [
      [jnp.cos(theta), -jnp.sin(theta), zero],
      [jnp.sin(theta), jnp.cos(theta), zero],
      [zero, zero, one],
    ]
  )
  shift = mat([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
  shear_m = mat(
    [
      [one, -jnp.sin(shear), zero],
      [zero, jnp.cos(shear), zero],
      [zero, zero, one],
    ]
  )
  zoom = mat([[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
  m = rotation @ shift @ shear_m @ zoom
  # transform_matrix_offset_center, as keras_preprocessing 1.1 writes it.
  o_x, o_y = height / 2 + 0.5, width / 2 + 0.5
  offset = jnp.array([[1.0, 0.0, o_x], [0.0, 1.0, o_y], [0.0, 0.0, 1.0]])
  reset = jnp.array([[1.0, 0.0, -o_x], [0.0, 1.0, -o_y], [0.0, 0.0, 1.0]])
  return offset @ m @ reset


def apply_affine(image, matrix):
  """Samples image (H, W, C) at matrix @ (row, col, 1): bilinear, edge fill."""
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32),
    jnp.arange(width, dtype=jnp.float32),
    indexing="ij",
  )
  src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
  src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
  # 'nearest' fill: coordinates outside the image take the edge's value.
  src_r = jnp.clip(src_r, 0, height - 1)
  src_c = jnp.clip(src_c, 0, width - 1)
  r0 = jnp.floor(src_r)
  c0 = jnp.floor(src_c)
  wr = (src_r - r0)[..., None]
  wc = (src_c - c0)[..., None]
  r0 = r0.astype(jnp.int32)
  c0 = c0.astype(jnp.int32)
  r1 = jnp.minimum(r0 + 1, height - 1)
  c1 = jnp.minimum(c0 + 1, width - 1)
  top = image[r0, c0] * (1 - wc) + image[r0, c1] * wc
  bottom = image[r1, c0] * (1 - wc) + image[r1, c1] * wc
  return (top * (1 - wr) + bottom * wr).astype(image.dtype)


def random_crop(key, image, padding: int):
  """A crop of `image` zero-padded by `padding` pixels, at a random offset."""
  height, width, channels = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  row, col = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (row, col, 0), (height, width, channels))


def cutout(key, image, size: int):
  """`image` with a size x size square around a random pixel set to 0."""
  height, width = image.shape[:2]
  row, col = jax.random.randint(key, (2,), 0, jnp.array([height, width]))
  top, left = row - size // 2, col - size // 2
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < top + size) & (cols >= left)
  inside &= cols < left + size
  return jnp.where(inside[..., None], jnp.zeros_like(image), image)


def augment_image(key, image, config, flip=None):
  """One random transform of one float (H, W, C) image: ImageDataGenerator's,
  then crop, flip and cutout as configured; `flip`, if given, replaces the
  random flip (still only with horizontal_flip)."""
  height, width = image.shape[:2]
  p = random_transform(key, config, height, width)
  if has_affine(config):
    matrix = affine_matrix(
      p["theta"], p["tx"], p["ty"], p["shear"], p["zx"], p["zy"], height, width
    )
    image = apply_affine(image, matrix)
  if config.crop_padding_px:
    crop_key = jax.random.fold_in(key, 1)
    image = random_crop(crop_key, image, config.crop_padding_px)
  if flip is not None:
    p["flip"] = flip.astype(bool) & config.horizontal_flip
  image = jnp.where(p["flip"], image[:, ::-1], image)
  if config.cutout_size_px:
    image = cutout(jax.random.fold_in(key, 2), image, config.cutout_size_px)
  return image


def augment_batch(key, images, config, indices=None, flips=None):
  """Augments (N, H, W, C) images; image i uses fold_in(key, indices[i]),
  and flips[i] for its flip if flips are given."""
  if indices is None:
    indices = jnp.arange(images.shape[0])
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, indices)
  flip_axis = None if flips is None else 0
  return jax.vmap(augment_image, (0, 0, None, flip_axis))(
    keys, images, config, flips
  )
