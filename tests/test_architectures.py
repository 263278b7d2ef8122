import glob
import os
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import models, summary
from mnist_flax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_COUNTS = {'v36': 6260, 'v36_nobias': 6198, 'model1': 7224,
               'model2': 7838, 'model3': 7918}
# The candidate layouts, with the budget each is screened under.
CANDIDATE_COUNTS = {'v36sep': (7918, arch.PARAM_LIMIT),
                    'v36sep_m2': (7218, arch.PARAM_LIMIT),
                    'v36sep_tiny': (3884, arch.TINY_PARAM_LIMIT),
                    'v36_dil4': (6260, arch.PARAM_LIMIT),
                    'model3_6k': (6116, arch.PARAM_LIMIT),
                    'v36pad': (7682, arch.PARAM_LIMIT),
                    'v36pad_tiny': (3856, arch.TINY_PARAM_LIMIT),
                    # The public anchors, as their notebooks print (docs/anchors.md).
                    'eva6': (7496, arch.PARAM_LIMIT),
                    'woolly': (3762, arch.TINY_PARAM_LIMIT)}


def test_every_network_has_a_count_here():
  assert set(arch.NETWORKS) == {*SEED_COUNTS, *CANDIDATE_COUNTS}


@pytest.mark.parametrize('name,count', SEED_COUNTS.items())
def test_param_counts_match_the_seeds(name, count):
  network = arch.get_network(name)
  assert arch.param_count(network) == count
  # The Flax module holds exactly the parameters the spec counts (shapes only:
  # eval_shape skips compiling the initialisation).
  assert models.num_params(_param_shapes(name)) == count


def _param_shapes(name):
  model = models.create_model(name)
  return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))['params']


@pytest.mark.parametrize('name,count,budget',
                         [(n, *c) for n, c in CANDIDATE_COUNTS.items()])
def test_candidate_param_counts_and_budgets(name, count, budget):
  assert arch.param_count(arch.get_network(name)) == count < budget
  assert models.num_params(_param_shapes(name)) == count


