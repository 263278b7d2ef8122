"""PyTorch weights in and out: identical logits, exact round trips, safe loading."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import architectures as arch
from mnist_flax import convert, data, evaluate, jit_steps, models, torch_interop
from mnist_flax.errors import UserError

from conftest import apply, assert_train_mode_equals_torch, init, trained_torch_model

torch = pytest.importorskip('torch')
MODELS = list(arch.NETWORKS)
# The slower parity checks run on the seeds' networks and one network of each
# newer layer kind (a depthwise convolution with a multiplier, a dilated one);
# every network gets the spec, init and count checks.
KINDS = ['v36', 'v36_nobias', 'model1', 'model2', 'model3', 'v36sep_m2', 'v36_dil4']


@pytest.mark.parametrize('name', MODELS)
def test_torch_definitions_match_the_spec(name):
  net = torch_interop.torch_model(name)
  assert sum(p.numel() for p in net.parameters()) == arch.param_count(
      arch.get_network(name))
  assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize('name', MODELS)
def test_torch_init_matches_the_flax_torch_init_bounds(name):
  """PyTorch's default bound, 1/sqrt((C_in / groups) * k * k), is the 'torch'
  init's: the same largest weight magnitude, layer by layer, within sampling."""
  torch.manual_seed(0)
  net = torch_interop.torch_model(name)
  params = init(models.create_model(name))['params']
  for layer in arch.get_network(name):
    if isinstance(layer, arch.CONVS):
      want = float(getattr(net, layer.name).weight.abs().max())
      got = float(np.abs(params[layer.name]['kernel']).max())
      assert got == pytest.approx(want, rel=0.15), layer.name


@pytest.mark.parametrize('name', KINDS)
def test_train_mode_logits_and_statistics_equal_torch(name):
  assert_train_mode_equals_torch(name, trained_torch_model(name))


@pytest.mark.parametrize('name', KINDS)
def test_converted_logits_equal_torch_on_real_images(name, mnist_dir):
  net = trained_torch_model(name)
  assert float(net.bn1.running_var.min()) != 1.0  # statistics moved
  ds = data.load_idx_dir(mnist_dir)
  images = ds.test_images[:1000]
  x = (images.astype(np.float32) / 255 - 0.1307) / 0.3081
  with torch.no_grad():
    want = net(torch.from_numpy(x[:, None])).numpy()
  variables, tracked = torch_interop.from_state_dict(name, net.state_dict())
  assert tracked == 5
  logits = apply(models.create_model(name), variables,
                 jit_steps.normalize(jnp.asarray(images), 0.1307, 0.3081), train=False)
  got = np.asarray(jax.nn.log_softmax(logits))
  assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize('name', KINDS)
def test_round_trip_through_a_workdir_is_exact(name, tmp_path, mnist_dir):
  net = trained_torch_model(name, seed=1)
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


def test_mismatched_state_dicts_name_the_keys():
  sd = trained_torch_model('model1').state_dict()
  # model1: 8 convs without bias; v36: 5 with bias, so 3 names of each and counts.
  with pytest.raises(torch_interop.StateDictError,
                     match=r"^state_dict does not fit model v36 \(missing 'conv1.bias', "
                     r"'conv2.bias', 'conv3.bias' and 3 more; unexpected 'conv6.weight', "
                     r"'bn6.weight', 'bn6.bias' and 9 more\): is --model right\?$"):
    torch_interop.from_state_dict('v36', sd)
  sd3 = trained_torch_model('model3').state_dict()
  with pytest.raises(torch_interop.StateDictError,
                     match=r"model2 \(unexpected 'conv7b.weight', 'bn7b.weight', "
                     r"'bn7b.bias' and 3 more\)"):
    torch_interop.from_state_dict('model2', sd3)
  sd3 = trained_torch_model('model3').state_dict()
  sd3['extra.weight'] = torch.zeros(1)
  del sd3['conv4.weight']
  with pytest.raises(torch_interop.StateDictError,
                     match=r"\(missing 'conv4.weight'; unexpected 'extra.weight'\)"):
    torch_interop.from_state_dict('model3', sd3)
  sd3 = trained_torch_model('model3').state_dict()
  sd3['conv4.weight'] = torch.zeros(16, 10, 5, 5)
  with pytest.raises(torch_interop.StateDictError,
                     match=r"'conv4.weight' has shape \(16, 10, 5, 5\), model model3 "
                     r"needs \(16, 10, 3, 3\)"):
    torch_interop.from_state_dict('model3', sd3)


def _wrapped(net, wrapper):
  """What PyTorch users save: the state_dict of a wrapped model, or a dict
  around a state_dict."""
  if wrapper == 'DataParallel':
    return torch.nn.DataParallel(net).state_dict()
  if wrapper == 'compile':  # compiles on the first call only: no compiler needed
    return torch.compile(net).state_dict()
  if wrapper == 'DataParallel+compile':
    return torch.nn.DataParallel(torch.compile(net)).state_dict()
  return {wrapper: net.state_dict(), 'epoch': 3,
          'optimizer': torch.optim.SGD(net.parameters(), lr=0.1).state_dict()}


