"""Runs notebooks/colab.ipynb top to bottom on CPU with a tiny setting.

tests/test_notebook.py calls `execute` in the test environment; tests/test_install.py
runs this file as a script with a Colab-like environment's Python, so that the
notebook's kernel, and its install cell, run in that environment.
"""

from __future__ import annotations

import json
import os
import sys

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'colab.ipynb')


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
  return next(c for c in nb.cells if c.get('id') == cell_id)


def text(c: nbformat.NotebookNode) -> str:
  """A cell's printed output."""
  return ''.join(o.get('text', '') for o in c.outputs if o.output_type == 'stream')


def execute(start: str, data_dir: str, workdir: str) -> nbformat.NotebookNode:
  """The notebook, executed with the kernel started in `start`: a checkout, or
  a folder holding one named mnist_flax (as Colab's /content after the clone).
  One epoch on 512 images of `data_dir` (fake: no official hashes), DRIVE on."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  cell(nb, 'parameters').source = '\n'.join([
      "REPO_URL = 'https://invalid.example/mnist_flax'",  # never cloned
      'NUM_EPOCHS = 1',
      'TRAIN_EXAMPLES = 512',
      f'DATA_DIR = {data_dir!r}',
      f'WORKDIR = {workdir!r}',
      'DRIVE = True',  # off Colab: one line says so and WORKDIR stays
      "CONFIG_OVERRIDES = {'verify_checksums': False}",
  ])
  # The kernel must be this interpreter, or the run would check another environment.
  nb.cells.append(nbformat.v4.new_code_cell('import sys; print(sys.executable)'))
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': start}}).execute()
  return nb


def check(nb: nbformat.NotebookNode, workdir: str) -> None:
  """What a tiny run of the notebook shows and writes."""
  assert text(nb.cells[-1]).strip() == sys.executable
  assert 'DRIVE = True needs Colab; WORKDIR stays' in text(cell(nb, 'install'))
  assert 'Device: CPU' in text(cell(nb, 'device'))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert [h['epoch'] for h in history] == [1]
  curves = cell(nb, 'curves')
  images = [o for o in curves.outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2
  assert 'FINAL 3 EPOCHS ANALYSIS' in text(curves)


if __name__ == '__main__':
  start, data_dir, workdir = sys.argv[1:]
  check(execute(start, data_dir, workdir), workdir)
  print('notebook ran')
