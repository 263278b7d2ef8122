"""Training and evaluation: pure jitted steps over one state pytree.

Import and call `train_and_evaluate(config, workdir)` from a notebook; `main.py`
is only the command line around it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mnist_flax import augment, checkpoint, data, models, optim, parallel
from mnist_flax.errors import ConfigError, UserError, unknown

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array  # the run's base key; per-step keys are folded in from it
  # With config.ema_decay > 0: moving averages of `variables`. None otherwise,
  # so a run without them keeps the pytree (and checkpoints) it always had.
  ema: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables as trained, as `model.apply` takes them."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  @property
  def eval_variables(self) -> dict[str, Any]:
    """The variables evaluated and exported: the moving averages if kept."""
    return self.variables if self.ema is None else self.ema


def create_train_state(model: models.Net, tx: optax.GradientTransformation,
                       key: jax.Array, ema: bool = False) -> TrainState:
  """The state at step 0, with parameters drawn from `key`; `ema`: keep
  moving averages of the variables, starting from them."""

  # Jitted: run eagerly, Flax's init compiles ~100 one-op programs (5-7 s on CPU).
  @jax.jit
  def create(key):
    init_key, rng = jax.random.split(key)
    variables = models.init_variables(model, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']), rng=rng,
                      ema=variables if ema else None)

  return create(key)


def epoch_permutation(rng: jax.Array, epoch: jax.Array, num: int) -> jax.Array:
  """The order of the training examples in `epoch`, from the run's base key."""
  return jax.random.permutation(
      jax.random.fold_in(jax.random.fold_in(rng, 0), epoch), num)


def _augment_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)


def _float() -> jnp.dtype:
  """float32, or float64 inside `jax.enable_x64()` (for exactness checks)."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def to_unit(images: jax.Array) -> jax.Array:
  """uint8 images -> floats in [0, 1]."""
  return images.astype(_float()) / 255.0


def normalize(images: jax.Array, mean: float, std: float) -> jax.Array:
  """uint8 or [0, 1] float (N, 28, 28) images -> normalised (N, 28, 28, 1)."""
  if images.dtype == jnp.uint8:
    images = to_unit(images)
  return ((images - mean) / std)[..., None]


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example loss of PyTorch's `CrossEntropyLoss(label_smoothing=...)`."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _summed_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  """Summed loss, correct count and count; label -1 marks padding, not counted."""
  valid = labels >= 0
  losses = cross_entropy(logits, labels)
  return {'loss': jnp.where(valid, losses, 0.0).sum(),
          'correct': ((logits.argmax(-1) == labels) & valid).sum().astype(jnp.float32),
          'count': valid.sum().astype(jnp.float32)}


def _add(totals: Metrics, batch: Metrics) -> Metrics:
  return {k: totals[k] + batch[k] for k in ('loss', 'correct', 'count')}


def zero_metrics() -> Metrics:
  """Running train sums, and the first step with a non-finite loss (-1: none)."""
  return {'loss': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.float32),
          'count': jnp.zeros((), jnp.float32),
          'first_nonfinite': jnp.full((), -1, jnp.int32)}


def train_step(state: TrainState, metrics: Metrics, images: jax.Array,
               labels: jax.Array, perm: jax.Array, start: jax.Array, *,
               batch_size: int, model: models.Net,
               tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict,
               augmented_steps: int | None = None,
               batch_sharding: jax.sharding.Sharding | None = None
               ) -> tuple[TrainState, Metrics]:
  """One SGD step on perm[start:start + batch_size] of the on-device train set.

  Steps from `augmented_steps` on (None: never) train on un-augmented images.
  With `batch_sharding`, each device gathers, augments and trains on its slice
  of the batch (the dataset and the state are replicated).
  """
  idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
  if batch_sharding is not None:
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
  x = to_unit(images[idx])
  y = labels[idx]
  aug = config.augment
  warped = augment.random_affine(_augment_key(state), x, aug.degrees,
                                 aug.translate, aug.interpolation)
  x = (warped if augmented_steps is None
       else jnp.where(state.step < augmented_steps, warped, x))
  # Without the barrier XLA fuses the warp into conv1's input and the V36 step
  # runs 1.25x slower on CPU (docs/performance.md).
  x = jax.lax.optimization_barrier(normalize(x, config.mean, config.std))

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    loss = cross_entropy(logits, y, config.label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  batch = _summed_metrics(logits, y)
  first = metrics['first_nonfinite']
  first = jnp.where((first < 0) & ~jnp.isfinite(batch['loss']), state.step, first)
  state = state.replace(step=state.step + 1,
                        params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  if state.ema is not None:
    # As torch.optim.swa_utils.AveragedModel(use_buffers=True) with an EMA
    # avg_fn: the first step copies, and BatchNorm's running statistics are
    # averaged with the weights.
    rate = jnp.where(state.step == 1, 1.0, 1.0 - config.ema_decay)
    state = state.replace(ema=optax.incremental_update(state.variables, state.ema, rate))
  return state, {**_add(metrics, batch), 'first_nonfinite': first}


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
              model: models.Net, config: ml_collections.ConfigDict) -> Metrics:
  """Summed loss and correct count on un-augmented uint8 images."""
  x = normalize(images, config.mean, config.std)
  logits = model.apply(state.eval_variables, x, train=False)
  return _summed_metrics(logits, labels)


SEED_PARALLELISM = ('auto', 'vmap', 'unroll')


def seed_parallelism(name: str, mesh: jax.sharding.Mesh | None) -> str:
  """'vmap' or 'unroll' for the config's choice; 'auto' unrolls on CPU."""
  if name not in SEED_PARALLELISM:
    raise unknown('seed_parallelism', name, SEED_PARALLELISM)
  if name != 'auto':
    return name
  devices = mesh.devices.flat if mesh is not None else jax.devices()
  return 'unroll' if next(iter(devices)).platform == 'cpu' else 'vmap'


