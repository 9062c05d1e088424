"""The LeNet family: the MindSpore model zoo's LeNet5, the Keras tutorial's variant, and the 1998 paper's net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """MindSpore model zoo LeNet5: 32x32 input, valid 5x5 convs, ReLU, max-pool, FC 400-120-84-classes.
    61,706 parameters for 10 classes; layer names follow the seed (conv1, conv2, fc1, fc2, fc3)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        # One module per use (not a shared ReLU/pool): quantizers match patterns per module.
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class LeNetQuant(nn.Module):
    """The MindSpore LeNet-Quant "fused" network: Conv2dBnAct blocks (conv, BatchNorm, ReLU) and
    DenseBnAct layers without BN, the shape quantization-aware training folds into int8 kernels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(120, 84), nn.ReLU())
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


class LeNet5Keras(nn.Module):
    """The Keras tutorial's LeNet-5 on 28x28: Conv 6/16/32 5x5 'same' (padding 2) with ReLU, two 2x2 max-pools
    (after the first two convs), Flatten (7*7*32 = 1,568), Dense 200 ReLU, Dense classes.
    331,214 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 32, 5, padding=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(7 * 7 * 32, 200)
        self.fc2 = nn.Linear(200, num_classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = self.flatten(F.relu(self.conv3(x)))
        return self.fc2(F.relu(self.fc1(x)))


# C3's connection table from LeCun et al. 1998, Table I: which S2 maps (rows) feed each C3 map (columns).
C3_TABLE = [
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
]


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3."""

    def forward(self, x):
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsample(nn.Module):
    """S2/S4: 2x2 sum pooling times a trainable coefficient plus a trainable bias, per map."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.avg_pool2d(x, 2) * 4 * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv(nn.Module):
    """C3: 6 -> 16 maps, 5x5, each output map connected only to the input maps the paper's table
    lists: 60 connections, 60*25 weights + 16 biases = 1,516 parameters."""

    def __init__(self):
        super().__init__()
        table = torch.tensor([[c == "X" for c in row] for row in C3_TABLE]).t().reshape(-1)  # (16*6,) out-major
        connected = table.nonzero().squeeze(1)
        self.in_channels, self.out_channels, self.kernel_size = 6, 16, (5, 5)
        self.weight = nn.Parameter(torch.empty(len(connected), 25).uniform_(-1, 1) / (25 * 3) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(16))
        # Fixed 0/1 matrix placing the connected kernels into a full (16*6) x 25 kernel bank: a
        # matmul, so the layer exports to ONNX and quantizes like any conv.
        place = torch.zeros(16 * 6, len(connected))
        place[connected, torch.arange(len(connected))] = 1
        self.register_buffer("place", place, persistent=False)

    def forward(self, x):
        kernel = (self.place @ self.weight).view(16, 6, 5, 5)
        return F.conv2d(x, kernel, self.bias)


class EuclideanRBF(nn.Module):
    """Output layer: logit_i = -||x - w_i||^2, one centre per class (the paper's RBF units)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        # The paper fixes the centres to stylised 7x12 bitmaps of the characters; those bitmaps are
        # not published, so the centres start as random +-1 codes and are trained.
        self.centres = nn.Parameter(torch.randint(0, 2, (num_classes, in_features)).float() * 2 - 1)

    def forward(self, x):
        return -(x.pow(2).sum(1, keepdim=True) - 2 * x @ self.centres.t() + self.centres.pow(2).sum(1))


class LeNet5Paper(nn.Module):
    """LeNet-5 as in LeCun et al. 1998: C1 conv 6@28x28, S2 trainable subsampling, C3 with the
    partial connection table, S4, C5 conv 120, F6 84 units, Euclidean RBF output; scaled-tanh
    squashing; 32x32 input.

    Departures: the RBF centres are learned from a random +-1 start (the paper's fixed bitmaps are
    not published) and training uses cross-entropy on -distance logits rather than the paper's MAP
    criterion; the trainable S2/S4 coefficients are followed by the squashing function as in the paper.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.s2 = Subsample(6)
        self.c3 = PartialConv()
        self.s4 = Subsample(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = EuclideanRBF(84, num_classes)
        self.act = ScaledTanh()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.act(self.s2(self.act(self.c1(x))))
        x = self.act(self.s4(self.act(self.c3(x))))
        x = self.flatten(self.act(self.c5(x)))
        return self.output(self.act(self.f6(x)))
