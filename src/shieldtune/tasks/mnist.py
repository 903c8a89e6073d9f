"""``mnist-cnn``: the seeds' worked example, a small CNN on real MNIST digits.

Two conv layers, one hidden fully connected layer, an output layer, ReLU,
cross-entropy. Inputs are images in pixel space [0, 1]; normalisation is the
model's first layer, so adversarial attacks perturb and clip real pixels and
the model sees exactly what a deployed classifier would.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldtune.config import DataConfig
from shieldtune.errors import ConfigError
from shieldtune.tasks.contract import PIXELS, Task, TaskData

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
        # channels-last activations: CPU max-pooling and convolutions run about a third faster.
        x = self.normalize(x).contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(x))


def _width(name: str, value: object, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ConfigError(
            f"config key 'task.kwargs.{name}' = {value!r} must be an integer in [1, {high}]"
        )
    return value


class MnistCnnTask(Task):
    """The seeds' CNN on MNIST (bundled 10k real test images, an IDX folder, or torchvision)."""

    name = "mnist-cnn"
    num_classes = 10
    input_domain = PIXELS
    data_sources = ("bundled", "torchvision", "idx")

    def __init__(self, conv1_channels: int = 8, conv2_channels: int = 16, hidden: int = 64) -> None:
        self.conv1_channels = _width("conv1_channels", conv1_channels, 512)
        self.conv2_channels = _width("conv2_channels", conv2_channels, 512)
        self.hidden = _width("hidden", hidden, 4096)

    def build_model(self, seed: int) -> SmallCNN:
        model = SmallCNN(self.conv1_channels, self.conv2_channels, self.hidden)
        return model.to(memory_format=torch.channels_last)

    def load_data(self, cfg: DataConfig) -> TaskData:
        from shieldtune.tasks.mnist_data import load_mnist

        return load_mnist(cfg)

    def flops_per_sample(self) -> int:
        """Multiply-accumulates x 2 of one forward pass (used for GFLOP/s reporting)."""
        c1, c2, h = self.conv1_channels, self.conv2_channels, self.hidden
        conv1 = 28 * 28 * c1 * 1 * 25
        conv2 = 14 * 14 * c2 * c1 * 25
        fc = c2 * 49 * h + h * 10
        return 2 * (conv1 + conv2 + fc)
