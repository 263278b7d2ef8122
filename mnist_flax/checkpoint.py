"""Checkpoints with orbax: save every epoch, resume, fall back past corrupt ones.

A checkpoint lives in WORKDIR/checkpoints/<train step>/ and holds the whole
TrainState plus a JSON `meta` item (epoch and metrics history). orbax writes each
one to a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-written checkpoint behind that we would read.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Any, NamedTuple

from absl import flags
from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mnist_flax import jit_steps, kill_switch, models, optim
from mnist_flax.config import base_config
from mnist_flax.errors import UserError

# Keys that may change between a run and its resumption: they do not change
# what is computed. Any other difference is refused.
RESUMABLE_KEYS = frozenset({'data_dir', 'tfds_data_dir', 'verify_checksums', 'writers_file',
                            'progress_bar', 'eval_batch_size', 'target_accuracy',
                            'keep_checkpoints', 'checkpoint_every', 'steps_per_dispatch',
                            'seed_parallelism'})


class CheckpointError(UserError):
  """No usable checkpoint, or one that does not fit the configuration."""


class Restored(NamedTuple):
  step: int
  state: Any
  meta: dict[str, Any]  # {'epoch': int, 'history': [per-epoch records]}


def _saveable(state: Any) -> dict[str, Any]:
  """The state's fields as orbax stores them: typed PRNG keys as their raw key
  data, and fields that are None (an EMA not kept) left out, so checkpoints
  from before such a field existed still restore."""
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  # An abstract state (a restore template) has the key's shape, not its data.
  if isinstance(state.rng, jax.ShapeDtypeStruct):
    data = jax.eval_shape(jax.random.key_data, state.rng)
    fields['rng'] = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=state.rng.sharding)
  else:
    fields['rng'] = jax.random.key_data(state.rng)
  return {k: v for k, v in fields.items() if v is not None}


def _unsaveable(fields: dict[str, Any], like: Any) -> Any:
  return type(like)(**{**fields, 'rng': jax.random.wrap_key_data(fields['rng'])})


def config_differences(saved: dict[str, Any],
                       config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose values differ between a saved config and `config`."""
  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
    return out
  a, b = flat(saved), flat(config.to_dict())
  return sorted(k for k in a.keys() | b.keys()
                if k.split('.')[0] not in RESUMABLE_KEYS and a.get(k) != b.get(k))