@pytest.mark.parametrize('name', arch.NETWORKS)
def test_output_is_ten_logits_per_image(name):
  """The Flax nets end in logits (the loss and evaluation apply log_softmax;
  the PyTorch twins end in it): ten finite values per image, that image's own."""
  model = models.create_model(name)
  variables = models.init_variables(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  logits = np.asarray(model.apply(variables, x, train=False))
  assert logits.shape == (3, 10) and np.isfinite(logits).all()
  assert arch.output_shape(arch.get_network(name)) == (1, 1, 10)
  assert not np.allclose(np.exp(logits).sum(-1), 1.0)  # not log-probabilities
  # In evaluation mode an image's logits do not depend on the rest of its batch.
  np.testing.assert_allclose(model.apply(variables, x[1:2], train=False), logits[1:2],
                             rtol=1e-5, atol=1e-5)


def test_v36_family_by_widths():
  assert arch.get_network('v36:8-10-12-16-16') == arch.get_network('v36')
  network = arch.get_network('v36:8-12-14-18-16')
  # 3x3 kernels, then a bias and BN's scale and bias per channel, then conv_final:
  assert arch.param_count(network) == (
      9 * (1 * 8 + 8 * 12 + 12 * 14 + 14 * 18 + 18 * 16)
      + 3 * (8 + 12 + 14 + 18 + 16) + 16 * 10 + 10) == 7682
  assert arch.output_shape(network) == (1, 1, 10)
  for bad in ('v36:8-10-12-16', 'v36:8-10-12-16-0', 'v37:8-10-12-16-16'):
    with pytest.raises(ConfigError, match=f"unknown model '{bad}'.*v36:C1-C2-C3-C4-C5"):
      arch.get_network(bad)


def test_model3_layer_shapes_follow_the_seed_table():
  # torchsummary rows of the second seed, (C, H, W) after each conv.
  want = [(10, 28, 28), (10, 28, 28), (10, 28, 28), (16, 12, 12), (16, 10, 10),
          (8, 8, 8), (8, 6, 6), (8, 6, 6), (16, 6, 6), (10, 1, 1)]
  got = [(i.out_shape[2], i.out_shape[0], i.out_shape[1])
         for i in arch.walk(arch.get_network('model3'))
         if isinstance(i.layer, arch.Conv)]
  assert got == want


def test_v36_receptive_field_table_matches_the_seed():
  rows = [(i.kernel, i.stride, i.jump_in, i.rf_in, i.rf_out)
          for i in arch.walk(arch.get_network('v36'))
          if isinstance(i.layer, (arch.Conv, arch.MaxPool))]
  assert rows == [(3, 1, 1, 1, 3), (3, 1, 1, 3, 5), (2, 2, 1, 5, 6),
                  (3, 1, 2, 6, 10), (2, 2, 2, 10, 12), (3, 1, 4, 12, 20),
                  (3, 1, 4, 20, 28), (1, 1, 4, 28, 28)]
  assert arch.receptive_field(arch.get_network('v36')) == 28


def test_depthwise_and_dilated_shapes_params_and_receptive_field():
  network = (arch.Conv('conv1', 4, padding=1, dilation=3),
             arch.DepthwiseConv('dw', multiplier=2, bias=True, dilation=2),
             arch.Conv('pw', 5, kernel=1, bias=True), arch.GlobalAvgPool())
  rows = [(i.out_shape, i.params, i.kernel, i.rf_out) for i in arch.walk(network)]
  # conv1 spans 3 * 2 + 1 = 7 pixels (28 + 2 - 7 + 1 = 24); dw spans 5, one
  # 3x3 filter pair per channel: 9 * 4 * 2 weights and 8 biases.
  assert rows == [((24, 24, 4), 36, 7, 7), ((20, 20, 8), 80, 5, 11),
                  ((20, 20, 5), 45, 1, 11), ((1, 1, 5), 0, 20, 30)]
  model = models.Net(network)
  variables = models.init_variables(model, jax.random.key(0))
  assert models.num_params(variables['params']) == arch.param_count(network) == 161
  assert variables['params']['dw']['kernel'].shape == (3, 3, 1, 8)
  assert model.apply(variables, jnp.zeros((2, 28, 28, 1))).shape == (2, 5)
  with pytest.raises(ValueError, match='below 1x1'):
    list(arch.walk((arch.Conv('c', 4, dilation=14),)))  # spans 29 > 28


def test_v36_dil4_receptive_field():
  rows = [(i.layer.name, i.kernel, i.in_shape[:2], i.out_shape[:2], i.rf_out)
          for i in arch.walk(arch.get_network('v36_dil4'))
          if isinstance(i.layer, arch.Conv)][3:5]
  # conv4 spans 5 on the 5x5 map, padded 1 to keep V36's 3x3 for conv5.
  assert rows == [('conv4', 5, (5, 5), (3, 3), 28), ('conv5', 3, (3, 3), (1, 1), 36)]


def test_grouped_torch_init_counts_one_groups_fan_in():
  """PyTorch's bound is 1/sqrt((C_in / groups) * k * k): 1/3 for a depthwise 3x3."""
  network = arch.get_network('v36sep_m2')
  variables = models.init_variables(models.create_model('v36sep_m2'), jax.random.key(0))
  for info in arch.walk(network):
    if isinstance(info.layer, arch.CONVS):
      c_in = info.in_shape[2]
      fan_in = info.layer.kernel ** 2 * c_in // info.layer.groups(c_in)
      w = np.abs(np.asarray(variables['params'][info.layer.name]['kernel']))
      assert 0.9 * fan_in ** -.5 < w.max() <= fan_in ** -.5, info.layer.name


def test_summary_tables():
  text = summary.layer_table(arch.get_network('v36'))
  assert 'Total params: 6,260' in text and 'PASS' in text
  assert '[-1, 16, 1, 1]' in text
  assert 'Receptive field of the output: 28' in summary.rf_table(
      arch.get_network('v36'))
  over = (*arch.block(1, 100), *arch.block(2, 100), arch.GlobalAvgPool(),
          arch.Conv('fc', 10, 1))
  assert 'FAIL' in summary.layer_table(over)
  assert 'dw3 (DepthwiseConv 3x3 x2)' in summary.layer_table(arch.get_network('v36sep_m2'))
  assert 'conv4 (Conv 3x3 p1 d2)' in summary.rf_table(arch.get_network('v36_dil4'))


def test_unknown_model_names_the_choices():
  with pytest.raises(ConfigError, match="unknown model 'v37'.*v36, v36_nobias"):
    models.create_model('v37')


def test_torch_init_bounds():
  variables = models.init_variables(models.create_model('v36'), jax.random.key(0))
  w = np.asarray(variables['params']['conv5']['kernel'])  # fan_in 3*3*16
  bound = 1 / np.sqrt(144)
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
  assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.1)
  b = np.asarray(variables['params']['conv5']['bias'])
  assert np.abs(b).max() <= bound and np.abs(b).max() > 0


def test_flax_init_option():
  variables = models.init_variables(models.create_model('v36', 'flax'),
                                    jax.random.key(0))
  assert not np.asarray(variables['params']['conv5']['bias']).any()
  with pytest.raises(ConfigError, match='unknown init'):
    models.create_model('v36', 'glorot')


