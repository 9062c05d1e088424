"""AlexNet: the MindSpore model zoo's network on 227x227, and a CIFAR-sized variant a CPU can train."""

from __future__ import annotations

from torch import nn


class AlexNet(nn.Module):
    """MindSpore model-zoo AlexNet: conv 96 11x11/4, 256 5x5, 384, 384, 256 3x3 with 3x3/2 max-pools,
    FC 9216-4096-4096-classes with dropout 0.5, on 227x227. 58,322,314 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class AlexNetCifar(nn.Module):
    """AlexNet's five-conv / three-FC shape for 32x32: 3x3 stride-1 convs with BatchNorm (widths
    64-192-384-256-256, as torchvision's AlexNet), 2x2 max-pools after conv 1, 2 and 5 (32->16->8->4),
    then FC 4096-1024-512-classes with dropout. See README for parameters and MACs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(in_channels, 64), nn.MaxPool2d(2),
            *conv_bn(64, 192), nn.MaxPool2d(2),
            *conv_bn(192, 384), *conv_bn(384, 256), *conv_bn(256, 256), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256 * 4 * 4, 1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
