"""Installing beside a user's stack: Colab's TensorFlow survives `pip install`.

Builds, with uv (from its cache after the first run), environments like those the
package is installed into, and installs the package as its users do:
- Colab-like: TensorFlow (the full wheel), JAX, Flax, optax, orbax, TFDS, torch,
  matplotlib and Jupyter first; then the notebook, install cell included. Nothing
  preinstalled may change version, `pip check` stays clean, TensorFlow and TFDS
  still import, and TFDS reads MNIST there and in the test environment;
- fresh with the tfds extra: whatever TensorFlow and protobuf pip chooses reads a
  real TFDS copy of MNIST;
- bare: `pip install .` alone, with no TensorFlow: IDX files train, the TFDS
  path and export say in one line what to install;
- fresh with the export extra: every export format, run back in its runtime.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import notebook_runner

pytestmark = pytest.mark.install  # minutes: `make install-check`, which .ci/run runs
REPO = notebook_runner.REPO
# Colab's kind of preinstalled stack. torch is pinned to the test environment's
# build (the CPU one), which uv finds where pip does (PIP_FIND_LINKS). The newest
# tensorflow-metadata (1.21) is generated for protobuf 6.31+ and fails to import
# under TensorFlow 2.19's protobuf 5, so TFDS would not import at all; 1.17 does.
COLAB_STACK = ['tensorflow==2.19.*', 'jax', 'flax', 'optax', 'orbax-checkpoint',
               'tensorflow-datasets', 'tensorflow-metadata==1.17.*',
               f'torch=={importlib.metadata.version("torch")}', 'matplotlib',
               'nbclient', 'nbformat', 'ipykernel']
WATCHED = ('tensorflow', 'protobuf', 'numpy', 'jax', 'jaxlib', 'tensorflow-datasets')


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
  kwargs.setdefault('check', True)
  return subprocess.run(args, capture_output=True, text=True, **kwargs)


def _venv(path, *packages: str) -> str:
  """A virtualenv at `path` with pip and `packages`; its Python."""
  uv = shutil.which('uv', path=os.path.dirname(sys.executable))
  _run(uv, 'venv', '--quiet', '--seed', '--python', sys.executable, str(path))
  python = os.path.join(path, 'bin', 'python')
  if packages:
    links = [f'--find-links={p}' for p in os.environ.get('PIP_FIND_LINKS', '').split()]
    _run(uv, 'pip', 'install', '--quiet', '--python', python, *links, *packages)
  return python


def _versions(python: str) -> dict[str, str]:
  listed = json.loads(_run(python, '-m', 'pip', 'list', '--format=json').stdout)
  return {p['name'].lower().replace('_', '-'): p['version'] for p in listed}


def _clean_env() -> dict[str, str]:
  """This environment without the test venv's paths: the notebook and the
  commands import what the environment under test installed, on the CPU."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PIP_NO_INDEX')}
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.fixture(scope='module')
def checkout(tmp_path_factory) -> str:
  """The working tree's files as a fresh clone has them (untracked ones too), in
  a folder like Colab's /content after the notebook's clone."""
  root = tmp_path_factory.mktemp('content') / 'mnist_flax'
  files = _run('git', 'ls-files', '-co', '--exclude-standard', cwd=REPO).stdout.split()
  for name in files:
    if os.path.isfile(os.path.join(REPO, name)):
      os.makedirs(root / os.path.dirname(name), exist_ok=True)
      shutil.copy2(os.path.join(REPO, name), root / name)
  return str(root)