def test_xavier_init_bounds_zero_biases_and_torch_twin():
  """'xavier' (anchor B's init): U(-a, a), a = sqrt(6 / (fan_in + fan_out)),
  fans (C_in|C_out) * k * k; conv biases 0; BatchNorm 1 and 0; PyTorch's twin
  drawn by nn.init.xavier_uniform_ reaches the same bound."""
  torch = pytest.importorskip('torch')
  from mnist_flax import torch_interop  # pylint: disable=g-import-not-at-top
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  params = models.init_variables(models.create_model('woolly', 'xavier'),
                                 jax.random.key(0))['params']
  config = anchor_woolly.get_config()
  net = torch_interop.seeded_torch_model(config)
  for name, c_in, c_out, k in (('conv1', 1, 4, 3), ('conv5', 8, 8, 3),
                               ('conv_final', 8, 10, 1)):
    bound = np.sqrt(6 / ((c_in + c_out) * k * k))
    for w in (np.asarray(params[name]['kernel']),
              getattr(net, name).weight.detach().numpy()):
      assert np.abs(w).max() <= bound and np.abs(w).max() > 0.75 * bound, name
    assert not np.asarray(params[name]['bias']).any()
    assert not getattr(net, name).bias.detach().numpy().any()
  assert np.asarray(params['bn1']['scale']).min() == 1
  # 'torch' draws conv1 from 1/sqrt(9), not Xavier's sqrt(6/45): the option matters.
  torch_init = models.init_variables(models.create_model('woolly'), jax.random.key(0))
  assert np.abs(np.asarray(torch_init['params']['conv1']['kernel'])).max() < np.sqrt(6 / 45) * 0.95


def test_precisions():
  x = jax.random.uniform(jax.random.key(1), (16, *arch.INPUT_SHAPE))
  variables = models.init_variables(models.create_model('v36'), jax.random.key(0))
  apply = lambda precision: models.create_model('v36', precision=precision).apply(
      variables, x, train=True, mutable=['batch_stats'])
  jaxpr = lambda precision: str(jax.make_jaxpr(lambda: apply(precision))())
  assert 'bf16' not in jaxpr('default') and 'HIGHEST' not in jaxpr('default')
  assert 'precision=(Precision.HIGHEST' in jaxpr('float32')
  # bfloat16: the convolutions, not BatchNorm, its statistics or the logits.
  bf16 = jaxpr('bfloat16')
  assert bf16.count('conv_general_dilated') == jaxpr('default').count('conv_general_dilated')
  assert all('bf16[' in line for line in bf16.splitlines() if 'conv_general_dilated' in line)
  (logits, stats), (want, _) = apply('bfloat16'), apply('default')
  assert logits.dtype == jnp.float32
  assert jax.tree.leaves(stats)[0].dtype == jnp.float32
  np.testing.assert_allclose(logits, want, atol=0.05 * float(jnp.abs(want).max()))
  assert not np.allclose(logits, want, atol=1e-4)
  with pytest.raises(ConfigError, match="unknown precision 'tf32'"):
    models.create_model('v36', precision='tf32')


def test_flat_draws_equal_direct_draws():
  # Drawn flat for compile time; the values must be the initialisers' own.
  key, shape = jax.random.key(3), (2, 2, 2, 3)
  flax_init = nn.linear.default_kernel_init
  np.testing.assert_array_equal(models.flat_draw(flax_init)(key, shape),
                                flax_init(key, shape))
  torch_init, _ = models.torch_conv_init(fan_in=8)
  np.testing.assert_array_equal(torch_init(key, shape),
                                jax.random.uniform(key, shape, minval=-8**-.5,
                                                   maxval=8**-.5))


@pytest.mark.parametrize('momentum', [0.1, 0.3])
def test_batchnorm_matches_torch(momentum):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (16, 5, 5, 4)).astype(np.float32)
  bn = models.BatchNorm(momentum)
  variables = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
  tbn = torch.nn.BatchNorm2d(4, momentum=momentum)
  stats = variables['batch_stats']
  # Three batches: the running averages compound the momentum as PyTorch's do.
  for batch in (x, rng.normal(-1.0, 0.5, x.shape), rng.normal(0.0, 2.0, x.shape)):
    batch = batch.astype(np.float32)
    y, updates = bn.apply({'params': variables['params'], 'batch_stats': stats},
                          jnp.asarray(batch), train=True, mutable=['batch_stats'])
    ty = tbn(torch.from_numpy(batch).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-5)
    stats = updates['batch_stats']
    np.testing.assert_allclose(stats['mean'], tbn.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(stats['var'], tbn.running_var.numpy(), rtol=1e-5)
  tbn.eval()
  y_eval = bn.apply({'params': variables['params'], 'batch_stats': stats},
                    jnp.asarray(x), train=False)
  ty_eval = tbn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(y_eval, ty_eval.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))))
