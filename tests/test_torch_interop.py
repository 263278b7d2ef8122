"""PyTorch weights in and out: identical logits, exact round trips, safe loading."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import convert, data, evaluate, jit_steps, models, torch_interop
from mnist_flax.errors import UserError

torch = pytest.importorskip('torch')
MODELS = ['v36', 'v36_nobias', 'model1', 'model2', 'model3']


def _trained_torch_model(name, seed=0):
  """Random weights, then a few training steps: non-trivial BN statistics."""
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


@pytest.mark.parametrize('name', MODELS)
def test_torch_definitions_match_the_spec(name):
  net = torch_interop.torch_model(name)
  assert sum(p.numel() for p in net.parameters()) == arch.param_count(
      arch.get_network(name))
  assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize('name', MODELS)
def test_converted_logits_equal_torch_on_real_images(name, mnist_dir):
  net = _trained_torch_model(name)
  assert float(net.bn1.running_var.min()) != 1.0  # statistics moved
  ds = data.load_idx_dir(mnist_dir)
  images = ds.test_images[:1000]
  x = (images.astype(np.float32) / 255 - 0.1307) / 0.3081
  with torch.no_grad():
    want = net(torch.from_numpy(x[:, None])).numpy()
  variables, tracked = torch_interop.from_state_dict(name, net.state_dict())
  assert tracked == 5
  logits = models.create_model(name).apply(
      variables, jit_steps.normalize(jnp.asarray(images), 0.1307, 0.3081), train=False)
  got = np.asarray(jax.nn.log_softmax(logits))
  assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize('name', MODELS)
def test_round_trip_through_a_workdir_is_exact(name, tmp_path, mnist_dir):
  net = _trained_torch_model(name, seed=1)
  src = tmp_path / 'in.pt'
  torch.save(net.state_dict(), src)
  workdir = str(tmp_path / 'w')
  convert.from_torch(str(src), name, workdir, mnist_dir)
  out = tmp_path / 'out.pt'
  convert.to_torch(workdir, str(out))
  before, after = net.state_dict(), torch.load(out, weights_only=True)
  assert list(before) == list(after)
  for key in before:
    assert before[key].dtype == after[key].dtype, key
    assert torch.equal(before[key], after[key]), key
  if name == 'v36':  # evaluate reads a converted checkpoint (one model is enough)
    result, logits, _ = evaluate.evaluate_checkpoint(workdir)
    assert logits.shape == (10000, 10) and result['epoch'] == 0


def test_mismatched_state_dicts_name_the_key():
  sd = _trained_torch_model('model1').state_dict()
  with pytest.raises(torch_interop.StateDictError, match="no 'conv1.bias'.*not a v36"):
    torch_interop.from_state_dict('v36', sd)
  with pytest.raises(torch_interop.StateDictError, match="no 'conv7b.weight'"):
    torch_interop.from_state_dict('model3', sd)
  sd3 = _trained_torch_model('model3').state_dict()
  with pytest.raises(torch_interop.StateDictError, match="unexpected key 'conv7b.weight'"):
    torch_interop.from_state_dict('model2', {**sd3})
  sd3['conv4.weight'] = torch.zeros(16, 10, 5, 5)
  with pytest.raises(torch_interop.StateDictError,
                     match=r"'conv4.weight' has shape \(16, 10, 5, 5\), model model3 "
                     r"needs \(16, 10, 3, 3\)"):
    torch_interop.from_state_dict('model3', sd3)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  torch.save({'conv1.weight': torch.zeros(1), 'payload': _Evil(marker)}, path)
  with pytest.raises(torch_interop.StateDictError,
                     match='evil.pt: refused, it holds more than tensors'):
    torch_interop.load_state_dict_file(str(path))
  assert not marker.exists()
  with pytest.raises(UserError, match='not a PyTorch file'):
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    torch_interop.load_state_dict_file(str(tmp_path / 'junk.pt'))


def test_convert_cli(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = tmp_path / 'm1.pt'
  torch.save(_trained_torch_model('model1').state_dict(), src)
  run = lambda *a: subprocess.run([sys.executable, '-m', 'mnist_flax.convert', *a],
                                  cwd=root, capture_output=True, text=True, timeout=120)
  ok = run(f'--from_torch={src}', '--model=model1', f'--workdir={tmp_path / "w"}')
  assert ok.returncode == 0, ok.stderr
  wrong = run(f'--from_torch={src}', '--model=v36', f'--workdir={tmp_path / "w2"}')
  assert wrong.returncode != 0 and 'Traceback' not in wrong.stderr
  assert "error: state_dict has no 'conv1.bias'" in wrong.stderr
  again = run(f'--from_torch={src}', '--model=model1', f'--workdir={tmp_path / "w"}')
  assert 'already holds checkpoints' in again.stderr
  back = run(f'--to_torch={tmp_path / "back.pt"}', f'--workdir={tmp_path / "w"}')
  assert back.returncode == 0, back.stderr
  assert torch.equal(torch.load(tmp_path / 'back.pt', weights_only=True)['conv3.weight'],
                     torch.load(src, weights_only=True)['conv3.weight'])
