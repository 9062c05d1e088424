"""A small CIFAR-10 net built for time to accuracy, after Keller Jordan's airbench94 (2024).

A frozen 2x2 "whitening" convolution (its filters are set from the training images' patch
covariance before training: `init_from_data`), then three groups of conv-pool-BN-GELU-conv-BN-GELU
(widths 64, 256, 256), a 3x3 max-pool and a bias-free linear head scaled by 1/9. About 2M
parameters, 118M multiply-accumulates per 32x32 image.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout, momentum=bn_momentum, eps=1e-12)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, momentum=bn_momentum, eps=1e-12)
        self.activ = nn.GELU()
        for conv in (self.conv1, self.conv2):  # start as (partial) identities: trains faster (airbench)
            nn.init.dirac_(conv.weight.data[: conv.weight.size(1)])
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)  # only the BN shifts learn, as in airbench

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """airbench94's network; `num_classes` and `in_channels` as every convzoo model."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(64, 256, 256), bn_momentum: float = 0.4,
                 scale: float = 1 / 9):
        super().__init__()
        whiten = 2 * in_channels * 2 * 2  # both signs of every eigen-patch of 2x2 pixels
        self.whiten = nn.Conv2d(in_channels, whiten, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data, then frozen
        self.groups = nn.Sequential(ConvGroup(whiten, widths[0], bn_momentum), ConvGroup(widths[0], widths[1], bn_momentum),
                                    ConvGroup(widths[1], widths[2], bn_momentum))
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = scale

    def forward(self, x):
        x = nn.functional.gelu(self.whiten(x))
        x = self.pool(self.groups(x))
        return self.head(x.flatten(1)) * self.scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten 2x2 patches of `images` (normalised float, N x C x H x W):
        each filter is an eigenvector of the patch covariance divided by the root of its eigenvalue,
        and its negation (the GELU after it keeps both signs)."""
        c, k = images.shape[1], self.whiten.kernel_size[0]
        patches = images.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c, k, k).double()
        patches = patches.flatten(1)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]).view(-1, c, k, k).flip(0)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))
