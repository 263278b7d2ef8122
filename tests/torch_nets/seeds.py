"""The seeds' networks as their users write them in PyTorch
(tests/test_torch_import.py imports them and compares with v36 and model3)."""

import torch.nn as nn
import torch.nn.functional as F


class OptimizedNetV36(nn.Module):
  """The first seed's class as printed, but for `bias`: its code block has
  bias=False (6,198 parameters, our v36_nobias), its training log's 6,260 need
  bias=True (our v36)."""

  def __init__(self, bias=False):
    super(OptimizedNetV36, self).__init__()
    self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=0, bias=bias)
    self.bn1 = nn.BatchNorm2d(8)
    self.conv2 = nn.Conv2d(8, 10, kernel_size=3, padding=0, bias=bias)
    self.bn2 = nn.BatchNorm2d(10)
    self.pool1 = nn.MaxPool2d(2, 2)
    self.conv3 = nn.Conv2d(10, 12, kernel_size=3, padding=0, bias=bias)
    self.bn3 = nn.BatchNorm2d(12)
    self.pool2 = nn.MaxPool2d(2, 2)
    self.conv4 = nn.Conv2d(12, 16, kernel_size=3, padding=0, bias=bias)
    self.bn4 = nn.BatchNorm2d(16)
    self.conv5 = nn.Conv2d(16, 16, kernel_size=3, padding=0, bias=bias)
    self.bn5 = nn.BatchNorm2d(16)
    self.conv_final = nn.Conv2d(16, 10, kernel_size=1, bias=True)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    x = self.pool1(x)
    x = F.relu(self.bn3(self.conv3(x)))
    x = self.pool2(x)
    x = F.relu(self.bn4(self.conv4(x)))
    x = F.relu(self.bn5(self.conv5(x)))
    x = self.conv_final(x)
    x = F.avg_pool2d(x, x.size()[2:])  # Global Average Pooling (GAP)
    x = x.view(-1, 10)  # Flatten
    return F.log_softmax(x, dim=-1)


class Model_3(nn.Module):
  """The second seed's Model 3 (7,918 parameters) in the usual course style:
  one nn.Sequential per block, as its torchsummary table lists the layers."""

  def __init__(self):
    super(Model_3, self).__init__()

    def conv_block(c_in, c_out, kernel_size=3, padding=0):
      return nn.Sequential(
          nn.Conv2d(c_in, c_out, kernel_size, padding=padding, bias=False),
          nn.BatchNorm2d(c_out), nn.ReLU())

    self.convblock1 = conv_block(1, 10, padding=1)
    self.convblock2 = conv_block(10, 10, padding=1)
    self.convblock3 = conv_block(10, 10, padding=1)
    self.pool1 = nn.MaxPool2d(2, 2)
    self.convblock4 = conv_block(10, 16)
    self.convblock5 = conv_block(16, 16)
    self.convblock6 = conv_block(16, 8)
    self.convblock7 = conv_block(8, 8)
    self.convblock7b = conv_block(8, 8, kernel_size=1)
    self.convblock8 = conv_block(8, 16, kernel_size=1)
    self.gap = nn.AdaptiveAvgPool2d(1)
    self.convblock9 = nn.Conv2d(16, 10, kernel_size=1, bias=False)

  def forward(self, x):
    x = self.convblock3(self.convblock2(self.convblock1(x)))
    x = self.pool1(x)
    x = self.convblock5(self.convblock4(x))
    x = self.convblock7(self.convblock6(x))
    x = self.convblock8(self.convblock7b(x))
    x = self.convblock9(self.gap(x))
    x = x.view(-1, 10)
    return F.log_softmax(x, dim=-1)
