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

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from shieldtune.tasks.batches import EVAL_BATCH
from shieldtune.tasks.contract import PIXELS, InputDomain

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    domain: InputDomain = PIXELS,
) -> torch.Tensor:
    """Fast Gradient Sign Method: ``clip(x + eps * sign(grad_x loss))`` into the input domain."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return domain.clip(x.detach() + epsilon * grad.sign())


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    domain: InputDomain = PIXELS,
) -> torch.Tensor:
    """L-inf projected gradient descent from a uniform random start in the epsilon-ball.

    The random start is drawn on the CPU (``generator``), so a seed gives the same attack
    on every device.
    """
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
    adv = domain.clip(x + epsilon * noise)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = domain.clip(torch.min(torch.max(adv, x - epsilon), x + epsilon))
    return adv.detach()


def correct(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    make_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per sample (on the CPU): is ``make_input(x, y)`` (default: ``x``) classified as ``y``?"""
    was_training = model.training
    model.eval()
    try:
        parts = []
        for xb, yb in batches:
            inputs = xb if make_input is None else make_input(xb, yb)
            with torch.inference_mode():
                parts.append((model(inputs).argmax(dim=1) == yb).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    finally:
        model.train(was_training)


def fgsm_robust(
    model: nn.Module,
    batches: Batches,
    epsilon: float,
    domain: InputDomain = PIXELS,
    clean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample: classified correctly both clean and under FGSM (RobustBench convention).

    ``clean``: the samples' clean correctness when already known (saves a forward pass).
    """
    robust = correct(model, batches(), lambda xb, yb: fgsm(model, xb, yb, epsilon, domain))
    return robust & (correct(model, batches()) if clean is None else clean)


def pgd_fooled(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    generator: torch.Generator | None = None,
    domain: InputDomain = PIXELS,
) -> torch.Tensor:
    """Per sample: does PGD (as :func:`pgd`) fool the model at its random start or any
    iterate? A fooled sample stops there (it already counts as broken), so a batch costs
    fewer passes the weaker the model is; the attack is never weaker than the last iterate."""
    alpha = 2.5 * epsilon / steps
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    active = torch.arange(len(y), device=x.device)
    adv = domain.clip(x + epsilon * noise)
    for step in range(steps + 1):
        xa, ya = adv[active].requires_grad_(True), y[active]
        logits = model(xa)
        hit = logits.argmax(dim=1) != ya
        fooled[active[hit]] = True
        if step == steps or bool(hit.all()):
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, ya), xa)
        keep = ~hit
        active, x_a = active[keep], x[active[keep]]
        moved = xa.detach()[keep] + alpha * grad[keep].sign()
        adv[active] = domain.clip(torch.min(torch.max(moved, x_a - epsilon), x_a + epsilon))
    return fooled.cpu()


def pgd_robust(
    model: nn.Module,
    batches: Batches,
    epsilon: float,
    steps: int,
    restarts: int,
    seed: int = 0,
    domain: InputDomain = PIXELS,
    clean: torch.Tensor | None = None,
    screen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample: classified correctly and no PGD restart fools it (at any iterate).

    Only samples still standing are attacked: a sample misclassified clean, one that
    ``screen`` already marks broken (e.g. by FGSM: the robust accuracy is then the worst
    case over both attacks, as attack ensembles report it), or one an earlier restart
    fooled, costs no more passes.
    """
    gen = torch.Generator().manual_seed(seed)
    robust = correct(model, batches()) if clean is None else clean.clone()
    if screen is not None:
        robust &= screen
    was_training = model.training
    model.eval()
    try:
        for _ in range(restarts):
            start = 0
            for xb, yb in batches():
                rows = torch.nonzero(robust[start : start + len(yb)]).flatten()
                if len(rows):
                    pick = rows.to(xb.device)
                    hit = pgd_fooled(model, xb[pick], yb[pick], epsilon, steps, gen, domain)
                    robust[start + rows[hit]] = False
                start += len(yb)
            if not robust.any():
                break
    finally:
        model.train(was_training)
    return robust


def tensor_batches(x: torch.Tensor, y: torch.Tensor) -> Batches:
    """In-memory inputs and labels as evaluation batches."""
    return lambda: (
        (x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]) for i in range(0, len(y), EVAL_BATCH)
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(correct(model, tensor_batches(x, y)()).float().mean())


def fgsm_robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    domain: InputDomain = PIXELS,
) -> float:
    """Share of samples classified correctly both clean and under FGSM."""
    return float(fgsm_robust(model, tensor_batches(x, y), epsilon, domain).float().mean())


def pgd_robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    restarts: int,
    seed: int = 0,
    domain: InputDomain = PIXELS,
) -> float:
    """A sample counts as robust only if it is classified correctly and no restart fools it."""
    robust = pgd_robust(model, tensor_batches(x, y), epsilon, steps, restarts, seed, domain)
    return float(robust.float().mean())
