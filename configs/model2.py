"""The second seed's Model 2 (7,838 params): LR 0.005, no scheduler, 15 epochs."""

from mnist_flax.config import base_config


def get_config():
  c = base_config()
  c.model = 'model2'
  c.batch_size = 64  # the seed's log: 938 batches per epoch
  c.num_epochs = 15
  c.optimizer.name = 'adam'  # not stated; see configs/model1.py
  c.optimizer.learning_rate = 0.005
  c.schedule.name = 'constant'
  c.augment.degrees = 7.0  # not stated; see configs/model1.py
  return c
