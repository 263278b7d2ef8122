"""Training runs: one or K seeds, each in its workdir, resumed from its checkpoints.

Import and call `train_and_evaluate(config, workdir)` from a notebook; `main.py`
is only the command line around it. The jitted steps are in `jit_steps.py`, the
epoch of dispatches in `epoch_loop.py`, the reports in `report.py`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import tqdm

from mnist_flax import (augment, checkpoint, data, distill, epoch_loop, kill_switch, models,
                        optim, parallel, report, sweep, torch_import)
from mnist_flax.epoch_loop import stack, unstack
from mnist_flax.errors import ConfigError, UserError
from mnist_flax.jit_steps import (Metrics, TrainState, create_train_state,
                                  epoch_permutation, keeps_ema, zero_metrics)


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


class TrainResult(NamedTuple):
  state: TrainState
  history: list[dict[str, Any]]
  analysis: dict[str, Any]


def _check_finite(first_nonfinite: int, epoch: int, label: str) -> None:
  if first_nonfinite >= 0:
    raise TrainingDiverged(
        f'the loss became NaN or infinite at epoch {epoch}, step '
        f'{first_nonfinite + 1} ({label}); training stopped and nothing from '
        'this epoch was saved: lower the learning rate (or check the data)')


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, '.write_test'), 'w'):
      pass
    os.remove(os.path.join(workdir, '.write_test'))
  except OSError as e:
    raise checkpoint.CheckpointError(
        f'workdir {workdir} is not writable ({e.strerror}); choose another '
        '--workdir') from None


class _Run:
  """One run's workdir: its config, checkpoints, history and metric files.

  `values`: the swept keys' values of this run ({} outside a sweep).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               values: dict[str, Any], steps_per_epoch: int):
    self.config, self.workdir, self.values = config, workdir, values
    self.optimizer = optim.create_optimizer(config, steps_per_epoch)
    distill.check(config)  # each run's, when a sweep varies distill's values
    augment.check(config.augment)  # and augment's
    self.label = ' '.join([*(f'{k}={v!r}' for k, v in values.items()),
                           f'seed {config.seed}'])
    if parallel.is_primary():
      _prepare_workdir(workdir)
    self.ckpts = checkpoint.Checkpoints(workdir, config.keep_checkpoints)
    self.history: list[dict[str, Any]] = []
    self.writer: report.MetricWriter | None = None
    self.last_state: TrainState | None = None

  def resume(self, template: TrainState, step: int | None = None
             ) -> checkpoint.Restored | None:
    """The latest good checkpoint (or `step`) of a run with this config."""
    if not self.ckpts.steps():
      return None
    saved = checkpoint.load_config(self.workdir)
    changed = checkpoint.config_differences(saved.to_dict(), self.config)
    if changed:
      raise checkpoint.CheckpointError(
          f'{self.workdir} holds a run with another config (changed: '
          f'{", ".join(changed)}); rerun with the same config to resume, or use '
          'a new --workdir')
    if step is not None:
      return self.ckpts.restore(step, template)
    return self.ckpts.restore_latest_good(template)

  def open(self) -> None:
    if not parallel.is_primary():
      return
    if not self.history:
      with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
        f.write(self.config.to_json(indent=2))
    self.writer = report.MetricWriter(self.workdir, self.history)

  def close(self) -> None:
    if self.writer:
      self.writer.close()
    self.ckpts.close()


def _run_configs(config: ml_collections.ConfigDict, workdir: str,
                 swept: sweep.Sweep
                 ) -> list[tuple[ml_collections.ConfigDict, str, dict[str, Any]]]:
  """(config, workdir, swept values) per run. With num_seeds = K > 1, seed s
  trains in WORKDIR/seed_s, and in a sweep in WORKDIR/<variant>/seed_s, as an
  ordinary one-seed run, so evaluate, predict, convert and plot read it as they
  read any run."""
  if config.num_seeds < 1:
    raise ConfigError(f'num_seeds must be >= 1, not {config.num_seeds}')
  if config.checkpoint_every < 1:
    raise ConfigError(f'checkpoint_every must be >= 1 (epochs), not {config.checkpoint_every}')
  if config.num_seeds == 1 and not swept:
    return [(config, workdir, {})]
  runs = []
  for values in sweep.variants(swept) if swept else [{}]:
    folder = os.path.join(workdir, sweep.variant_name(values)) if swept else workdir
    for k in range(config.num_seeds):
      one = sweep.with_values(config, values)
      one.seed, one.num_seeds = config.seed + k, 1
      runs.append((one, os.path.join(folder, f'seed_{one.seed}'), values))
  return runs


