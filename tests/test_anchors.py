"""The public anchors (docs/anchors.md) against their PyTorch builds: counts,
logits and BatchNorm statistics from the same weights, and whole training steps
of each anchor's recipe, as tests/test_torch_interop.py and test_compare.py
hold the seeds' networks."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import compare, data, models, torch_interop
from configs import anchor_eva6, anchor_woolly

from conftest import apply, assert_train_mode_equals_torch, trained_torch_model

torch = pytest.importorskip('torch')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHORS = {'eva6': (anchor_eva6, 7496), 'woolly': (anchor_woolly, 3762)}


@pytest.fixture
def without_dropout(monkeypatch):
  """The anchors with their dropout rates at 0: the two frameworks draw
  different masks, so equality is checked without them."""
  for name in ANCHORS:
    network = tuple(dataclasses.replace(layer, rate=0.0)
                    if isinstance(layer, arch.Dropout) else layer
                    for layer in arch.NETWORKS[name])
    monkeypatch.setitem(arch.NETWORKS, name, network)


@pytest.mark.parametrize('name', ANCHORS)
def test_counts_are_the_notebooks(name):
  module, count = ANCHORS[name]
  config = module.get_config()
  assert config.model == name
  net = torch_interop.seeded_torch_model(config)
  assert sum(p.numel() for p in net.parameters()) == count
  assert arch.param_count(arch.get_network(name)) == count


@pytest.mark.parametrize('name', ANCHORS)
def test_eval_logits_equal_torch_from_the_same_weights(name):
  """Evaluation (dropout off, running statistics): the layers after GAP too."""
  net = trained_torch_model(name)
  variables, _ = torch_interop.from_state_dict(name, net.state_dict())
  x = np.random.default_rng(0).normal(size=(64, 28, 28, 1)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = jax.nn.log_softmax(apply(models.create_model(name), variables, jnp.asarray(x)))
  assert np.abs(np.asarray(got) - want).max() <= 1e-5


@pytest.mark.parametrize('name', ANCHORS)
def test_train_mode_logits_and_statistics_equal_torch(name, without_dropout):
  """Training mode: batch statistics, including eva6's BatchNorm over the
  batch of 1x1 maps after GAP."""
  assert_train_mode_equals_torch(name, trained_torch_model(name), seed=1)


@pytest.mark.parametrize('name', ANCHORS)
def test_recipe_steps_equal_torch(name, without_dropout, big_fake_mnist_dir):
  """Each anchor's optimiser, schedule and batch size (eva6: OneCycle with its
  momentum cycle, batch 128; woolly: the piecewise table at momentum 0.95,
  batch 32), from the same weights over the same batches: equal losses, step
  for step, in float64."""
  config = ANCHORS[name][0].get_config()
  ds = data.load_idx_dir(big_fake_mnist_dir, verify=False)
  jax_losses, torch_losses = compare.identical_start(config, ds, steps=8, float64=True)
  assert len(jax_losses) == 8
  assert np.abs(jax_losses - torch_losses).max() < 1e-6
  assert np.abs(np.diff(jax_losses)).max() > 1e-3  # the steps trained


@pytest.mark.parametrize('name', ANCHORS)
def test_anchor_trains_in_both_frameworks(name, fake_mnist_dir, tmp_path):
  """The whole recipe, augmentation and dropout included, runs end to end in
  mnist_flax.compare: one epoch in JAX and in PyTorch, on fake data, for the
  seed --config.seed names."""
  proc = subprocess.run(
      [sys.executable, '-m', 'mnist_flax.compare', f'--config=configs/anchor_{name}.py',
       '--seeds=1', '--config.seed=4', f'--workdir={tmp_path}',
       f'--config.data_dir={fake_mnist_dir}', '--config.verify_checksums=False',
       '--config.num_epochs=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  rows = [l.split() for l in proc.stdout.splitlines() if l.startswith(('jax ', 'pytorch '))]
  assert [r[:2] for r in rows] == [['jax', '4'], ['pytorch', '4'], ['jax', 'mean'],
                                   ['pytorch', 'mean']], proc.stdout