@pytest.mark.parametrize('wrapper,unwrapped', [
    ('DataParallel', ["key prefix 'module.' (nn.DataParallel or DistributedDataParallel)"]),
    ('compile', ["key prefix '_orig_mod.' (torch.compile)"]),
    ('DataParallel+compile', ["key prefix 'module.' (nn.DataParallel or "
                              "DistributedDataParallel)",
                              "key prefix '_orig_mod.' (torch.compile)"]),
    ('model', ["the state_dict under 'model' of a training checkpoint (ignored: "
               "'epoch', 'optimizer')"]),
    ('state_dict', ["the state_dict under 'state_dict' of a training checkpoint "
                    "(ignored: 'epoch', 'optimizer')"]),
    ('model_state_dict', ["the state_dict under 'model_state_dict' of a training "
                          "checkpoint (ignored: 'epoch', 'optimizer')"]),
])
def test_wrapped_state_dicts_are_unwrapped(wrapper, unwrapped, tmp_path):
  net = trained_torch_model('model1')
  path = tmp_path / 'wrapped.pt'
  torch.save(_wrapped(net, wrapper), path)
  sd, said = torch_interop.unwrap_state_dict(torch_interop.load_state_dict_file(str(path)))
  assert said == unwrapped
  assert list(sd) == list(net.state_dict())
  for key, value in net.state_dict().items():
    assert torch.equal(sd[key], value), key


def test_a_plain_state_dict_needs_no_unwrapping():
  sd = trained_torch_model('v36').state_dict()
  assert torch_interop.unwrap_state_dict(sd) == (sd, [])


def test_a_checkpoint_without_a_known_key_says_where_to_put_it():
  sd = trained_torch_model('v36').state_dict()
  with pytest.raises(torch_interop.StateDictError,
                     match=r"It holds 'net', 'epoch'; its state_dict must be under one "
                     r"of 'model', 'state_dict', 'model_state_dict'"):
    torch_interop.unwrap_state_dict({'net': sd, 'epoch': 3})


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
                     match=r'evil.pt: refused, it holds more than tensors \(a pickled '
                     r'(posix|os|nt)\.system\)'):
    torch_interop.load_state_dict_file(str(path))
  assert not marker.exists()
  with pytest.raises(UserError, match='not a PyTorch file'):
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    torch_interop.load_state_dict_file(str(tmp_path / 'junk.pt'))


def test_a_pickled_module_is_refused_in_one_clean_line(tmp_path):
  path = tmp_path / 'whole.pt'
  torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), path)  # the whole model
  with pytest.raises(torch_interop.StateDictError) as refused:
    torch_interop.load_state_dict_file(str(path))
  message = str(refused.value)
  assert message.startswith(f'{path}: refused, it holds more than tensors (a pickled '
                            'torch.nn.modules.container.Sequential) and loading it could '
                            'run code; if you trust it, save its weights alone')
  assert '\x1b' not in message and '\n' not in message


def test_convert_cli(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = tmp_path / 'm1.pt'
  torch.save(trained_torch_model('model1').state_dict(), src)
  run = lambda *a: subprocess.run([sys.executable, '-m', 'mnist_flax.convert', *a],
                                  cwd=root, capture_output=True, text=True, timeout=120)
  ok = run(f'--from_torch={src}', '--model=model1', f'--workdir={tmp_path / "w"}')
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.count('\n') == 1  # a bare state_dict: nothing unwrapped
  wrong = run(f'--from_torch={src}', '--model=v36', f'--workdir={tmp_path / "w2"}')
  assert wrong.returncode != 0 and 'Traceback' not in wrong.stderr
  assert wrong.stderr.startswith('error: state_dict does not fit model v36 '
                                 "(missing 'conv1.bias'")
  assert wrong.stderr.count('\n') == 1
  again = run(f'--from_torch={src}', '--model=model1', f'--workdir={tmp_path / "w"}')
  assert 'already holds checkpoints' in again.stderr
  back = run(f'--to_torch={tmp_path / "back.pt"}', f'--workdir={tmp_path / "w"}')
  assert back.returncode == 0, back.stderr
  assert torch.equal(torch.load(tmp_path / 'back.pt', weights_only=True)['conv3.weight'],
                     torch.load(src, weights_only=True)['conv3.weight'])
  wrapped = tmp_path / 'ddp.pt'
  torch.save({'model': torch.load(src, weights_only=True), 'epoch': 3}, wrapped)
  ok = run(f'--from_torch={wrapped}', '--model=model1', f'--workdir={tmp_path / "w3"}')
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.splitlines()[0] == (
      f"{wrapped}: unwrapped the state_dict under 'model' of a training checkpoint "
      "(ignored: 'epoch')")
