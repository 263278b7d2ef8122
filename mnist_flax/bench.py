"""python -m mnist_flax.bench [--models=v36,model3] [--json=FILE]

Ours against PyTorch on this machine, in one process, the two interleaved so
that drift of the machine's speed cancels in the ratios:
  1. train-step throughput at the config's batch size (PyTorch eager, and
     torch.compile where it works), same architecture and optimiser, random data;
  2. a full training epoch with shuffling and augmentation, against a PyTorch
     DataLoader that augments per sample (PIL, as torchvision does);
  3. eval throughput; 4. time to the first step's result (compile);
  5. peak memory (resident set of a child process per framework);
  6. with --runs=1,2,4,8: runs per hour when K runs train at once, ours as one
     `mnist_flax.main` process of K seeds against K PyTorch processes side by side.
"""

from __future__ import annotations

import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from absl import flags
import jax
import ml_collections
import numpy as np

from mnist_flax import (architectures, cli, compare, data, epoch_loop, jit_steps, models,
                        optim, parallel, torch_import, torch_interop, torch_recipe)
from mnist_flax.errors import ConfigError, UserError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_ROOT, 'configs')


def config_names() -> list[str]:
  """The models bench knows: NAME for each configs/NAME.py."""
  return sorted(name[:-3] for name in os.listdir(_CONFIGS) if name.endswith('.py'))


def load_config(model: str, model_kwargs: str = '') -> ml_collections.ConfigDict:
  """configs/MODEL.py's recipe (batch size, optimiser, augmentation); for a
  torch:PATH.py:CLASS model (built with `model_kwargs`), configs/v36.py's."""
  if model.startswith(architectures.TORCH_PREFIX):
    config = load_config('v36')
    path, class_name = torch_import.parse_name(model)
    # Absolute: the memory children run in the repository's root.
    config.model = f'{architectures.TORCH_PREFIX}{os.path.abspath(path)}:{class_name}'
    config.model_kwargs = model_kwargs
    return config
  names = config_names()
  if model not in names:
    raise UserError(f'no config for model {model!r}; choose from {", ".join(names)}')
  return runpy.run_path(os.path.join(_CONFIGS, f'{model}.py'))['get_config']()


