import os

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


# Cutout: one square of side `size` blacked out per image, its centre a pixel
# drawn uniformly over the image, clipped at the border.
def test_cutout_hole_is_size_squared_and_clipped_at_the_border():
  ones = jnp.ones((28, 28))
  def zeroed(cy, cx, size):
    hole = augment._hole(jnp.int32(cy), jnp.int32(cx), size, 28, 28)
    return int((jnp.where(hole, 0.0, ones) == 0).sum())
  assert zeroed(14, 14, 5) == 25 and zeroed(14, 14, 8) == 64  # odd and even
  hole = np.asarray(augment._hole(jnp.int32(10), jnp.int32(20), 4, 28, 28))
  rows, cols = np.nonzero(hole)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 18, 21)
  # At the border only the part inside stays: side 8 spans c - 4 .. c + 3.
  assert zeroed(0, 0, 5) == 3 * 3 and zeroed(0, 0, 8) == 4 * 4
  assert zeroed(27, 27, 5) == 3 * 3 and zeroed(27, 27, 8) == 5 * 5
  assert zeroed(0, 14, 6) == 3 * 6 and zeroed(13, 27, 6) == 6 * 4


def check_cutout_distribution(fn, size=6, draws=4096):
  """fn(images (N, 28, 28) in [0, 1], size) -> images: on all-ones images, each
  image loses exactly one clipped square, whose centre covers all 28 x 28
  pixels uniformly."""
  out = np.asarray(fn(np.ones((draws, 28, 28), np.float32), size))
  assert set(np.unique(out)) == {0.0, 1.0}
  centres = []
  for hole in out == 0:
    rows, cols = np.nonzero(hole)
    assert len(rows), 'an image without a hole'
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert len(rows) == height * width  # one rectangle
    # Clipped on one side at most (size < 28): the other side places the centre.
    centre = []
    for lo, hi, extent in ((rows.min(), rows.max(), height),
                           (cols.min(), cols.max(), width)):
      assert extent == size or (extent < size and (lo == 0 or hi == 27))
      centre.append(lo + size // 2 if lo > 0 else hi - (size - 1 - size // 2))
    centres.append(centre)
  centres = np.array(centres)
  assert np.mean(out.reshape(draws, -1).sum(1) > 28 * 28 - size**2) > 0.2  # clipped
  for axis in (0, 1):  # every centre row and column, about draws / 28 times each
    counts = np.bincount(centres[:, axis], minlength=28)
    assert len(counts) == 28 and counts.min() > 0.65 * draws / 28, counts
    assert counts.max() < 1.35 * draws / 28, counts
  # Rows and columns independent: each quadrant holds about a quarter.
  quadrant = 2 * (centres[:, 0] < 14) + (centres[:, 1] < 14)
  np.testing.assert_allclose(np.bincount(quadrant) / draws, 0.25, atol=0.03)


def test_cutout_centre_covers_the_image_uniformly():
  check_cutout_distribution(
      lambda images, size: augment.cutout(jax.random.key(0), jnp.asarray(images), size))
  check_cutout_distribution(
      lambda images, size: augment.cutout(jax.random.key(1), jnp.asarray(images), size),
      size=5)


def test_cutout_0_leaves_images_untouched_and_negative_sizes_fail():
  batch = jnp.stack([_image()] * 2)
  assert augment.cutout(jax.random.key(0), batch, 0) is batch
  with pytest.raises(ConfigError, match='augment.cutout must be >= 0'):
    augment.cutout(jax.random.key(0), batch, -1)


def test_cutout_draws_apart_from_the_warp():
  batch = jnp.ones((64, 28, 28))
  a = augment.cutout(jax.random.key(0), batch, 6)
  assert not np.array_equal(a, augment.cutout(jax.random.key(1), batch, 6))
  assert not np.array_equal(a[0], a[1])  # each image its own square


def test_traced_cutout_size_equals_the_concrete_one():
  key, images = jax.random.key(3), jnp.ones((16, 28, 28))
  jitted = jax.jit(augment.cutout)
  for size in (0, 1, 5, 6, 28):
    want = augment.cutout(key, images, size)
    np.testing.assert_array_equal(jitted(key, images, jnp.int32(size)), want)
    np.testing.assert_array_equal(jitted(key, images, jnp.float32(size)), want)
  sizes = jnp.array([0, 5, 6])
  swept = jax.jit(jax.vmap(augment.cutout, in_axes=(None, None, 0)))(key, images, sizes)
  for got, size in zip(swept, (0, 5, 6)):
    np.testing.assert_array_equal(got, augment.cutout(key, images, size))


def _torch_cutout(images, size):
  """The PyTorch recipe's batch augmentation with cutout only, on (N, 1, H, W)."""
  torch = pytest.importorskip('torch')
  from mnist_flax import torch_recipe  # pylint: disable=g-import-not-at-top
  from configs import v36  # pylint: disable=g-import-not-at-top
  config = v36.get_config()
  config.augment.degrees = config.augment.translate = 0.0
  config.augment.cutout = size
  x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
  return torch_recipe.augment(x, config.augment, torch.Generator().manual_seed(0))[:, 0]


def _torch_per_sample_cutout(images, size):
  """AugmentedMNIST's samples with cutout only, back in [0, 1]."""
  torch = pytest.importorskip('torch')
  from mnist_flax import torch_recipe  # pylint: disable=g-import-not-at-top
  from configs import v36  # pylint: disable=g-import-not-at-top
  config = v36.get_config()
  config.augment.degrees = config.augment.translate = 0.0
  config.augment.cutout = size
  dataset = torch_recipe.AugmentedMNIST(
      (np.asarray(images) * 255).astype(np.uint8), np.zeros(len(images)), config)
  torch.manual_seed(0)
  x = torch.stack([dataset[i][0][0] for i in range(len(dataset))])
  return (x * config.std + config.mean).round()  # 0 or 1, up to float rounding


@pytest.mark.parametrize('fn', [_torch_cutout, _torch_per_sample_cutout])
def test_torch_cutout_draws_the_same_distribution(fn):
  check_cutout_distribution(fn)
  check_cutout_distribution(fn, size=5, draws=2048)


# The public anchors' additions (docs/anchors.md): each against its reference.

def test_default_pipeline_draws_as_the_seeds_warp_and_cutout():
  """augment.augment with the new keys at their defaults is, bit for bit, the
  warp and cutout that every earlier run trained with."""
  from configs import v36  # pylint: disable=g-import-not-at-top
  aug = v36.get_config().augment
  aug.cutout = 6
  batch = jnp.asarray(np.random.default_rng(0).random((16, 28, 28), np.float32))
  key = jax.random.key(3)
  before = augment.cutout(key, augment.random_affine(
      key, batch, aug.degrees, aug.translate, aug.interpolation), aug.cutout)
  np.testing.assert_array_equal(augment.augment(key, batch, aug), before)


def _levels(seed=0, n=1, high=256):
  """Digit-like uint8 images: a stroke of grey levels below `high` on black."""
  rng = np.random.default_rng(seed)
  img = np.zeros((n, 28, 28), np.uint8)
  img[:, 6:22, 10:16] = rng.integers(60, high, (n, 16, 6))
  return img


@pytest.mark.parametrize('brightness,contrast', [(0.6, 1.4), (1.37, 0.63), (1.0, 1.21)])
def test_torchvision_jitter_equals_pil_image_enhance(brightness, contrast):
  """torchvision's ColorJitter on a PIL image is ImageEnhance.Brightness and
  .Contrast with the drawn factors, in the drawn order."""
  from PIL import Image, ImageEnhance  # pylint: disable=g-import-not-at-top
  img = _levels()[0]
  pil = Image.fromarray(img)
  bright = lambda im: ImageEnhance.Brightness(im).enhance(brightness)
  contrast_ = lambda im: ImageEnhance.Contrast(im).enhance(contrast)
  for first, want in ((True, contrast_(bright(pil))), (False, bright(contrast_(pil)))):
    got = augment.torchvision_jitter(jnp.asarray(img, jnp.float32), brightness,
                                     contrast, first)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(first))


