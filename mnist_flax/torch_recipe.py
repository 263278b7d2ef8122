"""PyTorch's side of a config's recipe: optimiser, LR scheduler, augmentation.

Written once for `compare` and `bench`, as the seeds' PyTorch code builds it:
torch.optim's SGD or Adam (coupled weight decay), OneCycleLR, StepLR, a
constant LR or the piecewise per-epoch table, the scheduler stepped after every
batch; and `augment.augment`'s pipeline drawn as it draws, for a whole batch
(`augment`: jitter, then grid_sample's warp, jitter, cutout) or, for the seeds'
rotations and shifts only, per sample in a DataLoader (`AugmentedMNIST`, PIL).
`optim.py` and `augment.py` are the JAX side; tests/test_optim.py holds the
schedules equal at every step of whole runs. PyTorch is imported on use: the
package imports without it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np

from mnist_flax import augment as augment_lib
from mnist_flax import optim, torch_interop
from mnist_flax.errors import ConfigError, unknown


def create_optimizer(config: ml_collections.ConfigDict, parameters: Iterable[Any],
                     steps_per_epoch: int) -> tuple[Any, Any]:
  """torch.optim's optimiser and LR scheduler for the config, as `optim.py`'s.

  Args:
    config: the run's config (`config.py`): its optimizer and schedule.
    parameters: what the optimiser trains, as for any torch.optim optimiser.
    steps_per_epoch: batches an epoch; StepLR's step_size counts epochs.

  Returns:
    (optimizer, scheduler); call scheduler.step() after every optimizer.step().
  """
  torch = torch_interop.require_torch()
  opt, sch = config.optimizer, config.schedule
  # OneCycleLR overwrites the LR with its own start, max_lr / div_factor; the
  # piecewise schedule's LambdaLR multiplies 1 by its table.
  lr = {'onecycle': sch.max_lr, 'piecewise': 1.0}.get(sch.name, opt.learning_rate)
  if opt.name == 'sgd':
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay, nesterov=opt.nesterov)
  elif opt.name == 'adam':
    optimizer = torch.optim.Adam(parameters, lr=lr, betas=(opt.b1, opt.b2),
                                 eps=opt.eps, weight_decay=opt.weight_decay)
  else:
    raise unknown('optimizer', opt.name, optim.OPTIMIZERS)
  schedulers = torch.optim.lr_scheduler
  if sch.name == 'onecycle':
    scheduler = schedulers.OneCycleLR(
        optimizer, max_lr=sch.max_lr, total_steps=config.num_epochs * steps_per_epoch,
        pct_start=sch.pct_start, div_factor=sch.div_factor,
        final_div_factor=sch.final_div_factor, cycle_momentum=sch.cycle_momentum,
        base_momentum=sch.base_momentum, max_momentum=sch.max_momentum)
  elif sch.name == 'step':
    # Stepped per batch, StepLR counts batches: step_size epochs of them.
    scheduler = schedulers.StepLR(optimizer, sch.step_size * steps_per_epoch, sch.gamma)
  elif sch.name == 'constant':
    scheduler = schedulers.LambdaLR(optimizer, lambda _: 1.0)
  elif sch.name == 'piecewise':
    total = config.num_epochs * steps_per_epoch
    with jax.enable_x64(True):  # PyTorch keeps its LRs in float64
      lrs = np.asarray(jax.vmap(optim.piecewise_lr(config.num_epochs, steps_per_epoch,
                                                   sch.knots))(np.arange(total)))
    scheduler = schedulers.LambdaLR(optimizer, lambda t: float(lrs[min(t, total - 1)]))
  else:
    raise unknown('schedule', sch.name, optim.SCHEDULES)
  return optimizer, scheduler


def random_affine_params(n: int, aug: ml_collections.ConfigDict, size: int = 28,
                         generator: Any = None) -> tuple[Any, Any]:
  """Per image, an angle and a shift drawn as `augment.random_affine` draws them.

  Args:
    n: how many images.
    aug: the config's `augment` (degrees, translate, integer_shift).
    size: the images' side in pixels.
    generator: a torch.Generator; None draws from torch's global one, which a
      DataLoader seeds differently in each worker.

  Returns:
    Angles in radians from U(-degrees, degrees), shape (n,), and (x, y) shifts
    of U(-translate, translate) * size pixels, rounded if aug.integer_shift,
    shape (n, 2).
  """
  torch = torch_interop.require_torch()
  # Drawn as torchvision's RandomAffine draws, in few tensor operations: one
  # sample's draw in a DataLoader costs what it costs PyTorch users.
  angle = torch.empty(n).uniform_(-aug.degrees, aug.degrees, generator=generator)
  max_shift = aug.translate * size
  shift = torch.empty(n, 2).uniform_(-max_shift, max_shift, generator=generator)
  return torch.deg2rad(angle), torch.round(shift) if aug.integer_shift else shift


def _inverse_map(cos: Any, sin: Any, dx: Any, dy: Any) -> tuple[tuple[Any, ...], ...]:
  """The two rows of the output -> input map about the image centre, which
  undoes the shift (dx, dy), then rotates counter-clockwise (as torchvision and
  augment.py) by the angle of `cos` and `sin`: floats, or tensors of N maps."""
  return ((cos, -sin, -(cos * dx - sin * dy)),
          (sin, cos, -(sin * dx + cos * dy)))


def cutout(x: Any, size: int, generator: Any = None) -> Any:
  """`augment.cutout` for an (N, ..., H, W) tensor, on its device: per image a
  `size` x `size` square set to 0, centred on a pixel drawn uniformly, clipped
  at the border. `generator` as in `random_affine_params`."""
  if augment_lib.cutout_is_off(size):
    return x
  torch = torch_interop.require_torch()
  n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
  top = torch.randint(0, h, (n, 1, 1), generator=generator).to(x.device) - size // 2
  left = torch.randint(0, w, (n, 1, 1), generator=generator).to(x.device) - size // 2
  rows = torch.arange(h, device=x.device)[:, None]
  cols = torch.arange(w, device=x.device)
  hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
  return x.masked_fill(hole.view(n, *[1] * (x.ndim - 3), h, w), 0.0)


def _chosen(n: int, p: float, generator: Any, device: Any) -> Any:
  """(n, 1, 1, 1) booleans, each True with probability p."""
  torch = torch_interop.require_torch()
  return (torch.rand(n, generator=generator) < p).view(n, 1, 1, 1).to(device)


def augment(x: Any, aug: ml_collections.ConfigDict, generator: Any = None) -> Any:
  """`augment.augment` for an (N, 1, H, H) batch in [0, 1]: torchvision-style
  jitter, the warp (rotation, shift, scale; bilinear or nearest; the fill or a
  reflected border; each image with probability warp_p), albumentations-style
  jitter, then `cutout`. `generator` as in `random_affine_params`."""
  if aug.jitter not in augment_lib.JITTERS:
    raise unknown('augment.jitter', aug.jitter, augment_lib.JITTERS)
  if aug.jitter == 'torchvision':
    x = _jitter(x, aug, generator)
  x = _warp(x, aug, generator)
  if aug.jitter == 'albumentations':
    x = _jitter(x, aug, generator)
  return cutout(x, aug.cutout, generator)


def _warp(x: Any, aug: ml_collections.ConfigDict, generator: Any) -> Any:
  """`augment`'s warp: the draws, then `warp`, each image kept with
  probability warp_p."""
  if aug.degrees == aug.translate == aug.scale == 0:
    return x
  torch = torch_interop.require_torch()
  n, size = x.shape[0], x.shape[-1]
  angle, shift = random_affine_params(n, aug, size, generator)
  zoom = torch.empty(n).uniform_(1 - aug.scale, 1 + aug.scale, generator=generator)
  warped = warp(x, angle, shift, zoom, aug)
  if aug.warp_p >= 1:
    return warped
  return torch.where(_chosen(n, aug.warp_p, generator, x.device), warped, x)


def warp(x: Any, angle: Any, shift: Any, zoom: Any,
         aug: ml_collections.ConfigDict) -> Any:
  """Zooms each image of an (N, 1, H, H) batch by `zoom` and turns it by `angle`
  (radians) about its centre, then shifts it by `shift` (x, y) pixels, as
  `augment._warp`, with grid_sample: aug.interpolation, and aug.fill outside
  the image or the image reflected there (aug.border)."""
  if aug.border not in augment_lib.BORDERS:
    raise unknown('augment.border', aug.border, augment_lib.BORDERS)
  torch = torch_interop.require_torch()
  n, size = x.shape[0], x.shape[-1]
  (a, b, tx), (c, d, ty) = _inverse_map(torch.cos(angle), torch.sin(angle),
                                        shift[:, 0], shift[:, 1])
  centre = (size - 1) / 2
  coords = torch.arange(size, dtype=angle.dtype) - centre
  view = lambda t: t.view(n, 1, 1)
  # Output pixel (row i, column j) about the centre, unzoomed, then mapped back.
  u = coords.view(1, 1, size) / view(zoom)  # columns
  v = coords.view(1, size, 1) / view(zoom)  # rows
  src_x = view(a) * u + view(b) * v + view(tx) / view(zoom) + centre
  src_y = view(c) * u + view(d) * v + view(ty) / view(zoom) + centre
  # align_corners=True: -1 and 1 are the centres of the border pixels, about
  # which 'reflection' mirrors: OpenCV's BORDER_REFLECT_101.
  grid = torch.stack([src_x, src_y], -1) / (size - 1) * 2 - 1
  padding = 'reflection' if aug.border == 'reflect' else 'zeros'
  fill = aug.fill if aug.border == 'constant' else 0.0
  return torch.nn.functional.grid_sample(
      x - fill, grid.to(x.device, x.dtype), mode=aug.interpolation,
      padding_mode=padding, align_corners=True) + fill


def _jitter(x: Any, aug: ml_collections.ConfigDict, generator: Any) -> Any:
  """`augment.color_jitter`: the draws, then `jitter`, each image kept with
  probability jitter_p."""
  if aug.brightness == aug.contrast == 0:
    return x
  torch = torch_interop.require_torch()
  n = x.shape[0]
  b = torch.empty(n).uniform_(-aug.brightness, aug.brightness, generator=generator)
  c = torch.empty(n).uniform_(-aug.contrast, aug.contrast, generator=generator)
  first = torch.rand(n, generator=generator) < 0.5
  jittered = jitter(x, b, c, first, aug.jitter)
  if aug.jitter_p >= 1:
    return jittered
  return torch.where(_chosen(n, aug.jitter_p, generator, x.device), jittered, x)


def jitter(x: Any, b: Any, c: Any, brightness_first: Any, style: str) -> Any:
  """An (N, 1, H, W) batch in [0, 1] jittered by its draws, as `augment`'s
  torchvision_jitter (factors 1 + b and 1 + c, in the order `brightness_first`
  says) or albumentations_jitter (alpha 1 + c, beta b)."""
  torch = torch_interop.require_torch()
  view = lambda t: t.view(-1, 1, 1, 1).to(x.device)
  b, c, brightness_first = view(b), view(c), view(brightness_first)
  if style == 'torchvision':
    def bright(v):
      return torch.floor(torch.clamp((1 + b) * v, 0, 255))

    def contrast(v):
      mean = torch.floor(v.mean((1, 2, 3), keepdim=True) + 0.5)
      return torch.floor(torch.clamp(mean + (1 + c) * (v - mean), 0, 255))

    levels = torch.round(x * 255)  # whole grey levels, as augment.py
    levels = torch.where(brightness_first, contrast(bright(levels)),
                         bright(contrast(levels)))
  else:
    levels = torch.where((c == 0) & (b == 0), x * 255,
                         torch.floor(torch.clamp((1 + c) * x * 255 + 255 * b, 0, 255)))
  return levels / 255


class AugmentedMNIST:
  """A map-style dataset that warps each sample with PIL, as torchvision's
  RandomAffine does, then applies ToTensor, `cutout` and Normalize: how the
  seeds' loaders fed PyTorch (cutout added). The warp and the cutout are
  `augment`'s, drawn from torch's global generator."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               config: ml_collections.ConfigDict):
    """uint8 (N, H, H) images and their labels; the config's augment, mean, std."""
    aug = config.augment
    if (aug.scale or aug.fill or aug.border != 'constant' or aug.warp_p != 1
        or not aug.integer_shift or aug.brightness or aug.contrast):
      raise ConfigError(
          "the per-sample PIL loader warps as the seeds' RandomAffine only: turn "
          'off augment.scale, fill, border, warp_p, integer_shift, brightness and '
          'contrast, or train with the batched recipe (compare)')
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self._image = Image
    self._resample = {'nearest': Image.Resampling.NEAREST,
                      'bilinear': Image.Resampling.BILINEAR}[config.augment.interpolation]
    self.images, self.labels, self.config = images, labels, config
    self._torch = torch_interop.require_torch()

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> tuple[Any, int]:
    aug = self.config.augment
    image = self._image.fromarray(self.images[i])
    if aug.degrees or aug.translate:
      size = image.width
      angle, shift = random_affine_params(1, aug, size)
      angle, (dx, dy) = float(angle[0]), shift[0].tolist()
      (a, b, tx), (c, d, ty) = _inverse_map(math.cos(angle), math.sin(angle), dx, dy)
      # PIL maps pixel coordinates, the centre at size / 2 (pixel i spans
      # [i, i + 1)): move the origin there and back.
      middle = size / 2
      matrix = (a, b, tx + middle - (a + b) * middle,
                c, d, ty + middle - (c + d) * middle)
      image = image.transform(image.size, self._image.Transform.AFFINE, matrix,
                              resample=self._resample)
    x = self._torch.from_numpy(np.asarray(image, np.float32) / 255.0)[None]
    x = cutout(x, aug.cutout)
    return (x - self.config.mean) / self.config.std, int(self.labels[i])
