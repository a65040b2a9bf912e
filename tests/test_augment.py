"""Augmentation: equal to Keras' own transform, and its properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_experiment

from densenet_jax import augment, configs


def settings(**fields):
  """The default config's augmentation (the tutorial's ImageDataGenerator)
  with `fields` changed, as the steps get it."""
  return augment.settings(configs.load("default").augment.to_dict() | fields)


REFERENCE = settings()
NO_AFFINE = dict.fromkeys(augment.AFFINE_FIELDS, 0.0)
NONE = settings(**NO_AFFINE, horizontal_flip=False)
augment_batch = jax.jit(augment.augment_batch, static_argnums=2)
KEYS = ("theta", "tx", "ty", "shear", "zx", "zy")


@pytest.fixture(scope="module")
def images():
  return jax.random.uniform(jax.random.key(0), (64, 32, 32, 3))


@pytest.fixture(scope="module")
def params():
  keys = jax.random.split(jax.random.key(1), 4000)
  return jax.vmap(augment.random_transform, (0, None, None, None))(
    keys, REFERENCE, 32, 32
  )


@pytest.fixture(scope="module")
def generator():
  """The tutorial's ImageDataGenerator, as experiments/keras_tutorial.py
  makes it."""
  return load_experiment("keras_tutorial").image_data_generator()


def cifar_like_image(seed=0):
  """A 32x32 RGB image of smooth shapes and edges, pixels k/255 as after
  the tutorial's scaling, not noise: what the transform sees in training."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:32, 0:32] / 31.0
  image = np.stack([rows, cols, 1 - rows * cols], axis=-1) * 120
  for _ in range(4):
    r, c, size = rng.integers(0, 32, 3)
    image[r : r + size // 2 + 2, c : c + size // 3 + 2] = rng.integers(
      0, 256, 3
    )
  return (np.round(image) / 255.0).astype(np.float32)


@pytest.mark.parametrize(
  "case",
  [
    dict(theta=30.0),
    dict(tx=5.3),
    dict(ty=-3.2),
    dict(shear=20.0),
    dict(zx=1.2),
    dict(zy=0.8),
    dict(theta=-17.0, tx=2.5, ty=-4.1, shear=10.0, zx=0.9, zy=1.15),
    dict(theta=38.0, tx=-6.1, ty=5.9, shear=0.15, zx=1.19, zy=0.83),
  ],
)
def test_matches_the_tutorials_image_data_generator(case, generator):
  """Against keras_preprocessing 1.1's own apply_transform (TF 2.1's
  ImageDataGenerator, with the tutorial's settings as
  experiments/keras_tutorial.py makes it), flip included."""
  image = cifar_like_image()
  full = dict(theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0) | case
  matrix = augment.affine_matrix(*[jnp.float32(full[k]) for k in KEYS], 32, 32)
  got = augment.apply_affine(jnp.asarray(image), matrix)
  for flip in (False, True):
    expected = generator.apply_transform(
      image, full | {"flip_horizontal": flip}
    )
    np.testing.assert_allclose(
      got[:, ::-1] if flip else got, expected, atol=1e-5
    )


def test_parameters_are_drawn_in_keras_units(params):
  theta, tx, ty = (np.asarray(params[k]) for k in ("theta", "tx", "ty"))
  shear, zx, zy = (np.asarray(params[k]) for k in ("shear", "zx", "zy"))
  # rotation_range=40 degrees: uniform over [-40, 40].
  assert -40 <= theta.min() < -38 and 38 < theta.max() <= 40
  # shift ranges 0.2 are fractions of the 32-pixel image: +-6.4 pixels.
  for shift in (tx, ty):
    assert -6.4 <= shift.min() < -6.0 and 6.0 < shift.max() <= 6.4
  # shear_range=0.2 is in degrees (Keras' unit), not radians.
  assert -0.2 <= shear.min() < -0.19 and 0.19 < shear.max() <= 0.2
  # zoom_range=0.2: independent x and y factors in [0.8, 1.2].
  for zoom in (zx, zy):
    assert 0.8 <= zoom.min() < 0.82 and 1.18 < zoom.max() <= 1.2
  assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.1
  flips = np.asarray(params["flip"]).mean()
  assert 0.45 < flips < 0.55


def test_zero_ranges_are_the_identity(images):
  out = augment_batch(jax.random.key(2), images, NONE)
  np.testing.assert_array_equal(out, images)


def test_flip_only_flips_and_is_an_involution(images):
  flip_only = settings(**NO_AFFINE)
  key = jax.random.key(3)
  once = augment_batch(key, images, flip_only)
  flipped = [not np.array_equal(a, b) for a, b in zip(once, images)]
  assert 0 < sum(flipped) < len(images)
  for a, b, f in zip(once, images, flipped):
    np.testing.assert_array_equal(a, b[:, ::-1] if f else b)
  twice = augment_batch(key, once, flip_only)
  np.testing.assert_array_equal(twice, images)