def test_albumentations_jitter_equals_its_lookup_table():
  """albumentations' brightness_contrast_adjust on uint8 (versions 0.5-1.1):
  lut = arange(256) * alpha + beta * 255, clipped, cast to uint8."""
  img = _levels()[0]
  for alpha, beta in ((0.83, 0.17), (1.19, -0.2), (1.0, 0.0)):
    lut = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta * 255)
    want = np.clip(lut, 0, 255).astype(np.uint8)[img]
    got = augment.albumentations_jitter(jnp.asarray(img, jnp.float32), alpha, beta)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_color_jitter_draws_its_factors_and_probability():
  # No level above 180: 1.4 times it is not clipped.
  images = jnp.asarray(np.repeat(_levels(high=181), 2000, 0) / 255, jnp.float32)
  key = jax.random.key(0)
  # torchvision: every image jittered; brightness alone scales the stroke by U(0.6, 1.4).
  out = np.asarray(augment.color_jitter(key, images, 0.4, 0.0, 'torchvision'))
  ratio = out[:, 6:22, 10:16].sum((1, 2)) / np.asarray(images[:, 6:22, 10:16]).sum((1, 2))
  assert 0.59 < ratio.min() < 0.62 and 1.38 < ratio.max() < 1.41
  assert 0.45 < np.mean(ratio < 1) < 0.55
  # albumentations with p = 0.5: half the images untouched; beta lifts black.
  out = np.asarray(augment.color_jitter(key, images, 0.2, 0.2, 'albumentations', 0.5))
  changed = np.abs(out - np.asarray(images)).max((1, 2)) > 0
  assert 0.45 < changed.mean() < 0.55
  background = out[:, 0, 0] * 255  # trunc(255 * beta) for beta > 0
  assert 50 <= background.max() <= 51 and background.min() == 0
  with pytest.raises(ConfigError, match="unknown augment.jitter 'pil'"):
    augment.color_jitter(key, images, 0.2, 0.2, 'pil')


