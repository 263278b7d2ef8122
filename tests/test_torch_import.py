"""A user's PyTorch class as `torch:PATH.py:CLASS`: specs, parity, refusals.

The networks are in tests/torch_nets/: styles.py (the forms people write),
seeds.py (the seeds' V36 and Model 3 as their users write them) and
unsupported.py (one refusal each).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import (checkpoint, compare, convert, jit_steps, models, torch_import,
                        torch_interop, train)
from mnist_flax.errors import ConfigError
from conftest import apply, small_config

torch = pytest.importorskip('torch')
F = torch.nn.functional
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_nets')


def _name(file, cls):
  return f'torch:{NETS}/{file}.py:{cls}'


# class in styles.py -> what its forward returns. WithDropout's p is 0 for the
# train-mode and SGD checks (PyTorch's and JAX's masks are drawn by different
# generators); evaluation, where dropout is the identity, runs with p = 0.1.
STYLES = {'SequentialBlocks': 'log_softmax', 'Functional': 'log_softmax',
          'ConvAfterGap': 'softmax', 'WithDropout': 'logits',
          'CustomBlocks': 'log_softmax'}
NO_DROPOUT = {'WithDropout': '{"p": 0.0}'}


def _instance(name, kwargs='', seed=0):
  """The user's class, with non-trivial BatchNorm statistics and affine weights."""
  net = torch_import.build(name, kwargs, seed)
  generator = torch.Generator().manual_seed(seed + 1)
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5, generator=generator)
      m.running_var.uniform_(0.5, 2.0, generator=generator)
      if m.affine:
        m.weight.data.uniform_(0.5, 1.5, generator=generator)
        m.bias.data.uniform_(-0.2, 0.2, generator=generator)
  return net


def _log_probs(out, returns):
  """What the forward returned, as log-probabilities."""
  return {'log_softmax': out, 'softmax': out.log(),
          'logits': F.log_softmax(out, dim=1)}[returns]


def _inputs(n=8):
  g = torch.Generator().manual_seed(7)
  return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _flax(name, kwargs, net):
  model = models.create_model(name, model_kwargs=kwargs)
  variables, _ = torch_interop.from_state_dict(name, net.state_dict(), kwargs)
  return model, jax.tree.map(jnp.asarray, variables)


def _compare(jax_logits, torch_out, returns):
  """JAX's logits against the forward's output: the logits themselves, or for a
  forward that ends in (log_)softmax its log-probabilities."""
  if returns == 'logits':
    want, got = torch_out, jax_logits
  else:
    want, got = _log_probs(torch_out, returns), jax.nn.log_softmax(jax_logits)
  want, got = want.detach().numpy(), np.asarray(got)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls', STYLES)
def test_counts_and_logits_equal_torch(cls):
  name, returns = _name('styles', cls), STYLES[cls]
  x, _ = _inputs()
  net = _instance(name).eval()
  assert arch.param_count(arch.get_network(name)) == sum(
      p.numel() for p in net.parameters())
  model, variables = _flax(name, '', net)
  assert models.num_params(variables['params']) == sum(p.numel() for p in net.parameters())
  _compare(apply(model, variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                 train=False), net(x), returns)
  # The PyTorch twin built from the specs computes the same.
  twin = torch_interop.torch_model(name)
  twin.load_state_dict(net.state_dict())
  _compare(apply(model, variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                 train=False), twin.eval()(x), 'log_softmax')

  # Training mode: batch statistics, and the running statistics they update.
  kwargs = NO_DROPOUT.get(cls, '')
  net = _instance(name, kwargs).train()
  model, variables = _flax(name, kwargs, net)
  logits, updates = apply(model, variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                          train=True, mutable=['batch_stats'])
  _compare(logits, net(x), returns)
  after, _ = torch_interop.from_state_dict(name, net.state_dict(), kwargs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(updates['batch_stats']), after['batch_stats'])