def over_seeds(fn: Callable[..., Any], in_axes: tuple[int | None, ...],
               how: str) -> Callable[..., Any]:
  """`fn` over the leading seed axis of the arguments whose in_axes is 0.

  'vmap' batches the seeds into one computation. 'unroll' traces `fn` once per
  seed into the same program: on XLA CPU that trains V36 2.5-4x faster, since
  vmapped per-seed weights turn each convolution into a grouped one, which XLA
  CPU runs slowly (docs/performance.md).
  """
  if how == 'vmap':
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    k = next(len(jax.tree.leaves(a)[0]) for a, ax in zip(args, in_axes) if ax == 0)
    outs = [fn(*(jax.tree.map(lambda x: x[i], a) if ax == 0 else a
                 for a, ax in zip(args, in_axes))) for i in range(k)]
    return _stack(outs)

  return unrolled


class Steps(NamedTuple):
  train: Callable[..., tuple[TrainState, Metrics]]
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
               stacked: bool = False) -> Steps:
  """Jitted train and eval steps; the train steps donate state and metrics.

  `mesh`: batches split across its devices. `stacked`: state, metrics and perm
  carry a leading seed axis and every seed trains at once (`over_seeds`).
  """
  sharding = parallel.batch_sharded(mesh) if mesh is not None else None
  how = seed_parallelism(config.seed_parallelism, mesh)
  # None keeps the program of a run without clean epochs as it was.
  augmented_steps = (augmented_epochs(config) * steps_per_epoch
                     if config.augment.clean_epochs else None)

  def step(state, metrics, images, labels, perm, start, *, batch_size):
    fn = functools.partial(train_step, batch_size=batch_size, model=model,
                           tx=tx, config=config, augmented_steps=augmented_steps,
                           batch_sharding=sharding)
    if stacked:
      fn = over_seeds(fn, (0, 0, None, None, 0, None), how)
    return fn(state, metrics, images, labels, perm, start)

  evaluate_ = functools.partial(eval_step, model=model, config=config)
  if stacked:
    evaluate_ = over_seeds(evaluate_, (0, None, None), how)

  def many(state, metrics, images, labels, perm, starts, *, batch_size):
    def body(carry, start):
      return step(*carry, images, labels, perm, start, batch_size=batch_size), None
    return jax.lax.scan(body, (state, metrics), starts)[0]

  jit = functools.partial(jax.jit, static_argnames='batch_size',
                          donate_argnums=(0, 1))
  return Steps(jit(step), jax.jit(evaluate_), jit(many))


