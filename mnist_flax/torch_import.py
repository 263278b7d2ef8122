"""A user's PyTorch network as layer specs: `--config.model=torch:PATH.py:CLASS`.

The class is imported from the user's file (which runs that file's code, as any
Python import does), built with config.model_kwargs, traced with `torch.fx`
and its graph translated into `architectures` specs, so the Flax model, the
counts, the receptive fields and the PyTorch twin derive from them as for any
network of NETWORKS. Only a chain of the layers the specs know is accepted;
anything else is a one-line ConfigError naming the op, the module path and the
file and line it came from. The instance's own initialisation, converted, is a
run's start (`initial_variables`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import operator
import os
import re
from typing import Any, Callable

import ml_collections

from mnist_flax import architectures as arch
from mnist_flax import torch_interop
from mnist_flax.errors import ConfigError

# Classes: 10 logits per image.
NUM_CLASSES = 10
_UNKNOWN_OP = ('an op the import does not know; it translates Conv2d, BatchNorm2d, ReLU, '
               'MaxPool2d, AvgPool2d and AdaptiveAvgPool2d to 1x1, Dropout, Flatten/view, '
               'Linear and a final (log_)softmax')


@dataclasses.dataclass(frozen=True)
class Imported:
  """A translated network and where it came from."""

  network: arch.Network
  path: str         # the file, absolute
  class_name: str


def parse_name(name: str) -> tuple[str, str]:
  """(path, class name) of 'torch:PATH.py:CLASS'."""
  path, sep, class_name = name[len(arch.TORCH_PREFIX):].rpartition(':')
  if not sep or not path.endswith('.py') or not class_name.isidentifier():
    raise ConfigError(f'model {name!r}: write torch:PATH.py:CLASS, e.g. '
                      'torch:my_net.py:Net')
  return path, class_name


def parse_kwargs(model_kwargs: str) -> dict[str, Any]:
  """config.model_kwargs (a JSON object, '' for none) as a dict."""
  if not model_kwargs:
    return {}
  try:
    kwargs = json.loads(model_kwargs)
  except json.JSONDecodeError as e:
    raise ConfigError(f'model_kwargs {model_kwargs!r} is not JSON ({e.msg}); write '
                      'e.g. --config.model_kwargs=\'{"width": 8}\'') from None
  if not isinstance(kwargs, dict):
    raise ConfigError(f'model_kwargs {model_kwargs!r} must be a JSON object of '
                      'constructor arguments')
  return kwargs


@functools.lru_cache(maxsize=None)
def _load_module(path: str, mtime: float) -> Any:
  """The user's file, run as a module under a unique name; its directory is not
  added to sys.path. Cached per path and modification time."""
  del mtime  # part of the cache key only
  digest = hashlib.sha1(path.encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(f'mnist_flax_user_{digest}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{path}{_file_line(e.__traceback__, path)}: importing it '
                      f'raised {type(e).__name__}: {_first_line(e)}') from None
  return module


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0] if lines else ''


def _file_line(tb: Any, path: str) -> str:
  """':LINE' of the last frame of traceback `tb` in `path`, or ''."""
  line = ''
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == path:
      line = f':{tb.tb_lineno}'
    tb = tb.tb_next
  return line


def _user_class(name: str) -> tuple[str, Any]:
  """(absolute path, the class) of 'torch:PATH.py:CLASS'."""
  torch = torch_interop.require_torch()
  path, class_name = parse_name(name)
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f'model {name!r}: {path} not found')
  module = _load_module(path, os.path.getmtime(path))
  cls = getattr(module, class_name, None)
  if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
    found = [n for n, v in vars(module).items() if isinstance(v, type)
             and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__]
    raise ConfigError(f'{path} has no nn.Module class {class_name!r}; it defines: '
                      f'{", ".join(found) or "none"}')
  return path, cls


def build(name: str, model_kwargs: str = '', seed: int | None = None) -> Any:
  """A fresh instance of the user's class, built with `model_kwargs`; with
  `seed`, under torch.manual_seed(seed) (PyTorch's global generator is
  restored afterwards)."""
  torch = torch_interop.require_torch()
  path, cls = _user_class(name)
  kwargs = parse_kwargs(model_kwargs)
  with torch.random.fork_rng(devices=[]):
    if seed is not None:
      torch.manual_seed(seed)
    try:
      return cls(**kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f'{path}{_file_line(e.__traceback__, path)}: '
                        f'{cls.__name__}(**{kwargs}) raised {type(e).__name__}: '
                        f'{_first_line(e)}') from None


@functools.lru_cache(maxsize=None)
def _import(name: str, model_kwargs: str, mtime: float) -> Imported:
  del mtime  # part of the cache key only
  path, cls = _user_class(name)
  net = build(name, model_kwargs, seed=0)
  return Imported(_Translator(net, path, cls.__name__).translate(), path, cls.__name__)


def import_network(name: str, model_kwargs: str = '') -> Imported:
  """The network of 'torch:PATH.py:CLASS' built with `model_kwargs`, as specs;
  a ConfigError for anything the specs cannot express."""
  path = os.path.abspath(parse_name(name)[0])
  return _import(name, model_kwargs,
                 os.path.getmtime(path) if os.path.isfile(path) else 0.0)


def initial_state_dict(name: str, model_kwargs: str, seed: int) -> dict[str, Any]:
  """The state_dict of the class built under torch.manual_seed(seed): its own
  initialisation (an apply(init_fn) in its constructor included)."""
  return build(name, model_kwargs, seed).state_dict()


def initial_variables(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """For a torch: model, {'params', 'batch_stats'} of its instance built under
  torch.manual_seed(config.seed), as numpy: where training starts, so that
  PyTorch (compare) and JAX start from the same weights, whatever config.init.
  None for other models (Flax draws theirs)."""
  if not config.model.startswith(arch.TORCH_PREFIX):
    return None
  state_dict = initial_state_dict(config.model, config.model_kwargs, config.seed)
  return torch_interop.from_state_dict(config.model, state_dict, config.model_kwargs)[0]


class _Batch:
  """The batch dimension of a traced shape: any size."""

  def __repr__(self) -> str:
    return 'N'


BATCH = _Batch()


@dataclasses.dataclass
class _Tensor:
  """The chain's activation: (H, W, C), or (C,) once flattened."""

  shape: tuple[int, ...]

  def size(self) -> tuple[Any, ...]:
    """PyTorch's x.size(), the batch as BATCH."""
    if len(self.shape) == 1:
      return (BATCH, self.shape[0])
    h, w, c = self.shape
    return (BATCH, c, h, w)


