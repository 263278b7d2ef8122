"""python -m mnist_flax.summary --model=NAME: layer table and receptive fields.

Both tables are computed from the network's spec in `architectures.py`.
"""

from __future__ import annotations

import sys

from absl import flags

from mnist_flax import architectures as arch
from mnist_flax import cli
from mnist_flax.errors import UserError

_MODEL = flags.DEFINE_string('model', 'v36',
                             f'One of: {", ".join(arch.NETWORKS)}; v36:C1-C2-C3-C4-C5; '
                             'torch:PATH.py:CLASS (runs that file).')
_MODEL_KWARGS = flags.DEFINE_string('model_kwargs', '', "A torch: model's constructor "
                                    'arguments, a JSON object.')


def _label(layer: arch.Layer) -> str:
  name = getattr(layer, 'name', '')
  kind = type(layer).__name__
  if isinstance(layer, arch.CONVS):
    multiplier = getattr(layer, 'multiplier', 1)  # DepthwiseConv's
    groups = getattr(layer, 'group_count', 1)  # Conv's
    kind += (f' {layer.kernel}x{layer.kernel}'
             + (f' s{layer.stride}' if layer.stride > 1 else '')
             + (f' p{layer.padding}' if layer.padding else '')
             + (f' d{layer.dilation}' if layer.dilation > 1 else '')
             + (f' g{groups}' if groups > 1 else '')
             + (f' x{multiplier}' if multiplier > 1 else ''))
  elif isinstance(layer, arch.Dropout):
    kind += f' p={layer.rate:g}'
  return f'{name} ({kind})' if name else kind


def _chw(shape: tuple[int, int, int]) -> str:
  h, w, c = shape
  return f'[-1, {c}, {h}, {w}]'  # torchsummary's NCHW order


def layer_table(network: arch.Network) -> str:
  """A torchsummary-like table and the total against the 8,000 limit."""
  rule = '-' * 66
  rows = [rule, f'{"Layer (type)":>28} {"Output Shape":>22} {"Param #":>14}',
          '=' * 66]
  total = 0
  for info in arch.walk(network):
    rows.append(f'{_label(info.layer):>28} {_chw(info.out_shape):>22} '
                f'{info.params:>14,}')
    total += info.params
  ok = total < arch.PARAM_LIMIT
  rows += ['=' * 66, f'Total params: {total:,}',
           f'Parameter limit: {"PASS" if ok else "FAIL"} ({total:,} '
           f'{"<" if ok else ">="} {arch.PARAM_LIMIT:,})', rule]
  return '\n'.join(rows)


def rf_table(network: arch.Network) -> str:
  """k, s, jump and RF per spatial layer (RF_out = RF_in + (k - 1) * J_in)."""
  rows = [f'{"Layer":>28} {"k":>3} {"s":>3} {"J_in":>5} {"RF_in":>6} '
          f'{"J_out":>6} {"RF_out":>7}',
          f'{"input":>28} {"-":>3} {"-":>3} {1:>5} {1:>6} {1:>6} {1:>7}']
  for info in arch.walk(network):
    if isinstance(info.layer, (*arch.CONVS, arch.MaxPool, arch.GlobalAvgPool)):
      rows.append(f'{_label(info.layer):>28} {info.kernel:>3} {info.stride:>3} '
                  f'{info.jump_in:>5} {info.rf_in:>6} {info.jump_out:>6} '
                  f'{info.rf_out:>7}')
  rows.append(f'Receptive field of the output: {arch.receptive_field(network)} '
              f'(input {arch.INPUT_SHAPE[0]}x{arch.INPUT_SHAPE[1]})')
  return '\n'.join(rows)


def main(argv: list[str]) -> None:
  del argv
  try:
    network = arch.get_network(_MODEL.value, _MODEL_KWARGS.value)
  except UserError as e:
    sys.exit(f'error: {e}')
  print(f'{_MODEL.value}\n{layer_table(network)}\n\n{rf_table(network)}')


if __name__ == '__main__':
  cli.run(main)
