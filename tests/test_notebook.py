"""notebooks/colab.ipynb, executed top to bottom on CPU with a tiny setting, so it
never rots: a renamed function or config key fails here, not on Colab."""

import pytest

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

from tests import notebook_runner  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_notebook_is_valid_and_stored_without_outputs():
  nb = nbformat.read(notebook_runner.NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code), (
      'clear the outputs before committing notebooks/colab.ipynb')
  tagged = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert [c.id for c in tagged] == ['parameters']


def test_notebook_runs_on_cpu(big_fake_mnist_dir, tmp_path, monkeypatch):
  # The kernel inherits the environment: CPU even on a GPU machine, the checkout
  # importable as in pytest, and any pip install the notebook should have skipped
  # fails at once instead of reaching for the network.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', notebook_runner.REPO)
  monkeypatch.setenv('PIP_NO_INDEX', '1')
  workdir = str(tmp_path / 'workdir')
  notebook_runner.check(
      notebook_runner.execute(notebook_runner.REPO, big_fake_mnist_dir, workdir), workdir)
