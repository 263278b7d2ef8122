"""Knowledge distillation from a larger teacher (config.distill)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import distill, epoch_loop, jit_steps, models, optim, sweep, train
from configs import v36
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
  # A teacher that trained on the student's validation images would leak them.
  config = _student(data_dir, teacher_dir, 0.5, validation_examples=56)
  with pytest.raises(train.ConfigError, match='was trained with validation_examples=0, '
                     "validation_split=last, so it may have seen the student's 56 "
                     'validation images'):
    train.train_and_evaluate(config, str(tmp_path / 'student'))
  # A sweep checks each run's values.
  config = _student(data_dir, teacher_dir, 0.5)
  with pytest.raises(train.ConfigError, match=r'distill.alpha must be in \[0, 1\], not 2.0'):
    train.train_seeds(config, str(tmp_path / 'sweep'),
                      sweep.parse(['distill.alpha=0.5,2.0'], config))


def test_k_seeds_share_the_teacher_and_equal_single_runs(data_dir, teacher_dir, tmp_path):
  """Unrolled, in float32: the plumbing. Vmapped seeds round differently
  (8e-5 apart here after 8 steps), so they are compared in float64 below."""
  results = train.train_seeds(
      _student(data_dir, teacher_dir, 0.5, num_seeds=2, seed=6, seed_parallelism='unroll'),
      str(tmp_path / 'k'))
  # The second seed: the one a teacher passed with the wrong axis would break.
  single = train.train_and_evaluate(_student(data_dir, teacher_dir, 0.5, seed=7),
                                    str(tmp_path / 's7'))
  _assert_close(results[1].state.variables, single.state.variables, 1e-5)
  for a, b in zip(results[1].history, single.history, strict=True):
    assert a['test_accuracy'] == b['test_accuracy']
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
  assert results[0].history[-1]['train_loss'] != results[1].history[-1]['train_loss']


def test_vmapped_seeds_share_the_teacher_in_float64():
  """Seeds 5 and 6 vmapped with one (random, smaller) teacher, 3 steps, as
  test_parallel's float64 test does without one."""
  config = v36.get_config()
  config.seed_parallelism = 'vmap'
  config.distill.teacher, config.distill.alpha = 'not read here', 0.5
  model = models.create_model('v36')
  tx = optim.create_optimizer(config, steps_per_epoch=4).tx
  images = jax.random.randint(jax.random.key(1), (64, 28, 28), 0, 256).astype('uint8')
  labels = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  with jax.enable_x64():
    teacher_model = models.create_model('v36:8-12-14-18-16')
    teacher = distill.Teacher(
        teacher_model, models.init_variables(teacher_model, jax.random.key(9)), '')
    states = [jit_steps.create_train_state(model, tx, jax.random.key(s)) for s in (5, 6)]
    perms = [jit_steps.epoch_permutation(s.rng, 1, 64) for s in states]
    stacked = epoch_loop.make_steps(model, tx, config, 4, stacked=True, teacher=teacher)
    state = epoch_loop.stack(states)
    metrics = epoch_loop.stack([jit_steps.zero_metrics()] * 2)
    for step in range(3):
      state, metrics = stacked.train(state, metrics, images, labels, jnp.stack(perms),
                                     8 * step, batch_size=8)

    def single(k, steps):
      one, m = jax.tree.map(jnp.copy, states[k]), jit_steps.zero_metrics()
      for step in range(3):
        one, m = steps.train(one, m, images, labels, perms[k], 8 * step, batch_size=8)
      return one

    taught = epoch_loop.make_steps(model, tx, config, 4, teacher=teacher)
    untaught = epoch_loop.make_steps(model, tx, config, 4)
    for k in range(2):
      one = single(k, taught)
      assert jax.tree.leaves(one.params)[0].dtype == jnp.float64
      _assert_close(epoch_loop.unstack(state, k).variables, one.variables, 1e-13)
    assert not np.allclose(one.params['conv1']['kernel'],  # the teacher matters
                           single(1, untaught).params['conv1']['kernel'])