def machine() -> dict[str, Any]:
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f
                 if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  torch = torch_interop.require_torch()
  return {'cpu': cpu, 'cores': parallel.cpu_cores(), 'jax': jax.__version__,
          'jax_devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'torch': torch.__version__, 'python': platform.python_version()}


def _rate(fn: Callable[[], Any], n: int, per_call: int) -> float:
  """Images per second of n calls of fn (fn blocks on its last result)."""
  start = time.perf_counter()
  fn()
  return n * per_call / (time.perf_counter() - start)


class Ours:
  """Our jitted train/eval steps on the on-device dataset."""

  def __init__(self, config, images: np.ndarray, labels: np.ndarray):
    self.config = config
    model = models.create_model(config.model, bn_momentum=config.bn_momentum,
                                model_kwargs=config.model_kwargs)
    self.batches = epoch_loop.batch_starts(len(images), config.batch_size)
    self.optimizer = optim.create_optimizer(config, len(self.batches))
    self.mesh = parallel.create_mesh()
    replicated = parallel.replicated(self.mesh)
    self.state = jax.jit(lambda k: jit_steps.create_train_state(model, self.optimizer.tx, k),
                         out_shardings=replicated)(jax.random.key(0))
    self.steps = epoch_loop.make_steps(model, self.optimizer.tx, config, len(self.batches),
                                  self.mesh)
    self.images, self.labels = parallel.put((images, labels), replicated)
    self.perm = jax.jit(lambda r: jit_steps.epoch_permutation(r, 1, len(images)))(self.state.rng)
    self.metrics = jit_steps.zero_metrics()
    self.lockstep = epoch_loop.needs_lockstep(self.mesh)

  def first_step_s(self) -> float:
    start = time.perf_counter()
    self._steps(1)
    return time.perf_counter() - start

  def _steps(self, n: int) -> None:
    self._run([([(i % (len(self.batches) - 1)) * self.config.batch_size],
                self.config.batch_size) for i in range(n)])

  def _run(self, plan: list[tuple[list[int], int]]) -> None:
    self.state, self.metrics = epoch_loop.train_epoch(
        self.steps, self.state, self.metrics, self.images, self.labels, self.perm,
        plan, self.lockstep)
    jax.block_until_ready(self.metrics)

  def train_rate(self, n: int) -> float:
    return _rate(lambda: self._steps(n), n, self.config.batch_size)

  def epoch_s(self) -> float:
    """A whole epoch, the permutation included; every shape compiled before."""
    per_dispatch = epoch_loop.steps_per_dispatch(self.config.steps_per_dispatch,
                                                 self.mesh, len(self.batches))
    plan = epoch_loop.dispatch_plan(self.batches, self.config.batch_size, per_dispatch)
    self._run([p for p in plan if p[1] != self.config.batch_size])
    start = time.perf_counter()
    perm = jax.jit(lambda r: jit_steps.epoch_permutation(r, 2, len(self.perm)))(self.state.rng)
    self.state, self.metrics = epoch_loop.train_epoch(
        self.steps, self.state, self.metrics, self.images, self.labels, perm, plan,
        self.lockstep)
    jax.block_until_ready(self.metrics)
    return time.perf_counter() - start

  def eval_rate(self, images: np.ndarray, labels: np.ndarray, repeats: int) -> float:
    batches = parallel.put(parallel.eval_batches(images, labels, self.config.eval_batch_size,
                                                 self.mesh.size),
                           parallel.eval_sharded(self.mesh))
    jax.block_until_ready(self.steps.eval(self.state, *batches))
    return _rate(lambda: [jax.device_get(self.steps.eval(self.state, *batches))
                          for _ in range(repeats)], repeats, len(images))


class Torch:
  """The same network and recipe in PyTorch eager (or torch.compile)."""

  def __init__(self, config, num_examples: int, compiled: bool = False):
    """num_examples: training images an epoch, which set the schedule's length."""
    self.torch = torch = torch_interop.require_torch()
    torch.set_num_threads(parallel.cpu_cores())
    torch.manual_seed(0)
    self.config = config
    self.net = torch_interop.torch_model(config.model, config.bn_momentum,
                                         config.model_kwargs)
    steps_per_epoch = len(epoch_loop.batch_starts(num_examples, config.batch_size))
    self.optimizer, self.scheduler = torch_recipe.create_optimizer(
        config, self.net.parameters(), steps_per_epoch)
    self.forward = torch.compile(self.net) if compiled else self.net
    n = config.batch_size
    self.x = torch.randn(n, 1, 28, 28)
    self.y = torch.randint(0, 10, (n,))

  def _step(self, x, y):
    loss = self.torch.nn.functional.nll_loss(self.forward(x), y)
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    return loss

  def first_step_s(self) -> float:
    start = time.perf_counter()
    self._step(self.x, self.y).item()
    return time.perf_counter() - start

  def train_rate(self, n: int) -> float:
    self.net.train()

    def run():
      for _ in range(n):
        loss = self._step(self.x, self.y)
      loss.item()
    return _rate(run, n, self.config.batch_size)

  def epoch_s(self, images: np.ndarray, labels: np.ndarray, workers: int) -> float:
    """One epoch through a DataLoader that warps each sample with PIL."""
    loader = self.torch.utils.data.DataLoader(
        torch_recipe.AugmentedMNIST(images, labels, self.config),
        batch_size=self.config.batch_size, shuffle=True, num_workers=workers)
    self.net.train()
    start = time.perf_counter()
    for x, y in loader:
      loss = self._step(x, y)
    loss.item()
    return time.perf_counter() - start

  def eval_rate(self, images: np.ndarray, repeats: int) -> float:
    torch = self.torch
    x = (compare.torch_inputs(torch, images) - self.config.mean) / self.config.std
    size = self.config.eval_batch_size
    self.net.eval()

    def run():
      with torch.no_grad():
        for _ in range(repeats):
          for i in range(0, len(x), size):
            self.net(x[i:i + size])
    return _rate(run, repeats, len(images))


def peak_memory_mb(model: str, model_kwargs: str = '') -> dict[str, float]:
  """Per framework, how far a fresh process's peak resident memory rises above
  its size after the imports while it trains `model` for 20 steps.

  The two processes run at once: each measures only its own peak, and nothing
  here is timed.
  """
  children = {fw: subprocess.Popen(
      [sys.executable, '-m', 'mnist_flax.bench', f'--memory_child={fw}',
       f'--models={model}', f'--model_kwargs={model_kwargs}'], cwd=_ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for fw in ('jax', 'torch')}
  peaks = {}
  for fw, child in children.items():
    out, err = child.communicate(timeout=300)
    if child.returncode:
      raise RuntimeError(err[-2000:])
    peaks[fw] = float(out.split()[-1])
  return peaks


def _memory_child(framework: str, model: str, model_kwargs: str) -> None:
  config = load_config(model, model_kwargs)
  # Both hold the uint8 training set, as both pipelines do.
  images = np.random.default_rng(0).integers(0, 256, (60000, 28, 28), np.uint8)
  before = _memory_kb('VmRSS')
  if framework == 'jax':
    Ours(config, images, np.zeros(60000, np.int32)).train_rate(20)
  else:
    Torch(config, len(images)).train_rate(20)
  print((_memory_kb('VmHWM') - before) / 1024)


def _memory_kb(field: str) -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field))


