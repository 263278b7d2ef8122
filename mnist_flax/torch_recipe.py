"""PyTorch's side of a config's recipe: optimiser, LR scheduler, augmentation.

Written once for `compare` and `bench`, as the seeds' PyTorch code builds it:
torch.optim's SGD or Adam (coupled weight decay), OneCycleLR, StepLR or a
constant LR, the scheduler stepped after every batch; and random rotations and
integer shifts drawn as `augment.random_affine` draws them, warped for a whole
batch (`augment`, grid_sample) or per sample in a DataLoader (`AugmentedMNIST`,
PIL), then `augment.cutout`'s square hole. `optim.py` is the JAX side;
tests/test_optim.py holds the two equal at every step of whole runs. PyTorch
is imported on use: the package imports without it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import ml_collections
import numpy as np

from mnist_flax import augment as augment_lib
from mnist_flax import optim, torch_interop
from mnist_flax.errors import unknown


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
  # OneCycleLR overwrites the LR with its own start, max_lr / div_factor.
  lr = sch.max_lr if sch.name == 'onecycle' else opt.learning_rate
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
  else:
    raise unknown('schedule', sch.name, optim.SCHEDULES)
  return optimizer, scheduler


def random_affine_params(n: int, aug: ml_collections.ConfigDict, size: int = 28,
                         generator: Any = None) -> tuple[Any, Any]:
  """Per image, an angle and a shift drawn as `augment.random_affine` draws them.

  Args:
    n: how many images.
    aug: the config's `augment` (degrees, translate).
    size: the images' side in pixels.
    generator: a torch.Generator; None draws from torch's global one, which a
      DataLoader seeds differently in each worker.

  Returns:
    Angles in radians from U(-degrees, degrees), shape (n,), and (x, y) shifts
    of round(U(-translate, translate) * size) pixels, shape (n, 2).
  """
  torch = torch_interop.require_torch()
  # Drawn as torchvision's RandomAffine draws, in few tensor operations: one
  # sample's draw in a DataLoader costs what it costs PyTorch users.
  angle = torch.empty(n).uniform_(-aug.degrees, aug.degrees, generator=generator)
  max_shift = aug.translate * size
  shift = torch.empty(n, 2).uniform_(-max_shift, max_shift, generator=generator)
  return torch.deg2rad(angle), torch.round(shift)


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


def augment(x: Any, aug: ml_collections.ConfigDict, generator: Any = None) -> Any:
  """Rotates and shifts each image of an (N, 1, H, H) batch in [0, 1], then
  cuts out a square (`cutout`) if aug.cutout > 0.

  Bilinear or nearest as aug.interpolation says, black outside the image.
  """
  return cutout(_warp(x, aug, generator), aug.cutout, generator)


def _warp(x: Any, aug: ml_collections.ConfigDict, generator: Any) -> Any:
  """`augment`'s rotation and shift."""
  if aug.degrees == 0 and aug.translate == 0:
    return x
  torch = torch_interop.require_torch()
  n, size = x.shape[0], x.shape[-1]
  angle, shift = random_affine_params(n, aug, size, generator)
  # affine_grid's coordinates run from -1 to 1 across the image.
  shift = shift * 2 / size
  rows = _inverse_map(torch.cos(angle), torch.sin(angle), shift[:, 0], shift[:, 1])
  theta = torch.stack([torch.stack(row, 1) for row in rows], 1).to(x.device)
  grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
  return torch.nn.functional.grid_sample(x, grid, mode=aug.interpolation,
                                         padding_mode='zeros', align_corners=False)


class AugmentedMNIST:
  """A map-style dataset that warps each sample with PIL, as torchvision's
  RandomAffine does, then applies ToTensor, `cutout` and Normalize: how the
  seeds' loaders fed PyTorch (cutout added). The warp and the cutout are
  `augment`'s, drawn from torch's global generator."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               config: ml_collections.ConfigDict):
    """uint8 (N, H, H) images and their labels; the config's augment, mean, std."""
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
