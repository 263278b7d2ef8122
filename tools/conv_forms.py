"""Times V36's convolutions for K runs at once in two forms, forward and both
gradients, to decide how stacked runs should convolve on an accelerator.

  python tools/conv_forms.py [--runs=1,8,32] [--repeats=20] > conv_forms.json

'vmap': jax.vmap of lax.conv over per-run kernels, what K seeds and sweeps use
now (XLA turns it into a grouped convolution, feature groups = runs). 'patches':
the input's 3x3 patches (lax.conv_general_dilated_patches) times each run's
kernel as one batched matrix product. On an H200 the vmapped 32-seed V36 step
took 13.8x one seed's (docs/performance.md); this says whether the batched
product form is the way out. Both forms are checked equal before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

# V36's 3x3 convolutions: (input H=W, in channels, out channels), batch 128.
LAYERS = {'conv1': (28, 1, 8), 'conv2': (26, 8, 10), 'conv3': (12, 10, 12),
          'conv4': (5, 12, 16), 'conv5': (3, 16, 16)}


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """One run's valid 3x3 convolution, NHWC x HWIO."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def vmapped(xs: jax.Array, ws: jax.Array) -> jax.Array:
  return jax.vmap(conv)(xs, ws)


def patches(xs: jax.Array, ws: jax.Array) -> jax.Array:
  """The same as `vmapped`, as patches times kernels, batched over runs."""
  k, n, h, w, c = xs.shape
  p = jax.lax.conv_general_dilated_patches(
      xs.reshape(k * n, h, w, c), (3, 3), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # Patch features come channel-major: (c, kh, kw), so the kernel is reordered to match.
  p = p.reshape(k, n, h - 2, w - 2, c * 9)
  kernel = ws.transpose(0, 3, 1, 2, 4).reshape(k, c * 9, ws.shape[-1])
  return jnp.einsum('knhwp,kpo->knhwo', p, kernel)


def step(form):
  """Forward and both gradients, as a train step needs them."""
  def loss(xs, ws):
    return jnp.sum(jnp.square(form(xs, ws)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def timed(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', default='1,8,32')
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--batch', type=int, default=128)
  args = parser.parse_args()
  rows = []
  for k in (int(r) for r in args.runs.split(',')):
    for name, (size, cin, cout) in LAYERS.items():
      key_x, key_w = jax.random.split(jax.random.key(k))
      xs = jax.random.normal(key_x, (k, args.batch, size, size, cin))
      ws = jax.random.normal(key_w, (k, 3, 3, cin, cout)) / 3
      diff = float(jnp.max(jnp.abs(vmapped(xs, ws) - patches(xs, ws))))
      row = {'runs': k, 'layer': name, 'max_abs_diff': diff}
      for form_name, form in (('vmap', vmapped), ('patches', patches)):
        row[f'{form_name}_ms'] = 1e3 * timed(step(form), xs, ws, repeats=args.repeats)
      rows.append(row)
      print(json.dumps(row), flush=True)
  print(json.dumps({'device': str(jax.devices()[0].device_kind),
                    'jax': jax.__version__, 'rows': rows}))


if __name__ == '__main__':
  main()
