"""One training segment: continue training a model for a budget of samples.

The step runner calls this once per step with that step's hyperparameters, so
learning rate, batch size, weight decay, momentum and the adversarial-training
mix can change from segment to segment (a dynamic schedule) while the model
and optimizer state carry over.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import TrainingConfig
from shieldtune.safety.attacks import fgsm, pgd
from shieldtune.tasks.batches import by_indices
from shieldtune.tasks.contract import InputDomain
from shieldtune.training.hyperparameters import apply_to_optimizer

#: Check for divergence every this many batches (a check syncs, so not every batch).
_DIVERGENCE_CHECK_EVERY = 16


@dataclass(frozen=True)
class SegmentStats:
    samples: int
    batches: int
    mean_loss: float
    diverged: bool
    seconds: float


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def batch_plan(
    n: int, batch_size: int, budget_samples: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Sample indices of every batch of a segment: shuffled passes over ``n`` samples."""
    perm = torch.randperm(n, generator=generator)
    plan: list[torch.Tensor] = []
    pos = processed = 0
    while processed < budget_samples:
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        take = min(batch_size, budget_samples - processed)
        plan.append(perm[pos : pos + take])
        pos += take
        processed += take
    return plan


@dataclass(frozen=True)
class AdversarialTraining:
    """How ``adv_mix`` examples are made: FGSM (or ``pgd_steps``-step PGD when ``attack`` is
    ``pgd``) of radius ``epsilon`` inside ``domain``."""

    epsilon: float
    domain: InputDomain
    attack: str = "fgsm"
    pgd_steps: int = 3

    def examples(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        if self.attack == "pgd":
            return pgd(
                model, x, y, self.epsilon, self.pgd_steps, generator=generator, domain=self.domain
            )
        return fgsm(model, x, y, self.epsilon, self.domain)


def _healthy(loss_sum: torch.Tensor, processed: int, max_loss: float) -> bool:
    mean = float(loss_sum) / max(processed, 1)
    return math.isfinite(mean) and mean <= max_loss


def train_segment(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    hp: dict[str, float],
    budget_samples: int,
    generator: torch.Generator,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    adversarial: AdversarialTraining | None = None,
    max_loss: float = float("inf"),
    device: torch.device | None = None,
    amp: bool = False,
    loader_workers: int = 0,
) -> SegmentStats:
    """Train on ``budget_samples`` samples drawn in shuffled passes over ``data``.

    ``hp['adv_mix']`` of each batch is replaced by adversarial examples (``adversarial``:
    adversarial training). A non-finite loss, or a mean loss above ``max_loss``
    (cross-entropy of a sane classifier stays near ln(classes) or below), stops the
    segment and reports ``diverged=True`` rather than raising.
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    apply_to_optimizer(optimizer, hp)
    n = len(data)  # type: ignore[arg-type]
    batch_size = max(1, min(int(hp["batch_size"]), n))
    adv_share = float(hp["adv_mix"]) if adversarial is not None else 0.0
    model.train()
    plan = batch_plan(n, batch_size, budget_samples, generator)
    processed = batches = 0
    loss_sum = torch.zeros((), device=device)
    diverged = False
    for xb, yb in by_indices(data, plan, device, loader_workers):
        take = len(yb)
        n_adv = round(adv_share * take)
        if n_adv:
            assert adversarial is not None
            adv = adversarial.examples(model, xb[:n_adv], yb[:n_adv], generator)
            xb = torch.cat([adv, xb[n_adv:]])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            batch_loss = loss(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        loss_sum += batch_loss.detach().float() * take
        processed += take
        batches += 1
        if batches % _DIVERGENCE_CHECK_EVERY == 0 and not _healthy(loss_sum, processed, max_loss):
            diverged = True
            break
    mean_loss = float(loss_sum) / max(processed, 1)
    diverged = diverged or not _healthy(loss_sum, processed, max_loss)
    return SegmentStats(processed, batches, mean_loss, diverged, time.perf_counter() - start)
