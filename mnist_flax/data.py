"""MNIST-format datasets as uint8 arrays: from local IDX files or from TFDS.

Every user mistake (missing or corrupt file, wrong checksum, no network and no
data) raises `DataError`, whose message is one line naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
import zlib
from typing import Any, NamedTuple

import numpy as np

from mnist_flax import writers
from mnist_flax.errors import ConfigError, DataError, unknown

FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Known SHA-256 hashes of a dataset's four files, by `FILES` key."""

  raw_sha256: dict[str, str]  # of the uncompressed IDX content
  gz_sha256: dict[str, str]   # of the official .gz downloads (TFDS's registry)
  torchvision_dir: str        # torchvision keeps the files in <root>/<this>/raw


DATASETS: dict[str, DatasetInfo] = {
    'mnist': DatasetInfo(
        raw_sha256={
            'train_images': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
            'train_labels': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
            'test_images': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
            'test_labels': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
        },
        gz_sha256={
            'train_images': '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
            'train_labels': '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
            'test_images': '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
            'test_labels': 'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
        },
        torchvision_dir='MNIST'),
    'fashion_mnist': DatasetInfo(
        raw_sha256={
            'train_images': 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
            'train_labels': 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
            'test_images': '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
            'test_labels': '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
        },
        gz_sha256={
            'train_images': '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84',
            'train_labels': 'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845',
            'test_images': '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073',
            'test_labels': '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5',
        },
        torchvision_dir='FashionMNIST'),
    'kmnist': DatasetInfo(
        raw_sha256={},  # not published; the .gz hashes below identify the files
        gz_sha256={
            'train_images': '51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4',
            'train_labels': 'e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17',
            'test_images': 'edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5',
            'test_labels': '20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c',
        },
        torchvision_dir='KMNIST'),
}

VALIDATION_SPLITS = ('last', 'writers')
IMAGE_SIZE = 28
NUM_CLASSES = 10


class Dataset(NamedTuple):
  train_images: np.ndarray  # (N, 28, 28) uint8
  train_labels: np.ndarray  # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray


def dataset_info(name: str) -> DatasetInfo:
  try:
    return DATASETS[name]
  except KeyError:
    raise unknown('dataset', name, DATASETS) from None


def _find(data_dir: str, stem: str, info: DatasetInfo) -> str:
  """The path of `stem` or `stem.gz` in data_dir or a torchvision layout below it."""
  for folder in (data_dir, os.path.join(data_dir, 'raw'),
                 os.path.join(data_dir, info.torchvision_dir, 'raw')):
    for name in (stem, stem + '.gz'):
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        return path
  raise DataError(f'{stem}[.gz] not found in {data_dir}: put the four IDX files '
                  'there (torchvision\'s MNIST/raw works as is), or leave '
                  'data_dir empty to use TFDS')