def evaluate(eval_fn: Callable[..., Metrics], state: TrainState,
             batches: list[tuple[jax.Array, jax.Array]]) -> Metrics:
  """Summed test metrics over pre-batched data (per seed when stacked)."""
  totals = eval_fn(state, *batches[0])
  for images, labels in batches[1:]:
    totals = _add(totals, eval_fn(state, images, labels))
  return jax.device_get(totals)


def _means(totals: Metrics) -> dict[str, float]:
  """Mean loss, accuracy (%), correct and total count from summed metrics."""
  return {'loss': float(totals['loss'] / totals['count']),
          'accuracy': float(100 * totals['correct'] / totals['count']),
          'correct': int(totals['correct']), 'count': int(totals['count'])}


def batch_starts(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
  """(start, size) of each batch of an epoch; the last may be smaller, as with
  PyTorch's DataLoader (drop_last=False)."""
  return [(s, min(batch_size, num_examples - s))
          for s in range(0, num_examples, batch_size)]


def final_analysis(history: list[dict[str, Any]], target: float) -> dict[str, Any]:
  """The seeds' "final 3 epochs analysis", plus the best epoch."""
  last3 = [h['test_accuracy'] for h in history[-3:]]
  best = max(history, key=lambda h: h['test_accuracy'])
  average = float(np.mean(last3))
  return {'final3': last3, 'final3_average': average,
          'best_accuracy': best['test_accuracy'], 'best_epoch': best['epoch'],
          'target': target, 'success': average >= target}


def eval_split(config: ml_collections.ConfigDict) -> str:
  """What the per-epoch evaluation measures: 'validation' or 'test'."""
  return 'validation' if config.validation_examples else 'test'


def format_analysis(result: dict[str, Any], split: str = 'test') -> str:
  status = 'SUCCESS' if result['success'] else 'FAIL'
  return '\n'.join([
      '=' * 50, 'FINAL 3 EPOCHS ANALYSIS',
      f'{split.capitalize()} accuracies: {[round(a, 2) for a in result["final3"]]}',
      f'Average accuracy: {result["final3_average"]:.3f}%',
      f'Best accuracy: {result["best_accuracy"]:.2f}% (epoch {result["best_epoch"]})',
      f'STATUS: {status} (target: average >= {result["target"]:.2f}%)',
      '=' * 50])


class MetricWriter:
  """Per-epoch metrics to WORKDIR/metrics.jsonl and TensorBoard event files.

  metrics.jsonl is rewritten from `history` on open, so after a resume it holds
  exactly the epochs of the checkpoint resumed from, then the new ones.
  """

  def __init__(self, workdir: str, history: list[dict[str, Any]]):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'w')
    for record in history:
      self._jsonl.write(json.dumps(record) + '\n')
    self._tb = SummaryWriter(workdir)

  def write(self, record: dict[str, Any]) -> None:
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ('epoch', 'step'):
        self._tb.add_scalar(key, value, record['epoch'])
    self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


class TrainResult(NamedTuple):
  state: TrainState
  history: list[dict[str, Any]]
  analysis: dict[str, Any]


def _check_finite(first_nonfinite: int, epoch: int, seed: int) -> None:
  if first_nonfinite >= 0:
    raise TrainingDiverged(
        f'the loss became NaN or infinite at epoch {epoch}, step '
        f'{first_nonfinite + 1} (seed {seed}); training stopped and nothing from '
        'this epoch was saved: lower the learning rate (or check the data)')


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, '.write_test'), 'w'):
      pass
    os.remove(os.path.join(workdir, '.write_test'))
  except OSError as e:
    raise checkpoint.CheckpointError(
        f'workdir {workdir} is not writable ({e.strerror}); choose another '
        '--workdir') from None


