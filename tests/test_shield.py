"""The safety shield: masking by predicted cost, the always-one-allowed rule, critic learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shieldtune.config import ShieldConfig
from shieldtune.control.replay import ReplayBuffer
from shieldtune.control.shield import SafetyShield


def shield_with_costs(costs: list[float], **cfg) -> SafetyShield:
    """A shield whose critic predicts exactly ``costs`` for every observation."""
    shield = SafetyShield(3, len(costs), ShieldConfig(critic_min_samples=1, **cfg))
    last = shield.critic[-1]
    with torch.no_grad():
        for p in shield.critic.parameters():
            p.zero_()
        last.bias.copy_(torch.tensor(costs))
    shield.record()
    return shield


def test_actions_with_positive_predicted_cost_are_masked():
    shield = shield_with_costs([-0.2, 0.3, -0.01, 0.5])
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool))
    assert d.allowed.tolist() == [True, False, True, False]
    assert d.masked_by_critic.tolist() == [False, True, False, True]
    np.testing.assert_allclose(d.predicted_costs, [-0.2, 0.3, -0.01, 0.5], atol=1e-6)


def test_margin_masks_actions_predicted_too_close_to_the_limit():
    shield = shield_with_costs([-0.2, 0.3, -0.01, 0.5], margin=0.05)
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool))
    assert d.allowed.tolist() == [True, False, False, False]


def test_when_every_action_looks_unsafe_the_lowest_predicted_cost_stays_allowed():
    shield = shield_with_costs([0.4, 0.1, 0.3, 0.2])
    d = shield.decide(np.zeros(3, dtype=np.float32), np.array([True, False, True, True]))
    # Action 1 has the lowest cost but is out of bounds, so the best in-bounds one is kept.
    assert d.allowed.tolist() == [False, False, False, True]


def test_hard_bounds_always_apply_and_critic_waits_for_enough_observations():
    shield = SafetyShield(3, 4, ShieldConfig(critic_min_samples=5))
    bounds = np.array([True, True, False, True])
    for _ in range(4):
        shield.record()
    d = shield.decide(np.zeros(3, dtype=np.float32), bounds)
    assert not shield.active and d.allowed.tolist() == bounds.tolist()
    shield.record()
    assert shield.active


def test_an_action_just_rolled_back_is_masked_in_the_restored_state():
    shield = SafetyShield(3, 4, ShieldConfig(critic_min_samples=100))  # critic not yet trusted
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool), rejected_action=2)
    assert d.allowed.tolist() == [True, True, False, True]
    # It never removes the last allowed action.
    only = np.array([False, False, True, False])
    d = shield.decide(np.zeros(3, dtype=np.float32), only, rejected_action=2)
    assert d.allowed.tolist() == only.tolist()


def test_before_the_first_safe_state_only_actions_predicted_to_lower_the_cost_are_allowed():
    """Issue: the shield did nothing until an episode was first safe. Now, with the episode at
    cost 0.25, it allows the actions the critic predicts to lower that cost."""
    shield = shield_with_costs([0.4, 0.1, 0.3, 0.2])
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool), warmup_cost=0.25)
    assert d.allowed.tolist() == [False, True, False, True] and d.critic_applied
    # None predicted to help: the least bad one stays.
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool), warmup_cost=0.05)
    assert d.allowed.tolist() == [False, True, False, False]


def test_the_warmup_rule_can_be_turned_off():
    shield = shield_with_costs([0.4, 0.1, 0.3, 0.2], warmup_shield=False)
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool), warmup_cost=0.25)
    assert d.allowed.all() and not d.masked_by_critic.any()


def test_disabled_shield_masks_only_by_bounds():
    shield = shield_with_costs([0.9, 0.9, 0.9, 0.9], enabled=False)
    d = shield.decide(np.zeros(3, dtype=np.float32), np.ones(4, dtype=bool))
    assert d.allowed.all()


def test_critic_learns_which_action_is_unsafe_from_observed_costs():
    rng = np.random.default_rng(0)
    shield = SafetyShield(2, 3, ShieldConfig(critic_lr=1e-2, critic_updates_per_step=1))
    buf = ReplayBuffer(1000, 2, 3)
    for _ in range(300):
        obs = rng.uniform(0, 1, size=2).astype(np.float32)
        a = int(rng.integers(3))
        # Action 2 is unsafe when the first feature (think: learning rate) is high.
        cost = (obs[0] - 0.5) if a == 2 else -0.3
        buf.add(obs, a, 0.0, cost, obs, True, np.ones(3, dtype=bool))
        shield.record()
    for _ in range(600):
        shield.update(buf)
    high = shield.decide(np.array([0.95, 0.5], dtype=np.float32), np.ones(3, dtype=bool))
    low = shield.decide(np.array([0.05, 0.5], dtype=np.float32), np.ones(3, dtype=bool))
    assert high.allowed.tolist() == [True, True, False]
    assert low.allowed.all()
    assert high.predicted_costs[2] == pytest.approx(0.45, abs=0.12)


def test_warm_started_critic_predicts_the_same_and_is_trusted_at_once():
    source = shield_with_costs([0.4, -0.1, 0.3, 0.2])
    for _ in range(9):
        source.record()
    target = SafetyShield(3, 4, ShieldConfig(critic_min_samples=5))
    assert not target.active
    target.load_state_dict(source.state_dict(), warm_start=True)
    obs = np.ones(3, dtype=np.float32)
    np.testing.assert_allclose(target.predict(obs), source.predict(obs))
    assert target.active
