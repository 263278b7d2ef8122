"""PyTorch side of the cross-framework comparison: the same networks as
`torch.nn.Module`s and state_dict <-> Flax variables, all derived from the
layer specs in `architectures.py`. PyTorch is an optional extra.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from mnist_flax import architectures as arch
from mnist_flax.errors import UserError

INSTALL_HINT = "PyTorch is not installed: pip install 'mnist_flax[torch]'"


class StateDictError(UserError):
  """A state_dict that does not fit the model, or a file we will not load."""


def require_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(INSTALL_HINT) from None
  return torch


def torch_model(name: str):
  """The named network as a `torch.nn.Module`, with the seeds' module names
  (conv1, bn1, ..., conv_final) and their forward (log-probabilities out)."""
  torch = require_torch()
  nn, F = torch.nn, torch.nn.functional
  network = arch.get_network(name)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      channels = arch.INPUT_SHAPE[2]
      for layer in network:
        if isinstance(layer, arch.Conv):
          setattr(self, layer.name, nn.Conv2d(channels, layer.features, layer.kernel,
                                              padding=layer.padding, bias=layer.bias))
          channels = layer.features
        elif isinstance(layer, arch.BatchNorm):
          setattr(self, layer.name, nn.BatchNorm2d(channels))

    def forward(self, x):
      for layer in network:
        if isinstance(layer, (arch.Conv, arch.BatchNorm)):
          x = getattr(self, layer.name)(x)
        elif isinstance(layer, arch.ReLU):
          x = F.relu(x)
        elif isinstance(layer, arch.MaxPool):
          x = F.max_pool2d(x, layer.window)
        elif isinstance(layer, arch.GlobalAvgPool):
          x = F.adaptive_avg_pool2d(x, 1)
      return F.log_softmax(x.view(x.shape[0], -1), dim=-1)

  Net.__name__ = Net.__qualname__ = f'{name}_torch'
  return Net()


def _expected_keys(network: arch.Network) -> dict[str, tuple[int, ...] | None]:
  """state_dict key -> shape (None: a scalar counter)."""
  keys: dict[str, tuple[int, ...] | None] = {}
  for info in arch.walk(network):
    layer = info.layer
    if isinstance(layer, arch.Conv):
      c_in = info.in_shape[2]
      keys[f'{layer.name}.weight'] = (layer.features, c_in, layer.kernel, layer.kernel)
      if layer.bias:
        keys[f'{layer.name}.bias'] = (layer.features,)
    elif isinstance(layer, arch.BatchNorm):
      c = info.in_shape[2]
      for k in ('weight', 'bias', 'running_mean', 'running_var'):
        keys[f'{layer.name}.{k}'] = (c,)
      keys[f'{layer.name}.num_batches_tracked'] = None
  return keys


def check_state_dict(name: str, state_dict: dict[str, Any]) -> None:
  """Raises StateDictError naming the first missing, extra or misshapen key."""
  expected = _expected_keys(arch.get_network(name))
  for key in expected:
    if key not in state_dict:
      raise StateDictError(f'state_dict has no {key!r}: it is not a {name} '
                           f'state_dict (expected keys: {", ".join(expected)})')
  for key, value in state_dict.items():
    if key not in expected:
      raise StateDictError(f'state_dict has an unexpected key {key!r} for model '
                           f'{name}: is --model right?')
    shape = tuple(np.shape(value))
    want = expected[key] or ()
    if shape != want:
      raise StateDictError(f'state_dict key {key!r} has shape {shape}, model '
                           f'{name} needs {want}: is --model right?')


def from_state_dict(name: str, state_dict: dict[str, Any]) -> tuple[dict, int]:
  """({'params', 'batch_stats'} as numpy, num_batches_tracked) from a state_dict."""
  check_state_dict(name, state_dict)
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
        for k, v in state_dict.items()}
  params, stats, tracked = {}, {}, set()
  for layer in arch.get_network(name):
    if isinstance(layer, arch.Conv):
      p = {'kernel': sd[f'{layer.name}.weight'].transpose(2, 3, 1, 0)}  # OIHW -> HWIO
      if layer.bias:
        p['bias'] = sd[f'{layer.name}.bias']
      params[layer.name] = p
    elif isinstance(layer, arch.BatchNorm):
      params[layer.name] = {'scale': sd[f'{layer.name}.weight'],
                            'bias': sd[f'{layer.name}.bias']}
      stats[layer.name] = {'mean': sd[f'{layer.name}.running_mean'],
                           'var': sd[f'{layer.name}.running_var']}
      tracked.add(int(sd[f'{layer.name}.num_batches_tracked']))
  if len(tracked) > 1:
    raise StateDictError(f'num_batches_tracked differs between BatchNorm layers '
                         f'({sorted(tracked)}); expected one training run')
  return {'params': params, 'batch_stats': stats}, tracked.pop() if tracked else 0


def to_state_dict(name: str, variables: dict, num_batches_tracked: int) -> dict:
  """A PyTorch state_dict (torch tensors) from Flax variables."""
  torch = require_torch()
  t = lambda a: torch.from_numpy(np.array(a, copy=True))
  params, stats = variables['params'], variables['batch_stats']
  sd = {}
  for layer in arch.get_network(name):
    if isinstance(layer, arch.Conv):
      sd[f'{layer.name}.weight'] = t(np.asarray(params[layer.name]['kernel']).transpose(3, 2, 0, 1))
      if layer.bias:
        sd[f'{layer.name}.bias'] = t(params[layer.name]['bias'])
    elif isinstance(layer, arch.BatchNorm):
      sd[f'{layer.name}.weight'] = t(params[layer.name]['scale'])
      sd[f'{layer.name}.bias'] = t(params[layer.name]['bias'])
      sd[f'{layer.name}.running_mean'] = t(stats[layer.name]['mean'])
      sd[f'{layer.name}.running_var'] = t(stats[layer.name]['var'])
      sd[f'{layer.name}.num_batches_tracked'] = torch.tensor(num_batches_tracked)
  return sd


def load_state_dict_file(path: str) -> dict[str, Any]:
  """torch.load with weights_only=True: a file that would run code is refused."""
  torch = require_torch()
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise StateDictError(f'{path} not found') from None
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise StateDictError(f'{path}: refused, it holds more than tensors and '
                         f'loading it could run code ({first})') from None
  except Exception as e:  # pylint: disable=broad-except
    # A corrupt file can fail anywhere in torch's unpickler.
    raise StateDictError(f'{path}: not a PyTorch file ({type(e).__name__}: '
                         f'{e})') from None
  if not isinstance(loaded, dict):
    raise StateDictError(f'{path} holds a {type(loaded).__name__}, not a '
                         'state_dict: save it with torch.save(model.state_dict(), path)')
  return loaded
