"""One training segment: continue training a model for a budget of samples.

The environment calls this once per step with that step's hyperparameters, so
learning rate, batch size, weight decay, momentum and the adversarial-training
mix can change from segment to segment (a dynamic schedule) while the model
and optimizer state carry over.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shieldtune.config import TrainingConfig
from shieldtune.data import Split
from shieldtune.safety.attacks import fgsm

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


def fixed_hyperparameters(cfg: TrainingConfig) -> dict[str, float]:
    """Values for every tunable hyperparameter; the search space overrides some of them."""
    return {
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "weight_decay": cfg.weight_decay,
        "momentum": cfg.momentum,
        "adv_mix": cfg.adv_mix,
    }


def apply_hyperparameters(optimizer: torch.optim.Optimizer, hp: dict[str, float]) -> None:
    """Set this segment's optimizer hyperparameters in place (state such as momentum stays)."""
    for group in optimizer.param_groups:
        group["lr"] = float(hp["learning_rate"])
        group["weight_decay"] = float(hp["weight_decay"])
        if "momentum" in group:
            group["momentum"] = float(hp["momentum"])
        elif "betas" in group:
            group["betas"] = (float(hp["momentum"]), group["betas"][1])


def _healthy(loss_sum: torch.Tensor, processed: int, max_loss: float) -> bool:
    mean = float(loss_sum) / max(processed, 1)
    return math.isfinite(mean) and mean <= max_loss


def train_segment(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    hp: dict[str, float],
    budget_samples: int,
    generator: torch.Generator,
    epsilon: float,
    max_loss: float = float("inf"),
) -> SegmentStats:
    """Train on ``budget_samples`` samples drawn in shuffled passes over ``data``.

    ``hp['adv_mix']`` of each batch is replaced by FGSM examples of radius
    ``epsilon`` (adversarial training). A non-finite loss, or a mean loss above
    ``max_loss`` (cross-entropy of a sane classifier stays near ln 10 or below),
    stops the segment and reports ``diverged=True`` rather than raising.
    """
    start = time.perf_counter()
    apply_hyperparameters(optimizer, hp)
    batch_size = max(1, min(int(hp["batch_size"]), len(data)))
    n_adv_share = float(hp["adv_mix"])
    model.train()
    perm = torch.randperm(len(data), generator=generator)
    pos = processed = batches = 0
    loss_sum = torch.zeros(())
    diverged = False
    while processed < budget_samples:
        if pos + batch_size > len(data):
            perm = torch.randperm(len(data), generator=generator)
            pos = 0
        take = min(batch_size, budget_samples - processed)
        idx = perm[pos : pos + take]
        pos += take
        xb, yb = data.x[idx], data.y[idx]
        n_adv = round(n_adv_share * take)
        if n_adv:
            xb = torch.cat([fgsm(model, xb[:n_adv], yb[:n_adv], epsilon), xb[n_adv:]])
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * take
        processed += take
        batches += 1
        if batches % _DIVERGENCE_CHECK_EVERY == 0 and not _healthy(loss_sum, processed, max_loss):
            diverged = True
            break
    mean_loss = float(loss_sum) / max(processed, 1)
    diverged = diverged or not _healthy(loss_sum, processed, max_loss)
    return SegmentStats(processed, batches, mean_loss, diverged, time.perf_counter() - start)
