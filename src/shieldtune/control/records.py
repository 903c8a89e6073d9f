"""What a job writes about each trained segment: the step record and the shield's audit row.

The step record (``steps.jsonl``, and the step's MLflow metrics) says what was
trained, what was measured and what the controller learned; the audit row
(``shield_audit.jsonl``) says what the shield allowed, masked and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shieldtune.control.controller import Learned
from shieldtune.control.search_space import SearchSpace
from shieldtune.control.shield import ShieldDecision
from shieldtune.control.vector_env import Outcome

#: Record keys that are labels, not metrics (never logged to MLflow as metrics).
NOT_METRICS = (
    "episode",
    "env_index",
    "step",
    "global_step",
    "action",
    "move",
    "samples_used",
    "verdict",
)


@dataclass(frozen=True)
class StepContext:
    """Where a segment sits in the job, and what chose it."""

    episode: int
    env_index: int
    global_step: int
    action: int
    decision: ShieldDecision
    epsilon: float


def step_record(
    space: SearchSpace, ctx: StepContext, out: Outcome, learned: Learned
) -> dict[str, Any]:
    """One row of ``steps.jsonl``."""
    info = out.info
    cost = float(info["cost"])
    observed = info["observed_metrics"]
    return {
        "episode": ctx.episode,
        "env_index": ctx.env_index,
        "step": info["step"],
        "global_step": ctx.global_step,
        "action": int(ctx.action),
        "move": space.describe(ctx.action),
        **{k: float(v) for k, v in info["proposed_hyperparameters"].items()},
        **{f"{k}_trained": float(v) for k, v in info["trained_hyperparameters"].items()},
        "val_acc": observed.get("val_acc", float("nan")),
        "fgsm_robust_acc": observed.get("fgsm_robust_acc", float("nan")),
        "mia_advantage": observed.get("mia_advantage", float("nan")),
        # Everything else measured: bounds (<metric>_low/_high), verdict, task metrics, ...
        **{k: float(v) for k, v in observed.items() if k not in ("train_loss",)},
        "verdict": info["certified"],
        "unsafe": cost > 0,
        "reward": float(out.reward),
        "cost": cost,
        "violation": bool(info["violation"]),
        "warmup": bool(info["warmup"]),
        "accepted": bool(info["accepted"]),
        "diverged": bool(info["diverged"]),
        "epsilon": ctx.epsilon,
        "q_loss": learned.q_loss,
        "critic_loss": learned.critic_loss,
        "masked_actions": int(ctx.decision.masked_by_critic.sum()),
        "samples_used": int(info["samples_used"]),
        **out.timing,
    }


def audit_entry(space: SearchSpace, ctx: StepContext, out: Outcome) -> dict[str, Any]:
    """One row of ``shield_audit.jsonl``: what the shield allowed, masked, and what happened."""
    info, decision, action = out.info, ctx.decision, ctx.action
    return {
        "episode": ctx.episode,
        "step": info["step"],
        "global_step": ctx.global_step,
        "shield_active": decision.critic_applied,
        "allowed": np.flatnonzero(decision.allowed).tolist(),
        "masked_by_critic": [
            {
                "action": int(a),
                "move": space.describe(int(a)),
                "predicted_cost": float(decision.predicted_costs[a]),
            }
            for a in np.flatnonzero(decision.masked_by_critic)
        ],
        "masked_by_bounds": np.flatnonzero(~decision.allowed & ~decision.masked_by_critic).tolist(),
        "chosen": int(action),
        "chosen_move": space.describe(action),
        "chosen_predicted_cost": float(decision.predicted_costs[action]),
        "observed_cost": float(info["cost"]),
        "costs": info["costs"],
        "violation": bool(info["violation"]),
        "warmup": bool(info["warmup"]),
        "accepted": bool(info["accepted"]),
        "diverged": bool(info["diverged"]),
    }


def step_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers for MLflow (labels, unset losses and NaNs left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in NOT_METRICS and v is not None and not (isinstance(v, float) and np.isnan(v))
    }
