import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import augment
from mnist_flax.errors import ConfigError


def _image():
  img = np.zeros((28, 28), np.float32)
  img[5:20, 12:15] = 1.0  # a vertical bar
  return jnp.asarray(img)


def test_identity_warp():
  img = _image()
  for order in (0, 1):
    out = augment._warp(img, jnp.float32(0), jnp.zeros(2), order)
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_integer_shift_moves_pixels_and_fills_black():
  img = _image()
  out = augment._warp(img, jnp.float32(0), jnp.array([2.0, -3.0]), 0)
  np.testing.assert_array_equal(out, np.roll(np.roll(img, 2, 0), -3, 1))
  corner = augment._warp(jnp.ones((28, 28)), jnp.float32(0), jnp.array([5.0, 0.0]), 1)
  assert float(corner[:5].max()) == 0.0 and float(corner[5:].min()) == 1.0


def test_rotation_by_90_degrees_turns_the_bar():
  out = augment._warp(_image(), jnp.float32(np.pi / 2), jnp.zeros(2), 0)
  np.testing.assert_array_equal(out, np.rot90(_image()))
  # A rotation keeps the centred bar's mass (bilinear too).
  small = augment._warp(_image(), jnp.deg2rad(7.0), jnp.zeros(2), 1)
  assert float(small.sum()) == pytest.approx(float(_image().sum()), rel=0.02)


def test_random_affine_is_jittable_random_and_bounded():
  batch = jnp.stack([_image()] * 8)
  fn = jax.jit(augment.random_affine, static_argnums=(2, 3, 4))
  a = fn(jax.random.key(0), batch, 15.0, 0.1, 'bilinear')
  b = fn(jax.random.key(0), batch, 15.0, 0.1, 'bilinear')
  c = fn(jax.random.key(1), batch, 15.0, 0.1, 'bilinear')
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.shape == batch.shape and float(a.min()) >= 0 and float(a.max()) <= 1
  # Images in one batch get different transforms.
  assert not np.allclose(a[0], a[1])


def test_no_augmentation_is_a_no_op_and_bad_names_fail():
  batch = jnp.stack([_image()] * 2)
  assert augment.random_affine(jax.random.key(0), batch, 0, 0) is batch
  with pytest.raises(ConfigError, match='unknown interpolation'):
    augment.random_affine(jax.random.key(0), batch, 5, 0, 'cubic')


# The distribution each image's warp is drawn from, pinned through what it does
# to a known pattern: a shift of round(U(-t, t) * 28) pixels reaches
# round(t * 28) and never exceeds it; an angle from U(-degrees, degrees) stays
# within degrees and covers them. Any augmentation fn(images (N, 28, 28) in
# [0, 1], degrees, translate) -> images is checked the same way.
DRAWS = 512


def _shifts(fn, translate):
  """(dy, dx) by which each image's one bright pixel moved, without rotation."""
  img = np.zeros((28, 28), np.float32)
  img[14, 14] = 1.0
  out = np.asarray(fn(np.stack([img] * DRAWS), 0.0, translate))
  # Whole-pixel shifts move the pixel whole: no interpolation between pixels.
  np.testing.assert_allclose(out.max((1, 2)), 1.0, atol=1e-5)
  y, x = np.unravel_index(out.reshape(DRAWS, -1).argmax(1), (28, 28))
  return np.stack([y - 14, x - 14], 1)


def _angles(fn, degrees):
  """The angle (degrees, counter-clockwise) by which each image turned a blob
  10 pixels right of the centre, from its centroid, without translation."""
  yy, xx = np.mgrid[:28, :28].astype(np.float32)
  c = 13.5  # the centre of rotation, between pixels
  img = np.exp(-((yy - c)**2 + (xx - c - 10)**2) / (2 * 1.2**2))
  out = np.asarray(fn(np.stack([img] * DRAWS), degrees, 0.0), np.float64)
  mass = out.sum((1, 2))
  cy, cx = (out * yy).sum((1, 2)) / mass, (out * xx).sum((1, 2)) / mass
  return np.degrees(np.arctan2(-(cy - c), cx - c))  # y points down


def check_shift_distribution(fn):
  for translate in (0.05, 0.1):
    limit = round(translate * 28)  # 1 and 3 pixels
    shifts = _shifts(fn, translate)
    assert np.abs(shifts).max() == limit, (translate, np.abs(shifts).max())
    for axis in (0, 1):  # every whole shift up to the limit, both ways
      assert set(shifts[:, axis]) == set(range(-limit, limit + 1)), translate


def check_angle_distribution(fn):
  for degrees in (7.0, 15.0):
    angles = _angles(fn, degrees)
    assert np.abs(angles).max() <= degrees + 0.3, (degrees, np.abs(angles).max())
    assert np.abs(angles).max() >= degrees - 0.5, (degrees, np.abs(angles).max())
    # Uniform: half of them within half the range, as many each way.
    assert 0.42 < np.mean(np.abs(angles) < degrees / 2) < 0.58, degrees
    assert 0.42 < np.mean(angles > 0) < 0.58, degrees


def _ours(images, degrees, translate):
  return augment.random_affine(jax.random.key(0), jnp.asarray(images), degrees,
                               translate)


def test_shift_of_a_bright_pixel_reaches_round_translate_times_28_and_no_more():
  check_shift_distribution(_ours)


def test_rotation_angle_stays_within_degrees_and_covers_them():
  check_angle_distribution(_ours)


def _torch_augmentation(images, degrees, translate):
  """The PyTorch recipe's batch augmentation (compare's) as an augmentation fn."""
  torch = pytest.importorskip('torch')
  from mnist_flax import torch_recipe  # pylint: disable=g-import-not-at-top
  from configs import v36  # pylint: disable=g-import-not-at-top
  config = v36.get_config()
  config.augment.degrees, config.augment.translate = degrees, translate
  x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
  gen = torch.Generator().manual_seed(0)
  return torch_recipe.augment(x, config.augment, gen)[:, 0].numpy()


def test_torch_augmentation_draws_the_same_distribution():
  check_shift_distribution(_torch_augmentation)
  check_angle_distribution(_torch_augmentation)
