"""The seeds' "hybrid augmentation" on the device: random rotation and translation,
and optionally cutout.

Per image, like torchvision's `RandomAffine(degrees, translate)`: an angle drawn
uniformly from [-degrees, degrees], a shift of round(U(-t, t) * 28) pixels on each
axis, the warp about the image centre, and black (0) fill outside the image.
Cutout (DeVries & Taylor, 2017) then blacks out one square per image.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from mnist_flax.errors import ConfigError, unknown

INTERPOLATIONS = {'nearest': 0, 'bilinear': 1}


def _warp(image: jax.Array, angle: jax.Array, shift: jax.Array,
          order: int) -> jax.Array:
  """Rotates `image` (H, W) by `angle` radians about its centre, then shifts it."""
  h, w = image.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing='ij')
  # Inverse map: for each output pixel, where it came from in the input.
  y, x = yy - shift[0] - cy, xx - shift[1] - cx
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Counter-clockwise for positive angles, as torchvision (y points down).
  src_y = cos * y + sin * x + cy
  src_x = -sin * y + cos * x + cx
  return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=order,
                                           mode='constant', cval=0.0)


def random_affine(key: jax.Array, images: jax.Array, degrees: float,
                  translate: float, interpolation: str = 'bilinear') -> jax.Array:
  """Randomly rotates and translates each image of a (N, H, W) float batch."""
  if interpolation not in INTERPOLATIONS:
    raise unknown('interpolation', interpolation, INTERPOLATIONS)
  if all(isinstance(v, (int, float)) for v in (degrees, translate)) and (
      degrees == translate == 0):
    return images  # degrees and translate may be traced (a sweep): then warp
  n, h, w = images.shape
  angle_key, shift_key = jax.random.split(key)
  angles = jnp.deg2rad(
      jax.random.uniform(angle_key, (n,), minval=-degrees, maxval=degrees))
  max_shift = jnp.array([translate * h, translate * w])
  shifts = jnp.round(jax.random.uniform(shift_key, (n, 2), minval=-max_shift,
                                        maxval=max_shift))
  warp = jax.vmap(_warp, in_axes=(0, 0, 0, None))
  return warp(images, angles, shifts, INTERPOLATIONS[interpolation])


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
