"""Summarises training workdirs as JSON: accuracy per seed, epoch times, compile.

  python tools/run_summary.py WORKDIR... > summary.json

A K-seed workdir (seed_S/ inside) is one program: its epoch times are shared by
its seeds. The first epoch's time includes compilation; `compile_s` is its
excess over the median of the later epochs, and `train_s` the rest of the
total. `to_target_s` is the training time (compilation excluded) up to the end
of the first epoch at or above the target accuracy, per seed (None: never).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

from mnist_flax import checkpoint, report


def summarise(workdir: str) -> dict[str, Any]:
  """One program's seeds, accuracy and times."""
  runs = report.seed_dirs([workdir])
  config = checkpoint.load_config(runs[0])
  histories = [report.read_history(run) for run in runs]
  times = [h['epoch_time_s'] for h in histories[0]]
  later = statistics.median(times[1:]) if len(times) > 1 else 0.0
  compile_s = times[0] - later
  analyses = [report.final_analysis(h, config.target_accuracy) for h in histories]
  finals = [a['final3_average'] for a in analyses]

  def to_target(history: list[dict[str, Any]]) -> float | None:
    for i, record in enumerate(history):
      if record['test_accuracy'] >= config.target_accuracy:
        return sum(times[:i + 1]) - compile_s
    return None

  return {
      'workdir': workdir, 'model': config.model, 'precision': config.precision,
      'epochs': len(times), 'seeds': [checkpoint.load_config(r).seed for r in runs],
      'final3': finals, 'final3_mean': statistics.mean(finals),
      'final3_std': statistics.stdev(finals) if len(finals) > 1 else None,
      'best': [a['best_accuracy'] for a in analyses],
      'epoch_s': times, 'compile_s': compile_s, 'train_s': sum(times) - compile_s,
      'to_target_s': [to_target(h) for h in histories],
  }


if __name__ == '__main__':
  json.dump([summarise(w) for w in sys.argv[1:] if os.path.isdir(w)], sys.stdout, indent=1)
  print()
