"""Reading a task's splits in batches: by indexing for in-memory tensors, else a DataLoader.

A :class:`~shieldtune.tasks.contract.TensorSplit` is sliced directly (the fast
path the bundled MNIST runs on); any other ``Dataset`` is read through a
``DataLoader`` with the same batches, so data that does not fit in memory is
streamed. Either way, batches arrive on the step's device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from shieldtune.tasks.contract import TaskData, TensorSplit

#: Samples per forward pass when evaluating or attacking.
EVAL_BATCH = 128

Batch = tuple[torch.Tensor, torch.Tensor]


def head(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` samples (all of them if there are fewer)."""
    n = min(n, len(dataset))  # type: ignore[arg-type]
    if isinstance(dataset, TensorSplit):
        return dataset.head(n)
    return Subset(dataset, range(n))


def to_device(data: TaskData, device: torch.device) -> TaskData:
    """In-memory splits moved to ``device`` once (streamed splits move batch by batch)."""
    if device.type == "cpu":
        return data

    def move(split: Dataset) -> Dataset:
        if isinstance(split, TensorSplit):
            return TensorSplit(split.x.to(device), split.y.to(device))
        return split

    return TaskData(
        move(data.train), move(data.val), move(data.test), data.source, data.input_domain
    )


def iterate(
    dataset: Dataset, device: torch.device, batch_size: int = EVAL_BATCH, workers: int = 0
) -> Iterator[Batch]:
    """The whole dataset in order, ``batch_size`` samples at a time."""
    n = len(dataset)  # type: ignore[arg-type]
    plan = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return by_indices(dataset, plan, device, workers)


def by_indices(
    dataset: Dataset,
    plan: Sequence[Sequence[int] | torch.Tensor],
    device: torch.device,
    workers: int = 0,
) -> Iterator[Batch]:
    """One batch per entry of ``plan`` (a list of sample indices each), in that order."""
    if isinstance(dataset, TensorSplit):
        for idx in plan:
            if isinstance(idx, range):
                yield dataset.x[idx.start : idx.stop], dataset.y[idx.start : idx.stop]
            else:
                yield dataset.x[idx], dataset.y[idx]
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[list(map(int, idx)) for idx in plan],
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def first_inputs(dataset: Dataset, k: int) -> torch.Tensor:
    """The first ``k`` inputs as one CPU tensor (model signatures, input examples)."""
    x, _ = next(by_indices(dataset, [range(min(k, len(dataset)))], torch.device("cpu")))  # type: ignore[arg-type]
    return x.detach().cpu()


def labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a split, in order, on the CPU."""
    if isinstance(dataset, TensorSplit):
        return dataset.y.cpu()
    parts = [y for _, y in iterate(dataset, torch.device("cpu"))]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
