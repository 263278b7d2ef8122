"""Networks the import refuses, one reason each (tests/test_torch_import.py)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
    self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
    self.head = nn.Conv2d(8, 10, 1)

  def forward(self, x):
    x = F.relu(self.conv1(x))
    x = x + self.conv2(x)
    return F.adaptive_avg_pool2d(self.head(x), 1).flatten(1)


class Stride3(nn.Module):

  def __init__(self):
    super().__init__()
    self.body = nn.Sequential(nn.Conv2d(1, 10, 3, stride=3), nn.AdaptiveAvgPool2d(1))

  def forward(self, x):
    return self.body(x).flatten(1)


class UnknownOp(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 10, 3)

  def forward(self, x):
    x = torch.sigmoid(self.conv(x))
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class FlattensAMap(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 4, 3, stride=2)
    self.fc = nn.Linear(4 * 13 * 13, 10)

  def forward(self, x):
    return self.fc(self.conv(x).view(x.size(0), -1))


class DataBranch(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 10, 3)

  def forward(self, x):
    if x.sum() > 0:
      x = self.conv(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class UnusedModule(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 10, 3)
    self.spare = nn.Linear(10, 10)

  def forward(self, x):
    return F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