class _Run:
  """One seed's workdir: its config, checkpoints, history and metric files."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    if parallel.is_primary():
      _prepare_workdir(workdir)
    self.ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
    self.history: list[dict[str, Any]] = []
    self.writer: MetricWriter | None = None
    self.last_state: TrainState | None = None

  def resume(self, template: TrainState, step: int | None = None
             ) -> checkpoint.Restored | None:
    """The latest good checkpoint (or `step`) of a run with this config."""
    if not self.ckpts.steps():
      return None
    saved = checkpoint.load_config(self.workdir)
    changed = checkpoint.config_differences(saved.to_dict(), self.config)
    if changed:
      raise checkpoint.CheckpointError(
          f'{self.workdir} holds a run with another config (changed: '
          f'{", ".join(changed)}); rerun with the same config to resume, or use '
          'a new --workdir')
    if step is not None:
      return self.ckpts.restore(step, template)
    return self.ckpts.restore_latest_good(template)

  def open(self) -> None:
    if not parallel.is_primary():
      return
    if not self.history:
      with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
        f.write(self.config.to_json(indent=2))
    self.writer = MetricWriter(self.workdir, self.history)

  def close(self) -> None:
    if self.writer:
      self.writer.close()
    self.ckpts.close()


def _seed_configs(config: ml_collections.ConfigDict, workdir: str
                  ) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, workdir) per seed. With num_seeds = K > 1, seed s trains in
  WORKDIR/seed_s as an ordinary one-seed run, so evaluate, predict, convert and
  plot read it as they read any run."""
  if config.num_seeds < 1:
    raise ConfigError(f'num_seeds must be >= 1, not {config.num_seeds}')
  if config.num_seeds == 1:
    return [(config, workdir)]
  runs = []
  for k in range(config.num_seeds):
    one = ml_collections.ConfigDict(config.to_dict())
    one.seed, one.num_seeds = config.seed + k, 1
    runs.append((one, os.path.join(workdir, f'seed_{one.seed}')))
  return runs


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, k: int) -> Any:
  return jax.tree.map(lambda x: x[k], tree)


def _restore(runs: list[_Run], template: TrainState) -> list[TrainState] | None:
  """Each seed's latest checkpoint, all at the same step, or None: no checkpoints."""
  restored = [run.resume(template) for run in runs]
  if all(r is None for r in restored):
    return None
  if any(r is None for r in restored):
    missing = [run.workdir for run, r in zip(runs, restored) if r is None]
    raise checkpoint.CheckpointError(
        f'{", ".join(missing)} hold no checkpoint while the other seeds do; '
        'use a new --workdir')
  step = min(r.step for r in restored)  # a run killed between seeds' saves
  restored = [r if r.step == step else run.resume(template, step)
              for run, r in zip(runs, restored)]
  for run, r in zip(runs, restored):
    run.history = r.meta['history']
  return [r.state for r in restored]


def _keeps_ema(config: ml_collections.ConfigDict) -> bool:
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f'ema_decay must be in [0, 1), not {config.ema_decay}; '
                      '0 turns the moving average off')
  return config.ema_decay > 0