@pytest.mark.parametrize('cls', STYLES)
def test_one_sgd_step_equals_torch(cls):
  name, returns, kwargs = _name('styles', cls), STYLES[cls], NO_DROPOUT.get(cls, '')
  x, y = _inputs()
  net = _instance(name, kwargs).train()
  model, variables = _flax(name, kwargs, net)
  lr = 0.1
  opt = torch.optim.SGD(net.parameters(), lr=lr)
  loss = F.nll_loss(_log_probs(net(x), returns), y)
  opt.zero_grad()
  loss.backward()
  opt.step()

  @jax.jit
  def step(variables, x, y):
    def loss_fn(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jit_steps.cross_entropy(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(variables['params'])
    return loss, jax.tree.map(lambda p, g: p - lr * g, variables['params'], grads)

  jax_loss, params = step(variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                          jnp.asarray(y.numpy()))
  assert float(jax_loss) == pytest.approx(loss.item(), abs=1e-5)
  after, _ = torch_interop.from_state_dict(name, net.state_dict(), kwargs)
  # Within float32 rounding (ConvAfterGap's BatchNorm over 8 pooled values
  # differs by 4e-6; in float64 every network agrees within 1e-13).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               jax.device_get(params), after['params'])


def test_dropout_draws_a_mask_per_step_and_is_off_in_evaluation():
  name = _name('styles', 'WithDropout')
  model = models.create_model(name, model_kwargs='{"p": 0.5}')
  assert models.has_dropout(model)
  assert not models.has_dropout(models.create_model(name, model_kwargs='{"p": 0.0}'))
  assert not models.has_dropout(models.create_model('v36'))
  variables = jax.tree.map(jnp.asarray, torch_interop.from_state_dict(
      name, torch_import.build(name, '{"p": 0.5}', 0).state_dict(), '{"p": 0.5}')[0])
  x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
  run = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=['batch_stats'],
                                        rngs={'dropout': key})[0])
  first, again, other = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  np.testing.assert_array_equal(first, again)
  assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3
  # Each step draws its own masks.
  keys = [jax.random.key_data(jit_steps._dropout_key(jit_steps.TrainState(
      step=jnp.int32(step), params=None, batch_stats=None, opt_state=None,
      rng=jax.random.key(5)))) for step in (3, 4)]
  assert not np.array_equal(*keys)


@pytest.mark.parametrize('kwargs,ours', [('{"bias": true}', 'v36'), ('', 'v36_nobias')])
def test_the_seeds_v36_imports_as_ours(kwargs, ours):
  name = _name('seeds', 'OptimizedNetV36')
  imported = arch.get_network(name, kwargs)
  assert arch.param_count(imported) == arch.param_count(arch.get_network(ours))
  # The same layers and names; its BatchNorms carry the file's momentum.
  assert [type(l) for l in imported] == [type(l) for l in arch.get_network(ours)]
  net = _instance(name, kwargs).eval()
  x, _ = _inputs()
  nhwc = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
  model, variables = _flax(name, kwargs, net)
  theirs = apply(model, variables, nhwc, train=False)
  ours_model, ours_variables = _flax(ours, '', net)  # the same state_dict
  np.testing.assert_allclose(theirs, apply(ours_model, ours_variables, nhwc, train=False),
                             rtol=1e-6, atol=1e-6)
  _compare(theirs, net(x), 'log_softmax')


def test_the_seeds_model3_imports_as_ours():
  name = _name('seeds', 'Model_3')
  imported = arch.get_network(name)
  assert arch.param_count(imported) == arch.param_count(arch.get_network('model3')) == 7918
  net = _instance(name).eval()
  # Their keys are convblock1.0.weight, ...; ours conv1.weight, ...: the same
  # tensors in the same order.
  ours_keys = torch_interop.torch_model('model3').state_dict().keys()
  renamed = dict(zip(ours_keys, net.state_dict().values()))
  x, _ = _inputs()
  nhwc = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
  model, variables = _flax(name, '', net)
  theirs = apply(model, variables, nhwc, train=False)
  ours = models.create_model('model3')
  ours_variables, _ = torch_interop.from_state_dict('model3', renamed)
  np.testing.assert_allclose(theirs, apply(ours, ours_variables, nhwc, train=False),
                             rtol=1e-6, atol=1e-6)
  _compare(theirs, net(x), 'log_softmax')


def _line_of(text):
  with open(os.path.join(NETS, 'unsupported.py')) as f:
    return next(i for i, line in enumerate(f, 1) if text in line)


@pytest.mark.parametrize('cls,pattern,line', [
    ('Residual', r"add \(top level of Residual\).*residual", 'x = x + self.conv2(x)'),
    ('Stride3', r"Conv2d \(module 'body.0' of Stride3\): stride \(3, 3\)",
     'return self.body(x)'),
    ('UnknownOp', r'sigmoid \(top level of UnknownOp\).*does not know',
     'torch.sigmoid'),
    ('FlattensAMap', r'\.view\(\).*flattens a 4x13x13 map', 'self.fc(self.conv(x).view'),
    ('DataBranch', r'cannot trace DataBranch.forward.*branch on the data',
     'if x.sum() > 0'),
    ('UnusedModule', r"'spare' never called", None),
])
def test_unsupported_networks_are_refused_in_one_line(cls, pattern, line):
  with pytest.raises(ConfigError, match=pattern) as e:
    arch.get_network(_name('unsupported', cls))
  message = str(e.value)
  assert '\n' not in message
  where = os.path.join(NETS, 'unsupported.py')
  assert message.startswith(f'{where}:{_line_of(line)}:' if line else f'{where}:')


