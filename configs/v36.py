"""The first seed's OptimizedNetV36 recipe: SGD + OneCycle, 15 epochs."""

from mnist_flax.config import base_config


def get_config():
  c = base_config()
  c.model = 'v36'
  # Not stated, but pinned by the log: only 469 steps an epoch (batch 128)
  # reproduces all 14 printed LRs; 64 and 256 miss (tests/test_optim.py).
  c.batch_size = 128
  c.num_epochs = 15
  # "Hybrid" rotation + translation, magnitudes not stated. Read as the usual
  # RandomAffine(7, translate=(0.1, 0.1)), nearest, the recipe falls short:
  # final-3 average 99.32% over 4 seeds (GPU sweep) and over 3 (CPU, seeds 0-2).
  # Milder warps with bilinear resampling bring the mean to the target, not
  # above it: 99.396% over 15 CPU seeds, 99.425% over 12 GPU seeds (README, docs/results.md).
  # The seed's logged training accuracies match the stronger warp, so this is
  # a replacement for its augmentation, not a reconstruction of it.
  c.augment.degrees = 5.0
  c.augment.translate = 0.05
  c.augment.interpolation = 'bilinear'
  c.optimizer.name = 'sgd'
  c.optimizer.momentum = 0.98  # the seed's value; only used if cycle_momentum=False
  c.optimizer.weight_decay = 5e-5
  # Not stated: plain momentum (PyTorch's default). Nesterov and un-augmented
  # last epochs were screened and not taken (docs/research.md, (j) and (k)).
  c.optimizer.nesterov = False
  c.schedule.name = 'onecycle'
  c.schedule.max_lr = 0.05
  c.schedule.pct_start = 0.05
  # Not stated; the log's last LR (0.000050 = 0.05 / 10 / 100) implies 10.
  c.schedule.div_factor = 10.0
  c.schedule.final_div_factor = 100.0
  # PyTorch's OneCycleLR default: momentum cycles 0.95 -> 0.85 -> 0.95 and
  # overrides the 0.98 the seed reports. Kept, as the seed's code would run.
  c.schedule.cycle_momentum = True
  return c
