"""Applies a paired screen's rule (docs/research.md) to finished runs.

  python tools/paired_decide.py [--margin=2] INCUMBENT CHALLENGER... > decision.json

Each argument is an arm: a folder of seed_N run workdirs (mnist_flax.main
--workdir=ARM/seed_N), named by its folder. Seeds are paired by number; only
seeds every arm has finished count. The challenger with the highest mean
final-3 replaces the incumbent if it beats it by `margin` standard errors of
the paired difference; then, among the arms within one such standard error of
that winner, the one with the fastest median epoch (its runs' own epoch_time_s)
is taken. Prints every arm, every paired difference and the decision as JSON;
the last line is the chosen arm's folder.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

from mnist_flax import report


def seeds(arm: str) -> dict[int, dict]:
  """seed -> {'final3', 'best', 'epoch_s'} for each run of `arm` with all its epochs."""
  out = {}
  for seed, run in report.finished_seeds(arm).items():
    history = report.read_history(run)
    analysis = report.final_analysis(history, target=99.4)
    out[seed] = {'final3': analysis['final3_average'], 'best': analysis['best_accuracy'],
                 'epoch_s': statistics.median(h['epoch_time_s'] for h in history)}
  return out


def paired(a: dict[int, dict], b: dict[int, dict], common: list[int]) -> tuple[float, float]:
  """Mean and standard error of a's final-3 minus b's over the `common` seeds."""
  diffs = [a[s]['final3'] - b[s]['final3'] for s in common]
  return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--margin', type=float, default=2.0,
                      help='standard errors of the paired difference a challenger must win by')
  parser.add_argument('arms', nargs='+', help='INCUMBENT CHALLENGER...: folders of seed_N runs')
  args = parser.parse_args()
  if len(args.arms) < 2:
    sys.exit('error: name the incumbent and at least one challenger')
  runs = {arm.rstrip('/'): seeds(arm) for arm in args.arms}
  common = sorted(set.intersection(*(set(r) for r in runs.values())))
  if len(common) < 2:
    sys.exit(f'error: only seeds {common} have finished in every arm; a paired '
             'standard error needs at least 2')
  incumbent, *challengers = runs
  mean = {arm: statistics.mean(r[s]['final3'] for s in common) for arm, r in runs.items()}
  best = max(challengers, key=mean.get)
  difference, se = paired(runs[best], runs[incumbent], common)
  winner = best if difference >= args.margin * se else incumbent

  def near(arm: str) -> bool:
    if arm == winner:
      return True
    d, s = paired(runs[arm], runs[winner], common)
    return abs(d) <= s

  epoch_s = {arm: statistics.median(r[s]['epoch_s'] for s in common) for arm, r in runs.items()}
  chosen = min(filter(near, runs), key=epoch_s.get)
  print(json.dumps({
      'seeds': common, 'margin_se': args.margin,
      'arms': [{'arm': arm, 'mean': mean[arm],
                'std': statistics.stdev(r[s]['final3'] for s in common),
                'worst': min(r[s]['final3'] for s in common),
                'median_epoch_s': epoch_s[arm],
                'final3': {s: r[s]['final3'] for s in common},
                'minus_incumbent': dict(zip(('mean', 'se'),
                                            paired(r, runs[incumbent], common)))
                if arm != incumbent else None}
               for arm, r in runs.items()],
      'best_challenger': best, 'winner': winner,
      'within_one_se_of_winner': [a for a in runs if near(a)], 'chosen': chosen}, indent=1))
  print(chosen)


if __name__ == '__main__':
  main()