def test_bad_names_and_kwargs_are_one_line_errors(tmp_path):
  with pytest.raises(ConfigError, match='write torch:PATH.py:CLASS'):
    arch.get_network('torch:net.py')
  with pytest.raises(ConfigError, match='not found'):
    arch.get_network(f'torch:{tmp_path}/none.py:Net')
  with pytest.raises(ConfigError, match="no nn.Module class 'Nope'.*Residual, Stride3"):
    arch.get_network(_name('unsupported', 'Nope'))
  with pytest.raises(ConfigError, match='not JSON'):
    arch.get_network(_name('styles', 'WithDropout'), '{p: 1}')
  with pytest.raises(ConfigError, match=r"WithDropout\(\*\*\{'q': 1\}\) raised TypeError"):
    arch.get_network(_name('styles', 'WithDropout'), '{"q": 1}')
  with pytest.raises(ConfigError, match='model_kwargs is for torch:'):
    arch.get_network('v36', '{"q": 1}')
  broken = tmp_path / 'broken.py'
  broken.write_text('import torch\n\nraise RuntimeError("oops")\n')
  with pytest.raises(ConfigError, match=f'{broken}:3: importing it raised RuntimeError: oops'):
    arch.get_network(f'torch:{broken}:Net')


def test_the_users_file_is_imported_without_touching_sys_path():
  before = list(sys.path)
  arch.get_network(_name('styles', 'Functional'))
  assert sys.path == before and NETS not in sys.path
  assert not any(m.startswith('styles') for m in sys.modules)


def test_a_run_starts_from_the_classes_own_initialisation(tmp_path):
  """CustomBlocks initialises itself (apply(init_fn)): the JAX start for a seed,
  the PyTorch twin's and `convert --from_torch` of a fresh instance agree."""
  config = small_config(tmp_path, epochs=1, model=_name('styles', 'CustomBlocks'), seed=3)
  start = torch_import.initial_variables(config)
  torch.manual_seed(3)
  fresh = torch_import.build(config.model, '', seed=3)
  np.testing.assert_array_equal(start['params']['blocks.0.bn']['scale'], 0.5)
  twin = torch_interop.seeded_torch_model(config)
  for key, value in fresh.state_dict().items():
    np.testing.assert_array_equal(twin.state_dict()[key].numpy(), value.numpy())
  torch.save(fresh.state_dict(), tmp_path / 'fresh.pt')
  convert.from_torch(str(tmp_path / 'fresh.pt'), config.model, str(tmp_path / 'wd'))
  _, _, restored = checkpoint.load_checkpoint(str(tmp_path / 'wd'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state.params),
               start['params'])
  # And back: the exported state_dict loads into the user's own class.
  convert.to_torch(str(tmp_path / 'wd'), str(tmp_path / 'back.pt'))
  again = torch_import.build(config.model, '', seed=0)
  again.load_state_dict(torch.load(tmp_path / 'back.pt'))
  for key, value in fresh.state_dict().items():
    np.testing.assert_array_equal(again.state_dict()[key].numpy(), value.numpy())
  other = torch_import.initial_variables(small_config(tmp_path, model=config.model, seed=4))
  assert not np.array_equal(other['params']['fc']['kernel'], start['params']['fc']['kernel'])


def test_an_unimportable_model_writes_nothing(tmp_path):
  config = small_config(tmp_path, model=_name('unsupported', 'Residual'))
  with pytest.raises(ConfigError, match='add'):
    train.train_seeds(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_summary_cli_reads_torch_models_and_refuses_in_one_line():
  ok = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.summary',
       f'--model={_name("seeds", "OptimizedNetV36")}', '--model_kwargs={"bias": true}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert 'Total params: 6,260' in ok.stdout and 'Receptive field of the output: 28' in ok.stdout
  bad = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.summary', f'--model={_name("unsupported", "Stride3")}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert bad.stderr.strip().count('\n') == 0 and 'stride (3, 3)' in bad.stderr


def test_compare_cli_with_a_torch_model(fake_mnist_dir, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.compare', '--config=configs/v36.py',
       '--config.model=torch:tests/torch_nets/styles.py:WithDropout',
       '--config.model_kwargs={"p": 0.1}', '--seeds=1', f'--workdir={tmp_path}',
       f'--config.data_dir={fake_mnist_dir}', '--config.verify_checksums=False',
       '--config.num_epochs=1', '--config.batch_size=64'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  table = lines[lines.index(next(l for l in lines if l.startswith('framework'))):]
  assert [l.split()[:2] for l in table[1:]] == [
      ['jax', '0'], ['pytorch', '0'], ['jax', 'mean'], ['pytorch', 'mean']]


def test_bench_takes_a_torch_model_with_v36s_recipe():
  from mnist_flax import bench  # pylint: disable=g-import-not-at-top
  config = bench.load_config('torch:tests/torch_nets/styles.py:WithDropout', '{"p": 0.2}')
  assert config.model == f'torch:{NETS}/styles.py:WithDropout'  # absolute for its children
  assert config.model_kwargs == '{"p": 0.2}'
  assert config.schedule.name == bench.load_config('v36').schedule.name == 'onecycle'