@pytest.fixture(scope='module')
def colab(tmp_path_factory, checkout) -> dict:
  """The Colab-like environment, before and after the notebook installed into it."""
  tmp = tmp_path_factory.mktemp('colab')
  python = _venv(tmp / 'venv', *COLAB_STACK)
  before = _versions(python)
  fake = tmp / 'fake_mnist'
  fake.mkdir()
  from tests.conftest import write_fake_mnist  # pylint: disable=g-import-not-at-top
  write_fake_mnist(fake, n_train=4096)
  content = os.path.dirname(checkout)
  run = _run(python, os.path.join(checkout, 'tests', 'notebook_runner.py'), content,
             str(fake), str(tmp / 'workdir'), cwd=content, env=_clean_env(), check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  return {'python': python, 'before': before, 'after': _versions(python)}


def test_colab_notebook_installs_without_replacing_anything(colab):
  before, after = colab['before'], colab['after']
  print('\n'.join(f'{name}: {before.get(name)} -> {after.get(name)}' for name in WATCHED))
  changed = {name: (version, after.get(name)) for name, version in before.items()
             if after.get(name) != version}
  assert not changed, f'the notebook install changed preinstalled packages: {changed}'
  assert 'mnist-flax' in after
  added = sorted(set(after) - set(before))
  print('added:', ', '.join(added))
  check = _run(colab['python'], '-m', 'pip', 'check', check=False)
  print('pip check:', check.stdout.strip())
  assert check.returncode == 0, check.stdout
  _run(colab['python'], '-c', 'import tensorflow, tensorflow_datasets')


# Run in the Colab-like environment, where TFDS has TensorFlow to read with.
_TFDS_MOCKED = """
import time
import tensorflow_datasets as tfds
from mnist_flax import data
from mnist_flax.errors import DataError
online = data._online
data._online = lambda: True
for name in sorted(data.DATASETS):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_tfds(name, {tfds_dir!r})
  assert ds.train_images.shape == (12, 28, 28) and ds.train_images.dtype == 'uint8', name
  assert ds.test_labels.dtype == 'int32' and ds.test_labels.max() < 10, name
data._online = lambda: False  # offline, nothing prepared: one line, at once
start = time.time()
try:
  data.load_tfds('mnist', {tfds_dir!r})
except DataError as e:
  assert str(e).startswith('no network and mnist is not in the TFDS data dir'), e
assert time.time() - start < 10
"""


def test_colab_tfds_path_under_mock_data(colab, tmp_path):
  _run(colab['python'], '-c', _TFDS_MOCKED.format(tfds_dir=str(tmp_path)),
       env=_clean_env(), cwd=tmp_path)


# TFDS prepares MNIST from its download; here its download manager is handed the
# local IDX files instead (uncompressed, as its download_and_extract returns them).
_PREPARE_AND_READ = """
import gzip, os, sys, shutil
import tensorflow_datasets as tfds
from mnist_flax import data
mnist_dir, tfds_dir = sys.argv[1:]
def local(self, urls):
  out = {}
  for key, url in urls.items():
    name = os.path.basename(url)[:-len('.gz')]
    out[key] = os.path.join(tfds_dir, name)
    with gzip.open(os.path.join(mnist_dir, name + '.gz')) as f, open(out[key], 'wb') as g:
      shutil.copyfileobj(f, g)
  return out
tfds.download.DownloadManager.download_and_extract = local
data._online = lambda: True
via_tfds, idx = data.load_tfds('mnist', tfds_dir), data.load_idx_dir(mnist_dir)
def examples(images, labels):  # TFDS shuffles the order when it prepares
  return sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))
for split in ('train', 'test'):
  arrays = [getattr(ds, f'{split}_{kind}') for ds in (via_tfds, idx) for kind in ('images', 'labels')]
  assert examples(*arrays[:2]) == examples(*arrays[2:]), split
import google.protobuf, tensorflow
print(f'TFDS MNIST read: protobuf {google.protobuf.__version__}, TF {tensorflow.__version__}')
"""


def test_tfds_reads_real_mnist_under_each_protobuf(colab, checkout, mnist_dir, tmp_path):
  """TFDS's MNIST reader has failed under some protobuf releases (flax#5099). A
  real prepared copy, made and read in the Colab-like environment, is read again
  where pip chose every version itself (`pip install '.[tfds]'`, fresh); both
  equal the IDX files."""
  tfds_dir = str(tmp_path / 'tfds')
  os.makedirs(tfds_dir)
  fresh = _venv(tmp_path / 'venv', f'{checkout}[tfds]')
  for python in (colab['python'], fresh):
    run = _run(python, '-c', _PREPARE_AND_READ, mnist_dir, tfds_dir, env=_clean_env(),
               check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout.strip().splitlines()[-1])


def test_bare_install_trains_on_idx_files_and_names_the_tfds_extra(
    checkout, fake_mnist_dir, tmp_path):
  python = _venv(tmp_path / 'venv', checkout)
  assert not {'tensorflow', 'tensorflow-datasets'} & set(_versions(python))
  main = [python, '-m', 'mnist_flax.main', '--config=configs/v36.py',
          '--config.num_epochs=1', '--config.progress_bar=False']
  run = _run(*main, f'--workdir={tmp_path / "idx"}', f'--config.data_dir={fake_mnist_dir}',
             '--config.verify_checksums=False', cwd=checkout, env=_clean_env(), check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Epoch  1/1' in run.stdout
  run = _run(*main, f'--workdir={tmp_path / "tfds"}', cwd=checkout, env=_clean_env(),
             check=False)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines() == [
      "error: the TFDS data path needs TensorFlow Datasets and TensorFlow (No module "
      "named 'tensorflow_datasets'): pip install 'mnist_flax[tfds]', or pass "
      "--config.data_dir=DIR with the four IDX files"]
  # Export names its extra in one line (jax.export needs flatbuffers too).
  for fmt, module in (('litert', 'tensorflow'), ('onnx', 'onnx'),
                      ('stablehlo', 'flatbuffers')):
    run = _run(python, '-m', 'mnist_flax.export', f'--workdir={tmp_path / "idx"}',
               f'--format={fmt}', f'--out={tmp_path / "m"}', cwd=checkout,
               env=_clean_env(), check=False)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"error: --format={fmt} needs {module}, in the export extra: "
        "pip install 'mnist_flax[export]'"]


def test_export_extra_installs_fresh_and_runs_every_format(
    checkout, fake_mnist_dir, tmp_path):
  """`pip install '.[export]'` into a fresh environment: pip check is clean, the
  full TensorFlow and not tensorflow-cpu, and each format and quantization is
  written, run back in its runtime and, in float32, predicts as JAX does."""
  python = _venv(tmp_path / 'venv', f'{checkout}[export]')
  versions = _versions(python)
  print(', '.join(f'{name} {versions.get(name)}' for name in (
      'tensorflow', 'ai-edge-litert', 'onnx', 'onnxruntime', 'jax', 'protobuf')))
  assert 'tensorflow' in versions and 'tensorflow-cpu' not in versions
  check = _run(python, '-m', 'pip', 'check', check=False)
  assert check.returncode == 0, check.stdout
  workdir = str(tmp_path / 'w')
  run = _run(python, '-m', 'mnist_flax.main', '--config=configs/tiny.py',
             '--config.num_epochs=1', '--config.progress_bar=False',
             f'--workdir={workdir}', f'--config.data_dir={fake_mnist_dir}',
             '--config.verify_checksums=False', cwd=checkout, env=_clean_env(),
             check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  for fmt, quantize, suffix in (('litert', 'float32', 'tflite'), ('litert', 'int8', 'tflite'),
                                ('onnx', 'float32', 'onnx'), ('onnx', 'int8', 'onnx'),
                                ('stablehlo', 'float32', 'stablehlo')):
    out = str(tmp_path / f'{fmt}_{quantize}.{suffix}')
    run = _run(python, '-m', 'mnist_flax.export', f'--workdir={workdir}',
               f'--format={fmt}', f'--quantize={quantize}', f'--out={out}',
               *(['--c_array'] if fmt == 'litert' else []),
               cwd=checkout, env=_clean_env(), check=False)
    assert run.returncode == 0, (fmt, quantize, run.stderr[-3000:])
    print(run.stdout)
    with open(out + '.json') as f:
      row = json.load(f)['rows'][1]
    if quantize == 'float32':
      assert row['differing_predictions'] == 0 and row['max_abs_logit_diff'] <= 1e-5
