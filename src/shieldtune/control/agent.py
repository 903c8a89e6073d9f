"""DQN controller (CleanRL-style, single file of logic).

Q-network + target network, experience replay, epsilon-greedy over *allowed*
actions only (masked Q-values are -inf, and the random branch draws from the
allowed set), double-DQN targets whose argmax runs over the next state's
allowed actions, Huber loss and gradient-norm clipping.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shieldtune.config import AgentConfig
from shieldtune.control.networks import mlp
from shieldtune.control.replay import ReplayBuffer
from shieldtune.rng import rng_state, set_rng_state


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax over the last axis with disallowed entries set to -inf."""
    return q.masked_fill(~mask, float("-inf")).argmax(dim=-1)


class DQNAgent:
    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        cfg: AgentConfig,
        seed: int = 0,
        baseline_action: int | None = None,
    ) -> None:
        self.cfg = cfg
        #: The action that follows the baseline schedule ("keep"), for ``baseline_margin``.
        self.baseline_action = baseline_action
        self.obs_dim, self.n_actions = obs_dim, n_actions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.q = mlp(obs_dim, cfg.hidden, n_actions)
            self.target = mlp(obs_dim, cfg.hidden, n_actions)
        self.target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.learning_rate)
        self.buffer = ReplayBuffer(cfg.buffer_size, obs_dim, n_actions)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.updates = 0

    @property
    def epsilon(self) -> float:
        c = self.cfg
        frac = min(self.steps / c.epsilon_decay_steps, 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.q(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    def choose_action(
        self,
        obs: np.ndarray,
        allowed: np.ndarray,
        greedy: bool = False,
        epsilon: float | None = None,
        baseline: int | None = None,
    ) -> int:
        """Epsilon-greedy restricted to ``allowed`` (a boolean mask with at least one True).

        ``epsilon`` overrides the decayed rate for this choice. With ``baseline_margin`` the
        greedy branch takes the baseline action (``baseline``, else the one given at
        construction) unless another allowed action's Q-value is higher by the margin (safe
        policy improvement over the baseline schedule).
        """
        allowed = np.asarray(allowed, dtype=bool)
        if not allowed.any():
            raise ValueError("the action mask allows no action; the shield must leave one")
        rate = self.epsilon if epsilon is None else epsilon
        if not greedy and self.rng.random() < rate:
            return int(self.rng.choice(np.flatnonzero(allowed)))
        q = torch.as_tensor(self.q_values(obs))
        best = int(masked_argmax(q, torch.as_tensor(allowed)))
        base = self.baseline_action if baseline is None else baseline
        margin = self.cfg.baseline_margin
        anchored = margin is not None and base is not None and bool(allowed[base])
        if anchored and float(q[best] - q[base]) < margin:
            return base
        return best

    def remember(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        cost: float,
        next_obs: np.ndarray,
        done: bool,
        next_allowed: np.ndarray,
    ) -> None:
        self.buffer.add(
            obs, action, reward * self.cfg.reward_scale, cost, next_obs, done, next_allowed
        )
        self.steps += 1

    def update(self) -> float | None:
        """Run ``gradient_steps`` TD updates; the mean Q-loss, or None before learning starts."""
        c = self.cfg
        if len(self.buffer) < max(c.learning_starts, 1) or c.gradient_steps == 0:
            return None
        losses = []
        for _ in range(c.gradient_steps):
            b = self.buffer.sample(c.batch_size, self.rng)
            with torch.no_grad():
                next_target = self.target(b["next_obs"])
                if c.double_dqn:
                    best = masked_argmax(self.q(b["next_obs"]), b["next_masks"])
                    next_q = next_target.gather(1, best.unsqueeze(1)).squeeze(1)
                else:
                    next_q = (
                        next_target.masked_fill(~b["next_masks"], float("-inf")).max(dim=1).values
                    )
                target = b["rewards"] + c.gamma * (1.0 - b["dones"]) * next_q
            q = self.q(b["obs"]).gather(1, b["actions"].unsqueeze(1)).squeeze(1)
            loss = F.huber_loss(q, target, delta=c.huber_delta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.q.parameters(), c.max_grad_norm)
            self.optimizer.step()
            self.updates += 1
            self._update_target()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def _update_target(self) -> None:
        c = self.cfg
        if c.tau >= 1.0:
            if self.updates % c.target_update_interval == 0:
                self.target.load_state_dict(self.q.state_dict())
            return
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), self.q.parameters(), strict=True):
                p_t.lerp_(p, c.tau)

    def state_dict(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "q": self.q.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "updates": self.updates,
        }

    def snapshot(self) -> dict:
        """Everything to continue exactly where this agent is: networks, optimizer, counters,
        replay buffer and the exploration RNG (``state_dict`` is the transferable policy)."""
        return {
            **self.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": rng_state(self.rng),
        }

    def restore(self, snap: dict) -> None:
        self.load_state_dict(snap)
        self.buffer.load_state_dict(snap["buffer"])
        set_rng_state(self.rng, snap["rng"])

    def load_state_dict(self, state: dict, warm_start: bool = False) -> None:
        """Restore networks; a warm start keeps this run's step counters and optimizer."""
        if (state["obs_dim"], state["n_actions"]) != (self.obs_dim, self.n_actions):
            from shieldtune.errors import CheckpointError

            raise CheckpointError(
                f"policy was trained for obs_dim={state['obs_dim']}, "
                f"n_actions={state['n_actions']} "
                f"but this search space needs obs_dim={self.obs_dim}, n_actions={self.n_actions}"
            )
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        if not warm_start:
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps, self.updates = int(state["steps"]), int(state["updates"])
