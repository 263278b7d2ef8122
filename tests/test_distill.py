"""Knowledge distillation from a larger teacher (config.distill)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from mnist_flax import distill, jit_steps, sweep, train
from conftest import small_config, write_fake_mnist
from test_parallel import _assert_close

TEACHER = 'v36:16-24-32-48-48'  # larger than any student may be


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('fake')
  write_fake_mnist(path)
  return str(path)


@pytest.fixture(scope='module')
def teacher_dir(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher') / 'w')
  train.train_and_evaluate(small_config(data_dir, epochs=1, model=TEACHER), workdir)
  return workdir


def _student(data_dir, teacher='', alpha=0.0, **overrides):
  # A constant rate keeps float32 rounding from growing (see test_parallel).
  config = small_config(data_dir, epochs=2, **overrides)
  config.schedule.name, config.optimizer.learning_rate = 'constant', 0.01
  config.optimizer.nesterov = False
  config.distill.teacher, config.distill.alpha = teacher, alpha
  return config


def _strip(history):
  return [{k: v for k, v in r.items() if k != 'epoch_time_s'} for r in history]


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_distillation_loss_is_hintons_and_torchs(temperature):
  rng = np.random.default_rng(0)
  s, t = (rng.normal(size=(16, 10)).astype(np.float32) * 3 for _ in range(2))
  got = np.asarray(jit_steps.distillation_loss(s, t, temperature))
  p_t = np.exp(t / temperature) / np.exp(t / temperature).sum(-1, keepdims=True)
  p_s = np.exp(s / temperature) / np.exp(s / temperature).sum(-1, keepdims=True)
  hand = temperature ** 2 * (p_t * np.log(p_t / p_s)).sum(-1)
  np.testing.assert_allclose(got, hand, rtol=1e-5, atol=1e-6)
  assert float(jit_steps.distillation_loss(t, t, temperature).max()) == pytest.approx(0, abs=1e-6)
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  want = f.kl_div(f.log_softmax(torch.from_numpy(s) / temperature, -1),
                  f.softmax(torch.from_numpy(t) / temperature, -1),
                  reduction='batchmean') * temperature ** 2
  assert got.mean() == pytest.approx(float(want), rel=1e-5)


def test_alpha_zero_changes_nothing_and_alpha_half_does(data_dir, teacher_dir, tmp_path,
                                                        capsys):
  plain = train.train_and_evaluate(_student(data_dir), str(tmp_path / 'plain'))
  zero = train.train_and_evaluate(_student(data_dir, teacher_dir, 0.0),
                                  str(tmp_path / 'zero'))
  assert _strip(zero.history) == _strip(plain.history)
  jax.tree.map(np.testing.assert_array_equal, zero.state.variables, plain.state.variables)
  capsys.readouterr()
  half = train.train_and_evaluate(_student(data_dir, teacher_dir, 0.5),
                                  str(tmp_path / 'half'))
  assert half.history[-1]['train_loss'] != plain.history[-1]['train_loss']
  assert not np.allclose(half.state.params['conv1']['kernel'],
                         plain.state.params['conv1']['kernel'])
  label = f'distilled from {TEACHER} (46,066 params, trained separately)'
  assert distill.describe(_student(data_dir, teacher_dir, 0.5)) == label
  assert f'Separate track: {label}' in capsys.readouterr().out
  saved = json.loads((tmp_path / 'half' / 'config.json').read_text())['distill']
  assert saved == {'teacher': teacher_dir, 'alpha': 0.5, 'temperature': 4.0}


def _bad_teachers(teacher_dir, tmp_path):
  """{name: (teacher workdir, expected message)}; each made in tmp_path."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  shutil.copy(os.path.join(teacher_dir, 'config.json'), untrained)
  seeds = tmp_path / 'seeds'
  shutil.copytree(teacher_dir, seeds / 'seed_0')
  other = tmp_path / 'other'
  shutil.copytree(teacher_dir, other)
  config = json.loads((other / 'config.json').read_text())
  config['mean'], config['dataset'] = 0.5, 'fashion_mnist'
  (other / 'config.json').write_text(json.dumps(config))
  return {
      'missing': (tmp_path / 'nowhere', 'is not a directory; give the workdir of a trained run'),
      'empty': (empty, 'has no config.json; give the workdir of a run mnist_flax.main trained'),
      'seeds': (seeds, f'holds a run of 1 seeds: choose one, e.g. distill.teacher={seeds}/seed_0'),
      'untrained': (untrained, 'holds no checkpoint; train the teacher first'),
      'other inputs': (other, "was trained with dataset='fashion_mnist' (the student: "
                       "'mnist'), mean=0.5 (the student: 0.1307); the teacher reads "
                       "the student's normalised images, so they must agree"),
  }


def test_bad_inputs_are_one_line_config_errors(data_dir, teacher_dir, tmp_path):
  cases = [(_student(data_dir, teacher_dir, alpha), f'distill.alpha must be in [0, 1], not {alpha}')
           for alpha in (-0.1, 1.5)]
  config = _student(data_dir, teacher_dir, 0.5)
  config.distill.temperature = 0.0
  cases.append((config, 'distill.temperature must be > 0, not 0.0'))
  cases.append((_student(data_dir, '', 0.5), 'distill.alpha=0.5 needs a teacher: set '
                'distill.teacher to the workdir of a trained run'))
  for path, message in _bad_teachers(teacher_dir, tmp_path).values():
    cases.append((_student(data_dir, str(path), 0.5), f'distill.teacher={path} {message}'))
  for config, message in cases:
    with pytest.raises(train.ConfigError) as error:
      train.train_and_evaluate(config, str(tmp_path / 'student'))
    assert str(error.value) == message
    assert not (tmp_path / 'student' / 'config.json').exists()
  # A sweep checks each run's values.
  config = _student(data_dir, teacher_dir, 0.5)
  with pytest.raises(train.ConfigError, match=r'distill.alpha must be in \[0, 1\], not 2.0'):
    train.train_seeds(config, str(tmp_path / 'sweep'),
                      sweep.parse(['distill.alpha=0.5,2.0'], config))


@pytest.mark.parametrize('how', ['vmap', 'unroll'])
def test_k_seeds_share_the_teacher_and_equal_single_runs(data_dir, teacher_dir, tmp_path,
                                                         how):
  # Seeds 6 and 7, as in test_parallel's K-seed test, which explains the tolerance.
  results = train.train_seeds(
      _student(data_dir, teacher_dir, 0.5, num_seeds=2, seed=6, seed_parallelism=how),
      str(tmp_path / 'k'))
  for k, result in enumerate(results):
    single = train.train_and_evaluate(_student(data_dir, teacher_dir, 0.5, seed=6 + k),
                                      str(tmp_path / f's{k}'))
    _assert_close(result.state.variables, single.state.variables, 1e-5)
    for a, b in zip(result.history, single.history, strict=True):
      assert a['test_accuracy'] == b['test_accuracy']
      assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
  assert results[0].history[-1]['train_loss'] != results[1].history[-1]['train_loss']

