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
