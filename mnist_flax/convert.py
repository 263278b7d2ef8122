"""PyTorch state_dict <-> mnist_flax checkpoint.

python -m mnist_flax.convert --from_torch=STATE_DICT.pt --model=NAME --workdir=DIR
  [--model_kwargs=JSON]  (NAME may be torch:PATH.py:CLASS)
python -m mnist_flax.convert --to_torch=OUT.pt --workdir=DIR [--checkpoint=latest]
"""

from __future__ import annotations

import os
import sys

from absl import flags
import jax
import jax.numpy as jnp

from mnist_flax import checkpoint, cli, jit_steps, models, optim, torch_interop
from mnist_flax.config import base_config
from mnist_flax.errors import UserError


def from_torch(path: str, model_name: str, workdir: str, data_dir: str = '',
               model_kwargs: str = '') -> tuple[int, list[str]]:
  """Writes a PyTorch state_dict, bare or wrapped (see
  torch_interop.unwrap_state_dict), as checkpoint 0 of a new workdir;
  `model_kwargs`: a torch: model's constructor arguments.

  Returns the step and what was unwrapped.
  """
  state_dict, unwrapped = torch_interop.unwrap_state_dict(
      torch_interop.load_state_dict_file(path))
  variables, tracked = torch_interop.from_state_dict(model_name, state_dict, model_kwargs)
  ckpts = checkpoint.Checkpoints(workdir)
  try:
    if ckpts.steps():
      raise checkpoint.CheckpointError(f'{workdir} already holds checkpoints; '
                                       'convert into a new --workdir')
    config = base_config()
    config.model, config.data_dir = model_name, data_dir
    config.model_kwargs = model_kwargs
    model = models.create_model(model_name, bn_momentum=config.bn_momentum,
                                model_kwargs=model_kwargs)
    tx = optim.create_optimizer(config, steps_per_epoch=1).tx
    state = jit_steps.create_train_state(model, tx, jax.random.key(config.seed))
    state = state.replace(params=jax.tree.map(jnp.asarray, variables['params']),
                          batch_stats=jax.tree.map(jnp.asarray, variables['batch_stats']))
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
    ckpts.save(0, state, {'epoch': 0, 'history': [], 'source': os.path.abspath(path),
                          'num_batches_tracked': tracked})
  finally:
    ckpts.close()
  return 0, unwrapped


def to_torch(workdir: str, out: str, which: str = 'latest') -> None:
  """Saves a checkpoint's weights as a PyTorch state_dict file."""
  torch = torch_interop.require_torch()
  config, _, restored = checkpoint.load_checkpoint(workdir, which)
  variables = jax.device_get(restored.state.eval_variables)
  tracked = restored.meta.get('num_batches_tracked', int(restored.state.step))
  torch.save(torch_interop.to_state_dict(config.model, variables, tracked,
                                         config.model_kwargs), out)


def _define_flags() -> None:
  checkpoint.define_flags()
  flags.DEFINE_string('from_torch', None, 'A state_dict saved with torch.save.')
  flags.DEFINE_string('to_torch', None, 'Write the checkpoint as a state_dict here.')
  flags.DEFINE_string('model', None, 'The network of --from_torch\'s state_dict '
                      '(a name, or torch:PATH.py:CLASS).')
  flags.DEFINE_string('model_kwargs', '', "A torch: model's constructor arguments "
                      '(a JSON object).')
  flags.DEFINE_string('data_dir', '', 'Stored in the new config for evaluate/predict.')


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    if bool(f.from_torch) == bool(f.to_torch):
      raise UserError('give exactly one of --from_torch=FILE.pt (with --model) '
                      'and --to_torch=OUT.pt')
    if f.from_torch:
      if not f.model:
        raise UserError('--from_torch needs --model=NAME (v36, model1, ...)')
      step, unwrapped = from_torch(f.from_torch, f.model, f.workdir, f.data_dir,
                                   f.model_kwargs)
      if unwrapped:
        print(f'{f.from_torch}: unwrapped {"; ".join(unwrapped)}')
      print(f'{f.from_torch} -> {f.workdir}/checkpoints/{step} ({f.model})')
    else:
      to_torch(f.workdir, f.to_torch, f.checkpoint)
      print(f'{f.workdir} -> {f.to_torch}')
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
