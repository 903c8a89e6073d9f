"""The safety shield: predict c(s, a) for every action and mask the unsafe ones.

The predictor is a learned safety critic (an MLP regressing the observed
signed cost of each taken action) combined with the hard bounds of the search
space. Until the critic has seen ``critic_min_samples`` costs it masks
nothing beyond the hard bounds (a warm-started critic is trusted at once).
Once the episode is safe it masks actions predicted to break the spec; before
that, actions not predicted to lower the cost. At least one action always
stays allowed: the bound-valid action with the lowest predicted cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shieldtune.config import ShieldConfig
from shieldtune.control.networks import mlp
from shieldtune.control.replay import ReplayBuffer
from shieldtune.rng import rng_state, set_rng_state


@dataclass(frozen=True)
class ShieldDecision:
    allowed: np.ndarray
    predicted_costs: np.ndarray
    #: True where the critic (not the hard bounds) removed the action.
    masked_by_critic: np.ndarray
    #: Whether the critic took part (trusted, and the episode is past warm-up).
    critic_applied: bool

    def snapshot(self) -> dict[str, Any]:
        """As weights-only-loadable data, for the controller's crash-safe checkpoint."""
        return {
            "allowed": torch.from_numpy(self.allowed.copy()),
            "predicted_costs": torch.from_numpy(np.asarray(self.predicted_costs).copy()),
            "masked_by_critic": torch.from_numpy(self.masked_by_critic.copy()),
            "critic_applied": bool(self.critic_applied),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> ShieldDecision:
        return cls(
            snap["allowed"].numpy(),
            snap["predicted_costs"].numpy(),
            snap["masked_by_critic"].numpy(),
            snap["critic_applied"],
        )


class SafetyShield:
    def __init__(self, obs_dim: int, n_actions: int, cfg: ShieldConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.obs_dim, self.n_actions = obs_dim, n_actions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.critic = mlp(obs_dim, cfg.critic_hidden, n_actions)
        self.optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.rng = np.random.default_rng(seed + 1)
        self.observed = 0

    @property
    def active(self) -> bool:
        return self.cfg.enabled and self.observed >= self.cfg.critic_min_samples

    def predict(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.critic(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    def decide(
        self,
        obs: np.ndarray,
        bounds_mask: np.ndarray,
        rejected_action: int | None = None,
        warmup_cost: float | None = None,
    ) -> ShieldDecision:
        """Allowed actions in ``obs``.

        ``warmup_cost`` is the current cost while the episode has not yet reached a
        safe state. No action is predicted safe then, so masking "predicted unsafe"
        would leave only the least-bad action; instead (``shield.warmup_shield``) the
        critic allows the actions it predicts to *lower* the cost (first reduce cost,
        then raise accuracy), so the shield steers toward safety from the start.

        ``rejected_action`` is the action whose segment was just rolled back: the
        state is the same safe state again, and that action was just observed to
        break the spec from it, so it stays masked for this one decision (the
        critic needs many samples to learn this; the rule needs one).
        """
        bounds_mask = np.asarray(bounds_mask, dtype=bool)
        if self.cfg.enabled and rejected_action is not None:
            without = bounds_mask.copy()
            without[rejected_action] = False
            if without.any():
                bounds_mask = without
        pred = self.predict(obs)
        in_warmup = warmup_cost is not None
        if not self.active or (in_warmup and not self.cfg.warmup_shield):
            return ShieldDecision(bounds_mask.copy(), pred, np.zeros_like(bounds_mask), False)
        limit = warmup_cost if warmup_cost is not None else -self.cfg.margin
        allowed = bounds_mask & (pred < limit if in_warmup else pred <= limit)
        if not allowed.any():
            candidates = np.flatnonzero(bounds_mask)
            allowed = np.zeros_like(bounds_mask)
            allowed[candidates[np.argmin(pred[candidates])]] = True
        return ShieldDecision(allowed, pred, bounds_mask & ~allowed, True)

    def record(self) -> None:
        """Count one more observed cost (the transition itself sits in the replay buffer)."""
        self.observed += 1

    def update(self, buffer: ReplayBuffer) -> float | None:
        """Regress the critic's output for taken actions onto their observed costs."""
        if len(buffer) == 0 or self.cfg.critic_updates_per_step == 0:
            return None
        losses = []
        for _ in range(self.cfg.critic_updates_per_step):
            b = buffer.sample(self.cfg.critic_batch_size, self.rng)
            pred = self.critic(b["obs"]).gather(1, b["actions"].unsqueeze(1)).squeeze(1)
            loss = F.mse_loss(pred, b["costs"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def state_dict(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "observed": self.observed,
        }

    def snapshot(self) -> dict:
        """The critic, its optimizer, counters and sampling RNG (for a crash-safe checkpoint)."""
        return {**self.state_dict(), "rng": rng_state(self.rng)}

    def restore(self, snap: dict) -> None:
        self.load_state_dict(snap)
        set_rng_state(self.rng, snap["rng"])

    def load_state_dict(self, state: dict, warm_start: bool = False) -> None:
        self.critic.load_state_dict(state["critic"])
        if not warm_start:
            self.optimizer.load_state_dict(state["optimizer"])
        # A warm-started critic has already learned from real costs, so it is trusted at once.
        self.observed = int(state["observed"])