def test_reflect_border_is_opencv_reflect_101():
  """A whole-pixel shift with border 'reflect' fills the gap with the image
  mirrored about its edge pixel, not repeating it: gfedcb|abcdefgh."""
  img = np.random.default_rng(0).random((28, 28), np.float32)
  out = np.asarray(augment._warp(jnp.asarray(img), jnp.float32(0), jnp.array([3.0, -2.0]),
                                 1, border='reflect'))
  reflect_101 = lambda i, n: abs(i) if i < n else 2 * (n - 1) - i
  rows = [reflect_101(i - 3, 28) for i in range(28)]
  cols = [reflect_101(j + 2, 28) for j in range(28)]
  np.testing.assert_allclose(out, img[np.ix_(rows, cols)], atol=1e-6)


def test_fill_value_outside_the_image():
  """RandomRotation's fill: the corners a rotation brings in hold `fill`."""
  out = np.asarray(augment._warp(jnp.zeros((28, 28)), jnp.deg2rad(30.0), jnp.zeros(2),
                                 0, fill=0.171))
  assert out[0, 0] == pytest.approx(0.171) and out[14, 14] == 0
  np.testing.assert_allclose(np.unique(out), [0.0, 0.171], rtol=1e-6)


def _radii(fn, **kwargs):
  """How far from the centre each image moved a blob 10 pixels right of it."""
  yy, xx = np.mgrid[:28, :28].astype(np.float32)
  c = 13.5
  img = np.exp(-((yy - c)**2 + (xx - c - 10)**2) / (2 * 1.2**2))
  out = np.asarray(fn(np.stack([img] * DRAWS), **kwargs), np.float64)
  mass = out.sum((1, 2))
  cy, cx = (out * yy).sum((1, 2)) / mass, (out * xx).sum((1, 2)) / mass
  return np.hypot(cy - c, cx - c), cy - c, cx - c


