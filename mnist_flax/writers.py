"""A validation split by writer: whole NIST writers held out of MNIST's training set.

MNIST's test digits come from writers who wrote no training digit; the last
10,000 training images (`validation_split='last'`) do not: 40.8% of them were
written by writers who also wrote some of the first 50,000 (docs/research.md).
`validation_split='writers'` holds out whole writers instead, as the test set
does, in the test set's proportions of the two NIST series (half Census
employees, series 0; half high-school students, series 4).

Who wrote each digit is QMNIST's published metadata (Yadav and Bottou, 2019):
`qmnist-train-labels-idx2-int.gz`, one row per MNIST training image, in MNIST's
order. Columns: 0 the class, 1 the NIST series, 2 the writer ID, ...
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

from mnist_flax.errors import ConfigError, DataError

WRITERS_FILE = 'qmnist-train-labels-idx2-int.gz'
WRITERS_URL = ('https://github.com/facebookresearch/qmnist/raw/master/'
               'qmnist-train-labels-idx2-int.gz')
# Of the uncompressed content, so a re-compressed copy still verifies.
WRITERS_SHA256 = 'bb1b6e1ec7b04fd5696f1ed50b5f58f8ef195118edd5c93c81783df9740b8ac5'
SERIES = (0, 4)  # the test set: 4,999 digits of series 0, 5,001 of series 4
SPLIT_SEED = 0   # fixed: every run and every session holds out the same writers


def find_file(data_dir: str, writers_file: str) -> str:
  """`writers_file` if given, else QMNIST's file in `data_dir`; a one-line
  error naming the file and where it is published when it is not there."""
  path = os.path.expanduser(writers_file) if writers_file else os.path.join(
      os.path.expanduser(data_dir), WRITERS_FILE)
  if not os.path.isfile(path):
    raise DataError(f'{path} not found: validation_split=writers needs QMNIST\'s '
                    f'writer file {WRITERS_FILE} ({WRITERS_URL}); put it in '
                    'data_dir or pass --config.writers_file=PATH')
  return path


def read(path: str, labels: np.ndarray, verify: bool = True) -> np.ndarray:
  """(N, 2) int32 [series, writer ID] per training image, checked against
  QMNIST's SHA-256 (`verify`) and against MNIST's labels (always)."""
  try:
    with open(path, 'rb') as f:
      content = f.read()
    if content[:2] == b'\x1f\x8b':
      content = gzip.decompress(content)
  except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f'{path}: cannot read ({e}); download {WRITERS_URL} again') from None
  if verify and hashlib.sha256(content).hexdigest() != WRITERS_SHA256:
    raise DataError(f'{path}: SHA-256 does not match QMNIST\'s {WRITERS_FILE}: the '
                    f'file is corrupt or another one; download {WRITERS_URL} again')
  head = np.frombuffer(content[:12], '>i4') if len(content) >= 12 else None
  if head is None or head[0] != 0xC02 or len(content) != 12 + 4 * head[1] * head[2]:
    raise DataError(f'{path}: not an idx2-int file of QMNIST rows; download '
                    f'{WRITERS_URL} again')
  rows = np.frombuffer(content, '>i4', offset=12).reshape(head[1], head[2])
  if len(rows) != len(labels) or not np.array_equal(rows[:, 0], labels):
    raise DataError(f'{path}: its class column does not equal the training labels '
                    f'({len(rows)} rows, {len(labels)} labels): the writer file '
                    'must be QMNIST\'s training file, and the images MNIST\'s, in '
                    'MNIST\'s order (IDX files, not TFDS)')
  return rows[:, 1:3].astype(np.int32)


def held_out(writers: np.ndarray, examples: int) -> np.ndarray:
  """A boolean mask of the training images whose writers are held out.

  For each series, writers are drawn in a fixed random order (`SPLIT_SEED`)
  until that series' held-out digits reach examples / 2, so the split holds
  about `examples` digits, half from each series, and every digit of a chosen
  writer.
  """
  mask = np.zeros(len(writers), bool)
  rng = np.random.default_rng(SPLIT_SEED)
  for series in SERIES:
    in_series = writers[:, 0] == series
    ids, counts = np.unique(writers[in_series, 1], return_counts=True)
    order = rng.permutation(len(ids))
    # The fewest writers whose digits reach the series' half.
    take = np.searchsorted(np.cumsum(counts[order]), examples / 2) + 1
    if take >= len(ids):
      raise ConfigError(f'validation_examples={examples} would hold out every writer '
                        f'of NIST series {series}; ask for fewer (10000 is the test '
                        'set\'s size)')
    mask |= in_series & np.isin(writers[:, 1], ids[order[:take]])
  return mask