def _restore(runs: list[_Run], templates: list[TrainState]) -> list[TrainState] | None:
  """Each run's latest checkpoint, all at the same step, or None: no checkpoints."""
  restored = [run.resume(t) for run, t in zip(runs, templates)]
  if all(r is None for r in restored):
    return None
  if any(r is None for r in restored):
    missing = [run.workdir for run, r in zip(runs, restored) if r is None]
    raise checkpoint.CheckpointError(
        f'{", ".join(missing)} hold no checkpoint while the other seeds do; '
        'use a new --workdir')
  step = min(r.step for r in restored)  # a run killed between seeds' saves
  restored = [r if r.step == step else run.resume(t, step)
              for run, r, t in zip(runs, restored, templates)]
  for run, r in zip(runs, restored):
    run.history = r.meta['history']
  return [r.state for r in restored]


def train_seeds(config: ml_collections.ConfigDict, workdir: str,
                swept: sweep.Sweep | None = None) -> list[TrainResult]:
  """Trains config.num_seeds replicas of config.model at once (seeds
  config.seed, config.seed + 1, ...), evaluating after every epoch; with
  `swept` ({key: values}, `sweep.parse`), every seed of every combination of
  the values, all in one program, and a table of them in WORKDIR/sweep.csv.

  Saves a checkpoint every config.checkpoint_every epochs (and after the last)
  and, rerun with the same workdir, resumes from the latest one; a finished run
  is not trained again.
  """
  swept = swept or {}
  # The model first: an unknown or unimportable one writes nothing.
  model = models.create_model(config.model, config.init, config.precision,
                              config.bn_momentum, config.model_kwargs)
  if parallel.is_primary():
    _prepare_workdir(workdir)
  parallel.check_shared_workdir(workdir)
  ds = data.load_for(config)
  num_train = len(ds.train_images)
  batches = epoch_loop.batch_starts(num_train, config.batch_size)
  run_configs = _run_configs(config, workdir, swept)
  stacked = len(run_configs) > 1
  # Many runs are shared out among the devices; one run splits its batches.
  mesh = (parallel.runs_mesh() if stacked
          else parallel.data_mesh({size for _, size in batches}))
  replicated = parallel.replicated(mesh)
  teacher = distill.load_teacher(config, replicated)
  runs = [_Run(c, w, values, len(batches)) for c, w, values in run_configs]
  # Padding runs (copies of the last) give every device as many runs.
  padding = parallel.padded_runs(len(runs), mesh.size) - len(runs) if stacked else 0

  # One program per variant: the optimizer's state holds its hyperparameters.
  creates = {}
  for run in runs:
    creates.setdefault(str(run.values), jax.jit(functools.partial(
        create_train_state, model, run.optimizer.tx, ema=keeps_ema(run.config)),
                                                  out_shardings=replicated))
  # A torch: model starts from its class's own initialisation for the seed
  # (torch_import.initial_variables), as compare's PyTorch side does.
  states = [creates[str(run.values)](jax.random.key(run.config.seed),
                                     variables=torch_import.initial_variables(run.config))
            for run in runs]
  try:
    states = _restore(runs, states) or states
    for run, state in zip(runs, states):
      run.last_state = state
    done = len(runs[0].history)
    if done >= config.num_epochs:
      print(f'{workdir}: this run already finished ({done} epochs); nothing '
            'to do.', flush=True)
    elif done:
      print(f'Resuming from the checkpoint of epoch {done} (step '
            f'{int(states[0].step)}) in {workdir}.', flush=True)
    if done < config.num_epochs:
      for run in runs:
        run.open()
      per_run = {key: [run.values[key] for run in runs + runs[-1:] * padding]
                 for key in swept}
      steps = epoch_loop.make_steps(model, runs[0].optimizer.tx, config,
                                    len(batches), mesh, stacked, per_run, teacher)
      state = (jax.jit(stack, out_shardings=parallel.runs_sharded(mesh))(
          states + states[-1:] * padding) if stacked else states[0])
      _train_epochs(config, runs, state, ds, steps, batches, mesh)
  finally:
    for run in runs:
      run.close()
  results = []
  for run in runs:
    analysis = report.final_analysis(run.history, config.target_accuracy)
    if parallel.is_primary() and not swept:  # a sweep ends with its table
      print((f'{run.label}\n' if stacked else '')
            + report.format_analysis(analysis, report.eval_split(config),
                                     teacher.description if teacher else ''), flush=True)
    results.append(TrainResult(run.last_state, run.history, analysis))
  if swept and parallel.is_primary():
    rows = [{**run.values, 'seed': run.config.seed,
             'final3_average': r.analysis['final3_average'],
             'best_accuracy': r.analysis['best_accuracy']}
            for run, r in zip(runs, results)]
    sweep.write_csv(os.path.join(workdir, 'sweep.csv'), rows)
    print(sweep.format_table(rows, list(swept)), flush=True)
  elif stacked and parallel.is_primary():
    print(report.format_seeds([r.analysis for r in results],
                       [run.config.seed for run in runs]), flush=True)
  return results


