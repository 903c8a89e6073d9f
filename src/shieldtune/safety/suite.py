"""The final safety report of one model on the test split.

Used once per tuning job (on the best feasible checkpoint) and by
``shieldtune evaluate``: clean accuracy, FGSM and PGD robust accuracy with
their gap, and membership-inference leakage of training members vs test
samples, checked against the safety spec.
"""

from __future__ import annotations

from torch import nn

from shieldtune.config import SafetyConfig
from shieldtune.data import MnistSplits
from shieldtune.safety.attacks import accuracy, fgsm_robust_accuracy, pgd_robust_accuracy
from shieldtune.safety.privacy import membership_inference
from shieldtune.safety.spec import parse_constraints, spec_cost


def safety_report(
    model: nn.Module, splits: MnistSplits, cfg: SafetyConfig, seed: int = 0
) -> dict[str, float]:
    test = splits.test
    n = min(cfg.mia_samples, len(test), len(splits.train))
    mia = membership_inference(
        model, (splits.train.x[:n], splits.train.y[:n]), (test.x[:n], test.y[:n])
    )
    fgsm_acc = fgsm_robust_accuracy(model, test.x, test.y, cfg.epsilon)
    pgd_acc = pgd_robust_accuracy(
        model, test.x, test.y, cfg.epsilon, cfg.pgd_steps, cfg.pgd_restarts, seed
    )
    metrics = {
        "test_acc": accuracy(model, test.x, test.y),
        "fgsm_robust_acc": fgsm_acc,
        "pgd_robust_acc": pgd_acc,
        "fgsm_pgd_gap": fgsm_acc - pgd_acc,
        "mia_advantage": mia.advantage,
        "mia_tpr_at_1fpr": mia.tpr_at_1fpr,
        "mia_auc": mia.auc,
    }
    # Constraints on val_acc are judged on test accuracy in the final report.
    judged = {**metrics, "val_acc": metrics["test_acc"]}
    metrics["cost"] = spec_cost(parse_constraints(cfg.constraints), judged)
    metrics["constraints_satisfied"] = float(metrics["cost"] <= 0)
    return metrics
