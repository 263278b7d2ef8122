"""An epoch of jitted steps: batches grouped into dispatches, seeds trained at
once, and evaluation over pre-batched test data.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mnist_flax import distill, models, optim, parallel, sweep
from mnist_flax.errors import ConfigError, unknown
from mnist_flax.jit_steps import Metrics, TrainState, add_metrics, eval_step, train_step


def batch_starts(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
  """(start, size) of each batch of an epoch; the last may be smaller, as with
  PyTorch's DataLoader (drop_last=False)."""
  return [(s, min(batch_size, num_examples - s))
          for s in range(0, num_examples, batch_size)]


def _on_cpu(mesh: jax.sharding.Mesh | None) -> bool:
  """Whether the mesh (or, without one, JAX's default devices) is the CPU."""
  devices = mesh.devices.flat if mesh is not None else jax.devices()
  return next(iter(devices)).platform == 'cpu'


def steps_per_dispatch(requested: int, mesh: jax.sharding.Mesh,
                       steps_per_epoch: int) -> int:
  """Train steps per jitted call: `requested`, or for 0 (auto) the whole epoch
  as one `lax.scan` on accelerators, where a batch-128 step is launch-bound, and
  one step per call on CPU, where XLA runs the scanned step 3.5x slower
  (docs/performance.md)."""
  if requested < 0:
    raise ConfigError(f'steps_per_dispatch must be >= 0 (0: auto), not {requested}')
  if requested:
    return requested
  return 1 if _on_cpu(mesh) else steps_per_epoch


def dispatch_plan(batches: list[tuple[int, int]], batch_size: int,
                   per_dispatch: int) -> list[tuple[list[int], int]]:
  """Groups an epoch's batches into (starts, size) dispatches: up to
  `per_dispatch` full batches each; a smaller last batch goes alone."""
  full = [start for start, size in batches if size == batch_size]
  plan = [(full[i:i + per_dispatch], batch_size)
          for i in range(0, len(full), per_dispatch)]
  return plan + [([start], size) for start, size in batches if size != batch_size]


SEED_PARALLELISM = ('auto', 'vmap', 'unroll')


def seed_parallelism(name: str, mesh: jax.sharding.Mesh | None) -> str:
  """'vmap' or 'unroll' for the config's choice; 'auto' unrolls on CPU."""
  if name not in SEED_PARALLELISM:
    raise unknown('seed_parallelism', name, SEED_PARALLELISM)
  if name != 'auto':
    return name
  return 'unroll' if _on_cpu(mesh) else 'vmap'


def over_seeds(make_fn: Callable[[ml_collections.ConfigDict], Callable[..., Any]],
               config: ml_collections.ConfigDict, in_axes: tuple[int | None, ...],
               how: str, swept: Mapping[str, Sequence[Any]] | None = None
               ) -> Callable[..., Any]:
  """`make_fn(config)` over the leading run axis of the arguments whose in_axes
  is 0: seeds, and with `swept` ({key: one value per run}) swept configs.

  'vmap' batches the runs into one computation, the swept values traced. 'unroll'
  traces `make_fn` once per run into the same program, each with its own
  concrete config: on XLA CPU that trains V36 2.5-4x faster, since vmapped
  per-run weights turn each convolution into a grouped one, which XLA CPU runs
  slowly (docs/performance.md).
  """
  if how == 'vmap':
    if not swept:
      return jax.vmap(make_fn(config), in_axes=in_axes)

    def one(values, *args):
      return make_fn(sweep.with_values(config, values))(*args)

    def vmapped(*args):
      values = {k: jnp.asarray(v) for k, v in swept.items()}
      return jax.vmap(one, in_axes=(0, *in_axes))(values, *args)

    return vmapped

  def unrolled(*args):
    k = next(len(jax.tree.leaves(a)[0]) for a, ax in zip(args, in_axes) if ax == 0)
    outs = []
    for i in range(k):
      run_config = (sweep.with_values(config, {key: v[i] for key, v in swept.items()})
                    if swept else config)
      outs.append(make_fn(run_config)(*(jax.tree.map(lambda x: x[i], a) if ax == 0 else a
                                        for a, ax in zip(args, in_axes))))
    return stack(outs)

  return unrolled


def stack(trees: list[Any]) -> Any:
  """Trees of equal structure -> one tree with a leading seed axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Seed `k` of a stacked tree."""
  return jax.tree.map(lambda x: x[k], tree)


class Steps(NamedTuple):
  train: Callable[..., tuple[TrainState, Metrics]]
  # Summed metrics over (num_batches, size, ...) arrays (`parallel.eval_batches`),
  # every batch in one program.
  eval: Callable[..., Metrics]
  # Like `train` but over an array of batch starts, one dispatch for them all.
  train_many: Callable[..., tuple[TrainState, Metrics]]