class Checkpoints:
  """The checkpoints of one workdir: the last `keep` plus the best by test accuracy."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self._corrupt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints_corrupt'))
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: m['test_accuracy'], n=1)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=False,
        create=not read_only, read_only=read_only,
        temporary_path_class=kill_switch.temporary_path_class())
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise CheckpointError(f'cannot use {self.directory}: {e.strerror or e}; '
                            'choose a writable --workdir') from None

  def steps(self) -> list[int]:
    self._manager.reload()  # another process may have saved since
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves state and meta as checkpoint `step`; earlier ones stay intact."""
    history = meta['history']
    metrics = {'test_accuracy': history[-1]['test_accuracy']} if history else None
    try:
      self._manager.save(
          step, metrics=metrics,
          args=ocp.args.Composite(state=ocp.args.StandardSave(_saveable(state)),
                                  meta=ocp.args.JsonSave(meta)))
      self._manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f'could not save checkpoint {step} in '
                            f'{self.directory}: {e.strerror or e} (disk full or '
                            'not writable?); earlier checkpoints are intact') from None

  def restore(self, step: int, abstract_state: Any) -> Restored:
    """Restores checkpoint `step`; raises whatever orbax raises if it is bad."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_saveable(abstract_state)),
            meta=ocp.args.JsonRestore()))
    return Restored(step, _unsaveable(restored['state'], abstract_state), restored['meta'])

  def restore_latest_good(self, abstract_state: Any) -> Restored | None:
    """The newest checkpoint that restores, moving corrupt newer ones aside.

    Returns None when there are no checkpoints at all; raises CheckpointError
    when there are some and none of them can be read.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint %d is unreadable (%s: %s)', step,
                        type(e).__name__, e)
        print(f'warning: checkpoint {step} in {self.directory} is unreadable '
              f'({type(e).__name__}); moved to {self._corrupt_dir}, trying the '
              'previous one', flush=True)
        self._move_aside(step)
    if steps:
      raise CheckpointError(f'none of the checkpoints {steps} in {self.directory} '
                            f'could be read (moved to {self._corrupt_dir}); start '
                            'again with a new --workdir')
    return None

  def select(self, which: str) -> int:
    """The step for 'latest', 'best' (by test accuracy) or a step number."""
    steps = self.steps()
    if not steps:
      raise CheckpointError(f'no checkpoints in {self.directory}: train first '
                            '(python -m mnist_flax.main ... --workdir=DIR)')
    if which == 'latest':
      return steps[-1]
    if which == 'best':
      history = self._manager.restore(
          steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']['history']
      kept = [h for h in history if h['step'] in steps]
      # A converted checkpoint has no history: it is its own best.
      return max(kept, key=lambda h: h['test_accuracy'])['step'] if kept else steps[-1]
    if which.isdigit() and int(which) in steps:
      return int(which)
    raise CheckpointError(f'no checkpoint {which!r} in {self.directory}: choose '
                          f'best, latest or one of {steps}')

  def _move_aside(self, step: int) -> None:
    os.makedirs(self._corrupt_dir, exist_ok=True)
    source = os.path.join(self.directory, str(step))
    if os.path.exists(source):
      shutil.move(source, os.path.join(self._corrupt_dir, str(step)))
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def define_flags() -> None:
  """--workdir and --checkpoint, for the CLIs that read a checkpoint. Defined
  when run as a program only, so that those modules can be imported together."""
  flags.DEFINE_string('workdir', None, 'A directory mnist_flax.main trained in.')
  flags.DEFINE_string('checkpoint', 'latest', "'latest', 'best' or a step number.")
  flags.mark_flag_as_required('workdir')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (WORKDIR/config.json), on top of
  today's defaults, so that keys added since the run was saved have values."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    seeds = sorted(glob.glob(os.path.join(workdir, 'seed_*', 'config.json')))
    if seeds:
      raise CheckpointError(
          f'{workdir} holds a run of {len(seeds)} seeds: choose one with '
          f'--workdir={os.path.dirname(seeds[0])} (or another seed_S)') from None
    raise CheckpointError(f'{path} not found: --workdir must be a directory that '
                          'mnist_flax.main trained in') from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path} is not valid JSON ({e}); it is not a config '
                          'saved by mnist_flax.main') from None
  config = base_config()
  config.update(saved)
  return config


def load_checkpoint(workdir: str, which: str = 'latest'
                    ) -> tuple[ml_collections.ConfigDict, models.Net, Restored]:
  """A trained workdir's config, model and checkpoint ('latest', 'best', STEP)."""
  config = load_config(workdir)
  model = models.create_model(config.model, config.init, config.precision,
                             config.bn_momentum, config.model_kwargs)
  # A template with the saved structure; the schedule's length is irrelevant.
  tx = optim.create_optimizer(config, steps_per_epoch=1).tx
  # Shapes and dtypes only: traced, not compiled (seconds on CPU). Restored
  # onto one device, whatever devices the run was saved from.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda key: jit_steps.create_train_state(
          model, tx, key, ema=jit_steps.keeps_ema(config)), jax.random.key(0)))
  ckpts = Checkpoints(workdir, read_only=True)
  step = ckpts.select(which)
  try:
    return config, model, ckpts.restore(step, template)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'checkpoint {step} in {ckpts.directory} is unreadable '
        f'({type(e).__name__}); choose another with --checkpoint') from None
  finally:
    ckpts.close()
