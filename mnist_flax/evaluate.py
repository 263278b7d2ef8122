"""python -m mnist_flax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP].

Prints the test accuracy and loss of a checkpoint as one JSON line.
"""

import json
import sys

from absl import flags
import jax
import numpy as np

from mnist_flax import checkpoint, cli, data, jit_steps
from mnist_flax.errors import UserError


def evaluate_checkpoint(workdir: str, which: str = 'latest',
                        data_dir: str | None = None
                        ) -> tuple[dict, np.ndarray, data.Dataset]:
  """Test metrics and logits of a checkpoint, and the run's dataset."""
  config, model, restored = checkpoint.load_checkpoint(workdir, which)
  if data_dir is not None:
    config.data_dir = data_dir
  ds = data.load_for(config)
  variables = restored.state.eval_variables
  apply = jax.jit(lambda x: model.apply(
      variables, jit_steps.normalize(x, config.mean, config.std), train=False))
  size = config.eval_batch_size
  logits = np.concatenate([np.asarray(apply(ds.test_images[i:i + size]))
                           for i in range(0, len(ds.test_images), size)])
  log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  labels = ds.test_labels
  result = {'checkpoint_step': restored.step, 'epoch': restored.meta['epoch'],
            'test_accuracy': float(100 * np.mean(logits.argmax(1) == labels)),
            'test_loss': float(-log_probs[np.arange(len(labels)), labels].mean()),
            'test_examples': len(labels)}
  return result, logits, ds


def _define_flags() -> None:
  checkpoint.define_flags()
  flags.DEFINE_string('logits_out', None, 'Write the (N, 10) test logits, in '
                      'test-set order, to this .npy file.')
  flags.DEFINE_string('data_dir', None, "Override the run's data_dir.")


def main(argv):
  del argv
  try:
    result, logits, _ = evaluate_checkpoint(
        flags.FLAGS.workdir, flags.FLAGS.checkpoint, flags.FLAGS.data_dir)
    if flags.FLAGS.logits_out:
      np.save(flags.FLAGS.logits_out, logits)
  except (UserError, OSError) as e:
    sys.exit(f'error: {e}')
  print(json.dumps(result))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