def test_every_config_loads_by_path_and_stays_under_its_budget(path):
  config = runpy.run_path(path)['get_config']()
  budget = {'tiny.py': 4_000}.get(os.path.basename(path), arch.PARAM_LIMIT)
  assert arch.param_count(arch.get_network(config.model)) < budget


def test_bn_momentum_reaches_both_frameworks_networks():
  torch = pytest.importorskip('torch')
  from mnist_flax import torch_interop  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = torch_interop.torch_model('v36', bn_momentum=0.3)
  assert {m.momentum for m in net.modules()
          if isinstance(m, torch.nn.BatchNorm2d)} == {0.3}
  variables, _ = torch_interop.from_state_dict('v36', net.state_dict())
  x = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype(np.float32)
  _, updates = models.create_model('v36', bn_momentum=0.3).apply(
      variables, jnp.asarray(x), train=True, mutable=['batch_stats'])
  # After ours: PyTorch updates the buffers the converted variables may share.
  net.train()(torch.from_numpy(x).permute(0, 3, 1, 2))
  for name in ('bn1', 'bn5'):
    np.testing.assert_allclose(updates['batch_stats'][name]['var'],
                               getattr(net, name).running_var.numpy(), rtol=1e-4)


@pytest.mark.parametrize('momentum', [0.0, -0.1, 1.5])
def test_bn_momentum_outside_0_1_is_a_one_line_config_error(momentum):
  with pytest.raises(ConfigError, match=r'bn_momentum must be in \(0, 1\]') as e:
    models.create_model('v36', bn_momentum=momentum)
  assert '\n' not in str(e.value)
  assert models.create_model('v36', bn_momentum=1.0).bn_momentum == 1.0


def _dropout(rate, x, key, train=True):
  return models.Dropout(rate).apply({}, x, train, rngs={'dropout': key})


@pytest.mark.parametrize('rate', [0.01, 0.025, 0.5])
def test_dropout_zeroes_at_its_rate_and_scales_the_rest(rate):
  x = jnp.ones((128, 26, 26, 8))  # eva6's first dropout, 692,224 activations
  y = np.asarray(_dropout(rate, x, jax.random.key(0)))
  dropped = (y == 0).mean()
  sigma = np.sqrt(rate * (1 - rate) / y.size)
  assert abs(dropped - rate) < 5 * sigma, (dropped, rate)
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


def test_dropout_masks_are_independent_across_elements_keys_and_layers():
  """P(both dropped) is rate**2 for neighbours on every axis, for one element
  under two steps' keys, and for two layers in one network; the same key gives
  the same mask; evaluation and rate 0 are the identity."""
  rate, shape = 0.5, (64, 24, 24, 16)
  x = jnp.ones(shape)
  key = jax.random.key(3)
  mask = np.asarray(_dropout(rate, x, key)) == 0
  n = mask.size
  within = lambda p: abs(p - rate ** 2) < 5 * np.sqrt(rate ** 2 * (1 - rate ** 2) / n * 2)
  for axis in range(4):
    a, b = np.moveaxis(mask, axis, 0)[1:], np.moveaxis(mask, axis, 0)[:-1]
    assert within((a & b).mean()), axis
  other = np.asarray(_dropout(rate, x, jax.random.fold_in(key, 1))) == 0
  assert within((mask & other).mean())
  np.testing.assert_array_equal(np.asarray(_dropout(rate, x, key)) == 0, mask)

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      return models.Dropout(rate)(x, True), models.Dropout(rate)(x, True)

  first, second = Two().apply({}, x, rngs={'dropout': key})
  assert within(((np.asarray(first) == 0) & (np.asarray(second) == 0)).mean())
  np.testing.assert_array_equal(_dropout(rate, x, key, train=False), x)
  np.testing.assert_array_equal(_dropout(0.0, x, key), x)
  np.testing.assert_array_equal(_dropout(1.0, x, key), 0 * x)


def test_hashed_bits_are_uniform_in_every_byte():
  bits = np.asarray(models.hashed_bits(jax.random.key(7), (1 << 20,)))
  expected = bits.size / 256
  for shift in (0, 8, 16, 24):
    counts = np.bincount((bits >> shift) & 255, minlength=256)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 255 degrees of freedom: mean 255, sd 22.6; 400 is beyond 6 sd.
    assert chi2 < 400, (shift, chi2)
