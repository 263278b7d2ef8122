"""Data parallelism over devices and processes, and many seeds at once."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import checkpoint, epoch_loop, jit_steps, models, optim, parallel, train
from configs import v36
from mnist_flax.errors import UserError
from conftest import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Few steps: the float32 rounding differences of another summation order grow
# about 10x every 4 steps here (on an AVX-512 machine: 6e-8 after 5 steps, 1e-7
# after 10, 6e-5 after 20, 2e-2 after 50), while a real difference (BatchNorm
# statistics not shared, a device augmenting another slice) shows at step 1.
STEPS = 10
BATCH = 64


def _launch(workdir, data_dir, *flags):
  """`mnist_flax.main`: one epoch of STEPS batches of the V36 recipe, augmented,
  at a constant rate (OneCycle's peak makes the rounding differences grow faster)."""
  return subprocess.Popen(
      [sys.executable, '-m', 'mnist_flax.main', '--config=configs/v36.py',
       f'--workdir={workdir}', f'--config.data_dir={data_dir}',
       '--config.verify_checksums=False', f'--config.batch_size={BATCH}',
       f'--config.train_examples={STEPS * BATCH}', '--config.num_epochs=1',
       '--config.schedule.name=constant', '--config.optimizer.learning_rate=0.01',
       '--config.progress_bar=False', *flags],
      cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch_two_processes(workdirs, data_dir, *flags):
  """Processes 0 and 1 of one `--distributed` run (one device each), in
  workdirs[0] and workdirs[1]."""
  port = _free_port()
  return [_launch(workdirs[i], data_dir, '--distributed', '--cpu_devices=1',
                  f'--coordinator=localhost:{port}', '--num_processes=2',
                  f'--process_id={i}', *flags) for i in range(2)]


def _finish(process):
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err[-3000:]
  return out


def _train(workdir, data_dir, *flags):
  return _finish(_launch(workdir, data_dir, *flags))


def _params(workdir):
  _, _, restored = checkpoint.load_checkpoint(str(workdir))
  assert restored.step == STEPS
  return restored.state.variables


def _history(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _assert_close(a, b, tol):
  """Every value within tol, relative to its size where that exceeds 1 (the
  running variances reach 5)."""
  excess = lambda x, y: float(np.max(np.abs(x - y) / np.maximum(1, np.abs(y))))
  worst = max(jax.tree.leaves(jax.tree.map(excess, a, b)))
  assert worst <= tol, worst


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  from conftest import write_fake_mnist  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('fake')
  write_fake_mnist(path, n_train=STEPS * BATCH)  # 100 test images: 100 % 8 != 0
  return str(path)


@pytest.fixture(scope='module')
def one_device(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one') / 'w'
  assert '1 x cpu' in _train(workdir, data_dir, '--cpu_devices=1')
  return workdir


def test_eight_devices_equal_one(data_dir, one_device, tmp_path):
  out = _train(tmp_path / 'w', data_dir, '--cpu_devices=8')
  assert '8 x cpu' in out
  _assert_close(_params(tmp_path / 'w'), _params(one_device), 1e-5)
  a, b = _history(tmp_path / 'w')[0], _history(one_device)[0]
  assert a['test_accuracy'] == b['test_accuracy']  # all 100, padded to 8 x 13
  assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)


def test_two_processes_equal_one(data_dir, one_device, tmp_path):
  workdir = tmp_path / 'w'
  outputs = [_finish(p) for p in _launch_two_processes([workdir] * 2, data_dir)]
  assert '2 x cpu (cpu) over 2 processes' in outputs[0]
  assert 'Epoch  1/1' in outputs[0] and 'Epoch' not in outputs[1]  # one log
  _assert_close(_params(workdir), _params(one_device), 1e-5)


def test_processes_with_their_own_workdirs_stop_in_one_line(data_dir, tmp_path):
  # As on two hosts without a shared filesystem: orbax would wait 600 s for the
  # folder process 0 creates, then raise.
  start = time.monotonic()
  processes = _launch_two_processes([tmp_path / 'w0', tmp_path / 'w1'], data_dir)
  for i, process in enumerate(processes):
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f'error: --workdir={tmp_path / f"w{i}"} is not one folder shared by every '
        'process: process 1 cannot see the file process 0 wrote there; give every '
        'process the same --workdir on a shared filesystem')
  assert time.monotonic() - start < 30


def test_batch_that_does_not_split_is_refused(data_dir, tmp_path):
  process = _launch(tmp_path / 'w', data_dir, '--cpu_devices=3')
  out, err = process.communicate(timeout=300)
  assert process.returncode != 0
  assert err.strip().splitlines()[-1] == (
      'error: batch sizes [64] (the last batch of an epoch included) do not '
      'split across 3 devices; choose a batch_size (and train_examples) whose '
      'batches are multiples of 3, or train on fewer devices (--cpu_devices, '
      'CUDA_VISIBLE_DEVICES)')


def test_padded_eval_batches():
  images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2)
  labels = np.arange(10, dtype=np.int32)
  x, y = parallel.eval_batches(images, labels, 4, 3)
  assert x.shape == (3, 6, 2, 2) and y.shape == (3, 6)  # 3 batches of 4, padded to 6
  np.testing.assert_array_equal(y.ravel()[:10], labels)
  np.testing.assert_array_equal(x.reshape(18, 2, 2)[:10], images)
  np.testing.assert_array_equal(y.ravel()[10:], -1)
  np.testing.assert_array_equal(x.reshape(18, 2, 2)[10:], 0)


@pytest.mark.parametrize('how', ['vmap', 'unroll'])
def test_k_seeds_at_once_equal_k_single_runs(fake_mnist_dir, tmp_path, capsys, how):
  # The plumbing (seed directories, logs, metrics) in float32. Vmapped
  # convolutions round differently (6e-8 after one step) and training amplifies
  # that chaotically: under the V36 schedule ~10x per step, so a constant rate,
  # plain momentum and 2 epochs of 4 steps. Seeds 6-8 then agree to 1e-6, but
  # seed 5 ends 3e-4 apart, so the float32 tolerance is not a property of every
  # seed; in float64 every seed agrees to 1e-15
  # (test_stacked_steps_equal_single_steps_in_float64).
  def make(**overrides):
    c = small_config(fake_mnist_dir, epochs=2, **overrides)
    c.schedule.name, c.optimizer.learning_rate = 'constant', 0.01
    c.optimizer.nesterov = False
    return c
  results = train.train_seeds(make(num_seeds=3, seed=6, seed_parallelism=how),
                              str(tmp_path / 'k'))
  out = capsys.readouterr().out
  assert 'Epoch  2/2 seed 8:' in out and '(std ' in out
  for k, result in enumerate(results):
    single = train.train_and_evaluate(make(seed=6 + k), str(tmp_path / f's{k}'))
    _assert_close(result.state.variables, single.state.variables, 1e-5)
    for a, b in zip(result.history, single.history):
      assert a['test_accuracy'] == b['test_accuracy']
      assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
    # Each seed's directory is an ordinary run: the checkpoint readers take it.
    seed_dir = tmp_path / 'k' / f'seed_{6 + k}'
    _assert_close(_variables(seed_dir), single.state.variables, 1e-5)
  assert len({r.history[-1]['train_loss'] for r in results}) == 3
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'holds a run of 3 seeds: choose one with --workdir=.*seed_6'):
    checkpoint.load_checkpoint(str(tmp_path / 'k'))


