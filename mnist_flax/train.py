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

from mnist_flax import augment, checkpoint, data, models, optim
from mnist_flax.errors import UserError

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array  # the run's base key; per-step keys are folded in from it

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables, as `model.apply` takes them."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_train_state(model: models.Net, tx: optax.GradientTransformation,
                       key: jax.Array) -> TrainState:
  init_key, rng = jax.random.split(key)
  variables = models.init_variables(model, init_key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(variables['params']), rng=rng)


def shuffle_key(state: TrainState, epoch: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.rng, 0), epoch)


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


def _summed_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss': losses.sum(),
          'correct': (logits.argmax(-1) == labels).sum().astype(jnp.float32),
          'count': jnp.asarray(labels.shape[0], jnp.float32)}


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
               config: ml_collections.ConfigDict) -> tuple[TrainState, Metrics]:
  """One SGD step on perm[start:start + batch_size] of the on-device train set."""
  idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
  x = to_unit(images[idx])
  y = labels[idx]
  aug = config.augment
  x = augment.random_affine(_augment_key(state), x, aug.degrees, aug.translate,
                            aug.interpolation)
  x = normalize(x, config.mean, config.std)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, updates['batch_stats'])

  grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  batch = _summed_metrics(logits, y)
  first = metrics['first_nonfinite']
  first = jnp.where((first < 0) & ~jnp.isfinite(batch['loss']), state.step, first)
  state = state.replace(step=state.step + 1,
                        params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state)
  return state, {**_add(metrics, batch), 'first_nonfinite': first}


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
              model: models.Net, config: ml_collections.ConfigDict) -> Metrics:
  """Summed loss and correct count on un-augmented uint8 images."""
  x = normalize(images, config.mean, config.std)
  logits = model.apply(state.variables, x, train=False)
  return _summed_metrics(logits, labels)


class Steps(NamedTuple):
  train: Callable[..., tuple[TrainState, Metrics]]
  eval: Callable[..., Metrics]


def make_steps(model: models.Net, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict) -> Steps:
  """Jitted train and eval steps; the train step donates state and metrics."""
  train = jax.jit(functools.partial(train_step, model=model, tx=tx, config=config),
                  static_argnames='batch_size', donate_argnums=(0, 1))
  evaluate = jax.jit(functools.partial(eval_step, model=model, config=config))
  return Steps(train, evaluate)


def evaluate(eval_fn: Callable[..., Metrics], state: TrainState,
             batches: list[tuple[jax.Array, jax.Array]]) -> dict[str, float]:
  """Mean loss, accuracy (%) and correct count over pre-batched test data."""
  totals = eval_fn(state, *batches[0])
  for images, labels in batches[1:]:
    totals = _add(totals, eval_fn(state, images, labels))
  totals = jax.device_get(totals)
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


