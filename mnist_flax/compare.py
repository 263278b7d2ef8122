"""Train one recipe in PyTorch and in JAX on the same data; compare honestly.

python -m mnist_flax.compare --config=configs/v36.py --seeds=3 [--config.data_dir=DIR]
python -m mnist_flax.compare --config=configs/v36.py --identical_start [--steps=200]

The PyTorch side uses `torch_interop.torch_model` (the same network spec; for a
torch:PATH.py:CLASS model, the spec imported from the user's class and started
from that class's own initialisation, as the JAX side is), the
same data arrays, and `torch_recipe`: the optimiser and scheduler PyTorch code
would use (torch.optim, OneCycleLR, StepLR) and augmentation drawn from the
same distributions (rotation, integer shift, black fill), warped with
`grid_sample`.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from mnist_flax import (cli, data, epoch_loop, jit_steps, models, optim, report, torch_interop,
                        torch_recipe, train)
from mnist_flax.errors import ConfigError, UserError


def _torch_step(torch, net, optimizer, scheduler, x, y, label_smoothing):
  """One PyTorch training step, as the seeds' loops do it; returns the plain
  cross-entropy, as ours reports it, whatever the label smoothing."""
  log_probs = net(x)
  # The nets end in log_softmax, which cross_entropy's own log_softmax leaves
  # unchanged: this is nll_loss, with label smoothing when asked.
  loss = torch.nn.functional.cross_entropy(log_probs, y, label_smoothing=label_smoothing)
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  scheduler.step()
  return torch.nn.functional.nll_loss(log_probs.detach(), y)


def torch_inputs(torch, images_u8: np.ndarray):
  """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]."""
  return torch.from_numpy(np.array(images_u8)).float().div_(255).unsqueeze(1)


def train_torch(config: ml_collections.ConfigDict, ds: data.Dataset,
                device: str = 'cpu', log=print, compile_mode: str = '',
                channels_last: bool = False) -> list[dict[str, Any]]:
  """The config's recipe in plain PyTorch on `device`; per-epoch test metrics.

  The data stays on `device`, augmented there in batches. `compile_mode`: train
  through torch.compile in that mode ('reduce-overhead' adds CUDA graphs);
  `channels_last`: NHWC memory layout, usually faster for cuDNN convolutions.
  """
  torch = torch_interop.require_torch()
  F = torch.nn.functional
  net = torch_interop.seeded_torch_model(config)
  generator = torch.Generator().manual_seed(config.seed)
  layout = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(device, memory_format=layout)
  trained = torch.compile(net, mode=compile_mode) if compile_mode else net
  batches = epoch_loop.batch_starts(len(ds.train_images), config.batch_size)
  optimizer, scheduler = torch_recipe.create_optimizer(config, net.parameters(),
                                                       len(batches))
  evaluated = net
  if config.ema_decay:
    swa = torch.optim.swa_utils
    evaluated = swa.AveragedModel(
        net, multi_avg_fn=swa.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
  images = torch_inputs(torch, ds.train_images).to(device)
  labels = torch.from_numpy(ds.train_labels).long().to(device)
  test_x = ((torch_inputs(torch, ds.test_images) - config.mean) / config.std).to(device)
  test_y = torch.from_numpy(ds.test_labels).long().to(device)
  augmented_epochs = epoch_loop.augmented_epochs(config)
  history = []
  for epoch in range(1, config.num_epochs + 1):
    start_time = time.time()
    net.train()
    perm = torch.randperm(len(labels), generator=generator)
    for start, size in batches:
      idx = perm[start:start + size].to(device)
      x = images[idx]
      if epoch <= augmented_epochs:
        x = torch_recipe.augment(x, config.augment, generator)
      x = ((x - config.mean) / config.std).contiguous(memory_format=layout)
      _torch_step(torch, trained, optimizer, scheduler, x, labels[idx],
                  config.label_smoothing)
      if evaluated is not net:
        evaluated.update_parameters(net)
    evaluated.eval()
    with torch.no_grad():
      out = torch.cat([evaluated(test_x[i:i + config.eval_batch_size])
                       for i in range(0, len(test_x), config.eval_batch_size)])
    record = {'epoch': epoch,
              'test_loss': float(F.nll_loss(out, test_y)),
              'test_accuracy': float(100 * (out.argmax(1) == test_y).float().mean()),
              'epoch_time_s': time.time() - start_time}
    history.append(record)
    log(f'  torch epoch {epoch:2d}: test acc {record["test_accuracy"]:.2f}%')
  return history


def _identical_inputs(config: ml_collections.ConfigDict, ds: data.Dataset, steps: int):
  """Identical start's config (no augmentation), first batches, epoch length, order."""
  config = copy.deepcopy(config)
  aug = config.augment
  aug.degrees = aug.translate = aug.scale = aug.brightness = aug.contrast = 0.0
  aug.cutout = 0
  all_batches = epoch_loop.batch_starts(len(ds.train_images), config.batch_size)
  perm = np.random.default_rng(config.seed).permutation(len(ds.train_images))
  return config, all_batches[:steps], len(all_batches), perm


