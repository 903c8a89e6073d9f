"""Adversarial robustness: FGSM and PGD-k with restarts, and accuracy under them.

* FGSM robust accuracy: the seeds' robustness measure (one signed-gradient step);
* PGD-k robust accuracy with random restarts: the stronger check. FGSM alone is
  fooled by gradient masking, and a tuner rewarded on FGSM can learn to exploit
  that, so the final report shows the FGSM-PGD gap.

All attacks work in input space: perturbations are L-inf bounded by ``epsilon``
and adversarial inputs are clipped to the input domain before the model
normalises them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_EVAL_BATCH = 1000


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
