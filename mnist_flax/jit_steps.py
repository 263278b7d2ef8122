"""The pure jitted pieces: the training state, one SGD step and one eval step.

Everything here is a function of its arguments, traced under `jax.jit` by
`epoch_loop.make_steps`; the data stays on the device as uint8.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mnist_flax import augment, models
from mnist_flax.errors import ConfigError

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
                       key: jax.Array, ema: bool = False,
                       variables: dict[str, Any] | None = None) -> TrainState:
  """The state at step 0, with parameters drawn from `key`, or `variables`
  ({'params', 'batch_stats'}, e.g. a torch: model's own initialisation) when
  given; `ema`: keep moving averages of the variables, starting from them."""

  # Jitted: run eagerly, Flax's init compiles ~100 one-op programs (5-7 s on CPU).
  @jax.jit
  def create(key, given):
    init_key, rng = jax.random.split(key)
    # Flax draws float32; inside jax.enable_x64() the state starts in float64,
    # as the first step would leave it, so that step's program is not compiled twice.
    variables = jax.tree.map(lambda v: v.astype(_float()),
                             models.init_variables(model, init_key)
                             if given is None else given)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']), rng=rng,
                      ema=variables if ema else None)

  return create(key, variables)


def keeps_ema(config: ml_collections.ConfigDict) -> bool:
  """Whether the run keeps moving averages of the variables (config.ema_decay > 0)."""
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f'ema_decay must be in [0, 1), not {config.ema_decay}; '
                      '0 turns the moving average off')
  return config.ema_decay > 0


def epoch_permutation(rng: jax.Array, epoch: jax.Array, num: int) -> jax.Array:
  """The order of the training examples in `epoch`, from the run's base key."""
  return jax.random.permutation(
      jax.random.fold_in(jax.random.fold_in(rng, 0), epoch), num)


def _augment_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)


def _dropout_key(state: TrainState) -> jax.Array:
  """The step's dropout masks' key, a stream of its own beside augmentation's
  (models.Dropout hashes each activation's index under it)."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, 2), state.step)


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
  """Per-example loss of PyTorch's `CrossEntropyLoss(label_smoothing=...)`;
  `label_smoothing` may be traced (a sweep), then always takes the smoothed form."""
  if isinstance(label_smoothing, (int, float)) and not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)), Hinton
  et al.'s soft-target loss; T^2 keeps its gradients' scale independent of T.
  Its batch mean is PyTorch's `F.kl_div(F.log_softmax(s / T), F.softmax(t / T),
  reduction='batchmean') * T * T`."""
  teacher = jax.nn.log_softmax(teacher_logits / temperature)
  student = jax.nn.log_softmax(student_logits / temperature)
  return temperature ** 2 * (jnp.exp(teacher) * (teacher - student)).sum(-1)


def summed_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  """Summed loss, correct count and count; label -1 marks padding, not counted."""
  valid = labels >= 0
  losses = cross_entropy(logits, labels)
  return {'loss': jnp.where(valid, losses, 0.0).sum(),
          'correct': ((logits.argmax(-1) == labels) & valid).sum().astype(jnp.float32),
          'count': valid.sum().astype(jnp.float32)}


def add_metrics(totals: Metrics, batch: Metrics) -> Metrics:
  return {k: totals[k] + batch[k] for k in ('loss', 'correct', 'count')}


def zero_metrics() -> Metrics:
  """Running train sums, and the first step with a non-finite loss (-1: none)."""
  return {'loss': jnp.zeros((), _float()), 'correct': jnp.zeros((), jnp.float32),
          'count': jnp.zeros((), jnp.float32),
          'first_nonfinite': jnp.full((), -1, jnp.int32)}


def train_step(state: TrainState, metrics: Metrics, images: jax.Array,
               labels: jax.Array, perm: jax.Array, start: jax.Array,
               teacher_variables: Any = None, *,
               batch_size: int, model: models.Net,
               tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict,
               augmented_steps: int | None = None,
               batch_sharding: jax.sharding.Sharding | None = None,
               teacher: models.Net | None = None
               ) -> tuple[TrainState, Metrics]:
  """One SGD step on perm[start:start + batch_size] of the on-device train set.

  Steps from `augmented_steps` on (None: never) train on un-augmented images.
  With `batch_sharding`, each device gathers, augments and trains on its slice
  of the batch (the dataset and the state are replicated). With a `teacher`
  model and its `teacher_variables`, the loss mixes in `distillation_loss` by
  config.distill.alpha.
  """
  idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
  if batch_sharding is not None:
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
  x = to_unit(images[idx])
  y = labels[idx]
  warped = augment.augment(_augment_key(state), x, config.augment)
  x = (warped if augmented_steps is None
       else jnp.where(state.step < augmented_steps, warped, x))
  # Without the barrier XLA fuses the warp into conv1's input and the V36 step
  # runs 1.25x slower on CPU (docs/performance.md).
  x = jax.lax.optimization_barrier(normalize(x, config.mean, config.std))

  if teacher is not None:
    # The batch the student sees, through the teacher's running BN statistics.
    teacher_logits = jax.lax.stop_gradient(
        teacher.apply(teacher_variables, x, train=False))

  # Only networks with dropout take the key: the others' programs stay as they were.
  rngs = {'dropout': _dropout_key(state)} if models.has_dropout(model) else {}

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs=rngs)
    loss = cross_entropy(logits, y, config.label_smoothing)
    if teacher is not None:
      alpha = config.distill.alpha
      loss = (1 - alpha) * loss + alpha * distillation_loss(
          logits, teacher_logits, config.distill.temperature)
    return loss.mean(), (logits, updates['batch_stats'])

  grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  batch = summed_metrics(logits, y)
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
  return state, {**add_metrics(metrics, batch), 'first_nonfinite': first}


def eval_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
              model: models.Net, config: ml_collections.ConfigDict) -> Metrics:
  """Summed loss and correct count on un-augmented uint8 images."""
  x = normalize(images, config.mean, config.std)
  logits = model.apply(state.eval_variables, x, train=False)
  return summed_metrics(logits, labels)
