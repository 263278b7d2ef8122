"""How much of a writer-split difference is the held-out writers' own.

  python tools/writer_bootstrap.py [--also_test] BASE ARM... > writers.json

Each argument is an arm: a folder of seed_N runs trained with
--config.validation_split=writers (the same validation_examples in all). Each
finished seed's last checkpoint predicts the held-out writers' digits; for each
ARM against BASE it prints the accuracy difference (mean over the common seeds)
and its standard error when the held-out writers themselves are resampled
(a bootstrap of whole writers within each NIST series), beside the share of the
difference that the three writers contributing most to it make. With
--also_test it also prints each arm's accuracy per series on the test set: for
checking the judge itself (docs/research.md), never for choosing an arm.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os

import jax
import numpy as np

from mnist_flax import checkpoint, data, jit_steps, report, writers

DRAWS = 2000
TEST_FILE = 'qmnist-test-labels-idx2-int.gz'  # beside the training file; its first 10,000 rows are MNIST's test set


def bootstrap_se(difference: np.ndarray, writer: np.ndarray, series: np.ndarray,
                 draws: int = DRAWS, seed: int = 0) -> float:
  """The standard error of difference.mean() (per image, e.g. correct_a -
  correct_b) when whole writers are redrawn with replacement within each series."""
  rng = np.random.default_rng(seed)
  groups = {s: [np.flatnonzero((series == s) & (writer == w))
                for w in np.unique(writer[series == s])] for s in np.unique(series)}
  sums = {s: np.array([difference[g].sum() for g in gs]) for s, gs in groups.items()}
  sizes = {s: np.array([len(g) for g in gs]) for s, gs in groups.items()}
  means = []
  for _ in range(draws):
    total = count = 0
    for s in groups:
      pick = rng.integers(len(groups[s]), size=len(groups[s]))
      total += sums[s][pick].sum()
      count += sizes[s][pick].sum()
    means.append(total / count)
  return float(np.std(means))


def test_series(train_file: str, labels: np.ndarray) -> np.ndarray:
  """The NIST series of each MNIST test digit, from QMNIST's test file beside
  `train_file`, checked against the test labels."""
  with open(os.path.join(os.path.dirname(train_file), TEST_FILE), 'rb') as f:
    content = gzip.decompress(f.read())
  rows = np.frombuffer(content, '>i4', offset=12).reshape(-1, 8)[:len(labels)]
  if not np.array_equal(rows[:, 0], labels):
    raise SystemExit(f'error: {TEST_FILE} does not list the MNIST test labels in order')
  return rows[:, 1]


def correct(run: str, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per image of each set in `images`, whether the run's last checkpoint
  classifies it right."""
  history = report.read_history(run)
  config, model, restored = checkpoint.load_checkpoint(run, str(history[-1]['step']))
  variables = restored.state.eval_variables
  apply = jax.jit(lambda x: model.apply(
      variables, jit_steps.normalize(x, config.mean, config.std), train=False))
  size = config.eval_batch_size
  return {name: np.concatenate([np.asarray(apply(x[i:i + size])).argmax(1)
                                for i in range(0, len(x), size)]) == labels
          for name, (x, labels) in images.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--also_test', action='store_true',
                      help="also each arm's test accuracy per series (to check the judge only)")
  parser.add_argument('--data_dir', default=None, help="override the runs' data_dir")
  parser.add_argument('arms', nargs='+', help='BASE ARM...: folders of seed_N runs')
  args = parser.parse_args()
  runs = {arm: report.finished_seeds(arm) for arm in args.arms}
  common = sorted(set.intersection(*(set(r) for r in runs.values())))
  if not common:
    raise SystemExit('error: no seed has finished in every arm')
  split = lambda c: (c.validation_split, c.validation_examples, c.writers_file)
  config = checkpoint.load_config(runs[args.arms[0]][common[0]])
  if config.validation_split != 'writers':
    raise SystemExit('error: the runs must hold out writers (--config.validation_split=writers)')
  for by_seed in runs.values():
    for run in by_seed.values():
      if split(checkpoint.load_config(run)) != split(config):
        raise SystemExit(f'error: {run} holds out other images than '
                         f'{runs[args.arms[0]][common[0]]}; compare runs of one split')
  config.data_dir = args.data_dir or config.data_dir
  # The held-out writers as data.load takes them out of training, with their series and writers.
  mnist = data.load(config.dataset, config.data_dir, verify=config.verify_checksums)
  train_file = writers.find_file(config.data_dir, config.writers_file)
  who = writers.read(train_file, mnist.train_labels)
  held = writers.held_out(who, config.validation_examples)
  # A writer is the pair (series, ID).
  series, writer = who[held, 0], who[held, 0] * 1_000_000 + who[held, 1]
  images = {'held_out': (mnist.train_images[held], mnist.train_labels[held])}
  if args.also_test:
    images['test'] = (mnist.test_images, mnist.test_labels)
    series_of_test = test_series(train_file, mnist.test_labels)
  out, right = {'seeds': common, 'arms': {}}, {}
  for arm, by_seed in runs.items():
    results = [correct(by_seed[s], images) for s in common]
    right[arm] = np.mean([r['held_out'] for r in results], axis=0)
    entry = {f'held_out_series_{s}': 100 * float(right[arm][series == s].mean())
             for s in np.unique(series)}
    entry['held_out'] = 100 * float(right[arm].mean())
    if args.also_test:
      test = np.mean([r['test'] for r in results], axis=0)
      entry.update({f'test_series_{s}': 100 * float(test[series_of_test == s].mean())
                    for s in np.unique(series_of_test)})
    out['arms'][arm] = entry
  base = args.arms[0]
  out['minus_base'] = {}
  for arm in args.arms[1:]:
    difference = right[arm] - right[base]
    by_writer = {w: difference[writer == w].sum() for w in np.unique(writer)}
    top = sorted(by_writer.values(), key=abs, reverse=True)[:3]
    out['minus_base'][arm] = {
        'difference': 100 * float(difference.mean()),
        'writer_bootstrap_se': 100 * bootstrap_se(difference, writer, series),
        'top_3_writers_share': float(sum(top) / difference.sum()) if difference.sum() else None}
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
