"""The shielded controller: the DQN agent choosing among the actions the shield allows.

Per step: the shield predicts the cost of every action and masks the unsafe
ones, the agent picks an allowed action epsilon-greedily (following the
baseline schedule unless it is confident another move is better), the
environment trains the segment, and agent and critic learn from the
transition. It reads only what the env's public API shows: observations,
``info`` and the action masks in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shieldtune.checkpoint import POLICY_KIND, safe_load
from shieldtune.config import AgentConfig, ShieldConfig
from shieldtune.control.agent import DQNAgent
from shieldtune.control.search_space import SearchSpace
from shieldtune.control.shield import SafetyShield, ShieldDecision
from shieldtune.control.vector_env import Outcome
from shieldtune.training.step import cpu_copy


class Timer:
    """Accumulates the wall time of the controller's own work (agent + shield)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t


@dataclass(frozen=True)
class Learned:
    """What a transition taught: the shield's decision for the next state, the round's losses."""

    decision: ShieldDecision
    q_loss: float | None
    critic_loss: float | None


def warmup_cost(info: dict[str, Any]) -> float | None:
    """The accepted state's cost while the episode has not yet been safe (the shield's
    warm-up rule: first lower the cost, then raise accuracy)."""
    return None if info["safe_reached"] else float(info["state_cost"])


class ShieldedController:
    """One DQN agent and one safety critic, learning from every environment's transitions."""

    def __init__(
        self,
        obs_dim: int,
        space: SearchSpace,
        agent: AgentConfig,
        shield: ShieldConfig,
        seed: int,
        streams: int = 1,
    ) -> None:
        """``streams``: transitions per round (a population's members). The schedules the
        configs count in steps (learning starts, epsilon decay, target updates, when the
        critic is trusted) then count rounds, so a member's k-th segment sees the controller
        a single run's k-th segment would, trained on N times the data."""
        if streams > 1:
            agent = replace(
                agent,
                learning_starts=agent.learning_starts * streams,
                epsilon_decay_steps=agent.epsilon_decay_steps * streams,
            )
            shield = replace(shield, critic_min_samples=shield.critic_min_samples * streams)
        self.space = space
        self.epsilon_unsafe = agent.epsilon_unsafe
        self.agent = DQNAgent(
            obs_dim, space.n_actions, agent, seed=seed, baseline_action=space.keep_action
        )
        self.shield = SafetyShield(obs_dim, space.n_actions, shield, seed=seed)
        self.timer = Timer()

    def warm_start(self, source: str) -> str:
        """Load a policy file into the agent and the critic; what happened, in words."""
        policy = safe_load(source, POLICY_KIND)
        self.agent.load_state_dict(policy["agent"], warm_start=True)
        self.shield.load_state_dict(policy["shield"], warm_start=True)
        return f"warm start from {source}"

    def first_decision(self, obs: np.ndarray, info: dict[str, Any]) -> ShieldDecision:
        """The shield's decision for an episode's first state."""
        with self.timer:
            return self.shield.decide(obs, info["action_mask"], warmup_cost=warmup_cost(info))

    def act(
        self,
        obs: np.ndarray,
        decision: ShieldDecision,
        info: dict[str, Any],
        avoid: int | None = None,
    ) -> int:
        """An allowed action for the state ``obs`` / ``info`` describe; ``avoid`` (a population
        member that just copied another's state: the action its donor takes) is left out when
        another action is allowed, so the copy explores with the policy's next choice."""
        with self.timer:
            explore = None
            if not info["safe_reached"]:
                explore = max(self.agent.epsilon, self.epsilon_unsafe)
            safe = info["state_certified"] == "safe"
            allowed = decision.allowed
            if avoid is not None and allowed.sum() > 1 and allowed[avoid]:
                allowed = allowed.copy()
                allowed[avoid] = False
            return self.agent.choose_action(
                obs,
                allowed,
                epsilon=explore,
                baseline=self.space.baseline_action(info["hyperparameters"], safe),
            )

    def observe(self, obs: np.ndarray, action: int, out: Outcome) -> ShieldDecision:
        """Store the transition ``obs --action--> out``; the shield's decision for the next
        state (the critic as it was before this round's update)."""
        info = out.info
        with self.timer:
            rejected = (info["violation"] or info["collapsed"]) and not info["accepted"]
            next_decision = self.shield.decide(
                out.obs,
                info["action_mask"],
                action if rejected else None,
                warmup_cost=warmup_cost(info),
            )
            self.agent.remember(
                obs,
                action,
                out.reward,
                float(info["cost"]),
                out.obs,
                out.done,
                next_decision.allowed,
            )
            self.shield.record()
        return next_decision

    def update(self) -> tuple[float | None, float | None]:
        """One learning update from the pooled replay buffer (once per round of steps, however
        many environments stepped, as vectorised DQN does): the Q and critic losses."""
        with self.timer:
            q_loss = self.agent.update()
            critic_loss = self.shield.update(self.agent.buffer)
        return q_loss, critic_loss

    def snapshot(self) -> dict[str, Any]:
        """Agent and critic as copies: the networks and optimizers are changed in place by the
        next update, which may run while this snapshot is written (the replay buffer's
        snapshot is a copy already)."""
        agent = self.agent.snapshot()
        buffer = agent.pop("buffer")
        return {
            "agent": {**cpu_copy(agent), "buffer": buffer},
            "shield": cpu_copy(self.shield.snapshot()),
        }

    def restore(self, agent: dict[str, Any], shield: dict[str, Any]) -> None:
        self.agent.restore(agent)
        self.shield.restore(shield)
