"""Flax (Linen) modules that interpret the layer specs in `architectures.py`."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_flax import architectures as arch
from mnist_flax.errors import ConfigError, unknown

Initializer = Callable[..., jax.Array]


def flat_draw(init: Initializer) -> Initializer:
  """`init` drawn as a (fan_in, features) matrix and reshaped: the same values
  (threefry numbers follow the flat index), but XLA CPU compiles a 4-D draw in
  about 15 s on some machines, a 2-D one in about 1 s and a 1-D one in 0.2 s
  (docs/performance.md). Flax's init needs 2-D for its fan-in."""

  def draw(key, shape, dtype=jnp.float32):
    return init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)

  return draw


def torch_conv_init(fan_in: int) -> tuple[Initializer, Initializer]:
  """PyTorch's `nn.Conv2d` default: kaiming_uniform(a=sqrt(5)) weights and
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias; both bounds equal 1/sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def uniform(key, shape, dtype=jnp.float32):  # drawn flat, as in flat_draw
    return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound
                              ).reshape(shape)

  return uniform, uniform


def xavier_conv_init(fan_in: int, fan_out: int) -> tuple[Initializer, Initializer]:
  """`nn.init.xavier_uniform_` on a conv's weight, U(-a, a) with
  a = sqrt(6 / (fan_in + fan_out)), and a zero bias: woolly-of-cv's
  initialize_weights (docs/anchors.md, B.3)."""
  bound = math.sqrt(6.0 / (fan_in + fan_out))

  def uniform(key, shape, dtype=jnp.float32):  # drawn flat, as in flat_draw
    return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound
                              ).reshape(shape)

  return uniform, nn.initializers.zeros


# 'xavier': Xavier-uniform convolutions with zero biases; BatchNorm and Linear
# layers as 'torch'.
INITS = ('torch', 'flax', 'xavier')
# 'default': JAX's default precision (full float32 on CPU; TF32 convolutions on
# Ampere and Hopper GPUs); 'float32': full float32 everywhere; 'bfloat16':
# convolutions in bfloat16, BatchNorm and the weights in float32.
PRECISIONS = ('default', 'float32', 'bfloat16')


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch's semantics: momentum 0.1 for the running averages,
  eps 1e-5, and the unbiased batch variance in the running variance."""

  momentum: float = 0.1
  epsilon: float = 1e-5
  affine: bool = True  # False: no scale and bias, as BatchNorm2d(affine=False)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (features,))
      bias = self.param('bias', nn.initializers.zeros, (features,))
    else:
      scale, bias = 1.0, 0.0
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,))
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = x.mean(axes)
      var = jnp.square(x - mean).mean(axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


def _mix(x: jax.Array) -> jax.Array:
  """lowbias32 (C. Wellons' hash prospector): a bijection of uint32 whose every
  output bit flips with probability ~1/2 when any input bit does."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7feb352d)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846ca68b)
  return x ^ (x >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 random bits of `shape`: each element's flat index hashed under two
  words drawn from `key`, a counter-based generator of eight integer operations
  per round. XLA CPU draws threefry's or RngBitGenerator's bits at ~13 ns each
  and this at ~0.2 ns, fused into the layer's own loop (docs/performance.md)."""
  k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)  # 1-D: fast to compile
  return _mix(_mix(index ^ k0) ^ k1)


class Dropout(nn.Module):
  """PyTorch's nn.Dropout: in training each activation is zeroed with
  probability `rate` (exact to 2**-32) and the rest scaled by 1 / (1 - rate);
  the identity in evaluation. Masks come from `hashed_bits` under the
  module's 'dropout' rng: on CPU, threefry's masks for eva6's activations took
  40% of its training step."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0:
      return x
    if self.rate >= 1:
      return jnp.zeros_like(x)
    threshold = jnp.uint32(min(round(self.rate * 2 ** 32), 2 ** 32 - 1))
    keep = hashed_bits(self.make_rng('dropout'), x.shape) >= threshold
    return jnp.where(keep, x / (1 - self.rate), jnp.zeros_like(x))


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping max pooling, flooring odd sizes as PyTorch's MaxPool2d.

  A reshape and max rather than `nn.max_pool`: with XLA's CPU gradient of
  reduce_window (select-and-scatter) the whole V36 step ran 1.2-1.7x slower
  (docs/performance.md).
  """
  n, h, w, c = x.shape
  h, w = h // window, w // window
  x = x[:, :h * window, :w * window]
  return x.reshape(n, h, window, w, window, c).max(axis=(2, 4))


