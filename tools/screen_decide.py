"""Applies a screen's decision rule (the screens of docs/research.md) to sweeps.

  python tools/screen_decide.py KEY INCUMBENT_WORKDIR VALUE WORKDIR... > decision.json

Each WORKDIR is a validation sweep over one config KEY (its sweep.csv); an arm
is one (model, value) pair and its seeds. The incumbent arm is INCUMBENT_WORKDIR's
model at KEY=VALUE. The arm with the highest mean final-3 wins if its mean
beats the incumbent's by at least one standard error of the difference,
sqrt(s_a^2 / n_a + s_i^2 / n_i); otherwise the incumbent stays. Prints every
arm and the decision as JSON; the last line is 'MODEL VALUE KIND' of the decision,
KIND 'incumbent' or 'challenger'.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import statistics
import sys

from mnist_flax import checkpoint


def arms(key: str, workdir: str) -> dict[tuple[str, float], list[float]]:
  """(model, value of `key`) -> final-3 averages of its seeds, from a sweep workdir."""
  run = sorted(glob.glob(os.path.join(workdir, '*', 'seed_*')))[0]
  model = checkpoint.load_config(run).model
  out: dict[tuple[str, float], list[float]] = {}
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    for row in csv.DictReader(f):
      out.setdefault((model, float(row[key])), []).append(float(row['final3_average']))
  return out


def main() -> None:
  key, incumbent_dir, value, *others = sys.argv[1:]
  table: dict[tuple[str, float], list[float]] = {}
  for workdir in [incumbent_dir, *others]:
    table.update(arms(key, workdir))
  stats = {arm: (statistics.mean(v), statistics.stdev(v), len(v))
           for arm, v in table.items()}
  incumbent = (next(iter(arms(key, incumbent_dir)))[0], float(value))
  best = max(stats, key=lambda arm: stats[arm][0])
  (m_b, s_b, n_b), (m_i, s_i, n_i) = stats[best], stats[incumbent]
  margin = (s_b ** 2 / n_b + s_i ** 2 / n_i) ** 0.5
  chosen = best if m_b - m_i >= margin else incumbent
  print(json.dumps({
      'key': key,
      'arms': [{'model': m, key: v, 'seeds': n, 'mean': mean, 'std': std,
                'worst': min(table[(m, v)]), 'final3': table[(m, v)]}
               for (m, v), (mean, std, n) in stats.items()],
      'incumbent': incumbent, 'best': best, 'margin': margin,
      'difference': m_b - m_i, 'chosen': chosen}, indent=1))
  model, chosen_value = chosen
  print(model, int(chosen_value) if chosen_value.is_integer() else chosen_value,
        'incumbent' if chosen == incumbent else 'challenger')


if __name__ == '__main__':
  main()
