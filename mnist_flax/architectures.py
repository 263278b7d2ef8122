"""The seeds' networks, written once as data.

Each network is a tuple of layer specs. The Flax module (`models.py`), the layer
summary, the receptive-field table and the parameter counts are all derived from
these tuples, so a network is described in exactly one place.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Union

from mnist_flax.errors import ConfigError, unknown


@dataclasses.dataclass(frozen=True)
class Conv:
  """A square 2-D convolution, stride 1 in every network of NETWORKS; `stride`
  and `group_count` (PyTorch's `groups`) for imported ones (torch_import.py)."""

  name: str
  features: int
  kernel: int = 3
  padding: int = 0
  bias: bool = False
  dilation: int = 1
  stride: int = 1
  group_count: int = 1

  def out_channels(self, in_channels: int) -> int:
    """`features`, whatever comes in."""
    return self.features

  def groups(self, in_channels: int) -> int:
    """PyTorch's `groups` (Flax's feature_group_count): 1 for a dense conv."""
    return self.group_count


@dataclasses.dataclass(frozen=True)
class DepthwiseConv:
  """A square depthwise convolution, stride 1: one group per input channel,
  each with `multiplier` filters, so in_channels * multiplier channels out."""

  name: str
  kernel: int = 3
  padding: int = 0
  multiplier: int = 1
  bias: bool = False
  dilation: int = 1
  stride: int = 1

  def out_channels(self, in_channels: int) -> int:
    """`multiplier` channels per input channel."""
    return in_channels * self.multiplier

  def groups(self, in_channels: int) -> int:
    """One group per input channel."""
    return in_channels


@dataclasses.dataclass(frozen=True)
class BatchNorm:
  """PyTorch's BatchNorm2d: `momentum` None takes the run's config.bn_momentum;
  affine=False has no scale or bias (only the running statistics)."""

  name: str
  eps: float = 1e-5
  momentum: float | None = None
  affine: bool = True


@dataclasses.dataclass(frozen=True)
class ReLU:
  pass


@dataclasses.dataclass(frozen=True)
class MaxPool:
  window: int = 2


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
  pass


@dataclasses.dataclass(frozen=True)
class Dropout:
  """Zeroes each activation with probability `rate` in training, scaling the
  rest by 1 / (1 - rate), as PyTorch's nn.Dropout; the identity in evaluation."""

  rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class Linear:
  """A fully connected layer on a 1x1 map: PyTorch's nn.Linear after the map is
  flattened to (N, C); its weight is (features, C) where a 1x1 conv's is
  (features, C, 1, 1)."""

  name: str
  features: int
  bias: bool = True


Layer = Union[Conv, DepthwiseConv, BatchNorm, ReLU, MaxPool, GlobalAvgPool,
              Dropout, Linear]
Network = tuple[Layer, ...]
# The layers with weights of shape (out, in / groups, k, k); the others with
# parameters are BatchNorm and Linear.
CONVS = (Conv, DepthwiseConv)


def span(layer: Conv | DepthwiseConv) -> int:
  """The effective (dilated) kernel size: d * (k - 1) + 1 input pixels."""
  return layer.dilation * (layer.kernel - 1) + 1


INPUT_SHAPE = (28, 28, 1)  # H, W, C
PARAM_LIMIT = 8_000
TINY_PARAM_LIMIT = 4_000  # configs/tiny.py's and the sub-4K screens' budget


def block(index: int | str, features: int, kernel: int = 3, padding: int = 0,
          bias: bool = False, dilation: int = 1) -> Network:
  """conv{index} -> bn{index} -> ReLU, the seeds' building block."""
  return (Conv(f'conv{index}', features, kernel, padding, bias, dilation),
          BatchNorm(f'bn{index}'), ReLU())


def separable(index: int | str, features: int, kernel: int = 3, padding: int = 0,
              multiplier: int = 1) -> Network:
  """dw{index} (depthwise k x k) -> pw{index} (1x1) -> bn{index} -> ReLU: a
  block's receptive field for k * k * C * m + C * m * features weights instead
  of k * k * C * features. No biases: BatchNorm follows and would cancel them."""
  return (DepthwiseConv(f'dw{index}', kernel, padding, multiplier),
          Conv(f'pw{index}', features, kernel=1),
          BatchNorm(f'bn{index}'), ReLU())


V36_CHANNELS = (8, 10, 12, 16, 16)


def _v36(bias: bool, channels: tuple[int, ...] = V36_CHANNELS,
         conv4_dilation: int = 1, early_padding: int = 0) -> Network:
  # First seed, OptimizedNetV36: conv_final (1x1) comes before GAP.
  c1, c2, c3, c4, c5 = channels
  # conv4 sees a 5x5 map; padding d - 1 keeps its 3x3 output at any dilation d
  # (5 + 2(d - 1) - 2d = 3), so conv5 still ends at 1x1.
  # early_padding=1 keeps conv1..conv3 at their input's size (28, 14), so conv4
  # sees 7x7 and conv5 5x5, and GAP averages conv_final over a 3x3 map: the
  # same weights applied at more positions.
  p = early_padding
  return (*block(1, c1, padding=p, bias=bias), *block(2, c2, padding=p, bias=bias),
          MaxPool(), *block(3, c3, padding=p, bias=bias), MaxPool(),
          *block(4, c4, padding=conv4_dilation - 1, bias=bias,
                 dilation=conv4_dilation),
          *block(5, c5, bias=bias),
          Conv('conv_final', 10, kernel=1, bias=True), GlobalAvgPool())


def _v36_separable(channels: tuple[int, int, int, int, int],
                   multiplier: int = 1) -> Network:
  """V36's layout with conv3..conv5 as depthwise-separable blocks (no biases
  before BatchNorm); `multiplier` widens block 3's depthwise conv."""
  c1, c2, c3, c4, c5 = channels
  return (*block(1, c1), *block(2, c2), MaxPool(),
          *separable(3, c3, multiplier=multiplier), MaxPool(),
          *separable(4, c4), *separable(5, c5),
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


MODEL3_CHANNELS = (10, 10, 10, 16, 16, 8, 8, 8, 16)


def _model_3(channels: tuple[int, ...] = MODEL3_CHANNELS) -> Network:
  # conv1..conv8 (conv7b and conv8 the 1x1 transitions).
  c1, c2, c3, c4, c5, c6, c7, c7b, c8 = channels
  return (*block(1, c1, padding=1), *block(2, c2, padding=1),
          *block(3, c3, padding=1), MaxPool(),
          *block(4, c4), *block(5, c5), *block(6, c6), *block(7, c7),
          *block('7b', c7b, kernel=1), *block(8, c8, kernel=1),
          GlobalAvgPool(), Conv('conv_final', 10, kernel=1))


def _eva6() -> Network:
  """Anchor A, vivek-a81/EVA6's Session5 Model4 (docs/anchors.md, A.2): valid
  convs, dropout after every 3x3 block, and a head after GAP: a 1x1 conv,
  BatchNorm (over the batch of 1x1 maps), ReLU, dropout, a bias-free 1x1 conv."""
  drop = Dropout(0.025)
  return (*block(1, 8), drop, *block(2, 16), drop, MaxPool(),
          *block(3, 8, kernel=1),
          *block(4, 12), drop, *block(5, 16), drop, *block(6, 20), drop,
          GlobalAvgPool(), *block(7, 16, kernel=1), drop,
          Conv('conv_final', 10, kernel=1))


def _woolly() -> Network:
  """Anchor B, adilsammar/woolly-of-cv's 3,762-parameter Net (docs/anchors.md,
  B.2): three blocks of three padded, biased 3x3 convs (4, 8, 8 channels), the
  first two pooled and followed by dropout, then GAP and a biased 1x1 conv."""
  def three(first: int, features: int) -> Network:
    return tuple(part for i in range(first, first + 3)
                 for part in block(i, features, padding=1, bias=True))

  drop = Dropout(0.01)
  return (*three(1, 4), MaxPool(), drop, *three(4, 8), MaxPool(), drop,
          *three(7, 8), GlobalAvgPool(), Conv('conv_final', 10, kernel=1, bias=True))


NETWORKS: dict[str, Network] = {
    # The training log's 6,260 parameters need a bias on conv1..conv5.
    'v36': _v36(bias=True),
    # The code block as printed (bias=False): 6,198 parameters.
    'v36_nobias': _v36(bias=False),
    'model1': _model_1(),
    'model2': _model_2(),
    'model3': _model_3(),
    # Candidate layouts screened for the champion and tiny (no biases before BatchNorm).
    # V36 with depthwise-separable conv3..conv5, widths 12-24-32-40-40: 7,918.
    'v36sep': _v36_separable((12, 24, 32, 40, 40)),
    # The same at 16-20-24-32-32, block 3's depthwise conv doubling 20 to 40: 7,218.
    'v36sep_m2': _v36_separable((16, 20, 24, 32, 32), multiplier=2),
    # Under 4,000: the separable V36 at 10-16-20-24-24: 3,884.
    'v36sep_tiny': _v36_separable((10, 16, 20, 24, 24)),
    # V36 (with its biases) and conv4 dilated 2, padding 1: 6,260, receptive field 36.
    'v36_dil4': _v36(bias=True, conv4_dilation=2),
    # Model 3's layout at V36's budget: 8 channels in the first block, 14 in conv4-5: 6,116.
    'model3_6k': _model_3((8, 8, 8, 14, 14, 8, 8, 8, 16)),
    # The champion's and tiny's widths with conv1..conv3 padded (more positions,
    # the same parameters): 7,682 and 3,856.
    'v36pad': _v36(bias=True, channels=(8, 12, 14, 18, 16), early_padding=1),
    'v36pad_tiny': _v36(bias=True, channels=(6, 8, 10, 12, 12), early_padding=1),
    # The public anchors (docs/anchors.md): 7,496 and 3,762.
    'eva6': _eva6(),
    'woolly': _woolly(),
}


TORCH_PREFIX = 'torch:'  # 'torch:PATH.py:CLASS', a user's nn.Module (torch_import.py)


def get_network(name: str, model_kwargs: str = '') -> Network:
  """The named network, V36's layout with other widths for a name such as
  'v36:8-12-14-18-16' (conv1..conv5's channels), or a user's PyTorch class for
  'torch:PATH.py:CLASS', built with `model_kwargs` (a JSON object,
  config.model_kwargs) and translated; a ConfigError otherwise."""
  if name.startswith(TORCH_PREFIX):
    # Imported on use: PyTorch is an optional extra.
    from mnist_flax import torch_import  # pylint: disable=g-import-not-at-top
    return torch_import.import_network(name, model_kwargs).network
  if model_kwargs:
    raise ConfigError(f'model_kwargs is for torch:PATH.py:CLASS models, not {name!r}; '
                      "set --config.model_kwargs=''")
  if name in NETWORKS:
    return NETWORKS[name]
  family, _, widths = name.partition(':')
  if family == 'v36' and re.fullmatch(r'[1-9]\d*(-[1-9]\d*){4}', widths):
    return _v36(bias=True, channels=tuple(int(w) for w in widths.split('-')))
  raise unknown('model', name, [*NETWORKS, 'v36:C1-C2-C3-C4-C5',
                                'torch:PATH.py:CLASS'])


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One row of a network summary, all derived from the spec."""

  layer: Layer
  in_shape: tuple[int, int, int]   # H, W, C
  out_shape: tuple[int, int, int]
  params: int
  kernel: int      # receptive-field terms (1 and 1 for pointwise layers;
  stride: int      # a dilated conv's kernel is its span)
  jump_in: int
  rf_in: int
  jump_out: int
  rf_out: int


def walk(network: Network,
         input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Iterator[LayerInfo]:
  """Yields shape, parameter count and receptive field for every layer.

  The receptive field follows the first seed's recurrence:
  RF_out = RF_in + (k - 1) * J_in and J_out = J_in * s, with k a dilated
  conv's span d * (k - 1) + 1. Global average pooling counts as a k = H pool,
  since each output then sees the whole map.
  """
  shape = input_shape
  jump, rf = 1, 1
  for layer in network:
    h, w, c = shape
    k, s, params = 1, 1, 0
    out = shape
    if isinstance(layer, CONVS):
      k = span(layer)  # a dilated kernel's receptive field and shape
      s = layer.stride
      c_out = layer.out_channels(c)
      params = (layer.kernel ** 2 * c // layer.groups(c) * c_out
                + (c_out if layer.bias else 0))
      size = lambda n: (n + 2 * layer.padding - k) // s + 1  # PyTorch's floor
      out = (size(h), size(w), c_out)
    elif isinstance(layer, BatchNorm):
      params = 2 * c if layer.affine else 0
    elif isinstance(layer, Linear):
      if (h, w) != (1, 1):
        raise ValueError(f'{layer} needs a 1x1 map, not {h}x{w}')
      params = c * layer.features + (layer.features if layer.bias else 0)
      out = (1, 1, layer.features)
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