class Net(nn.Module):
  """A network from `architectures.NETWORKS`; NHWC in, logits (N, 10) out."""

  network: arch.Network
  init_scheme: str = 'torch'
  precision: str = 'default'
  bn_momentum: float = 0.1  # BatchNorm's, in PyTorch's convention

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bf16 = self.precision == 'bfloat16'
    # BatchNorm's statistics and the logits stay in the input's float type.
    wide = x.dtype
    for layer in self.network:
      if isinstance(layer, arch.CONVS):
        c_in = x.shape[-1]
        groups = layer.groups(c_in)
        # PyTorch's fans count one group's inputs: (C_in / groups) * k * k.
        fan_in = layer.kernel * layer.kernel * (c_in // groups)
        if self.init_scheme == 'torch':
          kernel_init, bias_init = torch_conv_init(fan_in)
        elif self.init_scheme == 'xavier':
          fan_out = layer.kernel * layer.kernel * layer.out_channels(c_in)
          kernel_init, bias_init = xavier_conv_init(fan_in, fan_out)
        else:
          # The kernel is (k, k, C_in / groups, C_out): Flax's fan_in is per group too.
          kernel_init = flat_draw(nn.linear.default_kernel_init)
          bias_init = nn.initializers.zeros
        pad = layer.padding
        x = nn.Conv(layer.out_channels(c_in), (layer.kernel, layer.kernel),
                    strides=layer.stride,
                    padding=((pad, pad), (pad, pad)), use_bias=layer.bias,
                    kernel_dilation=layer.dilation, feature_group_count=groups,
                    kernel_init=kernel_init, bias_init=bias_init,
                    dtype=jnp.bfloat16 if bf16 else None,
                    precision=('highest' if self.precision == 'float32' else None),
                    name=layer.name)(x)
      elif isinstance(layer, arch.BatchNorm):
        momentum = self.bn_momentum if layer.momentum is None else layer.momentum
        x = BatchNorm(momentum, layer.eps, layer.affine, name=layer.name)(
            x.astype(wide), train)
      elif isinstance(layer, arch.Linear):
        # The 1x1 map stays 4-D: a Dense on its channel axis.
        c_in = x.shape[-1]
        if self.init_scheme in ('torch', 'xavier'):
          kernel_init, bias_init = torch_conv_init(c_in)  # nn.Linear's bounds too
        else:
          kernel_init, bias_init = nn.linear.default_kernel_init, nn.initializers.zeros
        x = nn.Dense(layer.features, use_bias=layer.bias, kernel_init=kernel_init,
                     bias_init=bias_init, dtype=jnp.bfloat16 if bf16 else None,
                     precision=('highest' if self.precision == 'float32' else None),
                     name=layer.name)(x)
      elif isinstance(layer, arch.Dropout):
        # Needs a 'dropout' rng in training (jit_steps.train_step passes one).
        x = Dropout(layer.rate)(x, train)
      elif isinstance(layer, arch.ReLU):
        x = nn.relu(x)
      elif isinstance(layer, arch.MaxPool):
        x = max_pool(x, layer.window)
      elif isinstance(layer, arch.GlobalAvgPool):
        x = x.mean(axis=(1, 2), keepdims=True)
      else:
        raise TypeError(f'unknown layer {layer!r}')
    return x.reshape(x.shape[0], -1).astype(wide)


def create_model(name: str, init: str = 'torch', precision: str = 'default',
                 bn_momentum: float = 0.1, model_kwargs: str = '') -> Net:
  """The named network with 'torch' (PyTorch default) or 'flax' initialisation,
  computing at one of PRECISIONS, its BatchNorms' running averages updated
  with `bn_momentum` (config.bn_momentum) unless the spec sets theirs;
  `model_kwargs`: a torch: model's constructor arguments (config.model_kwargs)."""
  if init not in INITS:
    raise unknown('init', init, INITS)
  if precision not in PRECISIONS:
    raise unknown('precision', precision, PRECISIONS)
  if not 0 < bn_momentum <= 1:
    raise ConfigError(f'bn_momentum must be in (0, 1], not {bn_momentum}: the weight '
                      "of each batch in BatchNorm's running statistics, as PyTorch's")
  return Net(arch.get_network(name, model_kwargs), init, precision, bn_momentum)


def has_dropout(model: Net) -> bool:
  """Whether training `model` needs a 'dropout' rng."""
  return any(isinstance(layer, arch.Dropout) and layer.rate > 0
             for layer in model.network)


def init_variables(model: Net, key: jax.Array) -> dict[str, Any]:
  """{'params': ..., 'batch_stats': ...} for a single 28x28x1 input."""
  return model.init(key, jnp.zeros((1, *arch.INPUT_SHAPE)), train=False)


def num_params(params: Any) -> int:
  """The number of parameters in a params pytree."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
