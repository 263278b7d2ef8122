"""python -m mnist_flax.predict --workdir=DIR IMAGE.png ...: digit and probability.

Images of any size, grey or colour, are converted as MNIST images are: grey,
white digit on black (dark-on-light images are inverted), 28x28.
"""

from __future__ import annotations

import sys

from absl import flags
import jax
import numpy as np
from PIL import Image

from mnist_flax import checkpoint, cli, jit_steps
from mnist_flax.errors import UserError


# Decoding is refused above this many pixels, before any pixel data is read:
# a tiny file can declare a huge image (a decompression bomb).
MAX_PIXELS = 4096 * 4096


class ImageError(UserError):
  """A file that is not an image we accept."""


def load_image(path: str) -> np.ndarray:
  """A (28, 28) uint8 image, white digit on black, from any image file."""
  try:
    with Image.open(path) as img:  # reads the header only
      width, height = img.size
      if width * height > MAX_PIXELS:
        raise Image.DecompressionBombError(f'{width}x{height} pixels')
      grey = np.asarray(img.convert('L').resize((28, 28), Image.Resampling.LANCZOS))
  except Image.DecompressionBombError as e:
    raise ImageError(f'{path}: declares too many pixels ({e}); the limit is '
                     f'{MAX_PIXELS:,}, refusing to decode it') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f'{path}: not a readable image ({e})') from None
  if grey.mean() > 127:  # a dark digit on a light background
    grey = 255 - grey
  return grey


def predict(workdir: str, paths: list[str], which: str = 'latest'
            ) -> list[tuple[str, int, float]]:
  """(path, digit, probability) for each image."""
  images = np.stack([load_image(p) for p in paths])
  config, model, restored = checkpoint.load_checkpoint(workdir, which)
  logits = model.apply(restored.state.eval_variables, jit_steps.normalize(images, config.mean, config.std),
                       train=False)
  probs = np.asarray(jax.nn.softmax(logits))
  return [(p, int(pr.argmax()), float(pr.max())) for p, pr in zip(paths, probs)]


def main(argv):
  if len(argv) < 2:
    sys.exit('error: no images given: python -m mnist_flax.predict '
             '--workdir=DIR IMAGE.png ...')
  try:
    for path, digit, prob in predict(flags.FLAGS.workdir, argv[1:],
                                     flags.FLAGS.checkpoint):
      print(f'{path}: {digit} (p={prob:.4f})')
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  checkpoint.define_flags()
  cli.run(main)
