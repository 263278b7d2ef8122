"""torch_recipe's augmentation warps and jitters as augment.py's and draws as it does.

Its optimiser and scheduler are held to optim.py's in tests/test_optim.py.
"""

import jax
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


# The public anchors' additions: the same warp and jitter given the same draws,
# and draws from the same distributions.

@pytest.mark.parametrize('interpolation,border,fill', [
    ('bilinear', 'reflect', 0.0), ('nearest', 'constant', 0.171),
    ('bilinear', 'constant', 0.3)])
def test_anchor_warps_match_ours(interpolation, border, fill):
  config = _aug(7.0, 0.09, interpolation)
  aug = config.augment
  aug.border, aug.fill = border, fill
  img = np.random.default_rng(0).random((28, 28)).astype(np.float32)
  img[:4] = 0  # a blank border, as MNIST's
  for angle, (dx, dy), zoom in ((0.1, (2.3, -1.7), 1.08), (-0.12, (-2.5, 0.4), 0.92),
                                (0.0, (3.0, 0.0), 1.0)):
    got = torch_recipe.warp(torch.from_numpy(img)[None, None], torch.tensor([angle]),
                            torch.tensor([[dx, dy]]), torch.tensor([zoom]), aug)
    want = augment._warp(jnp.asarray(img), jnp.float32(angle), jnp.array([dy, dx]),
                         augment.INTERPOLATIONS[interpolation], zoom, fill, border)
    if interpolation == 'nearest':  # a coordinate within rounding of .5 may round either way
      assert np.mean(np.abs(got[0, 0].numpy() - np.asarray(want)) > 1e-5) < 0.01
    else:
      np.testing.assert_allclose(got[0, 0].numpy(), want, atol=2e-5)


@pytest.mark.parametrize('style', augment.JITTERS)
def test_anchor_jitters_match_ours(style):
  rng = np.random.default_rng(1)
  levels = np.zeros((6, 28, 28), np.float32)
  levels[:, 6:22, 10:16] = rng.integers(0, 256, (6, 16, 6))
  b, c = rng.uniform(-0.4, 0.4, 6).astype(np.float32), rng.uniform(-0.4, 0.4, 6).astype(np.float32)
  b[0] = c[0] = 0  # no change drawn
  first = np.array([True, False] * 3)
  x = torch.from_numpy(levels / 255)[:, None]
  got = torch_recipe.jitter(x, torch.from_numpy(b), torch.from_numpy(c),
                            torch.from_numpy(first), style)[:, 0].numpy()
  if style == 'torchvision':
    want = jax.vmap(augment.torchvision_jitter)(jnp.asarray(levels), 1 + b, 1 + c, first)
  else:
    want = jax.vmap(augment.albumentations_jitter)(jnp.asarray(levels), 1 + c, b)
  np.testing.assert_allclose(got, np.asarray(want) / 255, atol=1e-6)


def _torch_warp_fn(images, degrees=0.0, translate=0.0, scale=0.0, p=1.0,
                   integer_shift=True):
  config = _aug(degrees, translate, 'bilinear')
  config.augment.scale, config.augment.warp_p = scale, p
  config.augment.integer_shift = integer_shift
  x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
  return torch_recipe.augment(x, config.augment, torch.Generator().manual_seed(0))[:, 0]


def test_anchor_warp_draws_the_same_distribution():
  from test_augment import check_zoom_and_probability  # pylint: disable=g-import-not-at-top
  check_zoom_and_probability(_torch_warp_fn)


def test_anchor_jitter_draws_its_probability_and_limits():
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  aug = anchor_woolly.get_config().augment
  aug.degrees = aug.translate = aug.scale = 0.0
  x = torch.zeros(4000, 1, 28, 28)
  out = torch_recipe.augment(x, aug, torch.Generator().manual_seed(0))[:, 0, 0, 0] * 255
  assert 0.2 < np.mean(out.numpy() > 0) < 0.3  # p = 0.5 and beta > 0: a quarter
  assert 50 <= float(out.max()) <= 51


def test_per_sample_loader_refuses_the_anchors_augmentation():
  from mnist_flax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match='per-sample PIL loader'):
    torch_recipe.AugmentedMNIST(_image()[None], np.array([7]), anchor_woolly.get_config())