def _train_epochs(config: ml_collections.ConfigDict, runs: list[_Run],
                  state: TrainState, ds: data.Dataset, steps: epoch_loop.Steps,
                  batches: list[tuple[int, int]], mesh: jax.sharding.Mesh) -> None:
  """The epoch loop: train, evaluate, checkpoint and log every run."""
  stacked = len(runs) > 1
  replicated = parallel.replicated(mesh)
  # The whole dataset lives on every device as uint8; batches are gathered there.
  train_images, train_labels = parallel.put((ds.train_images, ds.train_labels),
                                            replicated)
  # Runs keep their state, metrics and order on their own device; one run's
  # evaluation batches are split like its training batches.
  if stacked:
    per_run, eval_sharding, eval_devices = parallel.runs_sharded(mesh), replicated, 1
  else:
    per_run, eval_sharding, eval_devices = replicated, parallel.eval_sharded(mesh), mesh.size
  eval_set = parallel.put(parallel.eval_batches(ds.test_images, ds.test_labels,
                                                config.eval_batch_size, eval_devices),
                          eval_sharding)
  num_train = len(ds.train_images)
  permute = functools.partial(epoch_permutation, num=num_train)
  zeros = zero_metrics
  if stacked:
    permute = jax.vmap(permute, in_axes=(0, None))
    padded = len(jax.tree.leaves(state)[0])
    zeros = lambda: stack([zero_metrics()] * padded)
  permute = jax.jit(permute, out_shardings=per_run)
  zeros = jax.jit(zeros, out_shardings=per_run)
  # Every process reads every run (the logs, the checkpoints): one copy of each,
  # gathered once an epoch.
  gather = jax.jit(lambda tree: tree, out_shardings=replicated)
  per_dispatch = epoch_loop.steps_per_dispatch(config.steps_per_dispatch, mesh,
                                               len(batches))
  plan = epoch_loop.dispatch_plan(batches, config.batch_size, per_dispatch)
  lockstep = epoch_loop.needs_lockstep(mesh)
  split = report.eval_split(config)
  for epoch in range(len(runs[0].history) + 1, config.num_epochs + 1):
    start_time = time.time()
    perm = permute(state.rng, epoch)
    first_step = (epoch - 1) * len(batches)
    bar = tqdm.tqdm(total=len(batches), desc=f'Epoch {epoch}', leave=False,
                    disable=not (config.progress_bar and parallel.is_primary()),
                    mininterval=1.0)

    def progress(done: int, metrics: Metrics) -> None:
      kill_switch.after_steps(first_step + 1, first_step + done)
      bar.update(done - bar.n)
      if config.progress_bar and done % 50 < per_dispatch:
        m = jax.device_get(gather(metrics))
        m = unstack(m, 0) if stacked else m
        bar.set_postfix(loss=f'{m["loss"] / m["count"]:.4f}',
                        acc=f'{100 * m["correct"] / m["count"]:.2f}%')

    state, metrics = epoch_loop.train_epoch(steps, state, zeros(), train_images,
                                            train_labels, perm, plan, lockstep, progress)
    bar.close()
    train_totals = jax.device_get(gather(metrics))
    test_totals = jax.device_get(gather(steps.eval(state, *eval_set)))
    gathered = gather(state)
    step = int(jax.device_get(gathered.step).flat[0])
    records = []
    for k, run in enumerate(runs):
      m = unstack(train_totals, k) if stacked else train_totals
      _check_finite(int(m['first_nonfinite']), epoch, run.label)
      train_ = report.means(m)
      test = report.means(unstack(test_totals, k) if stacked else test_totals)
      records.append({
          'epoch': epoch, 'step': step,
          'train_loss': train_['loss'], 'train_accuracy': train_['accuracy'],
          'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
          'learning_rate': float(run.optimizer.learning_rate(step - 1)),
          'epoch_time_s': time.time() - start_time,
      })
    save = epoch % config.checkpoint_every == 0 or epoch == config.num_epochs
    for k, (run, record) in enumerate(zip(runs, records)):
      run.history.append(record)
      run.last_state = unstack(gathered, k) if stacked else gathered
      if save:
        run.ckpts.save(step, run.last_state, {'epoch': epoch, 'history': run.history})
      if run.writer:
        run.writer.write(record)
      if parallel.is_primary():
        print(f'Epoch {epoch:2d}/{config.num_epochs}'
              f'{f" {run.label}" if stacked else ""}: '
              f'train loss {record["train_loss"]:.4f} acc {record["train_accuracy"]:.2f}% | '
              f'{split} loss {record["test_loss"]:.4f} acc {record["test_accuracy"]:.2f}% | '
              f'lr {record["learning_rate"]:.6f} | {record["epoch_time_s"]:.1f}s',
              flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainResult:
  """Trains one seed (config.num_seeds must be 1); see `train_seeds`."""
  if config.num_seeds != 1:
    raise ConfigError('train_and_evaluate trains one seed; call train_seeds '
                      f'for num_seeds={config.num_seeds}')
  return train_seeds(config, workdir)[0]