def _ours_with(images, **kwargs):
  return augment.random_affine(jax.random.key(0), jnp.asarray(images),
                               kwargs.pop('degrees', 0.0), kwargs.pop('translate', 0.0),
                               'bilinear', **kwargs)


def check_zoom_and_probability(fn):
  """scale s zooms from U(1 - s, 1 + s); warp_p p warps that share of images;
  integer_shift False shifts by fractions of a pixel."""
  radius, _, _ = _radii(fn, scale=0.09)
  assert 8.95 < radius.min() < 9.25 and 10.75 < radius.max() < 11.05
  assert 0.42 < np.mean(radius < 10) < 0.58
  unwarped, _, _ = _radii(lambda images: images)
  radius, _, _ = _radii(fn, scale=0.09, p=0.5)
  assert 0.42 < np.mean(np.abs(radius - unwarped[0]) < 1e-6) < 0.58
  _, dy, _ = _radii(fn, translate=0.09, integer_shift=False)
  assert np.abs(dy).max() <= 0.09 * 28 + 0.05 and np.abs(dy).max() > 2.3
  assert np.mean(np.abs(dy - dy.round()) > 0.1) > 0.5  # not whole pixels


def test_zoom_probability_and_subpixel_shift_distributions():
  check_zoom_and_probability(_ours_with)


def test_traced_anchor_values_equal_concrete_ones():
  """A sweep traces the new values; 0 must still mean off, and a value its value."""
  from mnist_flax import sweep  # pylint: disable=g-import-not-at-top
  from configs import anchor_eva6, anchor_woolly  # pylint: disable=g-import-not-at-top
  batch = jnp.asarray(_levels(n=8) / 255, jnp.float32)
  key = jax.random.key(1)
  keys = [f'augment.{k}' for k in
          ('scale', 'fill', 'warp_p', 'brightness', 'contrast', 'jitter_p')]
  for module in (anchor_eva6, anchor_woolly):
    for values in ((0.09, 0.1, 0.5, 0.2, 0.2, 0.5), (0.0, 0.0, 1.0, 0.0, 0.0, 1.0)):
      config = sweep.with_values(module.get_config(), dict(zip(keys, values)))
      concrete = augment.augment(key, batch, config.augment)
      traced = jax.jit(lambda *vs: augment.augment(
          key, batch, sweep.with_values(config, dict(zip(keys, vs))).augment))
      np.testing.assert_allclose(traced(*values), concrete, atol=1e-6)


def test_unknown_border_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown augment.border 'wrap'"):
    augment.random_affine(jax.random.key(0), jnp.zeros((2, 28, 28)), 5.0, 0.0,
                          border='wrap')


@pytest.mark.parametrize('key,value', [('scale', 1.0), ('contrast', -0.2)])
def test_anchor_keys_out_of_range_are_one_line_config_errors(key, value):
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  aug = anchor_woolly.get_config().augment
  augment.check(aug)
  aug[key] = value
  with pytest.raises(ConfigError, match=rf'^augment.{key} must be .*; not {value}$'):
    augment.augment(jax.random.key(0), jnp.zeros((2, 28, 28)), aug)


@pytest.mark.parametrize('flag', ['--config.augment.fill=1.5',
                                  '--sweep=augment.warp_p=0.5,2.0'])
def test_out_of_range_values_stop_a_run_in_one_line(flag, fake_mnist_dir, tmp_path):
  """From the command line, a swept value too: one line naming the key and its
  range, before any step."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.main', '--config=configs/anchor_woolly.py', flag,
       f'--config.data_dir={fake_mnist_dir}', '--config.verify_checksums=False',
       f'--workdir={tmp_path / "w"}'],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: augment.'), proc.stderr
  assert 'Epoch' not in proc.stdout
