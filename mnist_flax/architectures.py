"""The seeds' networks, written once as data.

Each network is a tuple of layer specs. The Flax module (`models.py`), the layer
summary, the receptive-field table and the parameter counts are all derived from
these tuples, so a network is described in exactly one place.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Union

from mnist_flax.errors import unknown


@dataclasses.dataclass(frozen=True)
class Conv:
  """A square 2-D convolution, stride 1 (as every conv in the seeds)."""

  name: str
  features: int
  kernel: int = 3
  padding: int = 0
  bias: bool = False


@dataclasses.dataclass(frozen=True)
class BatchNorm:
  name: str


@dataclasses.dataclass(frozen=True)
class ReLU:
  pass


@dataclasses.dataclass(frozen=True)
class MaxPool:
  window: int = 2


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
  pass


Layer = Union[Conv, BatchNorm, ReLU, MaxPool, GlobalAvgPool]
Network = tuple[Layer, ...]

INPUT_SHAPE = (28, 28, 1)  # H, W, C
PARAM_LIMIT = 8_000


def block(index: int | str, features: int, kernel: int = 3, padding: int = 0,
          bias: bool = False) -> Network:
  """conv{index} -> bn{index} -> ReLU, the seeds' building block."""
  return (Conv(f'conv{index}', features, kernel, padding, bias),
          BatchNorm(f'bn{index}'), ReLU())


V36_CHANNELS = (8, 10, 12, 16, 16)


def _v36(bias: bool, channels: tuple[int, ...] = V36_CHANNELS) -> Network:
  # First seed, OptimizedNetV36: conv_final (1x1) comes before GAP.
  c1, c2, c3, c4, c5 = channels
  return (*block(1, c1, bias=bias), *block(2, c2, bias=bias), MaxPool(),
          *block(3, c3, bias=bias), MaxPool(),
          *block(4, c4, bias=bias), *block(5, c5, bias=bias),
          Conv('conv_final', 10, kernel=1, bias=True), GlobalAvgPool())


def _model_1() -> Network:
  return (*block(1, 8), *block(2, 16), *block(3, 8), MaxPool(),
          *block(4, 16), *block(5, 8), *block(6, 16), *block(7, 8),
          GlobalAvgPool(), Conv('conv_final', 10, kernel=1))


def _model_2() -> Network:
  return (*block(1, 10), *block(2, 10), *block(3, 10), MaxPool(),
          *block(4, 16), *block(5, 16), *block(6, 8), *block(7, 8),
          *block(8, 16, kernel=1),
          GlobalAvgPool(), Conv('conv_final', 10, kernel=1))


def _model_3() -> Network:
  return (*block(1, 10, padding=1), *block(2, 10, padding=1),
          *block(3, 10, padding=1), MaxPool(),
          *block(4, 16), *block(5, 16), *block(6, 8), *block(7, 8),
          *block('7b', 8, kernel=1), *block(8, 16, kernel=1),
          GlobalAvgPool(), Conv('conv_final', 10, kernel=1))


NETWORKS: dict[str, Network] = {
    # The training log's 6,260 parameters need a bias on conv1..conv5.
    'v36': _v36(bias=True),
    # The code block as printed (bias=False): 6,198 parameters.
    'v36_nobias': _v36(bias=False),
    'model1': _model_1(),
    'model2': _model_2(),
    'model3': _model_3(),
}


def get_network(name: str) -> Network:
  """The named network, or V36's layout with other widths for a name such as
  'v36:8-12-14-18-16' (conv1..conv5's channels); a ConfigError otherwise."""
  if name in NETWORKS:
    return NETWORKS[name]
  family, _, widths = name.partition(':')
  if family == 'v36' and re.fullmatch(r'[1-9]\d*(-[1-9]\d*){4}', widths):
    return _v36(bias=True, channels=tuple(int(w) for w in widths.split('-')))
  raise unknown('model', name, [*NETWORKS, 'v36:C1-C2-C3-C4-C5'])


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One row of a network summary, all derived from the spec."""

  layer: Layer
  in_shape: tuple[int, int, int]   # H, W, C
  out_shape: tuple[int, int, int]
  params: int
  kernel: int      # receptive-field terms; 1 and 1 for pointwise layers
  stride: int
  jump_in: int
  rf_in: int
  jump_out: int
  rf_out: int


def walk(network: Network,
         input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Iterator[LayerInfo]:
  """Yields shape, parameter count and receptive field for every layer.

  The receptive field follows the first seed's recurrence:
  RF_out = RF_in + (k - 1) * J_in and J_out = J_in * s. Global average pooling
  counts as a k = H pool, since each output then sees the whole map.
  """
  shape = input_shape
  jump, rf = 1, 1
  for layer in network:
    h, w, c = shape
    k, s, params = 1, 1, 0
    out = shape
    if isinstance(layer, Conv):
      k = layer.kernel
      params = k * k * c * layer.features + (layer.features if layer.bias else 0)
      size = lambda n: n + 2 * layer.padding - k + 1
      out = (size(h), size(w), layer.features)
    elif isinstance(layer, BatchNorm):
      params = 2 * c
    elif isinstance(layer, MaxPool):
      k = s = layer.window
      out = (h // s, w // s, c)
    elif isinstance(layer, GlobalAvgPool):
      k = h
      out = (1, 1, c)
    if min(out[:2]) < 1:
      raise ValueError(f'{layer} shrinks the {h}x{w} feature map below 1x1')
    info = LayerInfo(layer, shape, out, params, k, s, jump, rf,
                     jump * s, rf + (k - 1) * jump)
    shape, jump, rf = out, info.jump_out, info.rf_out
    yield info


def param_count(network: Network) -> int:
  """Trainable parameters as PyTorch counts them (BN scale and bias, no stats)."""
  return sum(info.params for info in walk(network))


def receptive_field(network: Network) -> int:
  return list(walk(network))[-1].rf_out


def output_shape(network: Network) -> tuple[int, int, int]:
  return list(walk(network))[-1].out_shape
