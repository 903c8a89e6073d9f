"""Membership inference: how much a model leaks whether a sample was in its training set.

The attack is the loss-threshold attack (Yeom et al. 2018): "member if the
model's loss on the sample is at most t". Done so that its numbers can be
trusted (Carlini et al. 2022, "from first principles"):

* losses are computed in float64 from the logits, so confident predictions do
  not all round to a loss of exactly 0 (in float32 about a fifth of the samples
  of a well-trained model tie at 0, which pins the low-FPR threshold and
  forces TPR at 1% FPR to 0);
* members and non-members are each split into a calibration half and a
  scoring half (alternate samples: the splits are already shuffled); the
  threshold is chosen on the calibration halves and the attack is scored on
  the held-out halves, so a model with no leakage scores an advantage of 0 on
  average instead of the positive bias of picking the threshold on the very
  samples it is scored on;
* with the threshold fixed, the held-out TPR and FPR are independent binomial
  proportions: each gets an exact Clopper-Pearson bound, the advantage
  TPR - FPR gets the Bonferroni combination of the two, and a one-sided
  Fisher exact test of the 2x2 table gives a p-value against "no leakage"
  (members and non-members exchangeable).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import fisher_exact
from torch import nn

from shieldtune.safety.stats import Estimate, proportion

#: The false-positive rate of the low-FPR view (TPR at 1% FPR).
LOW_FPR = 0.01


@dataclass(frozen=True)
class MembershipInference:
    #: Held-out TPR - FPR at the calibrated threshold, with its bounds.
    advantage: Estimate
    #: Held-out TPR at the threshold calibrated to 1% FPR, with its bounds.
    tpr_at_1fpr: Estimate
    #: One-sided p-value of "no leakage" at the calibrated threshold (Fisher exact test).
    p_value: float
    #: Area under the ROC curve over all samples (descriptive, no threshold chosen).
    auc: float


def per_sample_loss(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Cross-entropy of every sample, in order, computed in float64 from the logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            losses = [
                F.cross_entropy(model(xb).double(), yb, reduction="none").cpu()
                for xb, yb in batches
            ]
    finally:
        model.train(was_training)
    return torch.cat(losses).numpy() if losses else np.zeros(0)


def losses_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per-sample float64 cross-entropy of logits already computed (shared forward pass)."""
    return F.cross_entropy(logits.double(), targets, reduction="none").numpy()


def _clean(losses: np.ndarray) -> np.ndarray:
    # A NaN loss (a broken model) is scored as the worst possible loss, never as a member.
    return np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=np.inf)


def roc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> tuple[np.ndarray, ...]:
    """TPR, FPR and thresholds of "member if loss <= t" at every distinct loss (ties together)."""
    member_loss, nonmember_loss = _clean(member_loss), _clean(nonmember_loss)
    losses = np.concatenate([member_loss, nonmember_loss])
    labels = np.concatenate([np.ones(len(member_loss)), np.zeros(len(nonmember_loss))])
    order = np.argsort(losses, kind="stable")
    losses, labels = losses[order], labels[order]
    # ROC points only where the loss changes (``!=``: equal infinite losses are ties too).
    distinct = np.r_[np.nonzero(losses[1:] != losses[:-1])[0], len(losses) - 1]
    tpr = np.r_[0.0, np.cumsum(labels)[distinct] / max(len(member_loss), 1)]
    fpr = np.r_[0.0, np.cumsum(1 - labels)[distinct] / max(len(nonmember_loss), 1)]
    thresholds = np.r_[-np.inf, losses[distinct]]
    return tpr, fpr, thresholds


def _between(thresholds: np.ndarray, i: int) -> float:
    """A threshold halfway between calibration loss ``i`` and the next larger one, so held-out
    samples that fall between the two classes are not decided by the edge of a finite sample."""
    if i + 1 >= len(thresholds) or not np.isfinite(thresholds[i + 1]):
        return float(thresholds[i])
    if not np.isfinite(thresholds[i]):
        return float(thresholds[i + 1]) - 1e-12 * max(1.0, abs(float(thresholds[i + 1])))
    return float((thresholds[i] + thresholds[i + 1]) / 2)


def membership_test(
    member_loss: np.ndarray, nonmember_loss: np.ndarray, alpha: float
) -> MembershipInference:
    """The held-out loss-threshold attack; bounds hold with probability >= 1 - alpha each."""
    member_loss, nonmember_loss = _clean(member_loss), _clean(nonmember_loss)
    m_cal, m_score = member_loss[0::2], member_loss[1::2]
    n_cal, n_score = nonmember_loss[0::2], nonmember_loss[1::2]
    tpr, fpr, thresholds = roc(m_cal, n_cal)
    t_adv = _between(thresholds, int(np.argmax(tpr - fpr)))
    tp, fp = int(np.sum(m_score <= t_adv)), int(np.sum(n_score <= t_adv))
    # Bonferroni: the advantage's bound uses each part's bound at alpha / 2.
    hit = proportion(tp, len(m_score), alpha / 2)
    false = proportion(fp, len(n_score), alpha / 2)
    advantage = Estimate(
        hit.value - false.value, hit.low - false.high, hit.high - false.low, len(m_score)
    )
    # The largest threshold whose calibration FPR stays within LOW_FPR.
    allowed = np.nonzero(fpr <= LOW_FPR)[0]
    t_low = _between(thresholds, int(allowed[-1]))
    tpr_low = proportion(int(np.sum(m_score <= t_low)), len(m_score), alpha)
    table = [[tp, len(m_score) - tp], [fp, len(n_score) - fp]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    tpr_all, fpr_all, _ = roc(member_loss, nonmember_loss)
    auc = float(np.trapezoid(tpr_all, fpr_all))
    return MembershipInference(advantage, tpr_low, p_value, auc)


def membership_inference(
    model: nn.Module,
    members: Iterable[tuple[torch.Tensor, torch.Tensor]],
    nonmembers: Iterable[tuple[torch.Tensor, torch.Tensor]],
    alpha: float = 0.05,
) -> MembershipInference:
    """The attack on batches of training members and of held-out samples."""
    return membership_test(
        per_sample_loss(model, members), per_sample_loss(model, nonmembers), alpha
    )
