"""Augmentation on the device: the seeds' random rotation and translation, the
public anchors' additions (scale, fill, reflected borders, a probability, and
brightness/contrast jitter in torchvision's or albumentations' way), and cutout.

`augment` runs a config's whole pipeline on a (N, H, W) batch in [0, 1]:
  1. jitter='torchvision': ColorJitter(brightness, contrast) on the raw image;
  2. the warp (`random_affine`), on each image with probability warp_p;
  3. jitter='albumentations': RandomBrightnessContrast, with probability jitter_p;
  4. cutout (DeVries & Taylor, 2017): one black square per image.
Each step draws from its own stream of the step's key, so a config without a
step draws the same numbers for the others as before the step existed.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from mnist_flax.errors import ConfigError, unknown

INTERPOLATIONS = {'nearest': 0, 'bilinear': 1}
# 'reflect' is OpenCV's BORDER_REFLECT_101 (albumentations' default): gfedcb|abcdefgh|gfedcba.
BORDERS = {'constant': 'constant', 'reflect': 'mirror'}
JITTERS = ('torchvision', 'albumentations')


def _is_zero(value: Any) -> bool:
  """True for a concrete 0; False for anything else, traced values included
  (a sweep's values are traced: then the step runs)."""
  return isinstance(value, numbers.Real) and value == 0


def _warp(image: jax.Array, angle: jax.Array, shift: jax.Array, order: int,
          scale: jax.Array | float = 1.0, fill: jax.Array | float = 0.0,
          border: str = 'constant') -> jax.Array:
  """Scales `image` (H, W) by `scale` and rotates it by `angle` radians about
  its centre, then shifts it by `shift` (y, x) pixels; `fill` outside the image,
  or the image reflected there for border 'reflect'."""
  h, w = image.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing='ij')
  # Inverse map: for each output pixel, where it came from in the input.
  y, x = (yy - shift[0] - cy) / scale, (xx - shift[1] - cx) / scale
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Counter-clockwise for positive angles, as torchvision (y points down).
  src_y = cos * y + sin * x + cy
  src_x = -sin * y + cos * x + cx
  sample = lambda x: jax.scipy.ndimage.map_coordinates(
      x, [src_y, src_x], order=order, mode=BORDERS[border])
  if border == 'reflect' or _is_zero(fill):
    return sample(image)
  # map_coordinates takes its cval as a static argument; a swept fill is traced.
  return sample(image - fill) + fill


def _chosen(key: jax.Array, n: int, p: jax.Array | float) -> jax.Array:
  """(n, 1, 1) booleans, each True with probability p."""
  return jax.random.uniform(key, (n, 1, 1)) < p


def random_affine(key: jax.Array, images: jax.Array, degrees: float,
                  translate: float, interpolation: str = 'bilinear', *,
                  scale: float = 0.0, integer_shift: bool = True,
                  fill: float = 0.0, border: str = 'constant',
                  p: float = 1.0) -> jax.Array:
  """Randomly rotates, scales and translates each image of a (N, H, W) float batch.

  Per image, as torchvision's RandomAffine(degrees, translate) draws: an angle
  from U(-degrees, degrees) and a shift of round(U(-t, t) * size) pixels per
  axis (`integer_shift` False: not rounded, as albumentations'
  ShiftScaleRotate); a zoom from U(1 - scale, 1 + scale); all about the image's
  centre. With probability `p` an image is warped, else left as it is.
  """
  if interpolation not in INTERPOLATIONS:
    raise unknown('interpolation', interpolation, INTERPOLATIONS)
  if border not in BORDERS:
    raise unknown('augment.border', border, BORDERS)
  if all(_is_zero(v) for v in (degrees, translate, scale)):
    return images  # the values may be traced (a sweep): then warp
  n, h, w = images.shape
  angle_key, shift_key = jax.random.split(key)
  angles = jnp.deg2rad(
      jax.random.uniform(angle_key, (n,), minval=-degrees, maxval=degrees))
  max_shift = jnp.array([translate * h, translate * w])
  shifts = jax.random.uniform(shift_key, (n, 2), minval=-max_shift, maxval=max_shift)
  if integer_shift:
    shifts = jnp.round(shifts)
  # The anchors' draws come from a stream of their own: without them the
  # angles and shifts are the numbers they always were.
  scale_key, p_key = jax.random.split(jax.random.fold_in(key, 3))
  # scale 0 draws exactly 1: the warp is the unscaled one, bit for bit.
  zooms = jax.random.uniform(scale_key, (n,), minval=1 - scale, maxval=1 + scale)
  warp = jax.vmap(_warp, in_axes=(0, 0, 0, None, 0, None, None))
  warped = warp(images, angles, shifts, INTERPOLATIONS[interpolation], zooms,
                fill, border)
  if isinstance(p, numbers.Real) and p >= 1:
    return warped
  return jnp.where(_chosen(p_key, n, p), warped, images)