def train_seeds(config: ml_collections.ConfigDict,
                workdir: str) -> list[TrainResult]:
  """Trains config.num_seeds replicas of config.model at once (seeds
  config.seed, config.seed + 1, ...), evaluating after every epoch.

  Saves a checkpoint after every epoch and, rerun with the same workdir,
  resumes from the latest one; a finished run is not trained again.
  """
  model = models.create_model(config.model, config.init)
  ds = data.load_for(config)
  num_train = len(ds.train_images)
  batches = batch_starts(num_train, config.batch_size)
  optimizer = optim.create_optimizer(config, len(batches))
  mesh = parallel.create_mesh()
  parallel.check_batch_sizes({size for _, size in batches}, mesh)
  replicated = parallel.replicated(mesh)
  seeds = _seed_configs(config, workdir)
  stacked = len(seeds) > 1

  create = jax.jit(lambda key: create_train_state(model, optimizer.tx, key,
                                                  ema=_keeps_ema(config)),
                   out_shardings=replicated)
  states = [create(jax.random.key(c.seed)) for c, _ in seeds]
  if parallel.is_primary() and stacked:
    _prepare_workdir(workdir)
  runs = [_Run(c, w) for c, w in seeds]
  try:
    states = _restore(runs, states[0]) or states
    for run, state in zip(runs, states):
      run.last_state = state
    done = len(runs[0].history)
    if done >= config.num_epochs:
      print(f'{workdir}: this run already finished ({done} epochs); nothing '
            'to do.', flush=True)
    elif done:
      print(f'Resuming from the checkpoint of epoch {done} (step '
            f'{int(states[0].step)}) in {workdir}.', flush=True)
    if done < config.num_epochs:
      for run in runs:
        run.open()
      _train_epochs(config, runs, _stack(states) if stacked else states[0], ds,
                    make_steps(model, optimizer.tx, config, len(batches), mesh, stacked),
                    optimizer, batches, mesh)
  finally:
    for run in runs:
      run.close()
  results = []
  for run in runs:
    analysis = final_analysis(run.history, config.target_accuracy)
    if parallel.is_primary():
      print((f'seed {run.config.seed}\n' if stacked else '')
            + format_analysis(analysis, eval_split(config)), flush=True)
    results.append(TrainResult(run.last_state, run.history, analysis))
  if stacked and parallel.is_primary():
    print(format_seeds([r.analysis for r in results],
                       [run.config.seed for run in runs]), flush=True)
  return results


def _train_epochs(config: ml_collections.ConfigDict, runs: list[_Run],
                  state: TrainState, ds: data.Dataset, steps: Steps,
                  optimizer: optim.Optimizer, batches: list[tuple[int, int]],
                  mesh: jax.sharding.Mesh) -> None:
  """The epoch loop: train, evaluate, checkpoint and log every seed."""
  stacked = len(runs) > 1
  replicated = parallel.replicated(mesh)
  # The whole dataset lives on every device as uint8; batches are gathered there.
  train_images, train_labels = parallel.put((ds.train_images, ds.train_labels),
                                            replicated)
  eval_batches = [parallel.put(batch, parallel.batch_sharded(mesh)) for batch in
                  parallel.padded_batches(ds.test_images, ds.test_labels,
                                          config.eval_batch_size, mesh.size)]
  num_train = len(ds.train_images)
  permute = functools.partial(epoch_permutation, num=num_train)
  zeros = zero_metrics
  if stacked:
    permute = jax.vmap(permute, in_axes=(0, None))
    zeros = lambda: _stack([zero_metrics()] * len(runs))
  permute = jax.jit(permute, out_shardings=replicated)
  zeros = jax.jit(zeros, out_shardings=replicated)
  plan = dispatch_plan(batches, config.batch_size, config.steps_per_dispatch)
  lockstep = needs_lockstep(mesh)
  split = eval_split(config)
  for epoch in range(len(runs[0].history) + 1, config.num_epochs + 1):
    start_time = time.time()
    perm = permute(state.rng, epoch)
    bar = tqdm.tqdm(total=len(batches), desc=f'Epoch {epoch}', leave=False,
                    disable=not (config.progress_bar and parallel.is_primary()),
                    mininterval=1.0)

    def progress(done: int, metrics: Metrics) -> None:
      bar.update(done - bar.n)
      if config.progress_bar and done % 50 < config.steps_per_dispatch:
        m = _unstack(jax.device_get(metrics), 0) if stacked else jax.device_get(metrics)
        bar.set_postfix(loss=f'{m["loss"] / m["count"]:.4f}',
                        acc=f'{100 * m["correct"] / m["count"]:.2f}%')

    state, metrics = train_epoch(steps, state, zeros(), train_images, train_labels,
                                 perm, plan, lockstep, progress)
    bar.close()
    train_totals = jax.device_get(metrics)
    test_totals = evaluate(steps.eval, state, eval_batches)
    step = int(jax.device_get(state.step).flat[0])
    records = []
    for k, run in enumerate(runs):
      m = _unstack(train_totals, k) if stacked else train_totals
      _check_finite(int(m['first_nonfinite']), epoch, run.config.seed)
      train_, test = _means(m), _means(_unstack(test_totals, k) if stacked else test_totals)
      records.append({
          'epoch': epoch, 'step': step,
          'train_loss': train_['loss'], 'train_accuracy': train_['accuracy'],
          'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
          'learning_rate': float(optimizer.learning_rate(step - 1)),
          'epoch_time_s': time.time() - start_time,
      })
    for k, (run, record) in enumerate(zip(runs, records)):
      run.history.append(record)
      run.last_state = _unstack(state, k) if stacked else state
      run.ckpts.save(step, run.last_state, {'epoch': epoch, 'history': run.history})
      if run.writer:
        run.writer.write(record)
      if parallel.is_primary():
        print(f'Epoch {epoch:2d}/{config.num_epochs}'
              f'{f" seed {run.config.seed}" if stacked else ""}: '
              f'train loss {record["train_loss"]:.4f} acc {record["train_accuracy"]:.2f}% | '
              f'{split} loss {record["test_loss"]:.4f} acc {record["test_accuracy"]:.2f}% | '
              f'lr {record["learning_rate"]:.6f} | {record["epoch_time_s"]:.1f}s',
              flush=True)