def test_stacked_steps_equal_single_steps_in_float64():
  """Seeds 5 and 6 vmapped (5 drifts 3e-4 in float32), 3 steps. Unrolled
  seeds run the single seed's own ops; the float32 test covers them."""
  config = v36.get_config()
  config.seed_parallelism = 'vmap'
  model = models.create_model('v36')
  tx = optim.create_optimizer(config, steps_per_epoch=4).tx
  images = jax.random.randint(jax.random.key(1), (64, 28, 28), 0, 256).astype('uint8')
  labels = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  with jax.enable_x64():
    states = [jit_steps.create_train_state(model, tx, jax.random.key(s)) for s in (5, 6)]
    perms = [jit_steps.epoch_permutation(s.rng, 1, 64) for s in states]
    single = epoch_loop.make_steps(model, tx, config, 4)
    stacked = epoch_loop.make_steps(model, tx, config, 4, stacked=True)
    state, metrics = epoch_loop.stack(states), epoch_loop.stack([jit_steps.zero_metrics()] * 2)
    for step in range(3):
      state, metrics = stacked.train(state, metrics, images, labels, jnp.stack(perms),
                                     8 * step, batch_size=8)
    for k, one in enumerate(states):
      m = jit_steps.zero_metrics()
      for step in range(3):
        one, m = single.train(one, m, images, labels, perms[k], 8 * step, batch_size=8)
      assert jax.tree.leaves(one.params)[0].dtype == jnp.float64
      _assert_close(epoch_loop.unstack(state, k).variables, one.variables, 1e-13)
      assert float(epoch_loop.unstack(metrics, k)['loss']) == pytest.approx(
          float(m['loss']), rel=1e-13)


def _variables(workdir):
  return checkpoint.load_checkpoint(str(workdir))[2].state.variables


def test_k_seeds_resume_from_the_last_epoch_every_seed_saved(fake_mnist_dir, tmp_path):
  config = small_config(fake_mnist_dir, epochs=2, num_seeds=2)
  full = train.train_seeds(config, str(tmp_path / 'full'))
  workdir = tmp_path / 'cut'
  shutil.copytree(tmp_path / 'full', workdir)
  # A run killed after seed 0 saved epoch 2 and before seed 1 did.
  for step in os.listdir(workdir / 'seed_1' / 'checkpoints'):
    if step == str(full[0].history[-1]['step']):
      shutil.rmtree(workdir / 'seed_1' / 'checkpoints' / step)
  resumed = train.train_seeds(config, str(workdir))
  strip = lambda h: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in h]
  for a, b in zip(resumed, full):
    assert strip(a.history) == strip(b.history)


def test_unreachable_coordinator_is_a_one_line_error_in_seconds():
  port = _free_port()  # nobody listens on it
  with pytest.raises(UserError, match=rf'no coordinator at localhost:{port} after 1 s'):
    parallel.wait_for_coordinator(f'localhost:{port}', 1)
  with pytest.raises(UserError, match='is not HOST:PORT'):
    parallel.wait_for_coordinator('localhost', 1)
