"""Knowledge distillation from a larger teacher: a separate track.

The student keeps the < 8,000-parameter and 15-epoch rules; the teacher, any
size, is trained beforehand as an ordinary run, and that training is extra
compute. The soft-target loss is `jit_steps.distillation_loss`, mixed into the
train step by config.distill.alpha.
"""

from __future__ import annotations

import glob
import os
from typing import Any, NamedTuple

import jax
import ml_collections

from mnist_flax import architectures, checkpoint, models, parallel
from mnist_flax.errors import ConfigError

# Keys that must agree between teacher and student: the teacher reads the
# student's normalised batches.
SAME_INPUTS = ('dataset', 'mean', 'std')


class Teacher(NamedTuple):
  """A trained run that teaches, loaded once and kept on the devices."""

  model: models.Net
  variables: Any  # its evaluated variables (the moving averages if it kept them)
  description: str  # 'distilled from MODEL (N params, trained separately)'


def check(config: ml_collections.ConfigDict) -> bool:
  """Validates config.distill; whether the run distils."""
  d = config.distill
  if not 0.0 <= d.alpha <= 1.0:
    raise ConfigError(f'distill.alpha must be in [0, 1], not {d.alpha}')
  if d.temperature <= 0:
    raise ConfigError(f'distill.temperature must be > 0, not {d.temperature}')
  if d.alpha and not d.teacher:
    raise ConfigError(f'distill.alpha={d.alpha} needs a teacher: set '
                      'distill.teacher to the workdir of a trained run')
  return bool(d.teacher)


def _teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher workdir's config, checked against the student's inputs."""
  path = config.distill.teacher
  where = f'distill.teacher={path}'
  if not os.path.isdir(path):
    raise ConfigError(f'{where} is not a directory; give the workdir of a trained run')
  if not os.path.exists(os.path.join(path, 'config.json')):
    seeds = sorted(glob.glob(os.path.join(path, 'seed_*', 'config.json')))
    if seeds:
      raise ConfigError(f'{where} holds a run of {len(seeds)} seeds: choose one, '
                        f'e.g. distill.teacher={os.path.dirname(seeds[0])}')
    raise ConfigError(f'{where} has no config.json; give the workdir of a run '
                      'mnist_flax.main trained')
  folder = os.path.join(path, 'checkpoints')
  if not (os.path.isdir(folder) and any(d.isdigit() for d in os.listdir(folder))):
    raise ConfigError(f'{where} holds no checkpoint; train the teacher first')
  teacher = checkpoint.load_config(path)
  differing = [k for k in SAME_INPUTS if teacher[k] != config[k]]
  if differing:
    raise ConfigError(
        f'{where} was trained with '
        + ', '.join(f'{k}={teacher[k]!r} (the student: {config[k]!r})' for k in differing)
        + '; the teacher reads the student\'s normalised images, so they must agree')
  split = ('validation_examples', 'validation_split')
  if config.validation_examples and any(teacher[k] != config[k] for k in split):
    raise ConfigError(
        f'{where} was trained with validation_examples={teacher.validation_examples}, '
        f'validation_split={teacher.validation_split}, so it may have seen the '
        f'student\'s {config.validation_examples} validation images: train the '
        'teacher with the student\'s --config.validation_examples and validation_split')
  return teacher


def describe(config: ml_collections.ConfigDict) -> str:
  """'distilled from MODEL (N params, trained separately)', or '' without a teacher."""
  if not check(config):
    return ''
  teacher = _teacher_config(config)
  params = architectures.param_count(architectures.get_network(teacher.model,
                                                              teacher.model_kwargs))
  return f'distilled from {teacher.model} ({params:,} params, trained separately)'


def load_teacher(config: ml_collections.ConfigDict,
                 sharding: jax.sharding.Sharding) -> Teacher | None:
  """The teacher of config.distill, its latest checkpoint's variables put on the
  devices with `sharding`; None without one."""
  description = describe(config)
  if not description:
    return None
  try:
    _, model, restored = checkpoint.load_checkpoint(config.distill.teacher)
  except checkpoint.CheckpointError as e:
    raise ConfigError(f'distill.teacher={config.distill.teacher}: {e}') from None
  variables = parallel.put(jax.device_get(restored.state.eval_variables), sharding)
  return Teacher(model, variables, description)
