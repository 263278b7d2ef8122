"""Data order and augmentation keys: what changes from epoch to epoch and step
to step, and what a resumed run repeats. Two runs with the same bug agree with
each other, so these check the draws themselves, not only reproducibility."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np

from mnist_flax import augment, epoch_loop, jit_steps, models, optim, train
from configs import v36
from conftest import small_config


def test_each_epoch_is_another_permutation_of_every_example():
  rng = jax.random.key(0)
  perms = [np.asarray(jit_steps.epoch_permutation(rng, e, 256)) for e in (1, 2, 3)]
  for perm in perms:
    np.testing.assert_array_equal(np.sort(perm), np.arange(256))
  for a in range(3):
    for b in range(a):
      assert (perms[a] != perms[b]).mean() > 0.9, (a + 1, b + 1)
  other = np.asarray(jit_steps.epoch_permutation(jax.random.key(1), 1, 256))
  assert (other != perms[0]).mean() > 0.9  # and another run's key, another order


def _record_epochs(monkeypatch):
  """Replaces epoch_loop.train_epoch with one that records, per epoch, the
  examples in training order and the augmentation key of its first step."""
  seen = []
  real = epoch_loop.train_epoch

  def recording(steps, state, metrics, images, labels, perm, plan, *args, **kwargs):
    perm_ = np.asarray(perm)
    order = np.concatenate([perm_[s:s + size] for starts, size in plan for s in starts])
    key = np.asarray(jax.random.key_data(jit_steps._augment_key(state)))  # pylint: disable=protected-access
    seen.append((order, key, int(state.step)))
    return real(steps, state, metrics, images, labels, perm, plan, *args, **kwargs)

  monkeypatch.setattr(epoch_loop, 'train_epoch', recording)
  return seen


def test_every_example_once_per_epoch_and_a_resume_continues_the_order(
    fake_mnist_dir, tmp_path, monkeypatch):
  # 256 examples = 100 + 100 + 56: a partial last batch, dispatched alone.
  config = small_config(fake_mnist_dir, epochs=3, batch_size=100,
                        steps_per_dispatch=2, keep_checkpoints=3)
  seen = _record_epochs(monkeypatch)
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))
  assert [step for _, _, step in seen] == [0, 3, 6]
  for order, _, _ in seen:
    np.testing.assert_array_equal(np.sort(order), np.arange(256))
  assert (seen[0][0] != seen[1][0]).mean() > 0.9
  assert (seen[1][0] != seen[2][0]).mean() > 0.9

  # Interrupted after epoch 1: the resumed epochs see the same order and keys.
  workdir = tmp_path / 'cut'
  shutil.copytree(tmp_path / 'full', workdir)
  for step in ('6', '9'):
    shutil.rmtree(workdir / 'checkpoints' / step)
  original, seen[:] = list(seen), []
  resumed = train.train_and_evaluate(config, str(workdir))
  assert [step for _, _, step in seen] == [3, 6]
  for (order, key, _), (want_order, want_key, _) in zip(seen, original[1:]):
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_array_equal(key, want_key)
  strip = lambda h: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in h]
  assert strip(resumed.history) == strip(full.history)


def test_each_step_gets_its_own_warps_and_a_restored_step_the_same():
  state = jit_steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, batch_stats={},
                               opt_state=(), rng=jax.random.key(0))
  img = np.zeros((28, 28), np.float32)
  img[5:20, 12:15] = 1.0
  batch = jnp.stack([jnp.asarray(img)] * 4)
  warp = lambda s: np.asarray(augment.random_affine(
      jit_steps._augment_key(s), batch, 15.0, 0.1))  # pylint: disable=protected-access
  warps = [warp(state.replace(step=jnp.int32(i))) for i in range(3)]
  for a in range(3):
    for b in range(a):
      assert not np.allclose(warps[a], warps[b]), (a, b)
  # Only the run's key and the step count: a state rebuilt from them (as a
  # checkpoint restores it) warps the same.
  rebuilt = state.replace(step=jnp.int32(2),
                          rng=jax.random.wrap_key_data(jax.random.key_data(state.rng)))
  np.testing.assert_array_equal(warp(rebuilt), warps[2])


def test_train_step_warps_with_the_step_s_key():
  """The same batch and weights at steps 0 and 1 train differently when
  augmenting, identically when not: the step's key reaches the warp."""
  model = models.create_model('v36')
  images = jax.random.randint(jax.random.key(1), (32, 28, 28), 0, 256).astype('uint8')
  labels = jax.random.randint(jax.random.key(2), (32,), 0, 10)

  def kernels(config):
    tx = optim.create_optimizer(config, steps_per_epoch=10).tx
    steps = epoch_loop.make_steps(model, tx, config, steps_per_epoch=10)
    state = jit_steps.create_train_state(model, tx, jax.random.key(0))
    return [np.asarray(steps.train(jax.tree.map(jnp.copy, state.replace(step=jnp.int32(i))),
                                   jit_steps.zero_metrics(), images, labels,
                                   jnp.arange(32), 0, batch_size=32)[0]
                       .params['conv1']['kernel']) for i in (0, 1)]

  augmented, plain = v36.get_config(), v36.get_config()
  plain.augment.degrees = plain.augment.translate = 0.0
  at0, at1 = kernels(augmented)
  assert not np.allclose(at0, at1)
  at0, at1 = kernels(plain)
  np.testing.assert_array_equal(at0, at1)
