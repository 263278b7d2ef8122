"""What a run reports: per-epoch means, the seeds' final-3 analysis, and the
metrics files (metrics.jsonl and TensorBoard events).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np
import ml_collections

from mnist_flax.errors import UserError
from mnist_flax.jit_steps import Metrics


def means(totals: Metrics) -> dict[str, float]:
  """Mean loss, accuracy (%), correct and total count from summed metrics."""
  return {'loss': float(totals['loss'] / totals['count']),
          'accuracy': float(100 * totals['correct'] / totals['count']),
          'correct': int(totals['correct']), 'count': int(totals['count'])}


def final_analysis(history: list[dict[str, Any]], target: float) -> dict[str, Any]:
  """The seeds' "final 3 epochs analysis", plus the best epoch."""
  last3 = [h['test_accuracy'] for h in history[-3:]]
  best = max(history, key=lambda h: h['test_accuracy'])
  average = float(np.mean(last3))
  # Rounded: 99.38, 99.41 and 99.41 average to 99.39999999999999 in floats,
  # and an average printed as the target meets it.
  return {'final3': last3, 'final3_average': average,
          'best_accuracy': best['test_accuracy'], 'best_epoch': best['epoch'],
          'target': target, 'success': round(average, 9) >= target}


def eval_split(config: ml_collections.ConfigDict) -> str:
  """What the per-epoch evaluation measures: 'validation' or 'test'."""
  return 'validation' if config.validation_examples else 'test'


def format_analysis(result: dict[str, Any], split: str = 'test',
                    distilled: str = '') -> str:
  """The analysis as printed; `distilled` (`distill.Teacher.description`)
  labels a run of the distillation track."""
  status = 'SUCCESS' if result['success'] else 'FAIL'
  return '\n'.join([
      '=' * 50, 'FINAL 3 EPOCHS ANALYSIS',
      *([f'Separate track: {distilled}'] if distilled else []),
      f'{split.capitalize()} accuracies: {[round(a, 2) for a in result["final3"]]}',
      f'Average accuracy: {result["final3_average"]:.3f}%',
      f'Best accuracy: {result["best_accuracy"]:.2f}% (epoch {result["best_epoch"]})',
      f'STATUS: {status} (target: average >= {result["target"]:.2f}%)',
      '=' * 50])


def format_seeds(analyses: list[dict[str, Any]], seeds: list[int]) -> str:
  """Per-seed final-3 averages and best, with their mean and std."""
  averages = np.array([a['final3_average'] for a in analyses])
  lines = ['seed  final-3 avg   best']
  lines += [f'{s:4d}  {a["final3_average"]:10.3f}%  {a["best_accuracy"]:.2f}%'
            for s, a in zip(seeds, analyses)]
  lines.append(f'mean  {averages.mean():10.3f}%  (std {averages.std(ddof=1):.3f}, '
               f'{len(seeds)} seeds)')
  return '\n'.join(lines)


class MetricWriter:
  """Per-epoch metrics to WORKDIR/metrics.jsonl and TensorBoard event files.

  metrics.jsonl is rewritten from `history` on open, so after a resume it holds
  exactly the epochs of the checkpoint resumed from, then the new ones.
  """

  def __init__(self, workdir: str, history: list[dict[str, Any]]):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'w')
    for record in history:
      self._jsonl.write(json.dumps(record) + '\n')
    self._tb = SummaryWriter(workdir)

  def write(self, record: dict[str, Any]) -> None:
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ('epoch', 'step'):
        self._tb.add_scalar(key, value, record['epoch'])
    self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


def read_history(workdir: str) -> list[dict]:
  """A finished or running workdir's per-epoch records (metrics.jsonl)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  try:
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    raise UserError(f'{path} not found: --workdir must be a directory that '
                    'mnist_flax.main trained in') from None


def finished_seeds(workdir: str) -> dict[int, str]:
  """seed -> run, for the seed_S runs in `workdir` (a K-seed workdir, or a
  folder of one-seed runs) that have recorded every epoch of their config."""
  runs = {}
  for path in glob.glob(os.path.join(workdir, 'seed_*', 'metrics.jsonl')):
    run = os.path.dirname(path)
    with open(os.path.join(run, 'config.json')) as f:
      epochs = json.load(f)['num_epochs']
    if len(read_history(run)) >= epochs:
      runs[int(run.rsplit('_', 1)[1])] = run
  return runs


def seed_dirs(workdirs: list[str]) -> list[str]:
  """The runs in `workdirs`: a K-seed workdir stands for its seed_S runs."""
  runs = []
  for workdir in workdirs:
    seeds = sorted(glob.glob(os.path.join(workdir, 'seed_*', 'metrics.jsonl')))
    runs += [os.path.dirname(p) for p in seeds] or [workdir]
  return runs
