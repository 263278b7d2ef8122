"""A sub-8K MNIST network as a course assignment writes it: blocks in
nn.Sequential, dropout, global pooling and a Linear head, log_softmax out.
docs/interop.md imports it with --config.model=torch:docs/examples/course_net.py:Net.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def block(c_in, c_out, padding=0, dropout=0.0):
  return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout))


class Net(nn.Module):

  def __init__(self, dropout=0.05):
    super().__init__()
    self.features = nn.Sequential(
        block(1, 8, padding=1, dropout=dropout),      # 28x28
        block(8, 12, dropout=dropout),                # 26x26
        nn.MaxPool2d(2),                              # 13x13
        block(12, 14, dropout=dropout),               # 11x11
        block(14, 16, dropout=dropout),               # 9x9
        nn.MaxPool2d(2),                              # 4x4
        block(16, 16),                                # 2x2
    )
    self.gap = nn.AdaptiveAvgPool2d(1)
    self.head = nn.Linear(16, 10)
    self.apply(self._init)

  @staticmethod
  def _init(m):
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, nonlinearity='relu')

  def forward(self, x):
    x = self.gap(self.features(x))
    x = torch.flatten(x, 1)
    return F.log_softmax(self.head(x), dim=1)
