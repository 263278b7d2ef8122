"""The validation split by writer (mnist_flax/writers.py, data.load)."""

import gzip
import os

import numpy as np
import pytest

from mnist_flax import data, writers
from mnist_flax.errors import ConfigError, DataError
from tests.conftest import write_fake_mnist


def _rows(labels: np.ndarray, seed: int = 0) -> np.ndarray:
  """QMNIST-like rows for `labels`: 12 writers of each series, uneven counts,
  their digits interleaved as in MNIST's files."""
  rng = np.random.default_rng(seed)
  series = rng.choice(writers.SERIES, len(labels))
  ids = rng.integers(0, 12, len(labels)) * rng.integers(1, 3, len(labels))
  rows = np.zeros((len(labels), 8), np.int32)
  rows[:, 0], rows[:, 1], rows[:, 2] = labels, series, ids
  return rows


def _write(path, rows: np.ndarray) -> None:
  header = np.array([0xC02, *rows.shape], '>i4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + rows.astype('>i4').tobytes())


@pytest.fixture
def fake_dir_with_writers(tmp_path):
  write_fake_mnist(tmp_path, n_train=2000)
  labels = data.load_idx_dir(str(tmp_path), verify=False).train_labels
  rows = _rows(labels)
  _write(tmp_path / writers.WRITERS_FILE, rows)
  return tmp_path, rows


def test_no_held_out_writer_trains_and_the_split_is_fixed(fake_dir_with_writers):
  path, rows = fake_dir_with_writers
  ds = data.load('mnist', str(path), verify=False, validation_examples=600,
                 validation_split='writers')
  full = data.load_idx_dir(str(path), verify=False)
  held = writers.held_out(rows[:, 1:3], 600)
  # The training and validation images are the full set's, split by the mask, in order.
  np.testing.assert_array_equal(ds.train_images, full.train_images[~held])
  np.testing.assert_array_equal(ds.test_images, full.train_images[held])
  np.testing.assert_array_equal(ds.test_labels, full.train_labels[held])
  pairs = [set(map(tuple, rows[m][:, 1:3])) for m in (held, ~held)]
  assert pairs[0] and not pairs[0] & pairs[1]  # no held-out writer in training
  # Deterministic: the same writers every time.
  again = data.load('mnist', str(path), verify=False, validation_examples=600,
                    validation_split='writers')
  np.testing.assert_array_equal(again.test_images, ds.test_images)


@pytest.mark.parametrize('examples', [300, 600, 900])
def test_half_of_the_held_out_digits_from_each_series(examples):
  rows = _rows(np.zeros(3000, np.int32), seed=1)
  held = writers.held_out(rows[:, 1:3], examples)
  for series in writers.SERIES:
    n = (held & (rows[:, 1] == series)).sum()
    # Whole writers, so each series passes its half by less than one writer's digits.
    biggest = np.unique(rows[rows[:, 1] == series, 2], return_counts=True)[1].max()
    assert examples / 2 <= n < examples / 2 + biggest
  with pytest.raises(ConfigError, match='would hold out every writer of NIST series 0'):
    writers.held_out(rows[:, 1:3], 2900)


def test_the_last_images_split_is_unchanged(fake_dir_with_writers):
  path, _ = fake_dir_with_writers
  full = data.load_idx_dir(str(path), verify=False)
  ds = data.load('mnist', str(path), verify=False, validation_examples=500)
  np.testing.assert_array_equal(ds.train_images, full.train_images[:1500])
  np.testing.assert_array_equal(ds.test_labels, full.train_labels[1500:])


def test_bad_writer_files_are_refused_in_one_line(fake_dir_with_writers, tmp_path_factory):
  path, rows = fake_dir_with_writers

  def load(**kwargs):
    kwargs = {'verify': False, 'validation_examples': 600, 'validation_split': 'writers',
              **kwargs}
    with pytest.raises((DataError, ConfigError)) as error:
      data.load(kwargs.pop('dataset', 'mnist'), str(path), **kwargs)
    assert '\n' not in str(error.value)
    return str(error.value)

  missing = str(tmp_path_factory.mktemp('none') / 'w.gz')
  assert load(writers_file=missing) == (
      f'{missing} not found: validation_split=writers needs QMNIST\'s writer file '
      f'{writers.WRITERS_FILE} ({writers.WRITERS_URL}); put it in data_dir or pass '
      '--config.writers_file=PATH')
  with pytest.raises(DataError, match='SHA-256 does not match QMNIST'):
    writers.read(str(path / writers.WRITERS_FILE), rows[:, 0], verify=True)
  shuffled = tmp_path_factory.mktemp('shuffled') / 'w.gz'
  _write(shuffled, rows[::-1])
  assert 'its class column does not equal the training labels' in load(
      writers_file=str(shuffled))
  garbage = tmp_path_factory.mktemp('garbage') / 'w'
  garbage.write_bytes(b'not idx')
  assert 'not an idx2-int file' in load(writers_file=str(garbage))
  assert "unknown validation_split 'people'" in load(validation_split='people')
  assert 'fashion_mnist has none published' in load(dataset='fashion_mnist')


def test_real_writer_file_holds_out_new_writers(mnist_dir):
  qmnist = os.path.join(mnist_dir, os.pardir, 'qmnist', writers.WRITERS_FILE)
  if not os.path.isfile(qmnist):
    pytest.skip(f'{qmnist} is not there')
  labels = data.load_idx_dir(mnist_dir).train_labels
  who = writers.read(qmnist, labels)  # verifies the SHA-256 and the labels
  held = writers.held_out(who, 10_000)
  assert 10_000 <= held.sum() < 10_300
  for series in writers.SERIES:
    assert 5_000 <= (held & (who[:, 0] == series)).sum() < 5_150
  pairs = [set(map(tuple, who[m])) for m in (held, ~held)]
  assert not pairs[0] & pairs[1]
  # The old split, the last 10,000 images: the share of it written by writers
  # who also wrote some of the first 50,000 (docs/research.md quotes it).
  first = set(map(tuple, who[:50_000]))
  shared = np.mean([tuple(w) in first for w in who[50_000:]])
  assert round(shared, 3) == 0.408
