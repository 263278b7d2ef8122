"""The seeds' "hybrid augmentation" on the device: random rotation and translation.

Per image, like torchvision's `RandomAffine(degrees, translate)`: an angle drawn
uniformly from [-degrees, degrees], a shift of round(U(-t, t) * 28) pixels on each
axis, the warp about the image centre, and black (0) fill outside the image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mnist_flax.errors import unknown

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
