"""The safety spec: constraints ``METRIC >= VALUE`` / ``METRIC <= VALUE`` and their cost.

The cost of a state is the worst constraint's signed violation, so ``c <= 0``
means every constraint holds and ``c`` is the amount by which the worst one is
broken (the seeds' ``c(s, a) <= 0``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shieldtune.errors import ConfigError

if TYPE_CHECKING:
    from shieldtune.tasks.contract import Task

#: Built-in metric names a constraint may refer to, with what they mean. A task adds its own
#: (see :class:`shieldtune.tasks.TaskMetric`).
BUILTIN_METRICS = {
    "val_acc": "clean validation accuracy",
    "fgsm_robust_acc": "accuracy under an FGSM attack of radius safety.epsilon",
    "pgd_robust_acc": "accuracy under a PGD attack (safety.pgd_steps, safety.pgd_restarts)",
    "mia_advantage": "membership-inference advantage TPR - FPR of a loss-threshold attack, "
    "threshold calibrated on one half of the samples and scored on the other",
    "mia_tpr_at_1fpr": "membership-inference true-positive rate at the threshold calibrated to "
    "1% false-positive rate (held-out half)",
}
#: Metrics that attack the inputs, so they need the task's input domain.
ATTACK_METRICS = ("fgsm_robust_acc", "pgd_robust_acc")
#: Metrics of the membership-inference attack.
MIA_METRICS = ("mia_advantage", "mia_tpr_at_1fpr")
#: What a metric name must look like (also a task's own metrics).
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def available_metrics(task: Task) -> dict[str, str]:
    """Every metric a constraint may name for ``task``: the built-ins and the task's own."""
    return {**BUILTIN_METRICS, **{m.name: m.description for m in task.metrics}}


@dataclass(frozen=True)
class Constraint:
    """``metric >= threshold`` or ``metric <= threshold``."""

    metric: str
    op: str
    threshold: float

    def cost(self, metrics: dict[str, float]) -> float:
        """Signed amount by which the constraint is broken (<= 0 means satisfied)."""
        value = metrics[self.metric]
        return self.threshold - value if self.op == ">=" else value - self.threshold

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


_CONSTRAINT_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


def parse_constraints(
    texts: Iterable[str], metrics: dict[str, str] | None = None
) -> list[Constraint]:
    """Parse ``["fgsm_robust_acc >= 0.6", ...]`` over ``metrics`` (default: the built-ins);
    raises :class:`ConfigError` on bad text or a metric not in ``metrics``."""
    metrics = BUILTIN_METRICS if metrics is None else metrics
    out = []
    for i, text in enumerate(texts):
        m = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' = {text!r} must look like "
                "'METRIC >= VALUE' or 'METRIC <= VALUE'"
            )
        metric, op, raw = m.groups()
        if metric not in metrics:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' names unknown metric {metric!r}; "
                f"choose one of {', '.join(metrics)}"
            )
        try:
            threshold = float(raw)
        except ValueError:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' threshold {raw!r} is not a number"
            ) from None
        if metric in BUILTIN_METRICS and not -1.0 <= threshold <= 1.0:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' threshold {threshold} is out of range; "
                "allowed: [-1, 1] (the built-in metrics are fractions)"
            )
        if not math.isfinite(threshold):
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' threshold {raw!r} is not a finite number"
            )
        out.append(Constraint(metric, op, threshold))
    return out


def spec_cost(constraints: list[Constraint], metrics: dict[str, float]) -> float:
    """Cost c of a state: the worst constraint's signed violation (c <= 0 means safe)."""
    if not constraints:
        return -1.0
    return max(c.cost(metrics) for c in constraints)


def needs_pgd(constraints: list[Constraint]) -> bool:
    return any(c.metric == "pgd_robust_acc" for c in constraints)