def torchvision_jitter(image: jax.Array, brightness: jax.Array, contrast: jax.Array,
                       brightness_first: jax.Array) -> jax.Array:
  """torchvision's ColorJitter on one grayscale PIL image, given its draws.

  `image` (H, W) holds whole grey levels 0..255. PIL's Image.blend computes
  in float32 and truncates: brightness b gives trunc(b * x); contrast c blends
  with the image's mean grey level rounded, m + c * (x - m). The two come in
  random order (torchvision's randperm; saturation and hue do nothing to
  grayscale), and contrast's mean is the image's at that point.
  """
  def bright(x):
    return jnp.floor(jnp.clip(brightness * x, 0, 255))

  def contrast_(x):
    mean = jnp.floor(x.mean() + 0.5)
    return jnp.floor(jnp.clip(mean + contrast * (x - mean), 0, 255))

  return jnp.where(brightness_first, contrast_(bright(image)),
                   bright(contrast_(image)))


def albumentations_jitter(image: jax.Array, alpha: jax.Array,
                          beta: jax.Array) -> jax.Array:
  """albumentations' RandomBrightnessContrast on one uint8 image (H, W) of grey
  levels, given its draws: trunc(clip(alpha * x + 255 * beta, 0, 255)), a
  contrast about black and a brightness shift of the whole image. Exactly
  no change draws nothing to do (as albumentations' identity table), so a
  swept limit of 0 equals no jitter even on a warped image's fractional levels."""
  return jnp.where((alpha == 1) & (beta == 0), image,
                   jnp.floor(jnp.clip(alpha * image + 255 * beta, 0, 255)))


def color_jitter(key: jax.Array, images: jax.Array, brightness: float,
                 contrast: float, style: str, p: float = 1.0) -> jax.Array:
  """Random brightness and contrast for each image of a (N, H, W) batch in [0, 1].

  style 'torchvision': ColorJitter(brightness, contrast), factors drawn from
  U(1 - b, 1 + b) and U(1 - c, 1 + c); 'albumentations':
  RandomBrightnessContrast(brightness_limit=b, contrast_limit=c), alpha from
  1 + U(-c, c) and beta from U(-b, b). Each image is jittered with probability
  `p` (torchvision's ColorJitter: always).
  """
  if style not in JITTERS:
    raise unknown('augment.jitter', style, JITTERS)
  if _is_zero(brightness) and _is_zero(contrast):
    return images
  n = images.shape[0]
  b_key, c_key, order_key, p_key = jax.random.split(key, 4)
  b = jax.random.uniform(b_key, (n,), minval=-brightness, maxval=brightness)
  c = jax.random.uniform(c_key, (n,), minval=-contrast, maxval=contrast)
  if style == 'torchvision':
    # The input is whole grey levels / 255: round back to them exactly.
    first = jax.random.bernoulli(order_key, 0.5, (n,))
    levels = jax.vmap(torchvision_jitter)(jnp.round(images * 255), 1 + b, 1 + c, first)
  else:
    levels = jax.vmap(albumentations_jitter)(images * 255, 1 + c, b)
  jittered = levels / 255
  if isinstance(p, numbers.Real) and p >= 1:
    return jittered
  return jnp.where(_chosen(p_key, n, p), jittered, images)


