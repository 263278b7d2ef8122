"""Networks written the ways people write them, for tests/test_torch_import.py.

Each is small (a few hundred parameters) and shrinks 28x28 to logits quickly,
so that the parity tests stay fast.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SequentialBlocks(nn.Module):
  """Blocks in nested nn.Sequential; pooling modules; a Linear head after
  Flatten; log_softmax as a module."""

  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, bias=False),
                      nn.BatchNorm2d(4, eps=1e-3, momentum=0.2), nn.ReLU(inplace=True)),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2),
                      nn.BatchNorm2d(8), nn.ReLU()),
    )
    self.pool = nn.AdaptiveAvgPool2d((1, 1))
    self.flatten = nn.Flatten()
    self.fc = nn.Linear(8, 10)
    self.out = nn.LogSoftmax(dim=1)

  def forward(self, x):
    return self.out(self.fc(self.flatten(self.pool(self.features(x)))))


class Functional(nn.Module):
  """Functional ops in forward: F.relu, torch.relu, .relu(), F.max_pool2d,
  F.avg_pool2d over the whole map, view(x.size(0), -1), F.log_softmax."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 6, 3, dilation=2)              # 24x24
    self.bn1 = nn.BatchNorm2d(6, affine=False)
    self.conv2 = nn.Conv2d(6, 8, 5, stride=2, padding=2)      # 6x6 after the pool
    self.bn2 = nn.BatchNorm2d(8)
    self.conv3 = nn.Conv2d(8, 10, 1)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(x, 2)                                    # 12x12
    x = torch.relu(self.bn2(self.conv2(x)))                   # 6x6
    x = self.conv3(x).relu()
    x = F.avg_pool2d(x, x.size()[2:])
    x = x.view(x.size(0), -1)
    return F.log_softmax(x, dim=-1)


class ConvAfterGap(nn.Module):
  """A 1x1 conv after global pooling, with BatchNorm between; torch.flatten;
  softmax at the end (probabilities out)."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding='valid')   # 13x13
    self.bn1 = nn.BatchNorm2d(8)
    self.conv2 = nn.Conv2d(8, 12, 3, padding='same', bias=False)
    self.gap = nn.AvgPool2d(13)
    self.bn2 = nn.BatchNorm2d(12)
    self.head = nn.Conv2d(12, 10, 1)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.gap(F.relu(self.conv2(x)))
    x = self.head(self.bn2(x))
    return torch.softmax(torch.flatten(x, 1), dim=1)


class WithDropout(nn.Module):
  """Dropout as a module and as F.dropout; `p` is a constructor argument."""

  def __init__(self, p=0.1):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 8, 3, stride=2)
    self.bn1 = nn.BatchNorm2d(8)
    self.drop = nn.Dropout(p)
    self.conv2 = nn.Conv2d(8, 10, 3, stride=2)
    self.p = p

  def forward(self, x):
    x = self.drop(F.relu(self.bn1(self.conv1(x))))
    x = F.dropout(x, self.p, training=self.training)
    x = F.adaptive_avg_pool2d(self.conv2(x), 1)
    return x.reshape(-1, 10)


class Block(nn.Module):
  """A block class with its own __call__ instead of forward."""

  def __init__(self, c_in, c_out):
    super().__init__()
    self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, bias=False)
    self.bn = nn.BatchNorm2d(c_out)

  def __call__(self, x):
    return F.relu(self.bn(self.conv(x)))


class CustomBlocks(nn.Module):
  """Submodules of a block class; a Python branch on a constructor value; an
  initialisation of its own (apply(init_fn)); forward with a flag argument."""

  def __init__(self, widths=(4, 8), pool=True):
    super().__init__()
    self.blocks = nn.ModuleList()
    c = 1
    for w in widths:
      self.blocks.append(Block(c, w))
      c = w
    self.pool = pool
    self.fc = nn.Linear(c, 10)
    self.apply(self._init)

  @staticmethod
  def _init(m):
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.constant_(m.weight, 0.5)
      nn.init.constant_(m.bias, 0.1)

  def forward(self, x, log_probs=True):
    for block in self.blocks:
      x = block(x)
    if self.pool:
      x = F.adaptive_avg_pool2d(x, 1)
    x = self.fc(x.view(-1, x.shape[1]))
    if log_probs:
      x = F.log_softmax(x, dim=1)
    return x
