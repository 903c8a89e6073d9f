"""Task plug-ins with one fault each, as a user's package might have them.

Named in configs as ``tests.faulty_plugins:<factory>``. Each is a small, fast task with
synthetic features (the faults, not what a model learns, are under test); the fault sits
deep in a split, where a check of the first few samples would not see it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import DataConfig
from shieldtune.tasks import (
    UNBOUNDED,
    MetricInput,
    Task,
    TaskData,
    TaskMetric,
    TensorSplit,
)

SIZES = {"train": 120, "val": 60, "test": 60}


def _split(n: int, seed: int) -> TensorSplit:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=gen)
    return TensorSplit(x, (x[:, 0] * 3).long().clamp(max=2))


class _Synthetic(Task):
    """Three classes from four uniform features; ``fault`` spoils one value of one split."""

    name = "synthetic"
    num_classes = 3
    input_domain = UNBOUNDED

    def __init__(self, split: str = "train", index: int = 40, fault: str = "none") -> None:
        self.split, self.index, self.fault = split, index, fault

    def build_model(self, seed: int) -> nn.Module:
        return nn.Linear(4, 3)

    def load_data(self, cfg: DataConfig) -> TaskData:
        splits = {name: _split(n, seed) for seed, (name, n) in enumerate(SIZES.items())}
        bad = splits[self.split]
        if self.fault == "label":
            bad.y[self.index] = 3  # num_classes is 3: labels are 0, 1, 2
        elif self.fault == "negative_label":
            bad.y[self.index] = -1
        elif self.fault == "nan_feature":
            bad.x[self.index, 2] = math.nan
        return TaskData(splits["train"], splits["val"], splits["test"], source="synthetic")


def label_out_of_range() -> Task:
    """Training label 3 at sample 40 of a 3-class task (an IndexError in cross-entropy)."""
    return _Synthetic("train", 40, "label")


def negative_val_label() -> Task:
    """Validation label -1 at sample 17."""
    return _Synthetic("val", 17, "negative_label")


def nan_val_feature() -> Task:
    """A NaN feature at validation sample 33."""
    return _Synthetic("val", 33, "nan_feature")


class _NanModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * math.nan


class _NanLogits(_Synthetic):
    def build_model(self, seed: int) -> nn.Module:
        return _NanModel()


def nan_logits() -> Task:
    """Finite data, but the model's output is NaN."""
    return _NanLogits()


class _Streamed(Dataset):
    """A split served one sample at a time (the DataLoader path)."""

    def __init__(self, split: TensorSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.x[i], self.split.y[i]


class _StreamedBadLabel(_Synthetic):
    def load_data(self, cfg: DataConfig) -> TaskData:
        data = super().load_data(cfg)
        return TaskData(_Streamed(data.train), _Streamed(data.val), _Streamed(data.test))


def streamed_label_out_of_range() -> Task:
    """Training label 3 at sample 40 of a streamed Dataset."""
    return _StreamedBadLabel("train", 40, "label")


def _errors(seen: MetricInput) -> int:
    return int((seen.logits.argmax(dim=1) != seen.targets).sum())


def error_share(seen: MetricInput) -> float:
    """The share of misclassified samples, as a bare float (no bounds)."""
    return _errors(seen) / len(seen.targets)


def error_estimate(seen: MetricInput):
    """The same share with Clopper-Pearson bounds at the level the spec asks for."""
    from shieldtune.tasks import proportion_estimate

    return proportion_estimate(_errors(seen), len(seen.targets), seen.alpha)


class _WithMetric(_Synthetic):
    def __init__(self, estimate: bool) -> None:
        super().__init__()
        fn = error_estimate if estimate else error_share
        self.metrics = (TaskMetric("error_share", "share of misclassified samples", fn),)


def float_metric() -> Task:
    """A task metric that returns a bare float."""
    return _WithMetric(estimate=False)


def estimate_metric() -> Task:
    """A task metric that returns an Estimate with valid bounds."""
    return _WithMetric(estimate=True)
