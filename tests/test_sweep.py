"""--sweep: many runs in one program, each equal to its single run."""

import csv
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import epoch_loop, jit_steps, models, optim, sweep, train
from mnist_flax.errors import ConfigError
from configs import v36
from conftest import small_config


def _assert_close(a, b, tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


def _strip(history):
  return [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in history]


def test_every_run_of_a_sweep_equals_its_single_run(fake_mnist_dir, tmp_path, capsys):
  # The plumbing (workdirs, labels, sweep.csv) in CPU's unrolled form. Each
  # run's values are traced (so that runs can be shared out over devices), and
  # XLA rounds a traced rate's products differently from a constant's: in
  # float32 the runs drift up to 6e-5 (relative) from their single runs in 8
  # steps, as vmapped seeds do (up to 7e-4), so a loose tolerance here, and
  # float64 below, where they agree to rounding.
  def make(**overrides):
    c = small_config(fake_mnist_dir, epochs=2, **overrides)
    c.schedule.name, c.optimizer.learning_rate = 'constant', 0.01
    return c
  swept = sweep.parse(['optimizer.learning_rate=0.01,0.03', 'label_smoothing=0.1'], make())
  results = train.train_seeds(make(), str(tmp_path / 'sweep'), swept)
  out = capsys.readouterr().out
  assert 'Epoch  2/2 optimizer.learning_rate=0.03 label_smoothing=0.1 seed 0:' in out
  variants = [(0.01, 0.1), (0.03, 0.1)]
  assert len(results) == len(variants)
  for (lr, ls), result in zip(variants, results):
    single_config = make(label_smoothing=ls)
    single_config.optimizer.learning_rate = lr
    single = train.train_and_evaluate(single_config, str(tmp_path / f'{lr}_{ls}'))
    _assert_close(result.state.variables, single.state.variables, 1e-3)
    for a, b in zip(result.history, single.history, strict=True):
      assert a['test_accuracy'] == b['test_accuracy']
      assert a['learning_rate'] == b['learning_rate']
      assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-4)
    run_dir = (tmp_path / 'sweep' / f'optimizer.learning_rate={lr!r},label_smoothing={ls!r}'
               / 'seed_0')
    assert (run_dir / 'metrics.jsonl').exists() and (run_dir / 'config.json').exists()
  assert len({r.history[-1]['train_loss'] for r in results}) == 2
  with open(tmp_path / 'sweep' / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(float(r['optimizer.learning_rate']), float(r['label_smoothing']))
          for r in rows] == variants
  assert [float(r['final3_average']) for r in rows] == pytest.approx(
      [r.analysis['final3_average'] for r in results])
  assert re.search(r'seeds +mean +std +worst', out)


@pytest.mark.parametrize('how', ['vmap', 'unroll'])
def test_swept_steps_equal_single_steps_in_float64(how):
  """V36's OneCycle schedule, weight decay, warp and label smoothing traced per
  run, vmapped or unrolled, against each run's own concrete config: equal to
  float64 rounding."""
  config = v36.get_config()
  config.seed_parallelism = how
  model = models.create_model('v36')
  runs = [{'schedule.max_lr': 0.05, 'optimizer.weight_decay': 5e-5, 'augment.degrees': 5.0,
           'label_smoothing': 0.0},
          {'schedule.max_lr': 0.2, 'optimizer.weight_decay': 1e-3, 'augment.degrees': 0.0,
           'label_smoothing': 0.1}]
  configs = [sweep.with_values(config, values) for values in runs]
  txs = [optim.create_optimizer(c, steps_per_epoch=4).tx for c in configs]
  images = jax.random.randint(jax.random.key(1), (64, 28, 28), 0, 256).astype('uint8')
  labels = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  with jax.enable_x64():
    states = [jit_steps.create_train_state(model, tx, jax.random.key(5)) for tx in txs]
    perm = jit_steps.epoch_permutation(states[0].rng, 1, 64)
    per_run = {k: [values[k] for values in runs] for k in runs[0]}
    stacked = epoch_loop.make_steps(model, txs[0], config, 4, stacked=True, swept=per_run)
    state = epoch_loop.stack(states)
    metrics = epoch_loop.stack([jit_steps.zero_metrics()] * 2)
    for step in range(3):
      state, metrics = stacked.train(state, metrics, images, labels,
                                     jnp.stack([perm, perm]), 8 * step, batch_size=8)
    for k, (one, tx, c) in enumerate(zip(states, txs, configs)):
      single = epoch_loop.make_steps(model, tx, c, 4)
      m = jit_steps.zero_metrics()
      for step in range(3):
        one, m = single.train(one, m, images, labels, perm, 8 * step, batch_size=8)
      assert jax.tree.leaves(one.params)[0].dtype == jnp.float64
      _assert_close(epoch_loop.unstack(state, k).variables, one.variables, 1e-12)
      assert float(epoch_loop.unstack(metrics, k)['loss']) == pytest.approx(
          float(m['loss']), rel=1e-12)
    # The two runs really differ: a sweep that ignored its values would fail here.
    assert not np.allclose(epoch_loop.unstack(state, 0).params['conv1']['kernel'],
                           epoch_loop.unstack(state, 1).params['conv1']['kernel'])


@pytest.mark.parametrize('spec, message', [
    ('batch_size=64,128', 'batch_size cannot vary inside one program'),
    ('model=v36,model3', 'model cannot vary inside one program'),
    ('augment.clean_epochs=0,2', 'augment.clean_epochs cannot vary'),
    ('schedule.maxlr=0.1', "unknown config key 'schedule.maxlr'"),
    ('schedule.max_lr=0.1,fast', 'every value of schedule.max_lr must be a number'),
    ('schedule.max_lr', 'write KEY=V1,V2'),
    ('ema_decay=0,0.99', 'ema_decay values must all be > 0'),
])
def test_bad_sweeps_are_config_errors(spec, message):
  with pytest.raises(ConfigError, match=message):
    sweep.parse([spec], v36.get_config())


def test_shape_changing_key_is_refused_in_one_line(fake_mnist_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.main', '--config=configs/v36.py',
       f'--config.data_dir={fake_mnist_dir}', f'--workdir={tmp_path}',
       '--sweep=batch_size=64,128'],
      capture_output=True, text=True, timeout=60,
      cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 1
  assert result.stderr.startswith('error: --sweep: batch_size cannot vary inside one program')
  assert result.stderr.count('\n') == 1, result.stderr
  assert not os.listdir(tmp_path)  # refused before anything was written


def test_sweep_resumes_from_the_last_epoch_every_run_saved(fake_mnist_dir, tmp_path):
  config = small_config(fake_mnist_dir, epochs=2)
  swept = sweep.parse(['optimizer.weight_decay=0.0,0.001'], config)
  full = train.train_seeds(config, str(tmp_path / 'full'), swept)
  workdir = tmp_path / 'cut'
  shutil.copytree(tmp_path / 'full', workdir)
  # Killed after the first run saved epoch 2 and before the second did.
  last = workdir / 'optimizer.weight_decay=0.001' / 'seed_0' / 'checkpoints'
  shutil.rmtree(last / str(full[0].history[-1]['step']))
  resumed = train.train_seeds(config, str(workdir), swept)
  assert len(resumed) == 2
  for a, b in zip(resumed, full):
    assert _strip(a.history) == _strip(b.history)
  assert (workdir / 'sweep.csv').read_text() == (tmp_path / 'full' / 'sweep.csv').read_text()
