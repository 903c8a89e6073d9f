"""Experience replay shared by the DQN agent and the safety critic.

Each transition stores the observed cost as well as the reward, and the
action mask of the next state, so double-DQN targets can take their max only
over actions that were allowed there.
"""

from __future__ import annotations

import numpy as np
import torch

_ARRAYS = ("obs", "next_obs", "actions", "rewards", "costs", "dones", "next_masks")


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, n_actions: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.costs = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.next_masks = np.ones((capacity, n_actions), dtype=bool)
        self.pos = 0
        self.full = False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        cost: float,
        next_obs: np.ndarray,
        done: bool,
        next_mask: np.ndarray,
    ) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i], self.costs[i] = obs, action, reward, cost
        self.next_obs[i], self.dones[i], self.next_masks[i] = next_obs, float(done), next_mask
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def state_dict(self) -> dict:
        """Contents and write position, as tensors (a crash-safe checkpoint holds them)."""
        arrays = {k: torch.from_numpy(getattr(self, k).copy()) for k in _ARRAYS}
        return {**arrays, "pos": self.pos, "full": self.full}

    def load_state_dict(self, state: dict) -> None:
        for k in _ARRAYS:
            getattr(self, k)[...] = state[k].numpy()
        self.pos, self.full = int(state["pos"]), bool(state["full"])

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, len(self), size=batch_size)
        return {
            "obs": torch.from_numpy(self.obs[idx]),
            "actions": torch.from_numpy(self.actions[idx]),
            "rewards": torch.from_numpy(self.rewards[idx]),
            "costs": torch.from_numpy(self.costs[idx]),
            "next_obs": torch.from_numpy(self.next_obs[idx]),
            "dones": torch.from_numpy(self.dones[idx]),
            "next_masks": torch.from_numpy(self.next_masks[idx]),
        }
