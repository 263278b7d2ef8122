import gzip
import os
import shutil
import sys

import numpy as np
import pytest

from mnist_flax import data
from mnist_flax.errors import ConfigError, DataError


def _idx(array: np.ndarray) -> bytes:
  header = (0x800 + array.ndim).to_bytes(4, 'big')
  header += b''.join(d.to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_dir(tmp_path):
  """Small IDX files: train images raw, the rest gzip-compressed."""
  rng = np.random.default_rng(0)
  arrays = {'train_images': rng.integers(0, 256, (50, 28, 28)),
            'train_labels': rng.integers(0, 10, 50),
            'test_images': rng.integers(0, 256, (20, 28, 28)),
            'test_labels': rng.integers(0, 10, 20)}
  for key, array in arrays.items():
    content = _idx(array)
    if key == 'train_images':
      (tmp_path / data.FILES[key]).write_bytes(content)
    else:
      (tmp_path / (data.FILES[key] + '.gz')).write_bytes(gzip.compress(content))
  return tmp_path, arrays


def test_loads_raw_and_gzip_files(fake_dir):
  path, arrays = fake_dir
  ds = data.load_idx_dir(str(path), verify=False)
  for key, array in arrays.items():
    np.testing.assert_array_equal(getattr(ds, key), array)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32


def test_validation_split_holds_out_the_last_training_images(fake_dir):
  path, arrays = fake_dir
  ds = data.load('mnist', str(path), verify=False, train_examples=30,
                 validation_examples=15)
  np.testing.assert_array_equal(ds.train_images, arrays['train_images'][:30])
  np.testing.assert_array_equal(ds.test_images, arrays['train_images'][35:])
  np.testing.assert_array_equal(ds.test_labels, arrays['train_labels'][35:])
  with pytest.raises(ConfigError, match='validation_examples=50 must be between 1 and 49'):
    data.load('mnist', str(path), verify=False, validation_examples=50)


def test_torchvision_layout(fake_dir, tmp_path_factory):
  path, arrays = fake_dir
  root = tmp_path_factory.mktemp('root')
  shutil.copytree(path, root / 'MNIST' / 'raw')
  ds = data.load_idx_dir(str(root), verify=False)
  np.testing.assert_array_equal(ds.test_labels, arrays['test_labels'])


def test_wrong_hash_is_refused(fake_dir):
  path, _ = fake_dir
  with pytest.raises(DataError, match=r'train-images-idx3-ubyte: SHA-256 .* does '
                     r'not match the official mnist .*download it again'):
    data.load_idx_dir(str(path))


def test_unknown_raw_hash_says_what_to_do(fake_dir):
  path, _ = fake_dir
  with pytest.raises(DataError, match='only of the official .gz'):
    data.load_idx_dir(str(path), 'kmnist')


def test_truncated_gzip(fake_dir):
  path, _ = fake_dir
  f = path / 'train-labels-idx1-ubyte.gz'
  f.write_bytes(f.read_bytes()[:-10])
  with pytest.raises(DataError, match=r'train-labels-idx1-ubyte.gz: truncated or '
                     'corrupt gzip'):
    data.load_idx_dir(str(path), verify=False)


def test_truncated_raw_file(fake_dir):
  path, _ = fake_dir
  f = path / 'train-images-idx3-ubyte'
  f.write_bytes(f.read_bytes()[:1000])
  with pytest.raises(DataError, match=r'1000 bytes but its header \(50x28x28\) '
                     'needs 39216'):
    data.load_idx_dir(str(path), verify=False)


def test_wrong_magic(fake_dir):
  path, _ = fake_dir
  f = path / 'train-images-idx3-ubyte'
  f.write_bytes(b'\x00\x00\x08\x01' + f.read_bytes()[4:])
  with pytest.raises(DataError, match='magic 00000801, expected 00000803'):
    data.load_idx_dir(str(path), verify=False)


def test_missing_file_and_directory(fake_dir, tmp_path_factory):
  path, _ = fake_dir
  os.remove(path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(DataError, match=r't10k-labels-idx1-ubyte\[.gz\] not found'):
    data.load_idx_dir(str(path), verify=False)
  with pytest.raises(DataError, match='is not a directory'):
    data.load_idx_dir(str(path / 'nope'))
  with pytest.raises(ConfigError, match="unknown dataset 'emnist'"):
    data.load_idx_dir(str(path), 'emnist')


def test_real_mnist_verifies(mnist_dir):
  ds = data.load_idx_dir(mnist_dir)
  assert ds.train_images.shape == (60000, 28, 28)
  assert ds.test_images.shape == (10000, 28, 28)
  assert np.bincount(ds.test_labels).tolist()[:2] == [980, 1135]
  # The mean and std the seeds normalise with.
  assert ds.train_images.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
  assert ds.train_images.std() / 255 == pytest.approx(0.3081, abs=1e-4)


def test_real_mnist_file_with_one_changed_byte(mnist_dir, tmp_path):
  for name in data.FILES.values():
    shutil.copy(os.path.join(mnist_dir, name + '.gz'), tmp_path)
  f = tmp_path / 't10k-labels-idx1-ubyte.gz'
  content = bytearray(gzip.decompress(f.read_bytes()))
  content[100] = (content[100] + 1) % 10
  f.write_bytes(gzip.compress(bytes(content)))
  with pytest.raises(DataError, match='t10k-labels-idx1-ubyte.gz: SHA-256'):
    data.load_idx_dir(str(tmp_path))


def test_mnist_files_offered_as_another_dataset(mnist_dir):
  with pytest.raises(DataError, match="is mnist's train-images-idx3-ubyte, not "
                     "fashion_mnist's: set --config.dataset=mnist"):
    data.load_idx_dir(mnist_dir, 'fashion_mnist')


def test_tfds_path_names_its_extra(monkeypatch, tmp_path):
  # The TFDS path under mock_data, with TensorFlow: tests/test_install.py; a
  # bare install without either: the same file.
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # as uninstalled
  with pytest.raises(DataError, match=r"^the TFDS data path needs TensorFlow Datasets and "
                     r"TensorFlow \(.*tensorflow_datasets.*\): pip install 'mnist_flax\[tfds\]', "
                     r'or pass --config.data_dir=DIR with the four IDX files$'):
    data.load('mnist', tfds_data_dir=str(tmp_path))
