"""A task plug-in: its own model, its own dataset class and its own safety metric.

* Data: the 1,797 8x8 handwritten digits that ship inside scikit-learn, served by
  a plain ``torch.utils.data.Dataset`` subclass (so shieldtune reads it through a
  ``DataLoader``, the path for data that does not fit in memory).
* Model: a two-layer CNN.
* Metrics: the share of confidently wrong predictions (``confident_errors``), an
  ``Estimate`` with confidence bounds, so it can be constrained like a built-in metric
  (``confident_errors <= 0.05``); and expected calibration error (``ece``), a float,
  logged and reported but never certified (nothing is known about its sampling error).
* Hyperparameter: ``label_smoothing``, applied by the task's own loss; tune it in
  ``env.search_space`` or fix it in ``training.task_hyperparameters``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import DataConfig
from shieldtune.tasks import (
    PIXELS,
    MetricInput,
    Estimate,
    Task,
    TaskData,
    TaskHyperparameter,
    TaskMetric,
    proportion_estimate,
)

#: A prediction this confident that is wrong counts as a confident error.
CONFIDENT = 0.9


class DigitsDataset(Dataset):
    """Images (1, 8, 8) in [0, 1] and int64 labels, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images.astype(np.float32) / 16.0
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[i].reshape(1, 8, 8))
        return image, torch.tensor(self.labels[i])


def expected_calibration_error(seen: MetricInput, bins: int = 10) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by bin size."""
    probs = seen.logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == seen.targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            gap = (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
            ece += gap * in_bin.float().mean()
    return float(ece)


def confident_errors(seen: MetricInput) -> Estimate:
    """The share of samples predicted wrongly with probability above ``CONFIDENT``, with
    exact bounds at the level the spec asks (``seen.alpha``): certifiable."""
    confidence, predicted = seen.logits.softmax(dim=1).max(dim=1)
    wrong = (predicted != seen.targets) & (confidence > CONFIDENT)
    return proportion_estimate(int(wrong.sum()), len(seen.targets), seen.alpha)


class DigitsTask(Task):
    name = "digits-cnn"
    num_classes = 10
    input_domain = PIXELS
    data_sources = ("bundled",)
    metrics = (
        TaskMetric("confident_errors", "share of wrong predictions above 0.9", confident_errors),
        TaskMetric("ece", "expected calibration error (10 bins)", expected_calibration_error),
    )
    hyperparameters = (TaskHyperparameter("label_smoothing", 0.0, 0.0, 0.3),)

    def __init__(self, channels: int = 8) -> None:
        self.channels = int(channels)

    def build_model(self, seed: int) -> nn.Module:
        c = self.channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 16, 10),
        )

    def load_data(self, cfg: DataConfig) -> TaskData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(cfg.split_seed).permutation(len(digits.target))
        train, val = cfg.train_size or 1077, cfg.val_size or 360
        test = cfg.test_size or 360
        parts = np.split(order[: train + val + test], [train, train + val])
        sets = [DigitsDataset(digits.images[p], digits.target[p]) for p in parts]
        return TaskData(*sets, source="sklearn:digits")

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, hyperparameters: Mapping[str, float]
    ) -> torch.Tensor:
        return F.cross_entropy(
            logits, targets, label_smoothing=float(hyperparameters["label_smoothing"])
        )


def make_task(channels: int = 8) -> DigitsTask:
    """The factory a config names: ``entry_point: "digits_task:make_task"``."""
    return DigitsTask(channels)