def augmented_epochs(config: ml_collections.ConfigDict) -> int:
  """How many leading epochs train on augmented images (all but clean_epochs)."""
  clean = config.augment.clean_epochs
  if not 0 <= clean <= config.num_epochs:
    raise ConfigError(f'augment.clean_epochs must be between 0 and num_epochs '
                      f'({config.num_epochs}), not {clean}')
  return config.num_epochs - clean


def make_steps(model: models.Net, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, steps_per_epoch: int,
               mesh: jax.sharding.Mesh | None = None,
               stacked: bool = False,
               swept: Mapping[str, Sequence[Any]] | None = None,
               teacher: distill.Teacher | None = None) -> Steps:
  """Jitted train and eval steps; the train steps donate state and metrics.

  `mesh`: batches split across its devices. `stacked`: state, metrics and perm
  carry a leading run axis and every run trains at once (`over_seeds`), each
  with its values of `swept` ({key: one value per run}, `sweep.SWEEPABLE` keys)
  and the optimizer built from them. `teacher`: every run distils from it.
  """
  sharding = parallel.batch_sharded(mesh) if mesh is not None else None
  how = seed_parallelism(config.seed_parallelism, mesh)
  # None keeps the program of a run without clean epochs as it was.
  augmented_steps = (augmented_epochs(config) * steps_per_epoch
                     if config.augment.clean_epochs else None)

  def step(state, metrics, images, labels, perm, start, teacher_variables, *,
           batch_size):
    def make(run_config):
      # The optimizer's numeric hyperparameters live in each run's opt_state
      # (optax.inject_hyperparams); its schedules are rebuilt from the run's values.
      run_tx = optim.create_optimizer(run_config, steps_per_epoch).tx if swept else tx
      return functools.partial(train_step, batch_size=batch_size, model=model,
                               tx=run_tx, config=run_config,
                               augmented_steps=augmented_steps, batch_sharding=sharding,
                               teacher=teacher.model if teacher else None)
    args = (state, metrics, images, labels, perm, start, teacher_variables)
    if stacked:  # one teacher for every run
      return over_seeds(make, config, (0, 0, None, None, 0, None, None), how, swept)(*args)
    return make(config)(*args)

  # Evaluation reads no swept key.
  evaluate_ = functools.partial(eval_step, model=model, config=config)
  if stacked:
    evaluate_ = over_seeds(lambda _, fn=evaluate_: fn, config, (0, None, None), how)

  def evaluate_all(state, images, labels):
    def body(totals, batch):
      return add_metrics(totals, evaluate_(state, *batch)), None
    first = evaluate_(state, images[0], labels[0])
    return jax.lax.scan(body, first, (images[1:], labels[1:]))[0]

  def many(state, metrics, images, labels, perm, starts, teacher_variables, *,
           batch_size):
    def body(carry, start):
      return step(*carry, images, labels, perm, start, teacher_variables,
                  batch_size=batch_size), None
    return jax.lax.scan(body, (state, metrics), starts)[0]

  def jit(fn):
    # The teacher's variables are an argument of the program, not constants
    # compiled into it; without a teacher, None adds nothing to it.
    return functools.partial(
        jax.jit(fn, static_argnames='batch_size', donate_argnums=(0, 1)),
        teacher_variables=teacher.variables if teacher else None)

  return Steps(jit(step), jax.jit(evaluate_all), jit(many))


def needs_lockstep(mesh: jax.sharding.Mesh) -> bool:
  """XLA's CPU collectives deadlock (a rendezvous timeout, then abort) when
  several multi-device steps are in flight (seen with jax 0.10.2 on 2 cores);
  one at a time costs little, as each step is milliseconds of compute."""
  return mesh.size > 1 and _on_cpu(mesh)


def train_epoch(steps: Steps, state: TrainState, metrics: Metrics,
                images: jax.Array, labels: jax.Array, perm: jax.Array,
                plan: list[tuple[list[int], int]], lockstep: bool = False,
                progress: Callable[[int, Metrics], None] | None = None
                ) -> tuple[TrainState, Metrics]:
  """Runs the dispatches of `plan` (see `dispatch_plan`) over one epoch."""
  done = 0
  for starts, size in plan:
    if len(starts) == 1:
      state, metrics = steps.train(state, metrics, images, labels, perm, starts[0],
                                   batch_size=size)
    else:
      state, metrics = steps.train_many(state, metrics, images, labels, perm,
                                        np.asarray(starts, np.int32), batch_size=size)
    if lockstep:
      jax.block_until_ready(metrics)
    done += len(starts)
    if progress:
      progress(done, metrics)
  return state, metrics

