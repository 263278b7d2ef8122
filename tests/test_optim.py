"""Schedules and optimisers against PyTorch's, step for step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_flax import optim
from mnist_flax.errors import ConfigError
from configs import model3, v36

torch = pytest.importorskip('torch')


def _torch_schedule(config, steps_per_epoch):
  """LR and momentum PyTorch uses at every optimizer step of a whole run."""
  p = torch.nn.Parameter(torch.zeros(1))
  opt, sch = config.optimizer, config.schedule
  if opt.name == 'sgd':
    topt = torch.optim.SGD([p], lr=opt.learning_rate, momentum=opt.momentum)
  else:
    topt = torch.optim.Adam([p], lr=opt.learning_rate, betas=(opt.b1, opt.b2))
  total = config.num_epochs * steps_per_epoch
  if sch.name == 'onecycle':
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        topt, max_lr=sch.max_lr, epochs=config.num_epochs,
        steps_per_epoch=steps_per_epoch, pct_start=sch.pct_start,
        div_factor=sch.div_factor, final_div_factor=sch.final_div_factor,
        cycle_momentum=sch.cycle_momentum, base_momentum=sch.base_momentum,
        max_momentum=sch.max_momentum)
    per_step = True
  else:
    scheduler = torch.optim.lr_scheduler.StepLR(topt, sch.step_size, sch.gamma)
    per_step = False
  lrs, moms = [], []
  for step in range(total):
    lrs.append(topt.param_groups[0]['lr'])
    moms.append(topt.param_groups[0].get('momentum', 0.0))
    topt.step()
    if per_step:
      scheduler.step()
    elif (step + 1) % steps_per_epoch == 0:
      scheduler.step()
  return np.array(lrs), np.array(moms)


def test_onecycle_matches_torch_every_step():
  config = v36.get_config()
  steps = 469  # ceil(60000 / 128)
  want_lr, want_mom = _torch_schedule(config, steps)
  count = jnp.arange(len(want_lr))
  total = config.num_epochs * steps
  sch = config.schedule
  lr = jax.vmap(optim.onecycle_lr(total, sch.max_lr, sch.pct_start,
                                  sch.div_factor, sch.final_div_factor))(count)
  mom = jax.vmap(optim.onecycle_momentum(total, sch.pct_start, sch.base_momentum,
                                         sch.max_momentum))(count)
  np.testing.assert_allclose(lr, want_lr, rtol=1e-6)
  np.testing.assert_allclose(mom, want_mom, rtol=1e-6)
  # And through the config path the trainer uses.
  lr_cfg = jax.vmap(optim.create_optimizer(config, steps).learning_rate)(count)
  np.testing.assert_allclose(lr_cfg, want_lr, rtol=1e-6)


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


def test_step_lr_matches_torch_every_step():
  config = model3.get_config()
  steps = 938  # ceil(60000 / 64)
  want_lr, _ = _torch_schedule(config, steps)
  lr = jax.vmap(optim.create_optimizer(config, steps).learning_rate)(
      jnp.arange(len(want_lr)))
  np.testing.assert_allclose(lr, want_lr, rtol=1e-6)


def _parity(config, steps_per_epoch, torch_opt_fn, torch_sched_fn=None, steps=100):
  rng = np.random.default_rng(0)
  shapes = {'w': (3, 4), 'b': (4,)}
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(steps)]
  tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  topt = torch_opt_fn(list(tparams.values()))
  tsched = torch_sched_fn(topt) if torch_sched_fn else None
  tx = optim.create_optimizer(config, steps_per_epoch).tx
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads:
    for k, p in tparams.items():
      p.grad = torch.tensor(g[k])
    topt.step()
    if tsched:
      tsched.step()
    updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  for k, p in tparams.items():
    np.testing.assert_allclose(params[k], p.detach().numpy(), atol=1e-5, rtol=0)


def _torch_onecycle(config, total_steps):
  sch = config.schedule
  return lambda o: torch.optim.lr_scheduler.OneCycleLR(
      o, max_lr=sch.max_lr, total_steps=total_steps, pct_start=sch.pct_start,
      div_factor=sch.div_factor, final_div_factor=sch.final_div_factor,
      cycle_momentum=sch.cycle_momentum)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_onecycle_weight_decay_matches_torch(nesterov):
  config = v36.get_config()
  config.num_epochs, config.optimizer.weight_decay = 2, 1e-2
  torch_sgd = lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2,
                                         nesterov=nesterov)
  config.optimizer.nesterov = nesterov
  _parity(config, 50, torch_sgd, _torch_onecycle(config, 100))
  config.optimizer.nesterov = not nesterov
  with pytest.raises(AssertionError):  # the comparison tells the two apart
    _parity(config, 50, torch_sgd, _torch_onecycle(config, 100))


def test_sgd_fixed_momentum_matches_torch():
  config = v36.get_config()
  config.num_epochs = 2
  config.schedule.cycle_momentum = False
  _parity(config, 50,
          lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.98, weight_decay=5e-5,
                                     nesterov=config.optimizer.nesterov),
          _torch_onecycle(config, 100))


def test_adam_step_lr_matches_torch():
  config = model3.get_config()
  config.optimizer.weight_decay = 1e-3
  config.schedule.step_size = 1
  # StepLR once per 20 steps: epochs of 20 steps, step_size 1 epoch.
  steps_per_epoch = 20
  counter = {'n': 0}

  def sched(o):
    s = torch.optim.lr_scheduler.StepLR(o, 1, config.schedule.gamma)

    class PerEpoch:
      def step(self):
        counter['n'] += 1
        if counter['n'] % steps_per_epoch == 0:
          s.step()
    return PerEpoch()

  _parity(config, steps_per_epoch,
          lambda ps: torch.optim.Adam(ps, lr=0.005, weight_decay=1e-3), sched)


def test_unknown_optimizer_and_schedule():
  config = v36.get_config()
  config.optimizer.name = 'lamb'
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
    optim.create_optimizer(config, 10)
  config = v36.get_config()
  config.schedule.name = 'cosine'
  with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
    optim.create_optimizer(config, 10)
  config = model3.get_config()
  config.optimizer.nesterov = True
  with pytest.raises(ConfigError, match='optimizer.nesterov is for SGD'):
    optim.create_optimizer(config, 10)


@pytest.mark.parametrize('pct_start,total', [(0.05, 20), (0.01, 100), (0.5, 2)])
def test_onecycle_with_a_zero_step_phase_is_a_config_error(pct_start, total):
  with pytest.raises(ConfigError, match=r'onecycle: pct_start \* total steps'):
    optim.onecycle_lr(total, 0.05, pct_start)
