"""The seed's small CNN: two conv layers, one hidden FC layer, an output layer, ReLU.

Inputs are images in pixel space [0, 1]; normalisation is the first layer, so
adversarial attacks perturb and clip real pixels and the model sees exactly
what a deployed classifier would.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldtune.config import ModelConfig

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """conv(5x5) -> ReLU -> maxpool -> conv(5x5) -> ReLU -> maxpool -> FC -> ReLU -> FC."""

    def __init__(self, conv1_channels: int = 8, conv2_channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.features = nn.Sequential(
            nn.Conv2d(1, conv1_channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv1_channels, conv2_channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(conv2_channels * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def build_model(cfg: ModelConfig) -> SmallCNN:
    return SmallCNN(cfg.conv1_channels, cfg.conv2_channels, cfg.hidden)


def count_flops_per_sample(cfg: ModelConfig) -> int:
    """Multiply-accumulates x 2 of one forward pass (used for GFLOP/s reporting)."""
    c1, c2, h = cfg.conv1_channels, cfg.conv2_channels, cfg.hidden
    conv1 = 28 * 28 * c1 * 1 * 25
    conv2 = 14 * 14 * c2 * c1 * 25
    fc = c2 * 49 * h + h * 10
    return 2 * (conv1 + conv2 + fc)