def _bind(signature: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
  """A call's arguments by name, defaults filled in, as `signature` takes them."""
  bound = inspect.signature(signature).bind(*args, **kwargs)
  bound.apply_defaults()
  return dict(bound.arguments)


def _pair(value: Any) -> Any:
  """k for k and (k, k); None for a non-square pair."""
  if isinstance(value, (tuple, list)):
    return value[0] if len(value) == 2 and value[0] == value[1] else None
  return value


# Signatures of the functional forms, to read their arguments by name.
def _max_pool_sig(input, kernel_size, stride=None, padding=0, dilation=1,  # pylint: disable=redefined-builtin
                  ceil_mode=False, return_indices=False):
  del input, kernel_size, stride, padding, dilation, ceil_mode, return_indices


def _avg_pool_sig(input, kernel_size, stride=None, padding=0, ceil_mode=False,  # pylint: disable=redefined-builtin
                  count_include_pad=True, divisor_override=None):
  del input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override


def _adaptive_sig(input, output_size):  # pylint: disable=redefined-builtin
  del input, output_size


def _dropout_sig(input, p=0.5, training=True, inplace=False):  # pylint: disable=redefined-builtin
  del input, p, training, inplace


def _softmax_sig(input, dim=None, _stacklevel=3, dtype=None):  # pylint: disable=redefined-builtin
  del input, dim, _stacklevel, dtype


def _flatten_sig(input, start_dim=0, end_dim=-1):  # pylint: disable=redefined-builtin
  del input, start_dim, end_dim


class _Translator:
  """Walks one traced graph, node by node, into a list of specs."""

  def __init__(self, net: Any, path: str, class_name: str):
    self.torch = torch_interop.require_torch()
    self.net, self.path, self.class_name = net, path, class_name
    self.layers: list[arch.Layer] = []
    self.values: dict[Any, Any] = {}   # node -> _Tensor or a Python value
    self.current: Any = None           # the chain's last tensor node
    self.node: Any = None              # the node being translated
    self.scopes: dict[str, tuple[str, Any]] = {}
    self.concrete: set[Any] = set()    # forward's defaulted arguments and their guards

  # Errors ------------------------------------------------------------------

  def _where(self) -> str:
    """'FILE:LINE' of the node being translated: the last frame of its stack
    trace in the user's file (the class's own line if none)."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', self.node.stack_trace or '')
    for file, line in reversed(frames):
      if os.path.abspath(file) == self.path:
        return f'{self.path}:{line}'
    if frames:
      return f'{frames[-1][0]}:{frames[-1][1]}'
    return f'{self.path}:{type(self.net).forward.__code__.co_firstlineno}'

  def _module_path(self) -> str:
    node = self.node
    if node.op == 'call_module':
      return node.target
    return self.scopes.get(node.name, ('', None))[0]

  def _op(self) -> str:
    node = self.node
    if node.op == 'call_module':
      return type(self.net.get_submodule(node.target)).__name__
    if node.op == 'call_method':
      return f'.{node.target}()'
    if node.op == 'get_attr':
      return f'a direct use of the tensor {node.target}'
    return getattr(node.target, '__name__', str(node.target))

  def fail(self, why: str) -> ConfigError:
    """The one-line error for the node being translated."""
    module = self._module_path()
    where = f'module {module!r}' if module else 'top level'
    return ConfigError(f'{self._where()}: cannot import {self._op()} ({where} of '
                       f'{self.class_name}): {why}')

  # The walk ----------------------------------------------------------------

  def translate(self) -> arch.Network:
    graph = self._trace()
    for node in graph.nodes:
      self.node = node
      self._translate_node(node)
    network = tuple(self.layers)
    counted = arch.param_count(network)
    total = sum(p.numel() for p in self.net.parameters())
    if counted != total:
      used = {getattr(layer, 'name', None) for layer in network}
      unused = [n for n, m in self.net.named_modules()
                if next(m.parameters(recurse=False), None) is not None and n not in used]
      raise ConfigError(
          f'{self.path}: {self.class_name} has {total:,} parameters but its forward '
          f'uses {counted:,}: {", ".join(map(repr, unused)) or "some"} never called; '
          'remove them, or they would be trained in PyTorch only')
    return network

  def _trace(self) -> Any:
    torch = self.torch
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    # forward's arguments after the input take their defaults (a flag such as
    # `return_features=False`), so Python branches on them are resolved.
    parameters = list(inspect.signature(self.net.forward).parameters.values())[1:]
    concrete = {}
    for p in parameters:
      if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        continue
      if p.default is p.empty:
        raise ConfigError(f'{self.path}: {self.class_name}.forward takes {p.name!r} '
                          'without a default; only the input may have none')
      concrete[p.name] = p.default
    try:
      graph = tracer.trace(self.net, concrete_args=concrete or None)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(
          f'{self.path}{_file_line(e.__traceback__, self.path)}: torch.fx cannot '
          f'trace {self.class_name}.forward ({type(e).__name__}: {_first_line(e)}); '
          'a branch on the data itself cannot be imported, one on constructor '
          'values can') from None
    self.scopes = tracer.node_name_to_scope
    return graph

  def _tensor_inputs(self, node: Any) -> list[Any]:
    found = []
    self.torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n)
                               if isinstance(self.values.get(n), _Tensor) else None)
    return found

  def _translate_node(self, node: Any) -> None:
    if node.op == 'placeholder':
      if self.current is None:
        self.values[node] = _Tensor(arch.INPUT_SHAPE)
        self.current = node
      else:
        self.concrete.add(node)  # an argument fixed to its default
      return
    if node.op != 'output' and node.all_input_nodes and all(
        n in self.concrete for n in node.all_input_nodes):
      self.concrete.add(node)  # fx's check that the argument kept its default
      return
    if node.op == 'get_attr':
      raise self.fail('only calls of the supported layers may use parameters')
    inputs = self._tensor_inputs(node)
    if node.op == 'output':
      if inputs != [self.current]:
        raise self.fail('the network must return one tensor, its logits')
      shape = self.values[self.current].shape
      if len(shape) != 1:
        raise self.fail(f'the output must be (N, {NUM_CLASSES}) logits, not a '
                        f'{"x".join(map(str, shape))} map: flatten it')
      if shape[0] != NUM_CLASSES:
        raise self.fail(f'the output has {shape[0]} values per image, MNIST needs '
                        f'{NUM_CLASSES}')
      return
    if not inputs:
      # Arithmetic on shapes (x.size(0) and the like).
      self.values[node] = self._evaluate(node)
      return
    if self._is_shape_query(node):  # of any activation: its shape is known
      self.values[node] = self._evaluate(node)
      return
    if len(inputs) > 1:
      raise self.fail(f'it combines {len(inputs)} tensors (a residual or a '
                      'concatenation); only a chain of layers imports')
    if inputs[0] is not self.current:
      raise self.fail('it reads an earlier activation (a branch or a skip '
                      'connection); only a chain of layers imports')
    tensor = self.values[self.current]
    before = len(self.layers)
    shape = self._layer(node, tensor.shape)
    if len(self.layers) > before:
      try:
        shape = list(arch.walk(tuple(self.layers)))[-1].out_shape
      except ValueError as e:
        raise self.fail(str(e)) from None
      if len(tensor.shape) == 1:  # flattened: the specs' 1x1 map is (N, C)
        shape = shape[2:]
    self.values[node] = _Tensor(shape)
    self.current = node

  def _is_shape_query(self, node: Any) -> bool:
    return ((node.op == 'call_method' and node.target in ('size', 'dim'))
            or (node.op == 'call_function' and node.target is getattr
                and node.args[1:] in (('shape',), ('ndim',))))

  def _evaluate(self, node: Any) -> Any:
    """A Python value computed from shapes: sizes, their items, their products."""
    args = self.torch.fx.node.map_arg(node.args, lambda n: self.values[n])
    kwargs = self.torch.fx.node.map_arg(node.kwargs, lambda n: self.values[n])
    if self._is_shape_query(node):
      size = args[0].size()
      if node.target == 'dim' or args[1:] == ('ndim',):
        return len(size)
      dim = args[1] if node.op == 'call_method' and len(args) > 1 else kwargs.get('dim')
      return size if dim is None else size[dim]
    if node.op == 'call_function' and node.target is operator.getitem:
      return args[0][args[1]]
    if BATCH in args:
      raise self.fail('computes with the batch size; only x.size(0) or -1 may '
                      'stand for it')
    if node.op == 'call_function' and node.target in (operator.mul, operator.floordiv,
                                                       operator.add, operator.sub):
      return node.target(*args)
    raise self.fail('an operation on values the import cannot follow')

  # One layer ---------------------------------------------------------------

  def _layer(self, node: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Appends the node's spec, if it has one, and returns the activation's
    shape after it for the nodes without (a flatten); the caller recomputes it
    for the others."""
    torch = self.torch
    F = torch.nn.functional
    values = lambda v: self.torch.fx.node.map_arg(v, lambda n: self.values[n])
    args, kwargs = values(node.args), values(node.kwargs)
    target = node.target
    if node.op == 'call_module':
      module = self.net.get_submodule(target)
      return self._module(target, module, shape)
    if node.op == 'call_method':
      fn = {'relu': F.relu, 'relu_': F.relu, 'log_softmax': F.log_softmax,
            'softmax': F.softmax, 'flatten': torch.flatten,
            'contiguous': None}.get(target, target)
    else:
      fn = target
    if fn is None:
      return shape
    if fn in (F.relu, torch.relu, torch.relu_, F.relu_):
      self.layers.append(arch.ReLU())
      return shape
    if fn is F.max_pool2d:
      a = _bind(_max_pool_sig, args, kwargs)
      return self._max_pool(a['kernel_size'], a['stride'], a['padding'], a['dilation'],
                            a['ceil_mode'], a['return_indices'], shape)
    if fn is F.avg_pool2d:
      a = _bind(_avg_pool_sig, args, kwargs)
      return self._avg_pool(a['kernel_size'], a['padding'], a['ceil_mode'], shape)
    if fn is F.adaptive_avg_pool2d:
      return self._adaptive(_bind(_adaptive_sig, args, kwargs)['output_size'], shape)
    if fn is F.dropout:
      a = _bind(_dropout_sig, args, kwargs)
      if a['training']:
        self._dropout(a['p'])
      return shape
    if fn in (F.log_softmax, F.softmax, torch.log_softmax, torch.softmax):
      return self._softmax(_bind(_softmax_sig, args, kwargs)['dim'], node, shape)
    if fn is torch.flatten:
      a = _bind(_flatten_sig, args, kwargs)
      if a['start_dim'] != 1 or a['end_dim'] != -1:
        raise self.fail('only a flatten from dim 1 on, to (N, C), imports')
      return self._flatten(shape)
    if fn in ('view', 'reshape') or fn is torch.reshape:
      sizes = args[1:] if fn != torch.reshape else args[1]
      sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
      sizes = tuple(kwargs.get('shape', sizes))
      flat = shape[0] if len(shape) == 1 else shape[2]
      if (len(sizes) != 2 or sizes[0] not in (BATCH, -1) or sizes[1] not in (flat, -1)
          or sizes == (-1, -1)):
        raise self.fail(f'only a view to (N, C) imports, not {sizes}')
      return self._flatten(shape)
    raise self.fail(_UNKNOWN_OP)

  def _module(self, path: str, m: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    nn = self.torch.nn
    if any(getattr(layer, 'name', None) == path for layer in self.layers):
      raise self.fail('the module is called twice (shared weights)')
    if isinstance(m, nn.Conv2d):
      self._conv(path, m, shape)
    elif isinstance(m, nn.BatchNorm2d):
      self._need_map(shape)
      if not m.track_running_stats or m.momentum is None:
        raise self.fail('only BatchNorm2d with running statistics and a momentum '
                        'imports (track_running_stats=True, momentum not None)')
      self.layers.append(arch.BatchNorm(path, m.eps, m.momentum, m.affine))
    elif isinstance(m, nn.ReLU):
      self.layers.append(arch.ReLU())
    elif isinstance(m, nn.MaxPool2d):
      return self._max_pool(m.kernel_size, m.stride, m.padding, m.dilation,
                            m.ceil_mode, m.return_indices, shape)
    elif isinstance(m, nn.AvgPool2d):
      return self._avg_pool(m.kernel_size, m.padding, m.ceil_mode, shape)
    elif isinstance(m, nn.AdaptiveAvgPool2d):
      return self._adaptive(m.output_size, shape)
    elif type(m) is nn.Dropout:  # pylint: disable=unidiomatic-typecheck
      self._dropout(m.p)
    elif isinstance(m, nn.Flatten):
      if m.start_dim != 1 or m.end_dim != -1:
        raise self.fail('only Flatten() from dim 1 on, to (N, C), imports')
      return self._flatten(shape)
    elif isinstance(m, nn.Linear):
      if len(shape) != 1:
        raise self.fail('Linear needs a flattened (N, C) input')
      self.layers.append(arch.Linear(path, m.out_features, m.bias is not None))
    elif isinstance(m, (nn.LogSoftmax, nn.Softmax)):
      return self._softmax(m.dim, self.node, shape)
    elif isinstance(m, nn.Identity):
      return shape
    else:
      raise self.fail(_UNKNOWN_OP)
    return shape

  def _need_map(self, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
      raise self.fail('after the flatten only Linear, Dropout, ReLU and a final '
                      '(log_)softmax import')

  def _conv(self, path: str, m: Any, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
      raise self.fail('a Conv2d after the flatten')
    kernel, stride, dilation = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if kernel is None or dilation is None:
      raise self.fail(f'only square kernels import, not {m.kernel_size} '
                      f'(dilation {m.dilation})')
    if stride not in (1, 2):
      raise self.fail(f'stride {m.stride}: only strides 1 and 2 import')
    if m.padding_mode != 'zeros':
      raise self.fail(f"padding_mode {m.padding_mode!r}: only 'zeros' imports")
    if m.padding == 'valid':
      padding = 0
    elif m.padding == 'same':
      padding = dilation * (kernel - 1) // 2  # stride 1, as PyTorch requires
      if dilation * (kernel - 1) % 2:
        raise self.fail("padding='same' with an even span pads unevenly")
    else:
      padding = _pair(m.padding)
      if padding is None:
        raise self.fail(f'padding {m.padding}: only equal padding on all sides imports')
    self.layers.append(arch.Conv(path, m.out_channels, kernel, padding,
                                 m.bias is not None, dilation, stride, m.groups))

  def _max_pool(self, kernel, stride, padding, dilation, ceil_mode, return_indices,
                shape):
    kernel = _pair(kernel)
    stride = kernel if stride in (None, (), []) else _pair(stride)  # F's default: None
    if (len(shape) != 3 or kernel is None or stride != kernel or _pair(padding) != 0
        or _pair(dilation) != 1 or ceil_mode or return_indices):
      raise self.fail('only non-overlapping square max pooling imports (stride = '
                      'kernel, no padding, dilation or ceil_mode)')
    self.layers.append(arch.MaxPool(kernel))
    return shape

  def _avg_pool(self, kernel, padding, ceil_mode, shape):
    if len(shape) != 3:
      raise self.fail('pooling after the flatten')
    h, w, _ = shape
    if isinstance(kernel, (tuple, list)) and len(kernel) == 1:
      kernel = kernel[0]
    if _pair(kernel) != h or h != w or _pair(padding) != 0 or ceil_mode:
      raise self.fail(f'average pooling imports only over the whole map (here '
                      f'kernel {h}, no padding), not kernel {kernel} on {h}x{w}')
    self.layers.append(arch.GlobalAvgPool())
    return shape

  def _adaptive(self, output_size, shape):
    if len(shape) != 3 or _pair(output_size) != 1:
      raise self.fail(f'adaptive average pooling imports only to 1x1, not {output_size}')
    self.layers.append(arch.GlobalAvgPool())
    return shape

  def _dropout(self, rate: float) -> None:
    self.layers.append(arch.Dropout(float(rate)))

  def _flatten(self, shape):
    if len(shape) == 1:
      return shape
    h, w, c = shape
    if (h, w) != (1, 1):
      raise self.fail(f'it flattens a {c}x{h}x{w} map; only a 1x1 map (after '
                      'pooling to 1x1) can be flattened')
    return (c,)

  def _softmax(self, dim, node, shape):
    if any(u.op != 'output' for u in node.users):
      raise self.fail('(log_)softmax imports only as the last op, before return')
    if dim not in (1, -1, None) or len(shape) != 1:  # None: 2-D input, dim 1
      raise self.fail('(log_)softmax imports only over the classes of (N, C) '
                      'logits (dim 1 or -1)')
    # Training takes cross-entropy on the logits: the same loss as NLL on
    # log_softmax, so the spec ends at the logits.
    return shape
