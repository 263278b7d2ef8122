"""Applies a screen's decision rule (docs/research.md, issue 21's screens) to sweeps.

  python tools/screen_decide.py INCUMBENT_WORKDIR CUTOUT0 WORKDIR... > decision.json

Each WORKDIR is a validation sweep over augment.cutout (its sweep.csv); an arm
is one (model, cutout) pair and its seeds. The incumbent arm is INCUMBENT_WORKDIR's
model at cutout CUTOUT0. The arm with the highest mean final-3 wins if its mean
beats the incumbent's by at least one standard error of the difference,
sqrt(s_a^2 / n_a + s_i^2 / n_i); otherwise the incumbent stays. Prints every
arm and the decision as JSON; the last line is 'MODEL CUTOUT' of the decision.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import statistics
import sys

from mnist_flax import checkpoint


def arms(workdir: str) -> dict[tuple[str, int], list[float]]:
  """(model, cutout) -> final-3 averages of its seeds, from a sweep workdir."""
  run = sorted(glob.glob(os.path.join(workdir, '*', 'seed_*')))[0]
  model = checkpoint.load_config(run).model
  out: dict[tuple[str, int], list[float]] = {}
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    for row in csv.DictReader(f):
      out.setdefault((model, int(row['augment.cutout'])), []).append(
          float(row['final3_average']))
  return out


def main() -> None:
  incumbent_dir, cutout0, *others = sys.argv[1:]
  table: dict[tuple[str, int], list[float]] = {}
  for workdir in [incumbent_dir, *others]:
    table.update(arms(workdir))
  stats = {arm: (statistics.mean(v), statistics.stdev(v), len(v))
           for arm, v in table.items()}
  incumbent = (next(iter(arms(incumbent_dir)))[0], int(cutout0))
  best = max(stats, key=lambda arm: stats[arm][0])
  (m_b, s_b, n_b), (m_i, s_i, n_i) = stats[best], stats[incumbent]
  margin = (s_b ** 2 / n_b + s_i ** 2 / n_i) ** 0.5
  chosen = best if m_b - m_i >= margin else incumbent
  print(json.dumps({
      'arms': [{'model': m, 'cutout': c, 'seeds': n, 'mean': mean, 'std': std,
                'worst': min(table[(m, c)]), 'final3': table[(m, c)]}
               for (m, c), (mean, std, n) in stats.items()],
      'incumbent': incumbent, 'best': best, 'margin': margin,
      'difference': m_b - m_i, 'chosen': chosen}, indent=1))
  print(*chosen)


if __name__ == '__main__':
  main()
