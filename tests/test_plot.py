import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mnist_flax import plot, report, train
from mnist_flax.errors import UserError
from conftest import small_config, write_fake_mnist


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('plot')
  (root / 'data').mkdir()
  write_fake_mnist(root / 'data')
  workdirs = []
  for seed in (0, 1):
    config = small_config(root / 'data', epochs=2, seed=seed)
    workdirs.append(str(root / f's{seed}'))
    train.train_and_evaluate(config, workdirs[-1])
  return workdirs


def test_curves_and_confusion_pngs(two_runs, tmp_path):
  curves = tmp_path / 'curves.png'
  plot.plot_curves(two_runs, str(curves))
  confusion = tmp_path / 'confusion.png'
  plot.plot_confusion(two_runs[0], str(confusion))
  for path in (curves, confusion):
    with Image.open(path) as img:
      assert img.format == 'PNG' and img.size[0] > 500 and img.size[1] > 300


def test_missing_run_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match='metrics.jsonl not found'):
    plot.plot_curves([str(tmp_path)], str(tmp_path / 'x.png'))


def test_frontier_groups_seeds_by_network(two_runs, tmp_path):
  rows = plot.frontier(plot.seed_results(two_runs))
  final3 = [np.mean([h['test_accuracy'] for h in report.read_history(w)[-3:]])
            for w in two_runs]
  assert len(rows) == 1
  row = rows[0]
  assert (row['model'], row['params'], row['split'], row['seeds']) == ('v36', 6260, 'test', 2)
  assert row['mean'] == pytest.approx(np.mean(final3))
  assert row['std'] == pytest.approx(np.std(final3, ddof=1))
  assert '| `v36` | 6,260 | standard | test | 2 |' in plot.format_frontier(rows)
  out = tmp_path / 'frontier.png'
  plot.plot_frontier(rows, str(out))
  with Image.open(out) as img:
    assert img.format == 'PNG'


def test_frontier_reads_a_k_seed_workdir_as_its_seeds(two_runs, tmp_path):
  for seed, run in enumerate(two_runs):
    shutil.copytree(run, tmp_path / 'k' / f'seed_{seed}')
  assert plot.seed_results([str(tmp_path / 'k')]) == plot.seed_results(two_runs)


def test_results_file_keeps_seeds_after_their_runs_are_gone(two_runs, tmp_path):
  path = str(tmp_path / 'runs.csv')
  first, second = plot.seed_results(two_runs)
  older = {'model': 'v36:4-4-4-6-6', 'track': 'standard', 'split': 'test', 'seed': 3,
           'final3': 98.44}
  plot.merge_results(path, [older, dict(first, final3=50.0)])
  # The rerun of seed 0 replaces its row; seed 1 and the older network are added/kept.
  merged = plot.merge_results(path, [first, second])
  assert merged == plot.merge_results(path, [])
  assert sorted(map(str, merged)) == sorted(map(str, [older, first, second]))
  rows = plot.frontier(merged)
  assert [(r['model'], r['seeds']) for r in rows] == [('v36:4-4-4-6-6', 1), ('v36', 2)]
  assert rows[1] == plot.frontier(plot.seed_results(two_runs))[0]


def test_corrupt_results_file_is_a_clear_error(tmp_path):
  path = tmp_path / 'runs.csv'
  path.write_text('model,split,seed,final3\nv36,test,zero,99.4\n')
  with pytest.raises(UserError,
                     match='runs.csv, line 2: not a row of model,track,split,seed,final3'):
    plot.merge_results(str(path), [])
  assert path.read_text() == 'model,split,seed,final3\nv36,test,zero,99.4\n'
  path.write_text('model,track,split,seed,final3\nv36,teacher,test,0,99.4\n')
  with pytest.raises(UserError, match='line 2: not a row'):
    plot.merge_results(str(path), [])


def test_distilled_runs_are_their_own_series(two_runs, tmp_path):
  # The same network and seeds as a student of a teacher: config.json says so.
  for seed, run in enumerate(two_runs):
    student = tmp_path / 'kd' / f'seed_{seed}'
    shutil.copytree(run, student)
    config = json.loads((student / 'config.json').read_text())
    config['distill'] = dict(config['distill'], teacher='teacher_run', alpha=0.5)
    (student / 'config.json').write_text(json.dumps(config))
  distilled = plot.seed_results([str(tmp_path / 'kd')])
  standard = plot.seed_results(two_runs)
  assert {r['track'] for r in distilled} == {'distilled'}
  assert {r['track'] for r in standard} == {'standard'}
  # A results file from before tracks existed reads as the standard track, and a
  # distilled seed does not replace the standard run of the same network and seed.
  path = tmp_path / 'runs.csv'
  path.write_text('model,split,seed,final3\n' + ''.join(
      f"{r['model']},{r['split']},{r['seed']},{r['final3']}\n" for r in standard))
  merged = plot.merge_results(str(path), distilled)
  assert len(merged) == 4
  assert path.read_text().splitlines()[0] == 'model,track,split,seed,final3'
  rows = plot.frontier(merged)
  assert [(r['track'], r['seeds']) for r in rows] == [('standard', 2), ('distilled', 2)]
  assert rows[0]['mean'] == pytest.approx(rows[1]['mean'])
  assert '| `v36` | 6,260 | distilled | test | 2 |' in plot.format_frontier(rows)
  out = tmp_path / 'frontier.png'
  plot.plot_frontier(rows, str(out))
  with Image.open(out) as img:
    assert img.format == 'PNG'
