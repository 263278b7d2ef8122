"""PyTorch side of the cross-framework comparison: the same networks as
`torch.nn.Module`s and state_dict <-> Flax variables, all derived from the
layer specs in `architectures.py`. PyTorch is an optional extra.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

import numpy as np

from mnist_flax import architectures as arch
from mnist_flax.errors import UserError

INSTALL_HINT = "PyTorch is not installed: pip install 'mnist_flax[torch]'"
# Where training scripts keep the model's state_dict in a checkpoint dict.
CHECKPOINT_KEYS = ('model', 'state_dict', 'model_state_dict')
# Key prefixes that wrappers add to every key of a state_dict.
KEY_PREFIXES = {'module.': 'nn.DataParallel or DistributedDataParallel',
                '_orig_mod.': 'torch.compile'}


class StateDictError(UserError):
  """A state_dict that does not fit the model, or a file we will not load."""


def require_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(INSTALL_HINT) from None
  return torch


def _set_submodule(root, path: str, module) -> None:
  """root.<path> = module, creating the containers of a dotted path (an imported
  network's 'features.0'), so the twin's state_dict keys are the original's."""
  *parents, last = path.split('.')
  for part in parents:
    if not hasattr(root, part):
      root.add_module(part, require_torch().nn.Module())
    root = getattr(root, part)
  root.add_module(last, module)


def torch_model(name: str, bn_momentum: float = 0.1, model_kwargs: str = ''):
  """The named network as a `torch.nn.Module`, with the seeds' module names
  (conv1, bn1, ..., conv_final; an imported network's own module paths) and
  their forward (log-probabilities out); `bn_momentum`: its BatchNorm2d's
  momentum (config.bn_momentum) where the spec sets none; `model_kwargs`: a
  torch: model's constructor arguments (config.model_kwargs)."""
  torch = require_torch()
  nn, F = torch.nn, torch.nn.functional
  network = arch.get_network(name, model_kwargs)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      channels = arch.INPUT_SHAPE[2]
      for layer in network:
        if isinstance(layer, arch.CONVS):
          out = layer.out_channels(channels)
          _set_submodule(self, layer.name, nn.Conv2d(
              channels, out, layer.kernel, stride=layer.stride, padding=layer.padding,
              dilation=layer.dilation, groups=layer.groups(channels),
              bias=layer.bias))
          channels = out
        elif isinstance(layer, arch.BatchNorm):
          momentum = bn_momentum if layer.momentum is None else layer.momentum
          _set_submodule(self, layer.name, nn.BatchNorm2d(
              channels, eps=layer.eps, momentum=momentum, affine=layer.affine))
        elif isinstance(layer, arch.Linear):
          _set_submodule(self, layer.name,
                         nn.Linear(channels, layer.features, bias=layer.bias))
          channels = layer.features

    def forward(self, x):
      for layer in network:
        if isinstance(layer, (*arch.CONVS, arch.BatchNorm)):
          x = self.get_submodule(layer.name)(x)
        elif isinstance(layer, arch.Linear):
          x = self.get_submodule(layer.name)(x.flatten(1))[:, :, None, None]
        elif isinstance(layer, arch.ReLU):
          x = F.relu(x)
        elif isinstance(layer, arch.MaxPool):
          x = F.max_pool2d(x, layer.window)
        elif isinstance(layer, arch.GlobalAvgPool):
          x = F.adaptive_avg_pool2d(x, 1)
        elif isinstance(layer, arch.Dropout):
          x = F.dropout(x, layer.rate, self.training)
      return F.log_softmax(x.view(x.shape[0], -1), dim=-1)

  Net.__name__ = Net.__qualname__ = f'{name}_torch'
  return Net()


def seeded_torch_model(config):
  """config.model's twin (`torch_model`) initialised for config.seed: drawn by
  PyTorch after torch.manual_seed(config.seed), or for a torch: model, its own
  class's initialisation under that seed (torch_import.initial_state_dict), as
  the JAX run starts from (train.py). Otherwise init 'xavier' redraws every
  Conv2d as woolly-of-cv's initialize_weights: Xavier-uniform, zero bias."""
  torch = require_torch()
  torch.manual_seed(config.seed)
  net = torch_model(config.model, config.bn_momentum, config.model_kwargs)
  if config.model.startswith(arch.TORCH_PREFIX):
    from mnist_flax import torch_import  # pylint: disable=g-import-not-at-top
    net.load_state_dict(torch_import.initial_state_dict(
        config.model, config.model_kwargs, config.seed))
  elif config.init == 'xavier':
    for module in net.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
          torch.nn.init.zeros_(module.bias)
  return net


_BN_STATS = ('running_mean', 'running_var')


def _expected_keys(network: arch.Network) -> dict[str, tuple[int, ...] | None]:
  """state_dict key -> shape (None: a scalar counter)."""
  keys: dict[str, tuple[int, ...] | None] = {}
  for info in arch.walk(network):
    layer = info.layer
    if isinstance(layer, arch.CONVS):
      c_in, c_out = info.in_shape[2], info.out_shape[2]
      keys[f'{layer.name}.weight'] = (c_out, c_in // layer.groups(c_in),
                                      layer.kernel, layer.kernel)
      if layer.bias:
        keys[f'{layer.name}.bias'] = (c_out,)
    elif isinstance(layer, arch.Linear):
      keys[f'{layer.name}.weight'] = (layer.features, info.in_shape[2])
      if layer.bias:
        keys[f'{layer.name}.bias'] = (layer.features,)
    elif isinstance(layer, arch.BatchNorm):
      c = info.in_shape[2]
      for k in (('weight', 'bias') if layer.affine else ()) + _BN_STATS:
        keys[f'{layer.name}.{k}'] = (c,)
      keys[f'{layer.name}.num_batches_tracked'] = None
  return keys


def _few(keys: list[Any], n: int = 3) -> str:
  """The first n keys, quoted, and how many more."""
  more = f' and {len(keys) - n} more' if len(keys) > n else ''
  return ', '.join(repr(k) for k in keys[:n]) + more


def check_state_dict(name: str, state_dict: dict[str, Any],
                     model_kwargs: str = '') -> None:
  """Raises StateDictError naming the missing and extra keys, or the first
  misshapen one."""
  expected = _expected_keys(arch.get_network(name, model_kwargs))
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  if missing or unexpected:
    differences = '; '.join(
        f'{what} {_few(keys)}' for what, keys in (('missing', missing),
                                                  ('unexpected', unexpected)) if keys)
    raise StateDictError(f'state_dict does not fit model {name} ({differences}): '
                         'is --model right?')
  for key, value in state_dict.items():
    shape = tuple(np.shape(value))
    want = expected[key] or ()
    if shape != want:
      raise StateDictError(f'state_dict key {key!r} has shape {shape}, model '
                           f'{name} needs {want}: is --model right?')


def from_state_dict(name: str, state_dict: dict[str, Any],
                    model_kwargs: str = '') -> tuple[dict, int]:
  """({'params', 'batch_stats'} as numpy, num_batches_tracked) from a state_dict."""
  check_state_dict(name, state_dict, model_kwargs)
  # Copies: a CPU tensor's .numpy() shares its memory, and a training-mode
  # forward would then update the converted running statistics in place.
  sd = {k: np.array(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
        for k, v in state_dict.items()}
  params, stats, tracked = {}, {}, set()
  for layer in arch.get_network(name, model_kwargs):
    if isinstance(layer, (*arch.CONVS, arch.Linear)):
      # OIHW -> HWIO (grouped convs too: both order outputs group by group);
      # a Linear's (out, in) -> (in, out).
      p = {'kernel': sd[f'{layer.name}.weight'].T if isinstance(layer, arch.Linear)
                     else sd[f'{layer.name}.weight'].transpose(2, 3, 1, 0)}
      if layer.bias:
        p['bias'] = sd[f'{layer.name}.bias']
      params[layer.name] = p
    elif isinstance(layer, arch.BatchNorm):
      if layer.affine:
        params[layer.name] = {'scale': sd[f'{layer.name}.weight'],
                              'bias': sd[f'{layer.name}.bias']}
      stats[layer.name] = {'mean': sd[f'{layer.name}.running_mean'],
                           'var': sd[f'{layer.name}.running_var']}
      tracked.add(int(sd[f'{layer.name}.num_batches_tracked']))
  if len(tracked) > 1:
    raise StateDictError(f'num_batches_tracked differs between BatchNorm layers '
                         f'({sorted(tracked)}); expected one training run')
  return {'params': params, 'batch_stats': stats}, tracked.pop() if tracked else 0


def to_state_dict(name: str, variables: dict, num_batches_tracked: int,
                  model_kwargs: str = '') -> dict:
  """A PyTorch state_dict (torch tensors) from Flax variables."""
  torch = require_torch()
  t = lambda a: torch.from_numpy(np.array(a, copy=True))
  params, stats = variables['params'], variables['batch_stats']
  sd = {}
  for layer in arch.get_network(name, model_kwargs):
    if isinstance(layer, (*arch.CONVS, arch.Linear)):
      kernel = np.asarray(params[layer.name]['kernel'])
      sd[f'{layer.name}.weight'] = t(kernel.T if isinstance(layer, arch.Linear)
                                     else kernel.transpose(3, 2, 0, 1))
      if layer.bias:
        sd[f'{layer.name}.bias'] = t(params[layer.name]['bias'])
    elif isinstance(layer, arch.BatchNorm):
      if layer.affine:
        sd[f'{layer.name}.weight'] = t(params[layer.name]['scale'])
        sd[f'{layer.name}.bias'] = t(params[layer.name]['bias'])
      sd[f'{layer.name}.running_mean'] = t(stats[layer.name]['mean'])
      sd[f'{layer.name}.running_var'] = t(stats[layer.name]['var'])
      sd[f'{layer.name}.num_batches_tracked'] = torch.tensor(num_batches_tracked)
  return sd


def _one_line(message: str) -> str:
  """The first line of an exception's message, without terminal escape codes."""
  lines = re.sub(r'\x1b\[[0-9;]*m', '', message).strip().splitlines()
  return lines[0].strip() if lines else ''


def load_state_dict_file(path: str) -> dict[str, Any]:
  """torch.load with weights_only=True: a file that would run code is refused."""
  torch = require_torch()
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise StateDictError(f'{path} not found') from None
  except pickle.UnpicklingError as e:
    # torch's message runs over several lines, with escape codes; the global
    # it refused (a class such as a whole pickled nn.Module) says it all.
    refused = re.search(r'GLOBAL ([\w.]+)', str(e))
    what = f'a pickled {refused.group(1)}' if refused else _one_line(str(e))
    raise StateDictError(
        f'{path}: refused, it holds more than tensors ({what}) and loading it '
        'could run code; if you trust it, save its weights alone: torch.save('
        "torch.load(PATH, weights_only=False).state_dict(), 'weights.pt')") from None
  except Exception as e:  # pylint: disable=broad-except
    # A corrupt file can fail anywhere in torch's unpickler.
    raise StateDictError(f'{path}: not a PyTorch file ({type(e).__name__}: '
                         f'{_one_line(str(e))})') from None
  if not isinstance(loaded, dict):
    raise StateDictError(f'{path} holds a {type(loaded).__name__}, not a '
                         'state_dict: save it with torch.save(model.state_dict(), path)')
  return loaded


def _wrapper_prefix(keys: list[Any]) -> str | None:
  """The prefix of KEY_PREFIXES that every key starts with, if any."""
  return next((p for p in KEY_PREFIXES if keys and all(
      isinstance(k, str) and k.startswith(p) for k in keys)), None)


def unwrap_state_dict(loaded: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """The model's state_dict inside what PyTorch users save, and what was unwrapped.

  Takes a training checkpoint's state_dict (under one of CHECKPOINT_KEYS; its
  other entries are ignored) and removes the key prefixes of KEY_PREFIXES.
  Returns the state_dict and, for the user, one phrase per unwrapping.
  """
  unwrapped = []
  for key in CHECKPOINT_KEYS:
    if isinstance(loaded.get(key), dict):
      others = [k for k in loaded if k != key]
      unwrapped.append(f'the state_dict under {key!r} of a training checkpoint'
                       + (f' (ignored: {_few(others, 5)})' if others else ''))
      loaded = loaded[key]
      break
  else:
    if any(isinstance(v, dict) for v in loaded.values()):
      raise StateDictError(
          f'not a state_dict: a training checkpoint? It holds '
          f'{_few(list(loaded), 5)}; its state_dict must be under one of '
          f'{", ".join(map(repr, CHECKPOINT_KEYS))}')
  while prefix := _wrapper_prefix(list(loaded)):
    unwrapped.append(f'key prefix {prefix!r} ({KEY_PREFIXES[prefix]})')
    loaded = {k[len(prefix):]: v for k, v in loaded.items()}
  return loaded, unwrapped
