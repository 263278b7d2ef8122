"""Shared fixtures: the real MNIST directory (when CI or the user provides it) and
small learnable fake datasets in the same IDX format."""

import gzip
import os
import shutil
import tempfile

import numpy as np
import pytest

# One XLA compilation cache for the whole session and the CLI processes its
# tests start: they compile the same few programs over and over, at 1-3 s each.
_OWN_CACHE_DIR = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE_DIR = tempfile.mkdtemp(prefix='mnist_flax_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE_DIR
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE_DIR:
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def mnist_dir() -> str:
  path = os.environ.get('MNIST_DIR', '')
  if not path:
    pytest.skip('MNIST_DIR is not set: real-data tests need the four MNIST IDX '
                'files (.ci/run sets it to ../shared/mnist)')
  return path


def init(model, seed: int = 0):
  """models.init_variables as one compiled program: run eagerly, Flax compiles
  each of its ~100 ops on its own, seconds per network on CPU."""
  # Imported here: jax must see the cache variables set above.
  import jax  # pylint: disable=g-import-not-at-top
  from mnist_flax import models  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda key: models.init_variables(model, key))(jax.random.key(seed))


def apply(model, variables, x, **kwargs):
  """model.apply(variables, x, **kwargs) as one compiled program (see init)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def trained_torch_model(name: str, seed: int = 0):
  """`name`'s PyTorch twin, random weights, then a few training steps:
  non-trivial BN statistics. In evaluation mode."""
  import torch  # pylint: disable=g-import-not-at-top
  from mnist_flax import torch_interop  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  net = torch_interop.torch_model(name)
  opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
  for _ in range(5):
    x = torch.randn(32, 1, 28, 28)
    loss = torch.nn.functional.nll_loss(net(x), torch.randint(0, 10, (32,)))
    opt.zero_grad()
    loss.backward()
    opt.step()
  return net.eval()


def assert_train_mode_equals_torch(name: str, net, seed: int = 0) -> None:
  """In training mode, `name`'s Flax model from `net`'s state_dict gives its
  log-probabilities within 1e-4 and its new BatchNorm statistics."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mnist_flax import models, torch_interop  # pylint: disable=g-import-not-at-top
  net = net.train()
  variables, _ = torch_interop.from_state_dict(name, net.state_dict())
  x = np.random.default_rng(seed).normal(size=(16, 28, 28, 1)).astype(np.float32)
  want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
  logits, updates = apply(models.create_model(name), variables, jnp.asarray(x),
                          train=True, mutable=['batch_stats'])
  assert np.abs(np.asarray(jax.nn.log_softmax(logits)) - want).max() <= 1e-4
  stats = torch_interop.from_state_dict(name, net.state_dict())[0]['batch_stats']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.device_get(updates['batch_stats']), stats)


def write_fake_mnist(path, n_train=256, n_test=100):
  """Learnable fake data: the label is drawn as a bright block's position."""
  rng = np.random.default_rng(0)
  for split, n in (('train', n_train), ('t10k', n_test)):
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, y in enumerate(labels):
      images[i, 2 + 2 * y:6 + 2 * y, 10:18] = 255
    for kind, array in (('images-idx3', images), ('labels-idx1', labels)):
      header = (0x800 + array.ndim).to_bytes(4, 'big') + b''.join(
          d.to_bytes(4, 'big') for d in array.shape)
      with gzip.open(path / f'{split}-{kind}-ubyte.gz', 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def small_config(data_dir: str, epochs: int = 3, **overrides):
  """configs/v36.py on small fake data: batch 64, no progress bar."""
  from configs import v36  # pylint: disable=g-import-not-at-top
  config = v36.get_config()
  config.data_dir, config.verify_checksums = str(data_dir), False
  config.batch_size, config.num_epochs, config.progress_bar = 64, epochs, False
  config.update(overrides)
  return config


@pytest.fixture
def fake_mnist_dir(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp('fake_mnist')
  write_fake_mnist(path)
  return str(path)


@pytest.fixture
def big_fake_mnist_dir(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp('big_fake_mnist')
  write_fake_mnist(path, n_train=4096)
  return str(path)
