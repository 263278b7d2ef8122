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
from jax.sharding import PartitionSpec as P

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
               how: str) -> Callable[..., Any]:
  """`make_fn(config)` over the leading run axis of the arguments whose in_axes
  is 0, as a function of (values, *args): `values` is {swept key: one value per
  run} (`sweep.SWEEPABLE` keys; {} for seeds alone), traced into each run's config.

  'vmap' batches the runs into one computation. 'unroll' traces `make_fn` once
  per run into the same program: on XLA CPU that trains V36 2.5-4x faster, since
  vmapped per-run weights turn each convolution into a grouped one, which XLA
  CPU runs slowly (docs/performance.md).
  """
  def one(values, *args):
    return make_fn(sweep.with_values(config, values) if values else config)(*args)

  if how == 'vmap':
    return lambda values, *args: jax.vmap(one, in_axes=(0, *in_axes))(values, *args)

  def unrolled(values, *args):
    k = next(len(jax.tree.leaves(a)[0]) for a, ax in zip(args, in_axes) if ax == 0)
    take = lambda i, tree: jax.tree.map(lambda x: x[i], tree)
    return stack([one(take(i, values), *(take(i, a) if ax == 0 else a
                                          for a, ax in zip(args, in_axes)))
                  for i in range(k)])

  return unrolled


def over_devices(fn: Callable[..., Any], mesh: jax.sharding.Mesh,
                 in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
  """`fn` (an `over_seeds` function) with its runs shared out over a runs mesh
  (`parallel.runs_mesh`): each device applies it to its own runs, and no
  value crosses between devices."""
  spec = lambda ax: P(parallel.RUNS) if ax == 0 else P()
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(ax) for ax in in_axes),
                       out_specs=P(parallel.RUNS))


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

  `stacked`: state, metrics and perm carry a leading run axis and every run
  trains at once (`over_seeds`), each with its values of `swept` ({key: one
  value per run}, `sweep.SWEEPABLE` keys) and the optimizer built from them.
  `mesh`: a 'data' mesh splits each batch across its devices; a 'runs' mesh
  (stacked only) shares the runs out among them. `teacher`: every run distils
  from it.
  """
  over_runs = mesh is not None and mesh.axis_names == (parallel.RUNS,)
  if over_runs != (stacked and mesh is not None):
    raise ValueError('stacked runs take a runs mesh, a single run a data mesh')
  sharding = parallel.batch_sharded(mesh) if mesh is not None and not over_runs else None
  how = seed_parallelism(config.seed_parallelism, mesh)
  # Each run's swept values, an argument of the programs (sharded as the runs).
  values = {k: np.asarray(v) for k, v in (swept or {}).items()}
  values = (parallel.put(values, parallel.runs_sharded(mesh)) if over_runs
            else jax.tree.map(jnp.asarray, values))

  def over(make_fn, in_axes):
    fn = over_seeds(make_fn, config, in_axes, how)
    return over_devices(fn, mesh, (0, *in_axes)) if over_runs else fn
  # None keeps the program of a run without clean epochs as it was.
  augmented_steps = (augmented_epochs(config) * steps_per_epoch
                     if config.augment.clean_epochs else None)

  def step(values, state, metrics, images, labels, perm, start, teacher_variables, *,
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
      return over(make, (0, 0, None, None, 0, None, None))(values, *args)
    return make(config)(*args)

  def many(values, state, metrics, images, labels, perm, starts, teacher_variables, *,
           batch_size):
    def body(carry, start):
      return step(values, *carry, images, labels, perm, start, teacher_variables,
                  batch_size=batch_size), None
    return jax.lax.scan(body, (state, metrics), starts)[0]

  # Evaluation reads no swept key.
  evaluate_ = functools.partial(eval_step, model=model, config=config)

  def evaluate_all(state, images, labels):
    def body(totals, batch):
      return add_metrics(totals, evaluate_(state, *batch)), None
    first = evaluate_(state, images[0], labels[0])
    return jax.lax.scan(body, first, (images[1:], labels[1:]))[0]

  if stacked:
    evaluate_all = functools.partial(
        over(lambda _, fn=evaluate_all: fn, (0, None, None)), {})

  def jit(fn):
    # The swept values and the teacher's variables are arguments of the program,
    # not constants compiled into it; without a teacher, None adds nothing.
    return functools.partial(
        jax.jit(fn, static_argnames='batch_size', donate_argnums=(1, 2)), values,
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

