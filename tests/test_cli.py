"""The command lines, run as a user runs them."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mnist_flax import train
from conftest import small_config, write_fake_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, timeout=timeout,
                        capture_output=True, text=True)


def _one_line_error(proc, pattern):
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, proc.stderr
  assert pattern in errors[0]


def test_summary_cli():
  proc = _run('mnist_flax.summary', '--model=v36')
  assert proc.returncode == 0
  assert 'Total params: 6,260' in proc.stdout and 'PASS' in proc.stdout
  assert 'Receptive field of the output: 28' in proc.stdout
  _one_line_error(_run('mnist_flax.summary', '--model=v99'), "unknown model 'v99'")


@pytest.mark.parametrize('override,message', [
    ('--config.nope=1', "unknown config key 'nope'"),
    ('--config.optimizer.nme=1', "did you mean 'name'?"),
    ('--config.model=v37', "unknown model 'v37'"),
    ('--config.data_dir=/no/such/dir', 'data_dir /no/such/dir is not a directory'),
    ('--config.distill.alpha=2', 'distill.alpha must be in [0, 1], not 2.0'),
])
def test_train_cli_bad_input(override, message, tmp_path):
  proc = _run('mnist_flax.main', '--config=configs/v36.py',
              f'--workdir={tmp_path}', override)
  _one_line_error(proc, message)


def test_train_cli_runs(mnist_dir, tmp_path):
  proc = _run('mnist_flax.main', '--config=configs/model1.py',
              f'--workdir={tmp_path}', f'--config.data_dir={mnist_dir}',
              '--config.num_epochs=1', '--config.train_examples=2560',
              '--config.progress_bar=False', timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert 'model1: 7,224 parameters, PASS' in proc.stdout
  assert 'Epoch  1/1: train loss' in proc.stdout
  assert 'FINAL 3 EPOCHS ANALYSIS' in proc.stdout
  assert (tmp_path / 'metrics.jsonl').exists()


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A workdir trained one epoch on fake data, and two digit images."""
  root = tmp_path_factory.mktemp('trained')
  write_fake_mnist(root)
  workdir = str(root / 'w')
  train.train_and_evaluate(small_config(root, epochs=1), workdir)
  images = [str(root / f'{i}.png') for i in range(2)]
  for i, path in enumerate(images):
    Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(path)
  return workdir, images


def test_predict_prints_only_its_answers(trained_workdir):
  workdir, images = trained_workdir
  proc = _run('mnist_flax.predict', f'--workdir={workdir}', *images)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ''
  lines = proc.stdout.splitlines()
  assert [l.split(':')[0] for l in lines] == images
  # A problem found after the libraries logged their routine lines: one line.
  missing = _run('mnist_flax.predict', f'--workdir={workdir}', '--checkpoint=99',
                 images[0])
  assert missing.returncode != 0 and missing.stdout == ''
  assert missing.stderr.startswith("error: no checkpoint '99'")
  assert missing.stderr.count('\n') == 1, missing.stderr


def test_evaluate_prints_only_its_json(trained_workdir):
  proc = _run('mnist_flax.evaluate', f'--workdir={trained_workdir[0]}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ''
  assert proc.stdout.count('\n') == 1
  assert json.loads(proc.stdout)['test_examples'] == 100


def test_verbosity_brings_the_library_logs_back(trained_workdir):
  workdir, images = trained_workdir
  proc = _run('mnist_flax.predict', f'--workdir={workdir}', '--verbosity=0',
              images[0])
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count('\n') == 1
  assert 'CheckpointManager' in proc.stderr


def test_unwritable_workdir_is_a_one_line_error(fake_mnist_dir, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  proc = _run('mnist_flax.main', '--config=configs/v36.py',
              f'--workdir={blocker / "w"}', f'--config.data_dir={fake_mnist_dir}',
              '--config.verify_checksums=False')
  _one_line_error(proc, f'workdir {blocker / "w"} is not writable')