def needs_lockstep(mesh: jax.sharding.Mesh) -> bool:
  """XLA's CPU collectives deadlock (a rendezvous timeout, then abort) when
  several multi-device steps are in flight (seen with jax 0.10.2 on 2 cores);
  one at a time costs little, as each step is milliseconds of compute."""
  return mesh.size > 1 and mesh.devices.flat[0].platform == 'cpu'


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


def dispatch_plan(batches: list[tuple[int, int]], batch_size: int,
                   per_dispatch: int) -> list[tuple[list[int], int]]:
  """Groups an epoch's batches into (starts, size) dispatches: up to
  `per_dispatch` full batches each; a smaller last batch goes alone."""
  if per_dispatch < 1:
    raise ConfigError(f'steps_per_dispatch must be >= 1, not {per_dispatch}')
  full = [start for start, size in batches if size == batch_size]
  plan = [(full[i:i + per_dispatch], batch_size)
          for i in range(0, len(full), per_dispatch)]
  return plan + [([start], size) for start, size in batches if size != batch_size]


def format_seeds(analyses: list[dict[str, Any]], seeds: list[int]) -> str:
  """Per-seed final-3 averages and best, with their mean and std."""
  averages = np.array([a['final3_average'] for a in analyses])
  lines = ['seed  final-3 avg   best']
  lines += [f'{s:4d}  {a["final3_average"]:10.3f}%  {a["best_accuracy"]:.2f}%'
            for s, a in zip(seeds, analyses)]
  lines.append(f'mean  {averages.mean():10.3f}%  (std {averages.std(ddof=1):.3f}, '
               f'{len(seeds)} seeds)')
  return '\n'.join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainResult:
  """Trains one seed (config.num_seeds must be 1); see `train_seeds`."""
  if config.num_seeds != 1:
    raise ConfigError('train_and_evaluate trains one seed; call train_seeds '
                      f'for num_seeds={config.num_seeds}')
  return train_seeds(config, workdir)[0]


def num_params(params: Any) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def load_checkpoint(workdir: str, which: str = 'latest'
                    ) -> tuple[ml_collections.ConfigDict, models.Net,
                               checkpoint.Restored]:
  """A trained workdir's config, model and checkpoint ('latest', 'best', STEP)."""
  config = checkpoint.load_config(workdir)
  model = models.create_model(config.model, config.init)
  # A template with the saved structure; the schedule's length is irrelevant.
  tx = optim.create_optimizer(config, steps_per_epoch=1).tx
  template = create_train_state(model, tx, jax.random.key(0), ema=_keeps_ema(config))
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  step = ckpts.select(which)
  try:
    return config, model, ckpts.restore(step, template)
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoint.CheckpointError(
        f'checkpoint {step} in {ckpts.directory} is unreadable '
        f'({type(e).__name__}); choose another with --checkpoint') from None
  finally:
    ckpts.close()
