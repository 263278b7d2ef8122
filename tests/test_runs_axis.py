"""Many runs shared out over the devices of one or several processes (the runs
mesh axis), and the CPU's default devices."""

import os
import shutil
import subprocess
import sys

import pytest

from mnist_flax import parallel, train
from conftest import small_config
# The CLI runs and fake data of the data-parallel tests.
from test_parallel import (BATCH, ROOT, STEPS, _assert_close, _finish, _history,
                           _launch_two_processes, _train, _variables,
                           data_dir)  # pylint: disable=unused-import


# Three runs: over 2 devices one device trains a padding run, over 8 five do.
# The swept key is read inside the step (a weight decay would be baked into
# each run's optimizer state instead), so each device must get its runs' values.
DEGREES = ('0.0', '7.0', '15.0')


def _sweep_flags(epochs: int = 2):
  return (f'--sweep=augment.degrees={",".join(DEGREES)}', f'--config.num_epochs={epochs}')


@pytest.fixture(scope='module')
def sharded_over_two(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('two') / 'w'
  out = _train(workdir, data_dir, '--cpu_devices=2', *_sweep_flags())
  assert '2 x cpu' in out
  return workdir


@pytest.mark.parametrize('devices', [2, 8])
def test_sweep_runs_shared_out_over_devices_equal_single_runs(
    data_dir, sharded_over_two, tmp_path, devices):
  """Each device trains its share of the runs (padded to a multiple of the
  devices), and every run equals the same run trained alone on one device."""
  workdir = sharded_over_two
  if devices != 2:
    workdir = tmp_path / 'w'
    assert f'{devices} x cpu' in _train(workdir, data_dir, f'--cpu_devices={devices}',
                                        *_sweep_flags())
  variants = sorted(os.listdir(workdir))
  # No padding run written.
  assert variants == sorted([*(f'augment.degrees={d}' for d in DEGREES), 'sweep.csv'])
  for degrees in (DEGREES[0], DEGREES[2]):
    single = small_config(data_dir, epochs=2, train_examples=STEPS * BATCH, batch_size=BATCH)
    single.schedule.name, single.optimizer.learning_rate = 'constant', 0.01
    single.augment.degrees = float(degrees)
    alone = train.train_and_evaluate(single, str(tmp_path / f'alone{degrees}'))
    run = workdir / f'augment.degrees={degrees}' / 'seed_0'
    _assert_close(_variables(run), alone.state.variables, 1e-5)
    assert _history(run)[-1]['test_accuracy'] == alone.history[-1]['test_accuracy']


def test_sharded_sweep_resumes_where_every_run_saved(data_dir, sharded_over_two, tmp_path):
  workdir = tmp_path / 'cut'
  shutil.copytree(sharded_over_two, workdir)
  # Killed after two runs saved epoch 2 and before the third did.
  last = workdir / f'augment.degrees={DEGREES[2]}' / 'seed_0' / 'checkpoints'
  shutil.rmtree(last / str(2 * STEPS))
  out = _train(workdir, data_dir, '--cpu_devices=2', *_sweep_flags())
  assert f'Resuming from the checkpoint of epoch 1 (step {STEPS})' in out
  for variant in (f'augment.degrees={DEGREES[0]}', f'augment.degrees={DEGREES[2]}'):
    strip = lambda h: [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in h]
    assert strip(_history(workdir / variant / 'seed_0')) == strip(
        _history(sharded_over_two / variant / 'seed_0'))
    _assert_close(_variables(workdir / variant / 'seed_0'),
                  _variables(sharded_over_two / variant / 'seed_0'), 0)


def test_padded_runs():
  assert [parallel.padded_runs(k, 2) for k in (1, 2, 3, 4)] == [2, 2, 4, 4]
  assert [parallel.padded_runs(k, 8) for k in (3, 8, 9)] == [8, 8, 16]


def test_default_devices_split_what_they_can(tmp_path):
  """One device per core by default; a run whose batches do not split over
  them all trains on as many as split them, where an explicit count stops."""
  script = (
      'import jax; from mnist_flax import parallel; parallel.use_cpu_devices(-1); '
      'print(jax.device_count(), parallel.data_mesh({64, 32}).size, '
      'parallel.data_mesh({64, 1}).size)')
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  cores = parallel.cpu_cores()
  assert out.stdout.split() == [str(cores), str(max(n for n in (1, 2, 4, 8, 16, 32)
                                                     if n <= cores and 32 % n == 0)), '1']


def test_sweep_over_two_processes_equals_one_process(data_dir, sharded_over_two, tmp_path):
  """The runs axis spans the devices of every process: two processes of one
  device each train what one process of two devices trains."""
  workdir = tmp_path / 'w'
  outputs = [_finish(p) for p in _launch_two_processes([workdir] * 2, data_dir,
                                                       *_sweep_flags())]
  assert '2 x cpu (cpu) over 2 processes' in outputs[0]
  for degrees in DEGREES:
    run = f'augment.degrees={degrees}/seed_0'
    _assert_close(_variables(workdir / run), _variables(sharded_over_two / run), 1e-6)