def format_analysis(result: dict[str, Any]) -> str:
  status = 'SUCCESS' if result['success'] else 'FAIL'
  return '\n'.join([
      '=' * 50, 'FINAL 3 EPOCHS ANALYSIS',
      f'Test accuracies: {[round(a, 2) for a in result["final3"]]}',
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


def _check_finite(metrics: Metrics, epoch: int) -> None:
  step = int(metrics['first_nonfinite'])
  if step >= 0:
    raise TrainingDiverged(
        f'the loss became NaN or infinite at epoch {epoch}, step {step + 1}; '
        'training stopped and nothing from this epoch was saved: lower the '
        'learning rate (or check the data)')


def _resume(ckpts: checkpoint.Checkpoints, config: ml_collections.ConfigDict,
            workdir: str, state: TrainState) -> checkpoint.Restored | None:
  """The latest good checkpoint of a run with this config, if there is one."""
  if not ckpts.steps():
    return None
  saved = checkpoint.load_config(workdir)
  changed = checkpoint.config_differences(saved.to_dict(), config)
  if changed:
    raise checkpoint.CheckpointError(
        f'{workdir} holds a run with another config (changed: '
        f'{", ".join(changed)}); rerun with the same config to resume, or use a '
        'new --workdir')
  return ckpts.restore_latest_good(state)


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


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainResult:
  """Trains config.model for config.num_epochs, evaluating after every epoch.

  Saves a checkpoint after every epoch and, rerun with the same workdir,
  resumes from the latest one; a finished run is not trained again.
  """
  _prepare_workdir(workdir)
  model = models.create_model(config.model, config.init)
  ds = data.load_for(config)
  num_train = len(ds.train_images)
  batches = batch_starts(num_train, config.batch_size)
  optimizer = optim.create_optimizer(config, len(batches))
  state = create_train_state(model, optimizer.tx, jax.random.key(config.seed))

  ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
  restored = _resume(ckpts, config, workdir, state)
  history = restored.meta['history'] if restored else []
  if restored:
    state = restored.state
    if len(history) >= config.num_epochs:
      print(f'{workdir}: this run already finished ({len(history)} epochs); '
            'nothing to do.', flush=True)
      analysis = final_analysis(history, config.target_accuracy)
      print(format_analysis(analysis), flush=True)
      return TrainResult(state, history, analysis)
    print(f'Resuming from the checkpoint of epoch {len(history)} (step '
          f'{restored.step}) in {ckpts.directory}.', flush=True)
  else:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))

  # The whole dataset lives on the device as uint8; batches are gathered there.
  train_images, train_labels = jax.device_put((ds.train_images, ds.train_labels))
  eval_batches = [jax.device_put((ds.test_images[i:i + config.eval_batch_size],
                                  ds.test_labels[i:i + config.eval_batch_size]))
                  for i in range(0, len(ds.test_images), config.eval_batch_size)]
  steps = make_steps(model, optimizer.tx, config)
  writer = MetricWriter(workdir, history)
  try:
    for epoch in range(len(history) + 1, config.num_epochs + 1):
      start_time = time.time()
      perm = jax.random.permutation(shuffle_key(state, epoch), num_train)
      metrics = zero_metrics()
      bar = tqdm.tqdm(batches, desc=f'Epoch {epoch}', leave=False,
                      disable=not config.progress_bar, mininterval=1.0)
      for i, (start, size) in enumerate(bar):
        state, metrics = steps.train(state, metrics, train_images, train_labels,
                                     perm, start, batch_size=size)
        if config.progress_bar and i % 50 == 49:
          m = jax.device_get(metrics)
          _check_finite(m, epoch)
          bar.set_postfix(loss=f'{m["loss"] / m["count"]:.4f}',
                          acc=f'{100 * m["correct"] / m["count"]:.2f}%')
      m = jax.device_get(metrics)
      _check_finite(m, epoch)
      test = evaluate(steps.eval, state, eval_batches)
      record = {
          'epoch': epoch, 'step': int(state.step),
          'train_loss': float(m['loss'] / m['count']),
          'train_accuracy': float(100 * m['correct'] / m['count']),
          'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
          'learning_rate': float(optimizer.learning_rate(int(state.step) - 1)),
          'epoch_time_s': time.time() - start_time,
      }
      history.append(record)
      ckpts.save(record['step'], state, {'epoch': epoch, 'history': history})
      writer.write(record)
      print(f'Epoch {epoch:2d}/{config.num_epochs}: '
            f'train loss {record["train_loss"]:.4f} acc {record["train_accuracy"]:.2f}% | '
            f'test loss {test["loss"]:.4f} acc {test["accuracy"]:.2f}% '
            f'({test["correct"]}/{test["count"]}) | '
            f'lr {record["learning_rate"]:.6f} | {record["epoch_time_s"]:.1f}s',
            flush=True)
  finally:
    writer.close()
    ckpts.close()
  analysis = final_analysis(history, config.target_accuracy)
  print(format_analysis(analysis), flush=True)
  return TrainResult(state, history, analysis)


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
  template = create_train_state(model, tx, jax.random.key(0))
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
