"""Small task plug-ins for the contract tests: one that is not attackable, and broken ones.

Named in configs as ``tests.task_plugins:<factory>``, the way a user names their own.
The data is synthetic on purpose: these tests check the contract's plumbing and its
one-line errors, not what a model learns.
"""

from __future__ import annotations

import torch
from torch import nn

from shieldtune.config import DataConfig
from shieldtune.tasks import UNBOUNDED, Task, TaskData, TensorSplit


def _tokens(n: int, seed: int) -> TensorSplit:
    """Bags of 6 token ids from a 50-word vocabulary; the label is whether token 7 occurs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (n, 6), generator=gen)
    return TensorSplit(x, (x == 7).any(dim=1).long())


class TokenTask(Task):
    """Token ids in, two classes out: not attackable (no input domain)."""

    name = "tokens"
    num_classes = 2
    input_domain = None

    def build_model(self, seed: int) -> nn.Module:
        return nn.Sequential(nn.EmbeddingBag(50, 8), nn.Linear(8, 2))

    def load_data(self, cfg: DataConfig) -> TaskData:
        return TaskData(_tokens(200, 0), _tokens(100, 1), _tokens(100, 2), source="synthetic")


def tokens() -> TokenTask:
    return TokenTask()


def not_a_task() -> dict:
    return {"name": "a dict is not a task"}


def broken_factory() -> Task:
    raise RuntimeError("the factory itself is broken")


class _Features(Task):
    name = "features"
    num_classes = 3
    input_domain = UNBOUNDED

    def __init__(self, outputs: int = 3, label_dtype: torch.dtype = torch.int64) -> None:
        self.outputs, self.label_dtype = outputs, label_dtype

    def build_model(self, seed: int) -> nn.Module:
        return nn.Linear(4, self.outputs)

    def load_data(self, cfg: DataConfig) -> TaskData:
        gen = torch.Generator().manual_seed(0)

        def split(n: int) -> TensorSplit:
            x = torch.rand(n, 4, generator=gen)
            return TensorSplit(x, (x[:, 0] * 3).long().clamp(max=2).to(self.label_dtype))

        return TaskData(split(60), split(30), split(30))


def wrong_output() -> Task:
    """The model has 5 outputs for a 3-class task."""
    return _Features(outputs=5)


def float_labels() -> Task:
    """Labels are floats instead of int64 class indices."""
    return _Features(label_dtype=torch.float32)


def fine_features() -> Task:
    return _Features()
