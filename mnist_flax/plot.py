"""PNG plots of finished runs.

python -m mnist_flax.plot --workdir=DIR [--workdir=DIR2 ...] --out=curves.png
python -m mnist_flax.plot --workdir=DIR --kind=confusion --out=confusion.png
python -m mnist_flax.plot [--workdir=DIR ...] --kind=frontier [--results=runs.csv] --out=frontier.png
"""

from __future__ import annotations

import csv
import os
import sys

from absl import flags
import matplotlib

matplotlib.use('Agg')  # files only; no display needed
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from mnist_flax import architectures, checkpoint, cli, evaluate, report
from mnist_flax.errors import UserError

# What the seed documents report (final-3 average), drawn beside our runs.
SEEDS_REPORTED = {'v36': 99.420, 'model1': 99.180, 'model2': 99.277,
                  'model3': 99.483}


def plot_curves(workdirs: list[str], out: str, target: float = 99.4) -> None:
  """Test accuracy per epoch of several runs, with the target line."""
  fig, ax = plt.subplots(figsize=(8, 5))
  lowest = target
  for workdir in workdirs:
    history = report.read_history(workdir)
    acc = [h['test_accuracy'] for h in history]
    ax.plot([h['epoch'] for h in history], acc, marker='o', markersize=3,
            label=os.path.basename(os.path.normpath(workdir)))
    lowest = min(lowest, *acc[len(acc) // 3:]) if acc else lowest
  ax.axhline(target, color='black', linestyle='--', linewidth=1,
             label=f'{target:.2f}%')
  ax.set_ylim(max(lowest - 0.3, 90), 100)
  ax.set_xlabel('epoch')
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def plot_confusion(workdir: str, out: str, which: str = 'latest',
                   max_errors: int = 48) -> None:
  """The test set's confusion matrix and the misclassified digits."""
  _, logits, ds = evaluate.evaluate_checkpoint(workdir, which)
  labels, predicted = ds.test_labels, logits.argmax(1)
  matrix = np.zeros((10, 10), int)
  np.add.at(matrix, (labels, predicted), 1)
  wrong = np.nonzero(labels != predicted)[0]

  cols = 8
  rows = max(1, -(-min(len(wrong), max_errors) // cols))
  fig = plt.figure(figsize=(15, max(6, 1.4 * rows)))
  grid = fig.add_gridspec(rows, 2 + cols, width_ratios=[4, 0.3] + [0.55] * cols)
  ax = fig.add_subplot(grid[:, 0])
  ax.imshow(np.log1p(matrix), cmap='Blues')
  for t in range(10):
    for p in range(10):
      if matrix[t, p]:
        ax.text(p, t, matrix[t, p], ha='center', va='center', fontsize=7,
                color='white' if t == p else 'black')
  ax.set(xticks=range(10), yticks=range(10), xlabel='predicted', ylabel='true',
         title=f'{len(wrong)} errors in {len(labels)} test images '
               f'({100 * (1 - len(wrong) / len(labels)):.2f}% correct)')
  for k, i in enumerate(wrong[:max_errors]):
    sub = fig.add_subplot(grid[k // cols, 2 + k % cols])
    sub.imshow(ds.test_images[i], cmap='gray')
    sub.set_title(f'{labels[i]}→{predicted[i]}', fontsize=8)
    sub.axis('off')
  fig.savefig(out, dpi=110, bbox_inches='tight')
  plt.close(fig)


RESULT_FIELDS = ('model', 'track', 'split', 'seed', 'final3')
# A run's track: 'distilled' (a student of distill.teacher, whose training is
# extra compute, so never mixed with the rest) or 'standard'.
TRACKS = ('standard', 'distilled')


def seed_results(workdirs: list[str]) -> list[dict]:
  """One row per run in `workdirs`: network, track, evaluation split, seed,
  final-3 average."""
  rows = []
  for run in report.seed_dirs(workdirs):
    config = checkpoint.load_config(run)
    final3 = report.final_analysis(report.read_history(run), config.target_accuracy)
    rows.append({'model': config.model,
                 'track': 'distilled' if config.distill.alpha > 0 else 'standard',
                 'split': report.eval_split(config),
                 'seed': int(config.seed),
                 # float32 accuracies: 4 decimals hold all there is (1/300 %).
                 'final3': round(final3['final3_average'], 4)})
  return rows


def _run_key(row: dict) -> tuple[str, str, str, int]:
  return row['model'], row['track'], row['split'], row['seed']


def merge_results(path: str, rows: list[dict]) -> list[dict]:
  """`rows` merged into the CSV file at `path` (a row of the same network, split,
  track and seed replaced), written back when there are any, and the union
  returned. The file keeps the per-seed figures after the run directories are
  gone; a file without a track column (written before distillation) is all
  'standard'."""
  merged = {}
  if os.path.exists(path):
    with open(path, newline='') as f:
      for line, r in enumerate(csv.DictReader(f), start=2):
        try:
          row = {'model': r['model'], 'track': r.get('track') or 'standard',
                 'split': r['split'], 'seed': int(r['seed']), 'final3': float(r['final3'])}
          if row['track'] not in TRACKS:
            raise ValueError(row['track'])
        except (KeyError, TypeError, ValueError):
          raise UserError(f'{path}, line {line}: not a row of {",".join(RESULT_FIELDS)}; '
                          'fix the line or give another --results file') from None
        merged[_run_key(row)] = row
  merged.update((_run_key(row), row) for row in rows)
  ordered = sorted(merged.values(), key=_run_key)
  if rows:
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, RESULT_FIELDS, lineterminator='\n')
      writer.writeheader()
      writer.writerows(ordered)
  return ordered


def frontier(results: list[dict]) -> list[dict]:
  """Per-seed results grouped by network, track and evaluation split, fewest
  parameters first: each group's parameter count and the mean and std of its
  final-3 averages."""
  groups: dict[tuple[str, str, str], list[float]] = {}
  for r in results:
    groups.setdefault((r['model'], r['track'], r['split']), []).append(r['final3'])
  rows = [{'model': model, 'track': track, 'split': split,
           'params': architectures.param_count(architectures.get_network(model)),
           'seeds': len(values), 'mean': float(np.mean(values)),
           'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
          for (model, track, split), values in groups.items()]
  return sorted(rows, key=lambda r: (r['params'], r['track'] != 'standard', r['split']))


def format_frontier(rows: list[dict]) -> str:
  """The frontier as a Markdown table."""
  lines = ['| network | params | track | split | seeds | final-3 average, mean | std |',
           '| --- | ---: | --- | --- | ---: | ---: | ---: |']
  lines += [f"| `{r['model']}` | {r['params']:,} | {r['track']} | {r['split']} | {r['seeds']} | "
            f"{r['mean']:.3f}% | {r['std']:.3f} |" for r in rows]
  return '\n'.join(lines)


def plot_frontier(rows: list[dict], out: str, target: float = 99.4) -> None:
  """Parameters against mean final-3 accuracy (std bars), one series per track
  and split, with the seeds' own reported figures on the same axes."""
  fig, ax = plt.subplots(figsize=(10, 6))
  # Labels go left of test points and right of validation's, a distilled
  # label above its point; labels of one series within 400 parameters of each
  # other stack downwards, so that networks of the same size stay readable.
  series = (('standard', 'test', 'o', '', (-10, -14)),
            ('standard', 'validation', 's', '', (10, 2)),
            ('distilled', 'test', 'D', ', distilled (teacher trained separately)', (-10, 6)),
            ('distilled', 'validation', 'd', ', distilled (teacher trained separately)', (10, 6)))
  for track, split, marker, what, (dx, dy) in series:
    group = [r for r in rows if r['track'] == track and r['split'] == split]
    if group:
      ax.errorbar([r['params'] for r in group], [r['mean'] for r in group],
                  yerr=[r['std'] for r in group], fmt=marker, capsize=4,
                  label=f'mnist_flax{what}, {split} (mean ± std over seeds)')
      placed: list[int] = []
      for r in sorted(group, key=lambda r: (r['params'], -r['mean'])):
        below = sum(abs(p - r['params']) < 400 for p in placed)
        placed.append(r['params'])
        ax.annotate(f"{r['model']} ({r['seeds']})", (r['params'], r['mean']),
                    textcoords='offset points', fontsize=7, ha='right' if dx < 0 else 'left',
                    xytext=(dx, dy - 11 * below))
  ax.scatter([architectures.param_count(architectures.get_network(m))
              for m in SEEDS_REPORTED], list(SEEDS_REPORTED.values()),
             marker='x', color='gray', label="the seeds' reported runs (one each)")
  ax.axhline(target, color='black', linestyle='--', linewidth=1, label=f'{target:.2f}%')
  ax.axvline(architectures.PARAM_LIMIT, color='red', linewidth=1, alpha=0.5)
  ax.set_xlim(0, architectures.PARAM_LIMIT * 1.05)
  ax.set_xlabel('trainable parameters')
  ax.set_ylabel('final-3-epoch average accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def _define_flags() -> None:
  flags.DEFINE_multi_string('workdir', None, 'Run directories (repeat for several).')
  flags.DEFINE_string('out', None, 'The PNG file to write.')
  flags.DEFINE_enum('kind', 'curves', ['curves', 'confusion', 'frontier'],
                    'What to plot: test accuracy per epoch, the confusion matrix '
                    'and misclassified digits, or params against accuracy.')
  flags.DEFINE_string('checkpoint', 'latest', "For confusion: 'latest', 'best' or a step.")
  flags.DEFINE_string('results', None, 'For frontier: a CSV of per-seed results that '
                      'the --workdir runs are merged into and that is plotted whole.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    if not f.workdir and not (f.kind == 'frontier' and f.results):
      raise UserError(f'--kind={f.kind} needs --workdir=DIR'
                      f'{" or --results=FILE" if f.kind == "frontier" else ""}')
    if f.kind == 'curves':
      plot_curves(f.workdir, f.out)
    elif f.kind == 'confusion':
      plot_confusion(f.workdir[0], f.out, f.checkpoint)
    else:
      results = seed_results(f.workdir or [])
      if f.results:
        results = merge_results(f.results, results)
      rows = frontier(results)
      plot_frontier(rows, f.out)
      print(format_frontier(rows))
  except UserError as e:
    sys.exit(f'error: {e}')
  print(f.out)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