def _read(path: str) -> tuple[bytes, bytes]:
  """(file bytes, uncompressed content); gzip is recognised by its magic."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise DataError(f'{path}: cannot read ({e.strerror})') from None
  if data[:2] != b'\x1f\x8b':
    return data, data
  try:
    return data, gzip.decompress(data)
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f'{path}: truncated or corrupt gzip ({e}); download the '
                    'file again') from None


def _parse(path: str, content: bytes, ndim: int) -> np.ndarray:
  """Parses IDX content of unsigned bytes with `ndim` dimensions."""
  magic = 0x800 + ndim
  header = 4 + 4 * ndim
  if len(content) < header or int.from_bytes(content[:4], 'big') != magic:
    found = content[:4].hex() or 'nothing'
    raise DataError(f'{path}: not an IDX file of {ndim}-D unsigned bytes (magic '
                    f'{found}, expected {magic:08x}); download the file again')
  dims = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
  size = header + int(np.prod(dims))
  if len(content) != size:
    raise DataError(f'{path}: {len(content)} bytes but its header '
                    f'({"x".join(map(str, dims))}) needs {size}: the file is '
                    'truncated or corrupt; download it again')
  return np.frombuffer(content, np.uint8, offset=header).reshape(dims)


def _verify(path: str, data: bytes, content: bytes, dataset: str, key: str) -> None:
  info = DATASETS[dataset]
  digest = hashlib.sha256(content).hexdigest()
  if digest == info.raw_sha256.get(key):
    return
  if data is not content and hashlib.sha256(data).hexdigest() == info.gz_sha256.get(key):
    return
  for other, other_info in DATASETS.items():
    if other != dataset and digest == other_info.raw_sha256.get(key):
      raise DataError(f'{path} is {other}\'s {FILES[key]}, not {dataset}\'s: set '
                      f'--config.dataset={other} or point data_dir at {dataset}')
  if key not in info.raw_sha256:
    raise DataError(f'{path}: no official SHA-256 of the uncompressed {dataset} '
                    f'file is known, only of the official .gz; use that .gz or '
                    f'set --config.verify_checksums=False')
  raise DataError(f'{path}: SHA-256 {digest[:16]}... does not match the official '
                  f'{dataset} {FILES[key]} ({info.raw_sha256[key][:16]}...): the '
                  'file is corrupt or modified; download it again')


def load_idx_dir(data_dir: str, dataset: str = 'mnist',
                 verify: bool = True) -> Dataset:
  """Loads and checks the four IDX files (raw or .gz) of `dataset` in data_dir."""
  info = dataset_info(dataset)
  if not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir} is not a directory: pass the folder '
                    'that holds the four IDX files')
  arrays = {}
  for key, stem in FILES.items():
    path = _find(data_dir, stem, info)
    data, content = _read(path)
    array = _parse(path, content, 3 if key.endswith('images') else 1)
    if verify:
      _verify(path, data, content, dataset, key)
    arrays[key] = array
  return _checked(Dataset(**arrays), data_dir)


def _checked(ds: Dataset, source: str) -> Dataset:
  """Checks shapes and label range; labels become int32."""
  for split in ('train', 'test'):
    images, labels = getattr(ds, f'{split}_images'), getattr(ds, f'{split}_labels')
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(images) != len(labels):
      raise DataError(f'{source}: {split} images {images.shape} and labels '
                      f'{labels.shape} are not N 28x28 images with N labels')
    if labels.size and labels.max() >= NUM_CLASSES:
      raise DataError(f'{source}: {split} labels go up to {labels.max()}, '
                      f'expected 0..{NUM_CLASSES - 1}')
  return ds._replace(train_labels=ds.train_labels.astype(np.int32),
                     test_labels=ds.test_labels.astype(np.int32))


def _online(host: str = 'storage.googleapis.com', timeout: float = 3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(dataset: str = 'mnist', tfds_data_dir: str | None = None) -> Dataset:
  """Loads `dataset` through TFDS, downloading it once if needed.

  Needs TensorFlow besides TFDS: TFDS's MNIST builders read their downloads with
  tf.io, and its TF-free reader takes only array_record copies, decoding one
  image at a time (33 s for MNIST's training set on a 2-core CPU). Offline with
  nothing prepared, fails at once instead of letting TFDS retry for minutes.
  """
  dataset_info(dataset)
  try:
    import tensorflow_datasets as tfds
    import tensorflow as tf
  except ImportError as e:
    raise DataError(f'the TFDS data path needs TensorFlow Datasets and TensorFlow '
                    f"({e}): pip install 'mnist_flax[tfds]', or pass "
                    '--config.data_dir=DIR with the four IDX files') from None
  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerator JAX uses
  builder = tfds.builder(dataset, data_dir=tfds_data_dir or None)
  if not builder.is_prepared():
    if not _online():
      raise DataError(f'no network and {dataset} is not in the TFDS data dir '
                      f'{builder.data_dir}: pass --config.data_dir=DIR holding '
                      'the four IDX files')
    builder.download_and_prepare()
  arrays = {}
  for split in ('train', 'test'):
    images, labels = [], []
    for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)):
      images.append(batch['image'][..., 0])
      labels.append(batch['label'])
    arrays[f'{split}_images'] = np.concatenate(images).astype(np.uint8)
    arrays[f'{split}_labels'] = np.concatenate(labels)
  return _checked(Dataset(**arrays), f'TFDS {dataset}')


def load(dataset: str, data_dir: str = '', tfds_data_dir: str = '',
         verify: bool = True, train_examples: int = 0,
         validation_examples: int = 0, validation_split: str = 'last',
         writers_file: str = '') -> Dataset:
  """IDX files from `data_dir` when given, else TFDS.

  `validation_examples` > 0: training images replace the test set (for choosing
  models without looking at it), never trained on: with `validation_split`
  'last', the last N; with 'writers', every digit of whole writers, about N in
  all (`writers.py`). `train_examples` > 0: only the first N of the remaining
  training images.
  """
  if validation_split not in VALIDATION_SPLITS:
    raise unknown('validation_split', validation_split, VALIDATION_SPLITS)
  if validation_split == 'writers' and dataset != 'mnist':
    raise ConfigError(f'validation_split=writers needs MNIST\'s writers; {dataset} '
                      'has none published: use validation_split=last')
  if data_dir:
    ds = load_idx_dir(os.path.expanduser(data_dir), dataset, verify)
  else:
    ds = load_tfds(dataset, tfds_data_dir or None)
  if validation_examples:
    if not 0 < validation_examples < len(ds.train_images):
      raise ConfigError(f'validation_examples={validation_examples} must be '
                        f'between 1 and {len(ds.train_images) - 1}, the '
                        'training images less one')
    if validation_split == 'writers':
      path = writers.find_file(data_dir, writers_file)
      held = writers.held_out(writers.read(path, ds.train_labels, verify),
                              validation_examples)
    else:
      held = np.arange(len(ds.train_images)) >= len(ds.train_images) - validation_examples
    ds = Dataset(ds.train_images[~held], ds.train_labels[~held],
                 ds.train_images[held], ds.train_labels[held])
  if train_examples:
    ds = ds._replace(train_images=ds.train_images[:train_examples],
                     train_labels=ds.train_labels[:train_examples])
  return ds


def load_for(config: Any) -> Dataset:
  """The dataset a training config names (see `config.py`)."""
  return load(config.dataset, config.data_dir, config.tfds_data_dir,
              config.verify_checksums, config.train_examples,
              config.validation_examples, config.validation_split,
              config.writers_file)
