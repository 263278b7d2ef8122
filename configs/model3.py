"""The second seed's Model 3 (7,918 params): Adam, StepLR(8, 0.1), 15 epochs."""

from mnist_flax.config import base_config


def get_config():
  c = base_config()
  c.model = 'model3'
  c.batch_size = 64  # the seed's log: 938 batches per epoch
  c.num_epochs = 15
  c.optimizer.name = 'adam'  # the seed: "Adam optimization"
  c.optimizer.learning_rate = 0.005
  c.schedule.name = 'step'
  c.schedule.step_size = 8
  c.schedule.gamma = 0.1
  c.augment.degrees = 7.0  # not stated; see configs/model1.py
  return c