def bench_model(model: str, ds: data.Dataset, repeats: int, steps: int,
                workers: int, torch_compile: bool = True,
                log=print, model_kwargs: str = '') -> dict[str, Any]:
  """Every measurement for one model; ours and PyTorch's alternate."""
  config = load_config(model, model_kwargs)
  rows: dict[str, Any] = {'model': model, 'batch_size': config.batch_size}
  ours = Ours(config, ds.train_images, ds.train_labels)
  eager = Torch(config, len(ds.train_images))
  rows['first_step_s'] = {'jax': ours.first_step_s(), 'torch': eager.first_step_s()}
  contenders = {'jax': ours, 'torch': eager}
  rows['torch.compile'] = 'not run (--notorch_compile)'
  try:
    if torch_compile:
      compiled = Torch(config, len(ds.train_images), compiled=True)
      rows['first_step_s']['torch.compile'] = compiled.first_step_s()
      contenders['torch.compile'] = compiled
  except Exception as e:  # pylint: disable=broad-except
    rows['torch.compile'] = f'unavailable: {type(e).__name__}: {str(e)[:200]}'
  for c in contenders.values():
    c.train_rate(10)  # warm-up
  rates: dict[str, list[float]] = {k: [] for k in contenders}
  for _ in range(repeats):
    for name, c in contenders.items():
      rates[name].append(c.train_rate(steps))
  rows['train_images_per_s'] = {k: statistics.median(v) for k, v in rates.items()}
  log(f'  {model} train step: ' + ', '.join(
      f'{k} {v:,.0f} img/s' for k, v in rows['train_images_per_s'].items()))

  rows['epoch_s'] = {'jax': ours.epoch_s()}
  try:
    rows['epoch_s']['torch_dataloader'] = eager.epoch_s(ds.train_images, ds.train_labels,
                                                        workers)
  except ConfigError as e:  # augmentation the per-sample PIL loader does not do
    rows['dataloader'] = f'unavailable: {e}'
    log(f'  {model} DataLoader epoch {rows["dataloader"]}')
  log(f'  {model} epoch: ' + ', '.join(f'{k} {v:.1f} s' for k, v in rows['epoch_s'].items()))
  rows['eval_images_per_s'] = {
      'jax': ours.eval_rate(ds.test_images, ds.test_labels, 1),
      'torch': eager.eval_rate(ds.test_images, 1)}
  rows['peak_memory_mb'] = peak_memory_mb(model, model_kwargs)  # the config's name
  return rows


def _second_epoch_s(out: str) -> float:
  """The time of epoch 2 of 2 in `mnist_flax.main`'s log (epoch 1 compiles)."""
  line = next(l for l in out.splitlines() if l.startswith('Epoch  2/2'))
  return float(line.rsplit('|', 1)[1].strip().rstrip('s'))


