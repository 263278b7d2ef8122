"""notebooks/colab.ipynb, executed top to bottom on CPU with a tiny setting, so it
never rots: a renamed function or config key fails here, not on Colab."""

import json
import os
import sys

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'colab.ipynb')


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _cell(nb, cell_id):
  return next(c for c in nb.cells if c.get('id') == cell_id)


def _text(cell):
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


def test_notebook_is_valid_and_stored_without_outputs():
  nb = _read()
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code), (
      'clear the outputs before committing notebooks/colab.ipynb')
  tagged = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert [c.id for c in tagged] == ['parameters']


def test_notebook_runs_on_cpu(big_fake_mnist_dir, tmp_path, monkeypatch):
  workdir = tmp_path / 'workdir'
  nb = _read()
  _cell(nb, 'parameters').source = '\n'.join([
      "REPO_URL = 'https://invalid.example/never-cloned'",
      'NUM_EPOCHS = 1',
      'TRAIN_EXAMPLES = 512',
      f'DATA_DIR = {big_fake_mnist_dir!r}',
      f'WORKDIR = {str(workdir)!r}',
      "CONFIG_OVERRIDES = {'verify_checksums': False}",  # fake data: no official hashes
  ])
  # The kernel must be this interpreter, or the test would check another environment.
  nb.cells.append(nbformat.v4.new_code_cell('import sys; print(sys.executable)'))

  # The kernel inherits the environment: CPU even on a GPU machine, the checkout
  # importable as in pytest, and any pip install the notebook should have skipped
  # fails at once instead of reaching for the network.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [REPO, *filter(None, [os.environ.get('PYTHONPATH')])]))
  monkeypatch.setenv('PIP_NO_INDEX', '1')
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()

  assert _text(nb.cells[-1]).strip() == sys.executable
  assert 'Device: CPU' in _text(_cell(nb, 'device'))
  with open(workdir / 'metrics.jsonl') as f:
    history = [json.loads(line) for line in f]
  assert [h['epoch'] for h in history] == [1]
  curves = _cell(nb, 'curves')
  images = [o for o in curves.outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2
  assert 'FINAL 3 EPOCHS ANALYSIS' in _text(curves)
