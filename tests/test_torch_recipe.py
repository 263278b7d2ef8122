"""torch_recipe's augmentation warps as augment.py's and draws as it does.

Its optimiser and scheduler are held to optim.py's in tests/test_optim.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import augment, torch_recipe
from configs import v36

torch = pytest.importorskip('torch')


def _image():
  """An L: a vertical bar with a foot to the right, so turns and flips show."""
  img = np.zeros((28, 28), np.uint8)
  img[5:20, 12:15] = 255
  img[17:20, 15:21] = 255
  return img


def _aug(degrees, translate, interpolation):
  config = v36.get_config()
  config.augment.degrees, config.augment.translate = degrees, translate
  config.augment.interpolation = interpolation
  return config


def _ours(img, angle, shift, interpolation):
  """augment.py's warp of one image by a drawn angle and (x, y) shift."""
  return np.asarray(augment._warp(
      jnp.asarray(img / 255.0, jnp.float32), jnp.float32(angle[0]),
      jnp.asarray(shift[0].numpy()[::-1].copy()),  # ours is (y, x)
      augment.INTERPOLATIONS[interpolation]))


def _batch(img, config, seed):
  """torch_recipe.augment of a one-image batch, and the angle and shift it drew."""
  x = torch.from_numpy(img / 255.0).float()[None, None]
  out = torch_recipe.augment(x, config.augment, torch.Generator().manual_seed(seed))
  drawn = torch_recipe.random_affine_params(1, config.augment, 28,
                                            torch.Generator().manual_seed(seed))
  return out[0, 0].numpy(), drawn


def _per_sample(img, config, seed):
  """AugmentedMNIST's sample, back in [0, 1], and the angle and shift it drew."""
  dataset = torch_recipe.AugmentedMNIST(img[None], np.array([7]), config)
  torch.manual_seed(seed)
  x, label = dataset[0]
  assert label == 7 and x.shape == (1, 28, 28)
  torch.manual_seed(seed)
  drawn = torch_recipe.random_affine_params(1, config.augment)
  return (x[0] * config.std + config.mean).numpy(), drawn


@pytest.mark.parametrize('warp', [_batch, _per_sample])
def test_integer_shifts_match_ours_exactly(warp):
  config = _aug(0.0, 0.1, 'nearest')
  for seed in range(3):
    out, (angle, shift) = warp(_image(), config, seed)
    np.testing.assert_allclose(out, _ours(_image(), angle, shift, 'nearest'),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize('warp,atol', [(_batch, 1e-5),
                                       (_per_sample, 1 / 255)])  # PIL rounds to uint8
def test_rotations_match_ours(warp, atol):
  config = _aug(15.0, 0.1, 'bilinear')
  for seed in (1, 3, 5):  # turns of 8, -15 and 10 degrees
    out, (angle, shift) = warp(_image(), config, seed)
    assert abs(float(angle[0])) > np.deg2rad(7)
    np.testing.assert_allclose(out, _ours(_image(), angle, shift, 'bilinear'),
                               atol=atol, rtol=0)


def test_draws_follow_augment_distributions():
  aug = _aug(5.0, 0.05, 'bilinear').augment
  angle, shift = torch_recipe.random_affine_params(
      20000, aug, 28, torch.Generator().manual_seed(0))
  assert angle.shape == (20000,) and shift.shape == (20000, 2)
  degrees = np.rad2deg(angle.numpy())
  assert degrees.min() >= -5 and degrees.max() <= 5
  assert degrees.min() < -4.99 and degrees.max() > 4.99
  # round(U(-1.4, 1.4)): 0 with probability 1 / 2.8, -1 and 1 the rest evenly.
  values, counts = np.unique(shift.numpy(), return_counts=True)
  np.testing.assert_array_equal(values, [-1, 0, 1])
  np.testing.assert_allclose(counts / counts.sum(), [0.9 / 2.8, 1 / 2.8, 0.9 / 2.8],
                             atol=0.01)


def test_no_augmentation_leaves_images_as_they_are():
  config = _aug(0.0, 0.0, 'bilinear')
  x = torch.rand(2, 1, 28, 28)
  assert torch_recipe.augment(x, config.augment) is x
  out, _ = _per_sample(_image(), config, 0)
  np.testing.assert_allclose(out, _image() / 255.0, atol=1e-6)