# The anchors' keys: what each must be, and the test of it.
_UNIT = lambda v: 0 <= v <= 1
_RANGES = {
    'scale': ('in [0, 1): the zoom is drawn from 1 - scale to 1 + scale',
              lambda v: 0 <= v < 1),
    'fill': ('in [0, 1]: a raw intensity, 0 black and 1 white', _UNIT),
    'warp_p': ('a probability in [0, 1]', _UNIT),
    'jitter_p': ('a probability in [0, 1]', _UNIT),
    'brightness': ('in [0, 1]: a jitter limit, 0 off', _UNIT),
    'contrast': ('in [0, 1]: a jitter limit, 0 off', _UNIT),
}


def check(aug: Any) -> None:
  """A one-line ConfigError for an anchor key out of its range; traced (swept)
  values are left to the check of each run's own config (train.py)."""
  for key, (what, ok) in _RANGES.items():
    value = aug[key]
    if isinstance(value, numbers.Real) and not ok(value):
      raise ConfigError(f'augment.{key} must be {what}; not {value}')


def augment(key: jax.Array, images: jax.Array, aug: Any) -> jax.Array:
  """A config's whole augmentation (config.augment) of a (N, H, W) batch in
  [0, 1], in the order of this module's docstring."""
  check(aug)
  if aug.jitter not in JITTERS:
    raise unknown('augment.jitter', aug.jitter, JITTERS)
  jitter_key = jax.random.fold_in(key, 2)

  def jitter(x, style):
    if aug.jitter != style:
      return x
    return color_jitter(jitter_key, x, aug.brightness, aug.contrast, style, aug.jitter_p)

  x = jitter(images, 'torchvision')
  x = random_affine(key, x, aug.degrees, aug.translate, aug.interpolation,
                    scale=aug.scale, integer_shift=aug.integer_shift, fill=aug.fill,
                    border=aug.border, p=aug.warp_p)
  x = jitter(x, 'albumentations')
  return cutout(key, x, aug.cutout)


def cutout_is_off(size: int | jax.Array) -> bool:
  """Whether a cutout of `size` cuts nothing: True for a concrete 0, False for
  a positive or traced size; a negative one is a ConfigError."""
  if not isinstance(size, numbers.Real):
    return False
  if size < 0:
    raise ConfigError(f'augment.cutout must be >= 0 pixels, not {size}; 0 turns it off')
  return size == 0


def cutout(key: jax.Array, images: jax.Array, size: int | jax.Array) -> jax.Array:
  """Sets one `size` x `size` square of each image of a (N, H, W) batch to 0.

  `key` may be the one `random_affine` took: cutout draws from a key folded
  from it, independent of the warp's numbers, so the warp draws the same
  numbers with or without cutout.

  The square's centre is a pixel drawn uniformly over the whole image and the
  square is clipped at the border, as DeVries & Taylor's: near an edge less
  than size**2 pixels go. The square spans rows cy - size // 2 to
  cy - size // 2 + size - 1 (likewise columns), so odd and even sides are
  exact. `size` may be a traced value (a vmapped sweep over it): the square is
  found by comparing pixel coordinates, never by slicing.
  """
  if cutout_is_off(size):
    return images
  n, h, w = images.shape
  y_key, x_key = jax.random.split(jax.random.fold_in(key, 1))
  cy = jax.random.randint(y_key, (n, 1, 1), 0, h)
  cx = jax.random.randint(x_key, (n, 1, 1), 0, w)
  return jnp.where(_hole(cy, cx, size, h, w), jnp.zeros((), images.dtype), images)


def _hole(cy: jax.Array, cx: jax.Array, size: int | jax.Array, h: int,
          w: int) -> jax.Array:
  """The (..., h, w) mask of the square of side `size` about pixel (cy, cx),
  clipped to the image (the comparisons do the clipping)."""
  top, left = cy - size // 2, cx - size // 2
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)
  return ((rows >= top) & (rows < top + size)
          & (cols >= left) & (cols < left + size))