def test_given_flips_replace_the_random_ones(images):
  flips = jnp.arange(len(images)) % 3 == 0
  for config, flipped in (
    (settings(**NO_AFFINE), flips),
    (settings(**NO_AFFINE, horizontal_flip=False), jnp.zeros_like(flips)),
  ):
    out = augment_batch(jax.random.key(3), images, config, None, flips)
    expected = jnp.where(
      flipped[:, None, None, None], images[:, :, ::-1], images
    )
    np.testing.assert_array_equal(out, expected)


def test_shape_dtype_and_range_hold(images):
  out = augment_batch(jax.random.key(4), images, REFERENCE)
  assert out.shape == images.shape and out.dtype == images.dtype
  # Bilinear sampling with edge fill mixes existing pixels only.
  assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6
  assert not np.allclose(out, images)


def test_seeds_reproduce_and_each_image_has_its_own_key(images):
  a = augment_batch(jax.random.key(5), images, REFERENCE)
  b = augment_batch(jax.random.key(5), images, REFERENCE)
  c = augment_batch(jax.random.key(6), images, REFERENCE)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # The transform of image i depends on (key, index i), not on its batch:
  # augmenting the second half alone gives the same pixels.
  half = augment_batch(
    jax.random.key(5), images[32:], REFERENCE, jnp.arange(32, 64)
  )
  np.testing.assert_allclose(half, a[32:], rtol=1e-6, atol=1e-6)


def test_a_shift_moves_content():
  image = jnp.zeros((32, 32, 1)).at[10, 10].set(1.0)
  # tx=-3 (height_shift) samples 3 rows up: the dot moves 3 rows down;
  # ty=2 (width_shift) samples 2 columns right: it moves 2 columns left.
  matrix = augment.affine_matrix(*map(jnp.float32, (0, -3, 2, 0, 1, 1)), 32, 32)
  out = augment.apply_affine(image, matrix)
  assert out[13, 8, 0] == 1.0 and out.sum() == 1.0


CROP_FLIP = settings(**NO_AFFINE, crop_padding_px=4)
CROP_FLIP_CUTOUT = settings(**NO_AFFINE, crop_padding_px=4, cutout_size_px=8)


def offsets_matching(out, image, padding):
  """The (row, col) crop offsets of the zero-padded image that give out."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  size = image.shape[0]
  return [
    (r, c)
    for r in range(2 * padding + 1)
    for c in range(2 * padding + 1)
    if np.array_equal(out, padded[r : r + size, c : c + size])
  ]


def test_random_crop_is_a_shift_with_zero_fill(images):
  crop = jax.jit(jax.vmap(augment.random_crop, (0, 0, None)), static_argnums=2)
  keys = jax.random.split(jax.random.key(7), 16)
  out = np.asarray(crop(keys, images[:16], 4))
  found = [offsets_matching(o, np.asarray(i), 4) for o, i in zip(out, images)]
  assert all(len(f) == 1 for f in found)  # exactly one shift explains each
  offsets = {f[0] for f in found}
  assert len(offsets) > 8  # of the 81 possible, many occur


def test_cutout_zeroes_one_clipped_square(images):
  cut = jax.jit(jax.vmap(augment.cutout, (0, 0, None)), static_argnums=2)
  keys = jax.random.split(jax.random.key(8), 64)
  out = np.asarray(cut(keys, images, 8))
  for o, image in zip(out, np.asarray(images)):
    zeroed = np.all(o == 0, axis=-1)
    rows, cols = np.nonzero(zeroed)
    assert 0 < zeroed.sum() <= 64
    # A rectangle (the square clipped at the borders), 8 wide unless cut.
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert zeroed.sum() == height * width and height <= 8 and width <= 8
    np.testing.assert_array_equal(o[~zeroed], image[~zeroed])
  sizes = np.all(out == 0, axis=-1).sum(axis=(1, 2))
  assert (sizes == 64).mean() > 0.3 and (sizes < 64).any()


def test_crop_flip_cutout_pipeline_keys_each_image_by_its_index(images):
  a = augment_batch(jax.random.key(9), images, CROP_FLIP_CUTOUT)
  half = augment_batch(
    jax.random.key(9), images[32:], CROP_FLIP_CUTOUT, jnp.arange(32, 64)
  )
  np.testing.assert_array_equal(half, a[32:])
  # No resampling without affine ranges: only input values and 0 remain.
  assert np.isin(a, np.append(np.asarray(images), 0.0)).all()
  assert a.shape == images.shape and a.dtype == images.dtype


def test_sections_without_crop_and_cutout_still_load():
  fields = configs.load("default").augment.to_dict()
  del fields["crop_padding_px"], fields["cutout_size_px"]
  assert augment.settings(fields) == REFERENCE
  assert not REFERENCE.crop_padding_px and not REFERENCE.cutout_size_px
  assert augment.has_affine(REFERENCE) and not augment.has_affine(CROP_FLIP)
