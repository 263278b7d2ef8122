"""optax optimisers and schedules with PyTorch's semantics, step for step."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mnist_flax.errors import ConfigError, unknown


def _cos_anneal(start: float, end: float, done: jnp.ndarray,
                left: jnp.ndarray) -> jnp.ndarray:
  """PyTorch's end + (start - end) / 2 * (cos(pi * pct) + 1), pct = done.

  Written as start * sin^2(pi/2 * left) + end * sin^2(pi/2 * done), with
  left = 1 - pct computed from its own step difference: two positive terms, each
  accurate to float32 rounding, so the LR matches PyTorch's float64 to ~1e-7
  relative even where it is tiny.
  """
  return (start * jnp.square(jnp.sin(jnp.pi / 2 * left))
          + end * jnp.square(jnp.sin(jnp.pi / 2 * done)))


def _two_phase(total_steps: int, pct_start: float, start: float, mid: float,
               end: float) -> optax.Schedule:
  """PyTorch OneCycleLR's two-phase cosine curve: start -> mid -> end."""
  warm_end = float(pct_start * total_steps) - 1
  last = total_steps - 1
  if warm_end in (0, last):
    # A phase of length 0: PyTorch divides by zero, we would make NaN LRs.
    raise ConfigError(
        f'onecycle: pct_start * total steps = {pct_start} * {total_steps} leaves '
        'a phase of zero steps; change schedule.pct_start or the number of steps')

  def schedule(count):
    # float32, or float64 under jax.enable_x64 (the exactness checks), so a
    # swept (traced) rate and a concrete one compute in the same precision.
    step = jnp.asarray(count, jax.dtypes.canonicalize_dtype(jnp.float64))
    warm = _cos_anneal(start, mid, step / warm_end, (warm_end - step) / warm_end)
    span = last - warm_end
    cool = _cos_anneal(mid, end, (step - warm_end) / span, (last - step) / span)
    return jnp.where(step <= warm_end, warm, cool)

  return schedule


def onecycle_lr(total_steps: int, max_lr: float, pct_start: float = 0.3,
                div_factor: float = 25.0,
                final_div_factor: float = 1e4) -> optax.Schedule:
  """`torch.optim.lr_scheduler.OneCycleLR`'s learning rate (cosine, two phases)."""
  initial = max_lr / div_factor
  return _two_phase(total_steps, pct_start, initial, max_lr,
                    initial / final_div_factor)


def onecycle_momentum(total_steps: int, pct_start: float = 0.3,
                      base_momentum: float = 0.85,
                      max_momentum: float = 0.95) -> optax.Schedule:
  """OneCycleLR's momentum cycle: max -> base while the LR rises, then back."""
  return _two_phase(total_steps, pct_start, max_momentum, base_momentum,
                    max_momentum)


def step_lr(learning_rate: float, steps_per_epoch: int, step_size: int,
            gamma: float) -> optax.Schedule:
  """`StepLR` stepped once per epoch: lr * gamma ** (epoch // step_size).

  Written out rather than optax.exponential_decay, which branches in Python on
  gamma, so that learning_rate and gamma may be traced (a sweep)."""
  period = step_size * steps_per_epoch

  def schedule(count):
    return learning_rate * gamma ** jnp.floor(jnp.asarray(count) / period)

  return schedule


def piecewise_table(num_epochs: int, knots: str) -> np.ndarray:
  """The LR of each epoch 0..num_epochs: the straight lines through `knots`
  ('EPOCH:LR,...', epochs ascending), as adilsammar/woolly-of-cv's
  one_cycle_lr_custom builds its table with np.interp."""
  try:
    epochs, lrs = zip(*((float(e), float(lr)) for e, lr in
                        (knot.split(':') for knot in knots.split(','))))
  except ValueError:
    epochs = ()
  if len(epochs) < 2 or list(epochs) != sorted(epochs):
    raise ConfigError(f"piecewise: schedule.knots must be 'EPOCH:LR,EPOCH:LR,...', at "
                      f"least two, epochs ascending (e.g. '0:0.05,2:0.1,15:0'), not {knots!r}")
  return np.interp(np.arange(num_epochs + 1), epochs, lrs)


def piecewise_lr(num_epochs: int, steps_per_epoch: int, knots: str) -> optax.Schedule:
  """`piecewise_table`'s LRs, each held for an epoch, as woolly-of-cv's
  CustomOneCycleLR steps them after every batch: its counter restarts at 1, not
  0, so the first epoch's LR lasts steps_per_epoch batches and every later one
  steps_per_epoch - 1 (docs/anchors.md, B.5)."""
  # float64 under jax.enable_x64, as _two_phase.
  table = jnp.asarray(piecewise_table(num_epochs, knots),
                      jax.dtypes.canonicalize_dtype(jnp.float64))
  later = max(steps_per_epoch - 1, 1)

  def schedule(count):
    count = jnp.asarray(count)
    index = jnp.where(count < steps_per_epoch, 0, 1 + (count - steps_per_epoch) // later)
    return table[jnp.minimum(index, num_epochs)]

  return schedule


@functools.partial(optax.inject_hyperparams, static_args=('nesterov',))
def sgd_torch(learning_rate: float, momentum: float, weight_decay: float = 0.0,
              nesterov: bool = False) -> optax.GradientTransformation:
  """`torch.optim.SGD`: coupled weight decay, then momentum, then the LR."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.trace(decay=momentum, nesterov=nesterov),
                     optax.scale_by_learning_rate(learning_rate))


@optax.inject_hyperparams
def adam_torch(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  """`torch.optim.Adam`: coupled (L2) weight decay added to the gradient."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1, b2, eps),
                     optax.scale_by_learning_rate(learning_rate))


class Optimizer(NamedTuple):
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule


SCHEDULES = ('onecycle', 'step', 'constant', 'piecewise')
OPTIMIZERS = ('sgd', 'adam')


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> Optimizer:
  """Builds the config's optimizer and LR schedule (see `config.py`)."""
  opt, sch = config.optimizer, config.schedule
  total = config.num_epochs * steps_per_epoch
  momentum = opt.momentum
  if sch.name == 'onecycle':
    lr = onecycle_lr(total, sch.max_lr, sch.pct_start, sch.div_factor,
                     sch.final_div_factor)
    if sch.cycle_momentum:
      momentum = onecycle_momentum(total, sch.pct_start, sch.base_momentum,
                                   sch.max_momentum)
  elif sch.name == 'step':
    lr = step_lr(opt.learning_rate, steps_per_epoch, sch.step_size, sch.gamma)
  elif sch.name == 'constant':
    lr = optax.constant_schedule(opt.learning_rate)
  elif sch.name == 'piecewise':
    lr = piecewise_lr(config.num_epochs, steps_per_epoch, sch.knots)
  else:
    raise unknown('schedule', sch.name, SCHEDULES)
  if opt.name == 'sgd':
    tx = sgd_torch(lr, momentum, opt.weight_decay, opt.nesterov)
  elif opt.name == 'adam':
    if opt.nesterov:
      raise ConfigError('optimizer.nesterov is for SGD; Adam has no Nesterov '
                        'variant here: set optimizer.nesterov=False')
    tx = adam_torch(lr, opt.b1, opt.b2, opt.eps, opt.weight_decay)
  else:
    raise unknown('optimizer', opt.name, OPTIMIZERS)
  return Optimizer(tx, lr)
