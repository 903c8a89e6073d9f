"""The one metric suite: every metric of a model, per environment step and in the final report.

Per step it measures on the validation split (accuracy on all of it, attacks
on the first ``safety.eval_samples``, membership inference of training
members against validation samples, PGD only when a constraint names it);
the final report measures the same metrics on the test split, touched once,
with attacks on all of it and PGD always (the FGSM-PGD gap). A task's own
metrics are computed in both, from the same forward pass as the accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import Dataset

from shieldtune.config import SafetyConfig
from shieldtune.safety.attacks import fgsm_robust, pgd_robust
from shieldtune.safety.privacy import membership_inference
from shieldtune.safety.spec import (
    Constraint,
    available_metrics,
    needs_pgd,
    parse_constraints,
    spec_cost,
)
from shieldtune.tasks.batches import head, iterate, to_device
from shieldtune.tasks.contract import MetricInput, Task, TaskData


@dataclass(frozen=True)
class _Plan:
    """Which split a measurement uses and how much of it is attacked."""

    split: str
    dataset: Dataset
    attack_samples: int
    pgd: bool


class MetricSuite:
    def __init__(
        self, task: Task, cfg: SafetyConfig, device: torch.device, loader_workers: int = 0
    ) -> None:
        self.task = task
        self.cfg = cfg
        self.device = device
        self.workers = loader_workers
        self.constraints: list[Constraint] = parse_constraints(
            cfg.constraints, available_metrics(task)
        )
        self._pgd_per_step = needs_pgd(self.constraints)

    def step_metrics(self, model: nn.Module, data: TaskData, seed: int) -> dict[str, float]:
        """Per-step validation metrics: accuracy, FGSM, membership inference, the task's own
        (+ PGD when a constraint names it)."""
        plan = _Plan("val", data.val, self.cfg.eval_samples, self._pgd_per_step)
        metrics = self._measure(model, data, plan, seed)
        metrics["val_acc"] = metrics.pop("acc")
        return metrics

    def report(self, model: nn.Module, data: TaskData, seed: int = 0) -> dict[str, float]:
        """The final safety report on the test split, checked against the spec."""
        plan = _Plan("test", data.test, len(data.test), True)  # type: ignore[arg-type]
        metrics = self._measure(model, data, plan, seed)
        metrics["test_acc"] = metrics.pop("acc")
        if "fgsm_robust_acc" in metrics:
            metrics["fgsm_pgd_gap"] = metrics["fgsm_robust_acc"] - metrics["pgd_robust_acc"]
        # Constraints on val_acc are judged on test accuracy in the final report.
        metrics["cost"] = self.cost({**metrics, "val_acc": metrics["test_acc"]})
        metrics["constraints_satisfied"] = float(metrics["cost"] <= 0)
        return metrics

    def cost(self, metrics: dict[str, float]) -> float:
        return spec_cost(self.constraints, metrics)

    def _batches(self, dataset: Dataset):
        return partial(iterate, dataset, self.device, workers=self.workers)

    def _measure(
        self, model: nn.Module, data: TaskData, plan: _Plan, seed: int
    ) -> dict[str, float]:
        model.eval()
        logits, targets = self._predict(model, plan.dataset)
        metrics = {"acc": float((logits.argmax(dim=1) == targets).float().mean())}
        n = min(self.cfg.mia_samples, len(data.train), len(plan.dataset))  # type: ignore[arg-type]
        mia = membership_inference(
            model, self._batches(head(data.train, n))(), self._batches(head(plan.dataset, n))()
        )
        metrics["mia_advantage"] = mia.advantage
        metrics["mia_tpr_at_1fpr"] = mia.tpr_at_1fpr
        if plan.split == "test":
            metrics["mia_auc"] = mia.auc
        domain = data.attack_domain(self.task)
        if domain is not None:
            attacked = self._batches(head(plan.dataset, plan.attack_samples))
            s = self.cfg
            robust = fgsm_robust(model, attacked, s.epsilon, domain)
            metrics["fgsm_robust_acc"] = float(robust.float().mean())
            if plan.pgd:
                robust = pgd_robust(
                    model, attacked, s.epsilon, s.pgd_steps, s.pgd_restarts, seed, domain
                )
                metrics["pgd_robust_acc"] = float(robust.float().mean())
        for metric in self.task.metrics:
            seen = MetricInput(model, plan.split, plan.dataset, logits, targets)
            metrics[metric.name] = float(metric.fn(seen))
        return metrics

    def _predict(self, model: nn.Module, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits and the labels of a whole split, on the CPU."""
        outs, ys = [], []
        with torch.no_grad():
            for xb, yb in self._batches(dataset)():
                outs.append(model(xb).float().cpu())
                ys.append(yb.cpu())
        return torch.cat(outs), torch.cat(ys)


def test_report(
    task: Task,
    model: nn.Module,
    data: TaskData,
    safety: SafetyConfig,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """The final report of ``model`` on ``device``; the model is left on the CPU."""
    suite = MetricSuite(task, safety, device)
    try:
        return suite.report(model.to(device), to_device(data, device), seed)
    finally:
        model.to("cpu")