def runs_per_hour(model: str, ks: list[int], examples: int, data_dir: str,
                  verify: bool = True, log=print) -> list[dict[str, Any]]:
  """Per K: 15-epoch runs (of 60,000 images) per hour, from the second of two
  epochs over `examples` images with K runs training at once: ours, one
  `mnist_flax.main` process of K seeds on its default devices; PyTorch, K
  processes at once, each with cores // K threads (at least one). Both evaluate
  on 1,000 held-out training images an epoch, in the epoch's time."""
  rows = []
  scale = examples / 60000 / 15  # run-epochs of `examples` -> 15-epoch runs
  common = [f'--config.data_dir={data_dir}', f'--config.train_examples={examples}',
            '--config.validation_examples=1000', '--config.num_epochs=2',
            '--config.progress_bar=False', f'--config.verify_checksums={verify}']
  for k in ks:
    with tempfile.TemporaryDirectory() as workdir:
      ours = subprocess.run(
          [sys.executable, '-m', 'mnist_flax.main', f'--config={_CONFIGS}/{model}.py',
           f'--workdir={workdir}', f'--config.num_seeds={k}', *common],
          cwd=_ROOT, capture_output=True, text=True, timeout=3600)
    if ours.returncode:
      raise RuntimeError(ours.stderr[-2000:])
    ours_s = _second_epoch_s(ours.stdout)
    children = [subprocess.Popen(
        [sys.executable, '-m', 'mnist_flax.bench',
         f'--torch_child_threads={max(1, parallel.cpu_cores() // k)}',
         f'--models={model}', f'--data_dir={data_dir}', f'--runs_examples={examples}',
         f'--verify_checksums={verify}'],
        cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(k)]
    torch_s = []
    for child in children:
      out, err = child.communicate(timeout=3600)
      if child.returncode:
        raise RuntimeError(err[-2000:])
      torch_s.append(float(out.split()[-1]))
    row = {'model': model, 'runs': k, 'examples': examples, 'jax_epoch_s': ours_s,
           'torch_epoch_s': torch_s,
           'jax_runs_per_hour': k * 3600 / ours_s * scale,
           'torch_runs_per_hour': sum(3600 / t for t in torch_s) * scale}
    log(f'  {model} K={k}: jax {row["jax_runs_per_hour"]:.2f}, pytorch '
        f'{row["torch_runs_per_hour"]:.2f} runs per hour')
    rows.append(row)
  return rows


def _torch_child(model: str, data_dir: str, examples: int, threads_: int,
                 verify: bool) -> None:
  """One PyTorch run of `runs_per_hour`: prints its second epoch's seconds."""
  torch = torch_interop.require_torch()
  torch.set_num_threads(threads_)
  config = load_config(model)
  config.num_epochs = 2
  ds = data.load(config.dataset, data_dir, verify=verify, train_examples=examples,
                 validation_examples=1000)
  history = compare.train_torch(config, ds, log=lambda *_: None)
  print(history[1]['epoch_time_s'])


def format_runs(rows: list[dict[str, Any]]) -> str:
  """Runs per hour per K, ours against K PyTorch processes."""
  lines = [f'{"model":<7} {"runs at once":>12} {"jax runs/h":>11} {"pytorch runs/h":>15} '
           f'{"speed-up":>9}']
  for r in rows:
    lines.append(f'{r["model"]:<7} {r["runs"]:>12} {r["jax_runs_per_hour"]:>11.2f} '
                 f'{r["torch_runs_per_hour"]:>15.2f} '
                 f'{r["jax_runs_per_hour"] / r["torch_runs_per_hour"]:>8.2f}x')
  return '\n'.join(lines)


def format_table(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
  """One row per measurement: ours, PyTorch's, and ours/PyTorch (speed-up)."""
  lines = [f'machine: {info["cpu"]}, {info["cores"]} cores; JAX {info["jax"]} '
           f'({info["jax_devices"]}), PyTorch {info["torch"]}',
           f'{"model":<7} {"measure":<30} {"ours":>10} {"pytorch":>10} {"speed-up":>9}']

  def row(model, what, ours, theirs, higher_better=True, fmt='{:,.0f}'):
    ratio = ours / theirs if higher_better else theirs / ours
    lines.append(f'{model:<7} {what:<30} {fmt.format(ours):>10} '
                 f'{fmt.format(theirs):>10} {ratio:>8.2f}x')

  for r in results:
    m, t = r['model'], r['train_images_per_s']
    row(m, f'train img/s, batch {r["batch_size"]} (eager)', t['jax'], t['torch'])
    if 'torch.compile' in t:
      row(m, 'train img/s vs torch.compile', t['jax'], t['torch.compile'])
    else:
      lines.append(f'{m:<7} torch.compile {r["torch.compile"]}')
    e = r['epoch_s']
    if 'torch_dataloader' in e:
      row(m, 'epoch s, augmented (DataLoader)', e['jax'], e['torch_dataloader'],
          higher_better=False, fmt='{:.1f}')
    else:
      lines.append(f'{m:<7} DataLoader epoch {r["dataloader"]}')
    v = r['eval_images_per_s']
    row(m, 'eval img/s', v['jax'], v['torch'])
    f = r['first_step_s']
    row(m, 'first step s (compile)', f['jax'], f['torch'], higher_better=False,
        fmt='{:.2f}')
    if 'torch.compile' in f:
      lines.append(f'{m:<7} {"first step s, torch.compile":<30} {"":>10} '
                   f'{f["torch.compile"]:>10.2f}')
    p = r['peak_memory_mb']
    row(m, 'peak memory MB (RSS growth)', p['jax'], p['torch'], higher_better=False)
  return '\n'.join(lines)


def _define_flags() -> None:
  flags.DEFINE_list('models', ['v36', 'model3'], 'Models to measure: configs/NAME.py, '
                    "or torch:PATH.py:CLASS with configs/v36.py's recipe.")
  flags.DEFINE_string('model_kwargs', '', "The torch: models' constructor arguments "
                      '(a JSON object).')
  flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
  flags.DEFINE_string('data_dir', os.environ.get('MNIST_DIR', ''),
                      'MNIST IDX folder ($MNIST_DIR); empty: TFDS.')
  flags.DEFINE_integer('repeats', 3, 'Interleaved repetitions of the throughput runs.')
  flags.DEFINE_integer('steps', 40, 'Train steps per throughput run.')
  flags.DEFINE_integer('workers', 0, 'DataLoader worker processes.')
  flags.DEFINE_bool('torch_compile', True, 'Also measure torch.compile.')
  flags.DEFINE_integer('cpu_devices', 0, 'As mnist_flax.main --cpu_devices.')
  flags.DEFINE_enum('memory_child', None, ['jax', 'torch'], 'Internal.')
  flags.DEFINE_list('runs', [], 'Also measure runs per hour with this many runs '
                    'at once (e.g. 1,2,4,8), ours against as many PyTorch processes.')
  flags.DEFINE_integer('runs_examples', 12800, 'Training images an epoch for --runs.')
  flags.DEFINE_integer('torch_child_threads', 0, 'Internal.')
  flags.DEFINE_bool('verify_checksums', True, "Check the IDX files' SHA-256.")


def main(argv):
  del argv
  f = flags.FLAGS
  parallel.use_cpu_devices(f.cpu_devices)
  try:
    if f.memory_child:
      _memory_child(f.memory_child, f.models[0], f.model_kwargs)
      return
    if f.torch_child_threads:
      _torch_child(f.models[0], f.data_dir, f.runs_examples, f.torch_child_threads,
                   f.verify_checksums)
      return
    try:
      ks = [int(k) for k in f.runs]
    except ValueError:
      raise UserError(f'--runs={",".join(f.runs)}: give numbers of runs, e.g. '
                      '--runs=1,2,4,8') from None
    if f.runs and not f.data_dir:
      raise UserError('--runs trains from IDX files: pass --data_dir or set MNIST_DIR')
    if f.runs and any(m.startswith(architectures.TORCH_PREFIX) for m in f.models):
      raise UserError('--runs trains configs/NAME.py with mnist_flax.main; a torch: '
                      'model has no config there')
    info = machine()
    config = load_config(f.models[0], f.model_kwargs)
    config.data_dir, config.verify_checksums = f.data_dir, f.verify_checksums
    ds = data.load_for(config)
    results = []
    for model in f.models:
      results.append(bench_model(model, ds, f.repeats, f.steps, f.workers,
                                 f.torch_compile, model_kwargs=f.model_kwargs))
    runs = [row for model in f.models
            for row in runs_per_hour(model, ks, f.runs_examples, f.data_dir,
                                     f.verify_checksums)]
  except UserError as e:
    sys.exit(f'error: {e}')
  print(format_table(results, info))
  if runs:
    print(format_runs(runs))
  if f.json:
    with open(f.json, 'w') as out:
      json.dump({'machine': info, 'results': results, 'runs_per_hour': runs}, out,
                indent=2)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
