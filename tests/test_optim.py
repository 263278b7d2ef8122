"""optim.py's schedules and optimisers against torch_recipe's, step for step."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_flax import epoch_loop, optim, torch_recipe
from mnist_flax.errors import ConfigError
from configs import model3, v36

torch = pytest.importorskip('torch')


def _momentum_name(config):
  return 'momentum' if config.optimizer.name == 'sgd' else 'b1'


def _torch_schedule(config, steps_per_epoch):
  """LR and momentum (Adam's: b1) torch_recipe's optimiser uses at every step
  of a whole run."""
  p = torch.nn.Parameter(torch.zeros(1))
  topt, scheduler = torch_recipe.create_optimizer(config, [p], steps_per_epoch)
  group = topt.param_groups[0]
  lrs, moms = [], []
  for _ in range(config.num_epochs * steps_per_epoch):
    lrs.append(group['lr'])
    moms.append(group['momentum'] if 'momentum' in group else group['betas'][0])
    topt.step()
    scheduler.step()
  return np.array(lrs), np.array(moms)


def _jax_schedule(config, steps_per_epoch):
  """LR and momentum (Adam's: b1) optim.py's optimiser uses at every step of a
  whole run, as its injected hyperparameters hold them after each update."""
  tx = optim.create_optimizer(config, steps_per_epoch).tx
  params = jnp.zeros(1)
  momentum = _momentum_name(config)

  def step(state, _):
    _, state = tx.update(jnp.zeros(1), state, params)
    return state, (state.hyperparams['learning_rate'], state.hyperparams[momentum])

  _, (lr, mom) = jax.lax.scan(step, tx.init(params),
                              length=config.num_epochs * steps_per_epoch)
  return np.asarray(lr), np.asarray(mom)


@pytest.mark.parametrize('config_module,total', [(v36, 7035), (model3, 14070)])
def test_whole_runs_match_torch_every_step(config_module, total):
  """All 15 epochs over 60,000 images: OneCycle's LR and momentum cycle (v36),
  StepLR's drop after epoch 8 (model3)."""
  config = config_module.get_config()
  steps_per_epoch = len(epoch_loop.batch_starts(60000, config.batch_size))
  assert config.num_epochs * steps_per_epoch == total
  want_lr, want_mom = _torch_schedule(config, steps_per_epoch)
  lr, mom = _jax_schedule(config, steps_per_epoch)
  np.testing.assert_allclose(lr, want_lr, rtol=1e-6)
  np.testing.assert_allclose(mom, want_mom, rtol=1e-6)
  # And the LR schedule the trainer reports.
  lr_cfg = jax.vmap(optim.create_optimizer(config, steps_per_epoch).learning_rate)(
      jnp.arange(total))
  np.testing.assert_allclose(lr_cfg, want_lr, rtol=1e-6)
  if config.schedule.name == 'step':
    drop = 8 * steps_per_epoch
    np.testing.assert_allclose(want_lr[[0, drop - 1, drop, -1]],
                               [0.005, 0.005, 0.0005, 0.0005], rtol=1e-12)
  else:
    assert want_mom.min() == pytest.approx(0.85) and want_mom[0] == 0.95


# The LR the first seed's log prints after each of epochs 1-14 (6 decimals).
_SEED_LOG_LR = [0.049961, 0.049054, 0.046984, 0.043851, 0.039807, 0.035047, 0.029801,
                0.024325, 0.018883, 0.013737, 0.009139, 0.005309, 0.002434, 0.000652]


@pytest.mark.parametrize('batch_size,matches', [(128, True), (64, False), (256, False)])
def test_seed_log_pins_v36_batch_size(batch_size, matches):
  """Only 469 steps an epoch (batch 128) reproduces every LR the seed logged."""
  sch = v36.get_config().schedule
  steps = -(-60000 // batch_size)
  lr = optim.onecycle_lr(15 * steps, sch.max_lr, sch.pct_start, sch.div_factor,
                         sch.final_div_factor)
  got = [round(float(lr(e * steps)), 6) for e in range(1, 15)]
  assert (got == _SEED_LOG_LR) == matches, got


@pytest.mark.parametrize('pct_start,div,final_div', [(0.3, 25.0, 1e4), (0.2, 10.0, 100.0)])
def test_onecycle_matches_torch_other_shapes(pct_start, div, final_div):
  config = v36.get_config()
  config.schedule.pct_start, config.schedule.div_factor = pct_start, div
  config.schedule.final_div_factor = final_div
  want_lr, want_mom = _torch_schedule(config, 100)
  count = jnp.arange(len(want_lr))
  lr = jax.vmap(optim.onecycle_lr(len(want_lr), 0.05, pct_start, div, final_div))(count)
  np.testing.assert_allclose(lr, want_lr, rtol=1e-6)
  mom = jax.vmap(optim.onecycle_momentum(len(want_lr), pct_start))(count)
  np.testing.assert_allclose(mom, want_mom, rtol=1e-6)


def _parity(config, steps_per_epoch, torch_config=None, steps=100):
  """optim.py's optimiser and torch_recipe's for `torch_config` (default: the
  same config) take the same parameters through `steps` random gradients."""
  rng = np.random.default_rng(0)
  shapes = {'w': (3, 4), 'b': (4,)}
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(steps)]
  tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  topt, tsched = torch_recipe.create_optimizer(torch_config or config,
                                               list(tparams.values()), steps_per_epoch)
  tx = optim.create_optimizer(config, steps_per_epoch).tx
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    for k, p in tparams.items():
      p.grad = torch.tensor(g[k])
    topt.step()
    tsched.step()
    updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  for k, p in tparams.items():
    np.testing.assert_allclose(params[k], p.detach().numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_onecycle_weight_decay_matches_torch(nesterov):
  config = v36.get_config()
  config.num_epochs, config.optimizer.weight_decay = 2, 1e-2
  config.optimizer.nesterov = nesterov
  _parity(config, 50)
  other = copy.deepcopy(config)
  other.optimizer.nesterov = not nesterov
  with pytest.raises(AssertionError):  # the comparison tells the two apart
    _parity(other, 50, torch_config=config)


def test_sgd_fixed_momentum_matches_torch():
  config = v36.get_config()
  config.num_epochs = 2
  config.schedule.cycle_momentum = False
  _parity(config, 50)


def test_adam_step_lr_matches_torch():
  config = model3.get_config()
  config.optimizer.weight_decay = 1e-3
  # StepLR's drop every 20 steps: epochs of 20 steps, step_size 1 epoch.
  config.schedule.step_size = 1
  _parity(config, 20)


@pytest.mark.parametrize('create', [
    lambda config: optim.create_optimizer(config, 10),
    lambda config: torch_recipe.create_optimizer(config, [torch.zeros(1)], 10)])
def test_unknown_optimizer_and_schedule(create):
  config = v36.get_config()
  config.optimizer.name = 'lamb'
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
    create(config)
  config = v36.get_config()
  config.schedule.name = 'cosine'
  with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
    create(config)


def test_nesterov_adam_is_a_config_error():
  config = model3.get_config()
  config.optimizer.nesterov = True
  with pytest.raises(ConfigError, match='optimizer.nesterov is for SGD'):
    optim.create_optimizer(config, 10)


@pytest.mark.parametrize('pct_start,total', [(0.05, 20), (0.01, 100), (0.5, 2)])
def test_onecycle_with_a_zero_step_phase_is_a_config_error(pct_start, total):
  with pytest.raises(ConfigError, match=r'onecycle: pct_start \* total steps'):
    optim.onecycle_lr(total, 0.05, pct_start)


class _WoollyCustomOneCycleLR:
  """adilsammar/woolly-of-cv's scheduler at 7ade209 (scheduler.py), transcribed:
  the per-epoch table from np.interp, and the counter that restarts at 1."""

  def __init__(self, lr, max_lr, steps_per_epoch, epochs):
    self.schedule = np.interp(np.arange(epochs + 1), [0, 2, 8, 12, epochs],
                              [lr, max_lr, lr / 5.0, lr / 10.0, 0])
    self.steps_per_epoch, self.steps, self.epoch = steps_per_epoch, 0, 0
    self.lr = self.schedule[0]

  def step(self):
    self.steps += 1
    if self.steps % self.steps_per_epoch == 0:
      self.steps = 1
      self.epoch += 1
    self.lr = self.schedule[self.epoch]


def test_piecewise_schedule_is_woolly_custom_one_cycle_every_step():
  """Anchor B's whole run, 28,125 steps: the LR of every step equals the
  transcribed scheduler's, in both frameworks; the notebook's printed LRs."""
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  config = anchor_woolly.get_config()
  steps_per_epoch = len(epoch_loop.batch_starts(60000, config.batch_size))
  theirs = _WoollyCustomOneCycleLR(0.05, 0.1, steps_per_epoch, 15)
  want = []
  for _ in range(15 * steps_per_epoch):
    want.append(theirs.lr)
    theirs.step()
  lr, momentum = _jax_schedule(config, steps_per_epoch)
  np.testing.assert_allclose(lr, want, rtol=1e-6)
  assert set(momentum) == {np.float32(0.95)}
  torch_lr, torch_momentum = _torch_schedule(config, steps_per_epoch)
  np.testing.assert_allclose(torch_lr, want, rtol=1e-12)
  assert set(torch_momentum) == {0.95}
  printed = [0.05, 0.075, 0.1, 0.085, 0.07, 0.055, 0.04, 0.025, 0.01, 0.00875,
             0.0075, 0.00625, 0.005, 0.003333, 0.001667]  # before each epoch (B.7)
  first_steps = [lr[0]] + [lr[e * steps_per_epoch] for e in range(1, 15)]
  np.testing.assert_allclose(first_steps, printed, atol=5e-7)


def test_piecewise_sgd_matches_torch():
  from configs import anchor_woolly  # pylint: disable=g-import-not-at-top
  config = anchor_woolly.get_config()
  config.num_epochs = 3
  config.schedule.knots = '0:0.05,1:0.1,3:0'
  _parity(config, 30)


@pytest.mark.parametrize('knots', ['', '0:0.05', '2:0.1,0:0.05', '0:0.05,x:1', '0-0.05,2-1'])
def test_bad_piecewise_knots_are_a_config_error(knots):
  config = v36.get_config()
  config.schedule.name, config.schedule.knots = 'piecewise', knots
  with pytest.raises(ConfigError, match=r"piecewise: schedule.knots must be 'EPOCH:LR"):
    optim.create_optimizer(config, 10)