def _seeded_torch_net(config: ml_collections.ConfigDict, float64: bool):
  net = torch_interop.seeded_torch_model(config)
  return net.double() if float64 else net


def _torch_losses(torch, net, config, ds, batches, steps_per_epoch, perm) -> np.ndarray:
  optimizer, scheduler = torch_recipe.create_optimizer(config, net.parameters(),
                                                       steps_per_epoch)
  losses = []
  net.train()
  for start, size in batches:
    idx = perm[start:start + size]
    x = (torch_inputs(torch, ds.train_images[idx]) - config.mean) / config.std
    loss = _torch_step(torch, net, optimizer, scheduler,
                       x.to(next(net.parameters()).dtype),
                       torch.from_numpy(ds.train_labels[idx]).long(),
                       config.label_smoothing)
    losses.append(loss.item())
  return np.array(losses)


def identical_start(config: ml_collections.ConfigDict, ds: data.Dataset,
                    steps: int = 200, float64: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Per-step training loss of both frameworks from the same weights and batches.

  PyTorch initialises the network; its weights go to JAX through the
  state_dict conversion. No augmentation; both read one fixed permutation.
  float64=True runs both in double precision, which separates differences of
  meaning from float32 rounding.
  """
  torch = torch_interop.require_torch()
  config, batches, steps_per_epoch, perm = _identical_inputs(config, ds, steps)
  net = _seeded_torch_net(config, float64)
  variables, _ = torch_interop.from_state_dict(config.model, net.state_dict(),
                                               config.model_kwargs)
  with jax.enable_x64(float64):
    model = models.create_model(config.model, bn_momentum=config.bn_momentum,
                                model_kwargs=config.model_kwargs)
    tx = optim.create_optimizer(config, steps_per_epoch).tx
    params = jax.tree.map(jnp.asarray, variables['params'])
    state = jit_steps.create_train_state(model, tx, jax.random.key(config.seed)).replace(
        params=params, opt_state=tx.init(params),
        batch_stats=jax.tree.map(jnp.asarray, variables['batch_stats']))
    step_fn = epoch_loop.make_steps(model, tx, config, steps_per_epoch).train
    images, labels, jperm = jax.device_put((ds.train_images, ds.train_labels, perm))
    jax_losses = []
    for start, size in batches:
      state, m = step_fn(state, jit_steps.zero_metrics(), images, labels, jperm, start,
                         batch_size=size)
      jax_losses.append(float(m['loss'] / m['count']))
  return np.array(jax_losses), _torch_losses(torch, net, config, ds, batches,
                                             steps_per_epoch, perm)


def torch_on_threads(config: ml_collections.ConfigDict, ds: data.Dataset,
                     steps: int = 200, threads: int = 1) -> np.ndarray:
  """Identical start's float32 PyTorch losses, rerun on `threads` threads.

  Only the summation order changes, so its distance from the usual run is how
  far float32 rounding alone takes one framework from itself: the yardstick for
  the JAX-PyTorch distance.
  """
  torch = torch_interop.require_torch()
  config, batches, steps_per_epoch, perm = _identical_inputs(config, ds, steps)
  before = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    return _torch_losses(torch, _seeded_torch_net(config, False), config, ds,
                         batches, steps_per_epoch, perm)
  finally:
    torch.set_num_threads(before)


def _summary(history: list[dict[str, Any]]) -> tuple[float, float]:
  analysis = report.final_analysis(history, 0.0)
  return analysis['final3_average'], analysis['best_accuracy']


def format_table(rows: list[dict[str, Any]]) -> str:
  """Per framework and seed, then mean and std per framework."""
  lines = [f'{"framework":<10} {"seed":>4} {"final-3 avg":>12} {"best":>7} {"wall s":>8}']
  for r in rows:
    lines.append(f'{r["framework"]:<10} {r["seed"]:>4} {r["final3"]:>11.3f}% '
                 f'{r["best"]:>6.2f}% {r["wall_s"]:>8.1f}')
  for fw in dict.fromkeys(r['framework'] for r in rows):
    f3 = np.array([r['final3'] for r in rows if r['framework'] == fw])
    best = np.array([r['best'] for r in rows if r['framework'] == fw])
    wall = np.array([r['wall_s'] for r in rows if r['framework'] == fw])
    lines.append(f'{fw:<10} {"mean":>4} {f3.mean():>11.3f}% {best.mean():>6.2f}% '
                 f'{wall.mean():>8.1f}   (std of final-3: {f3.std(ddof=1) if len(f3) > 1 else 0:.3f})')
  return '\n'.join(lines)


def compare(config: ml_collections.ConfigDict, seeds: int, workdir: str,
            torch_device: str = 'cpu', **torch_options: Any) -> str:
  """Trains `seeds` seeds in each framework, config.seed and the next ones (as
  main's num_seeds); returns the table."""
  if config.distill.teacher:
    raise ConfigError('compare has no distillation on its PyTorch side; drop '
                      '--config.distill.teacher to compare the plain recipe')
  torch_interop.require_torch()
  ds = data.load_for(config)
  os.makedirs(workdir, exist_ok=True)
  run_dir = tempfile.mkdtemp(prefix='compare_', dir=workdir)
  rows = []
  for seed in range(config.seed, config.seed + seeds):
    cfg = copy.deepcopy(config)
    cfg.seed, cfg.progress_bar = seed, False
    start = time.time()
    result = train.train_and_evaluate(cfg, os.path.join(run_dir, f'jax_s{seed}'))
    rows.append({'framework': 'jax', 'seed': seed, 'wall_s': time.time() - start,
                 **dict(zip(('final3', 'best'), _summary(result.history)))})
    start = time.time()
    history = train_torch(cfg, ds, torch_device, **torch_options)
    rows.append({'framework': 'pytorch', 'seed': seed, 'wall_s': time.time() - start,
                 **dict(zip(('final3', 'best'), _summary(history)))})
  rows.sort(key=lambda r: (r['framework'] != 'jax', r['seed']))
  return format_table(rows)


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'A config file from configs/.',
                                  lock_config=True)
  flags.DEFINE_integer('seeds', 3, 'Seeds per framework: --config.seed and the next ones.')
  flags.DEFINE_string('workdir', 'workdirs/compare', 'Where the JAX runs write.')
  flags.DEFINE_bool('identical_start', False, 'Same weights, same batches, no '
                    'augmentation: report the per-step loss difference, '
                    'beside PyTorch against itself on another thread count.')
  flags.DEFINE_integer('steps', 200, 'Steps for --identical_start.')
  flags.DEFINE_string('torch_device', 'cpu', "PyTorch's device: cpu or cuda.")
  flags.DEFINE_enum('torch_compile', '', ['', 'default', 'reduce-overhead', 'max-autotune'],
                    "Train PyTorch through torch.compile in this mode ('reduce-overhead' "
                    "adds CUDA graphs); '': eager.")
  flags.DEFINE_bool('channels_last', False, 'PyTorch in the NHWC memory layout.')
  flags.mark_flag_as_required('config')


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    torch_interop.require_torch()
    if not f.identical_start:
      print(compare(f.config, f.seeds, f.workdir, f.torch_device,
                    compile_mode=f.torch_compile, channels_last=f.channels_last))
      return
    ds = data.load_for(f.config)
    jl, tl = identical_start(f.config, ds, f.steps)
    threads = 1 if torch_interop.require_torch().get_num_threads() > 1 else 2
    ref = torch_on_threads(f.config, ds, f.steps, threads)
  except UserError as e:
    sys.exit(f'error: {e}')
  print(f'{"step":>5} {"jax loss":>10} {"torch loss":>10} {"|diff|":>9} '
        f'{"torch, " + str(threads) + " thr":>13} {"|diff|":>9}')
  for i in list(range(0, len(jl), 10)) + [len(jl) - 1]:
    print(f'{i + 1:>5} {jl[i]:>10.6f} {tl[i]:>10.6f} {abs(jl[i] - tl[i]):>9.2e} '
          f'{ref[i]:>13.6f} {abs(ref[i] - tl[i]):>9.2e}')
  for name, other in (('jax', jl), (f'torch on {threads} thread(s)', ref)):
    diff = np.abs(other - tl)
    over = np.nonzero(diff > 1e-3)[0]
    print(f'{name} against torch: max |diff| over the first 50 steps '
          f'{diff[:50].max():.2e}; over all {len(diff)}: {diff.max():.2e}; first '
          f'step above 1e-3: {over[0] + 1 if len(over) else "none"}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
