"""Many runs in one program: `--sweep=KEY=V1,V2` over numeric config keys.

Every combination of the swept values, times every seed, trains at once in one
jitted program (`epoch_loop.make_steps`), the runs shared out over the devices,
each with its swept values as traced arrays: vmapped on accelerators, unrolled
on CPU. Each run keeps an ordinary workdir, WORKDIR/<variant>/seed_S.
"""

from __future__ import annotations

import csv
import itertools
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from mnist_flax.errors import ConfigError

Sweep = dict[str, list[Any]]

# Keys read only as numbers inside the jitted step or the optimizer's update, so
# a traced value per run gives the same program. Every other key changes shapes
# (model, batch size), the program's structure (schedule or optimizer name,
# clean epochs, precision), or the data.
SWEEPABLE = (
    'optimizer.learning_rate', 'optimizer.momentum', 'optimizer.weight_decay',
    'optimizer.b1', 'optimizer.b2', 'optimizer.eps',
    'schedule.max_lr', 'schedule.div_factor', 'schedule.final_div_factor',
    'schedule.base_momentum', 'schedule.max_momentum', 'schedule.gamma',
    'augment.degrees', 'augment.translate', 'augment.cutout', 'augment.scale',
    'augment.fill', 'augment.warp_p', 'augment.brightness', 'augment.contrast',
    'augment.jitter_p',
    'label_smoothing', 'ema_decay', 'distill.alpha', 'distill.temperature',
)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f'--sweep: unknown config key {key!r}; the keys are '
                        'listed in mnist_flax/config.py')
    node = node[part]
  return node


def parse(specs: Sequence[str], config: ml_collections.ConfigDict) -> Sweep:
  """{key: values} from flags such as 'schedule.max_lr=0.03,0.05'."""
  sweep: Sweep = {}
  for spec in specs:
    key, sep, values = spec.partition('=')
    if not sep or not values:
      raise ConfigError(f'--sweep={spec}: write KEY=V1,V2,... '
                        '(e.g. --sweep=schedule.max_lr=0.03,0.05)')
    kind = type(_get(config, key))
    if key not in SWEEPABLE:
      raise ConfigError(
          f'--sweep: {key} cannot vary inside one program (it changes the '
          'shapes or the program itself); sweep one of '
          f'{", ".join(SWEEPABLE)}, or run one program per value of {key}')
    if key in sweep:
      raise ConfigError(f'--sweep: {key} is given twice; list all its values once')
    try:
      parsed = [kind(v) for v in values.split(',')]
    except ValueError:
      raise ConfigError(f'--sweep={spec}: every value of {key} must be a '
                        f'number ({kind.__name__})') from None
    if len(set(parsed)) != len(parsed):
      raise ConfigError(f'--sweep={spec}: a value is repeated')
    if key == 'ema_decay' and 0 in parsed and len(parsed) > 1:
      # 0 turns the moving average off, and with it a part of the state.
      raise ConfigError('--sweep: ema_decay values must all be > 0 (0 turns '
                        'the moving average off); run ema_decay=0 on its own')
    sweep[key] = parsed
  return sweep


def with_values(config: ml_collections.ConfigDict,
                values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `values` set; values may be traced arrays."""
  out = ml_collections.ConfigDict(config.to_dict(), type_safe=not any(
      not isinstance(v, (int, float)) for v in values.values()))
  for key, value in values.items():
    *parents, last = key.split('.')
    node = out
    for part in parents:
      node = node[part]
    node[last] = value
  return out


def variants(sweep: Sweep) -> list[dict[str, Any]]:
  """Every combination of the swept values, in the order the flags give them."""
  return [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())]


def variant_name(values: Mapping[str, Any]) -> str:
  """The variant's folder name, e.g. 'schedule.max_lr=0.03,optimizer.weight_decay=5e-05'."""
  return ','.join(f'{k}={v!r}' for k, v in values.items())


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  """One row per run: the swept values, seed, final-3 average and best."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
  widths = [max(len(x) for x in column) for column in zip(header, *rows)]
  return ['  '.join(x.rjust(w) for x, w in zip(line, widths)) for line in [header, *rows]]


def format_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
  """Every run, then each variant's mean, std and worst final-3 average."""
  runs = [[*(repr(row[k]) for k in keys), str(row['seed']),
           f'{row["final3_average"]:.3f}', f'{row["best_accuracy"]:.2f}']
          for row in rows]
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in keys), []).append(row['final3_average'])
  summary = []
  for values, averages in groups.items():
    a = np.array(averages)
    summary.append([*map(repr, values), str(len(a)), f'{a.mean():.3f}',
                    f'{a.std(ddof=1):.3f}' if len(a) > 1 else '-', f'{a.min():.3f}'])
  return '\n'.join([*_columns([*keys, 'seed', 'final-3 avg', 'best'], runs), '',
                    *_columns([*keys, 'seeds', 'mean', 'std', 'worst'], summary)])
