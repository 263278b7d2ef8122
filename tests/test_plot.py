import pytest
from PIL import Image

from mnist_flax import plot, train
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
