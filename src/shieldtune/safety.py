"""Safety metrics and the safety spec.

* FGSM robust accuracy — the seed's robustness measure (one signed-gradient step);
* PGD-k robust accuracy with random restarts — the stronger check: FGSM alone is
  fooled by gradient masking, and a tuner rewarded on FGSM can learn to exploit
  that, so the final report shows the FGSM-PGD gap;
* membership-inference advantage — a loss-threshold attack (Yeom et al. 2018) on
  training members vs held-out samples, the data-leakage measure, with the
  attack's true-positive rate at 1% false-positive rate.

All attacks work in pixel space: perturbations are L-inf bounded by ``epsilon``
and adversarial images are clipped to [0, 1] before the model normalises them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shieldtune.errors import ConfigError

#: Metric names a constraint may refer to, with what they mean.
SAFETY_METRICS = {
    "val_acc": "clean validation accuracy",
    "fgsm_robust_acc": "accuracy under an FGSM attack of radius safety.epsilon",
    "pgd_robust_acc": "accuracy under a PGD attack (safety.pgd_steps, safety.pgd_restarts)",
    "mia_advantage": "membership-inference advantage max(TPR - FPR) of a loss-threshold attack",
    "mia_tpr_at_1fpr": "membership-inference true-positive rate at 1% false-positive rate",
}

_EVAL_BATCH = 1000


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


def parse_constraints(texts: Iterable[str]) -> list[Constraint]:
    """Parse ``["fgsm_robust_acc >= 0.6", ...]``; raises :class:`ConfigError` on bad text."""
    out = []
    for i, text in enumerate(texts):
        m = _CONSTRAINT_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' = {text!r} must look like "
                "'METRIC >= VALUE' or 'METRIC <= VALUE'"
            )
        metric, op, raw = m.groups()
        if metric not in SAFETY_METRICS:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' names unknown metric {metric!r}; "
                f"choose one of {', '.join(SAFETY_METRICS)}"
            )
        try:
            threshold = float(raw)
        except ValueError:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' threshold {raw!r} is not a number"
            ) from None
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' threshold {threshold} is out of range; "
                "allowed: [-1, 1] (all metrics are fractions)"
            )
        out.append(Constraint(metric, op, threshold))
    return out


def spec_cost(constraints: list[Constraint], metrics: dict[str, float]) -> float:
    """Cost c of a state: the worst constraint's signed violation (c <= 0 means safe)."""
    if not constraints:
        return -1.0
    return max(c.cost(metrics) for c in constraints)


# --------------------------------------------------------------------------- attacks


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Fast Gradient Sign Method: ``clip(x + eps * sign(grad_x loss), 0, 1)``."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf projected gradient descent from a uniform random start in the epsilon-ball."""
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
    adv = (x + epsilon * noise).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - epsilon), x + epsilon).clamp_(0.0, 1.0)
    return adv.detach()


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def _batched_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    make_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        parts = []
        for i in range(0, len(y), _EVAL_BATCH):
            xb, yb = x[i : i + _EVAL_BATCH], y[i : i + _EVAL_BATCH]
            parts.append(_correct(model, make_input(xb, yb), yb))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(_batched_correct(model, x, y, lambda xb, _yb: xb).float().mean())


def fgsm_robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float
) -> float:
    """Share of samples classified correctly both clean and under FGSM (RobustBench convention)."""
    robust = _batched_correct(model, x, y, lambda xb, yb: fgsm(model, xb, yb, epsilon))
    return float((robust & _batched_correct(model, x, y, lambda xb, _yb: xb)).float().mean())


def pgd_robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    restarts: int,
    seed: int = 0,
) -> float:
    """A sample counts as robust only if it is classified correctly and no restart fools it."""
    gen = torch.Generator().manual_seed(seed)
    robust = _batched_correct(model, x, y, lambda xb, _yb: xb)
    for _ in range(restarts):
        robust &= _batched_correct(
            model, x, y, lambda xb, yb: pgd(model, xb, yb, epsilon, steps, generator=gen)
        )
    return float(robust.float().mean())


@dataclass(frozen=True)
class MembershipInference:
    advantage: float
    tpr_at_1fpr: float
    auc: float


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = [
                F.cross_entropy(
                    model(x[i : i + _EVAL_BATCH]), y[i : i + _EVAL_BATCH], reduction="none"
                )
                for i in range(0, len(y), _EVAL_BATCH)
            ]
    finally:
        model.train(was_training)
    return torch.cat(losses).double().numpy()


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
    members: tuple[torch.Tensor, torch.Tensor],
    nonmembers: tuple[torch.Tensor, torch.Tensor],
) -> MembershipInference:
    return loss_threshold_attack(
        per_sample_loss(model, *members), per_sample_loss(model, *nonmembers)
    )


def needs_pgd(constraints: list[Constraint]) -> bool:
    return any(c.metric == "pgd_robust_acc" for c in constraints)
