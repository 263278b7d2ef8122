"""Anchor B, 3,762 params: adilsammar/woolly-of-cv's
assets/mnist/notebook/MNIST_ALBUMENTATION_3762_99.52.ipynb, run with the library
of commit 7ade209 (one run: 99.42, 99.45, 99.52 in epochs 13-15). docs/anchors.md
reads it."""

from mnist_flax.config import base_config


def get_config():
  c = base_config()
  c.model = 'woolly'  # padded, biased 3x3 convs in three blocks, dropout 0.01 (B.2)
  c.init = 'xavier'  # utils.initialize_weights (B.3)
  c.batch_size = 32  # 1,875 batches (B.6)
  c.num_epochs = 15
  # ShiftScaleRotate(0.09, 0.09, 7, p=0.5): bilinear, sub-pixel shifts, the
  # border reflected (BORDER_REFLECT_101) (B.4).
  c.augment.degrees = 7.0
  c.augment.translate = 0.09
  c.augment.scale = 0.09
  c.augment.integer_shift = False
  c.augment.interpolation = 'bilinear'
  c.augment.border = 'reflect'
  c.augment.warp_p = 0.5
  # RandomBrightnessContrast(p=0.5), limits 0.2 and 0.2, after the warp.
  c.augment.jitter = 'albumentations'
  c.augment.brightness = 0.2
  c.augment.contrast = 0.2
  c.augment.jitter_p = 0.5
  # SGD with momentum 0: but the OneCycleLR built beside it and never stepped
  # wrote its max_momentum, 0.95, into the optimizer, and nothing changed it
  # back. No weight decay (B.5).
  c.optimizer.name = 'sgd'
  c.optimizer.momentum = 0.95
  c.optimizer.weight_decay = 0.0
  # one_cycle_lr_custom at 7ade209: per epoch, the lines through these knots,
  # stepped as its CustomOneCycleLR steps them (optim.piecewise_lr).
  c.schedule.name = 'piecewise'
  c.schedule.knots = '0:0.05,2:0.1,8:0.01,12:0.005,15:0'
  return c
