"""Membership inference: how much a model leaks whether a sample was in its training set.

A loss-threshold attack (Yeom et al. 2018) on training members vs held-out
samples, with the advantage max(TPR - FPR) and the true-positive rate at 1%
false-positive rate (Carlini et al. 2022).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MembershipInference:
    advantage: float
    tpr_at_1fpr: float
    auc: float


def per_sample_loss(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Cross-entropy of every sample, in order."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = [F.cross_entropy(model(xb), yb, reduction="none").cpu() for xb, yb in batches]
    finally:
        model.train(was_training)
    return torch.cat(losses).double().numpy() if losses else np.zeros(0)


def loss_threshold_attack(
    member_loss: np.ndarray, nonmember_loss: np.ndarray
) -> MembershipInference:
    """Score ROC of "member if loss <= t" over every threshold t.

    Advantage = max_t TPR(t) - FPR(t) (Yeom et al.); TPR at 1% FPR follows
    Carlini et al. 2022, who argue the low-FPR regime is what matters.
    """
    # A NaN loss (a broken model) is scored as the worst possible loss, never as a member.
    member_loss = np.nan_to_num(np.asarray(member_loss, dtype=np.float64), nan=np.inf)
    nonmember_loss = np.nan_to_num(np.asarray(nonmember_loss, dtype=np.float64), nan=np.inf)
    scores = np.concatenate([-member_loss, -nonmember_loss])
    labels = np.concatenate([np.ones(len(member_loss)), np.zeros(len(nonmember_loss))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # ROC points only where the score changes (ties move together).
    # (``!=`` rather than ``np.diff``: equal infinite scores are ties too.)
    distinct = np.r_[np.nonzero(scores[1:] != scores[:-1])[0], len(scores) - 1]
    tp = np.cumsum(labels)[distinct]
    fp = np.cumsum(1 - labels)[distinct]
    tpr = np.r_[0.0, tp / max(len(member_loss), 1)]
    fpr = np.r_[0.0, fp / max(len(nonmember_loss), 1)]
    advantage = float(np.max(tpr - fpr))
    tpr_low = float(np.max(tpr[fpr <= 0.01]))
    auc = float(np.trapezoid(tpr, fpr))
    return MembershipInference(advantage=advantage, tpr_at_1fpr=tpr_low, auc=auc)


def membership_inference(
    model: nn.Module,
    members: Iterable[tuple[torch.Tensor, torch.Tensor]],
    nonmembers: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> MembershipInference:
    """The loss-threshold attack on batches of training members and of held-out samples."""
    return loss_threshold_attack(
        per_sample_loss(model, members), per_sample_loss(model, nonmembers)
    )
