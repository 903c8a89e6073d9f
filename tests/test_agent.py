"""DQN agent: masked epsilon-greedy, masked double-DQN targets, learning a known MDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldtune.config import AgentConfig
from shieldtune.control.agent import DQNAgent


def one_hot(i: int, n: int) -> np.ndarray:
    v = np.zeros(n, dtype=np.float32)
    v[i] = 1.0
    return v


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    mask=st.lists(st.booleans(), min_size=9, max_size=9).filter(any),
    epsilon=st.sampled_from([0.0, 0.3, 1.0]),
    obs=st.lists(st.floats(-1, 1, width=32), min_size=6, max_size=6),
)
def test_agent_never_picks_a_masked_action(seed, mask, epsilon, obs):
    agent = DQNAgent(6, 9, AgentConfig(epsilon_start=epsilon, epsilon_end=epsilon), seed=seed)
    allowed = np.array(mask)
    for _ in range(5):
        assert allowed[agent.choose_action(np.array(obs, dtype=np.float32), allowed)]


def test_greedy_choice_skips_the_best_q_value_when_it_is_masked():
    agent = DQNAgent(3, 4, AgentConfig(epsilon_start=0.0, epsilon_end=0.0), seed=0)
    obs = np.zeros(3, dtype=np.float32)
    q = agent.q_values(obs)
    best = int(np.argmax(q))
    allowed = np.ones(4, dtype=bool)
    allowed[best] = False
    expected = int(np.argmax(np.where(allowed, q, -np.inf)))
    assert agent.choose_action(obs, allowed) == expected


def test_empty_mask_is_an_error():
    agent = DQNAgent(3, 4, AgentConfig(), seed=0)
    with pytest.raises(ValueError, match="allows no action"):
        agent.choose_action(np.zeros(3, dtype=np.float32), np.zeros(4, dtype=bool))


def run_chain(agent: DQNAgent, episodes: int, n: int = 5, horizon: int = 10) -> None:
    """Chain MDP: 'right' walks to the goal (+1, terminal); 'left' pays +0.05 now and stays."""
    for _ in range(episodes):
        s = 0
        for t in range(horizon):
            a = agent.choose_action(one_hot(s, n), np.ones(2, dtype=bool))
            if a == 1:
                s2, r = s + 1, 1.0 if s + 1 == n - 1 else 0.0
            else:
                s2, r = max(s - 1, 0), 0.05
            done = s2 == n - 1 or t == horizon - 1
            agent.remember(
                one_hot(s, n), a, r, 0.0, one_hot(s2, n), s2 == n - 1, np.ones(2, dtype=bool)
            )
            agent.update()
            s = s2
            if done:
                break


@pytest.mark.parametrize("double_dqn", [True, False])
def test_dqn_learns_the_optimal_policy_of_a_chain_mdp(double_dqn):
    cfg = AgentConfig(
        gamma=0.9,
        learning_rate=5e-3,
        epsilon_decay_steps=400,
        epsilon_end=0.1,
        learning_starts=32,
        batch_size=32,
        gradient_steps=2,
        target_update_interval=20,
        reward_scale=1.0,
        double_dqn=double_dqn,
    )
    agent = DQNAgent(5, 2, cfg, seed=1)
    run_chain(agent, episodes=150)
    # Optimal: always right (Q*(s, right) = 0.9**(3 - s)), never the myopic +0.05.
    for s in range(4):
        q = agent.q_values(one_hot(s, 5))
        assert int(np.argmax(q)) == 1, (s, q)
        assert q[1] == pytest.approx(0.9 ** (3 - s), abs=0.15)


def test_targets_bootstrap_only_from_actions_allowed_in_the_next_state():
    """State A: a0 -> B, a1 -> +0.5. In B, b0 pays +1 but is masked when reached from A."""
    cfg = AgentConfig(
        gamma=0.9,
        learning_rate=5e-3,
        learning_starts=1,
        batch_size=64,
        gradient_steps=1,
        target_update_interval=10,
        reward_scale=1.0,
    )
    agent = DQNAgent(2, 2, cfg, seed=0)
    A, B = one_hot(0, 2), one_hot(1, 2)
    only_b1 = np.array([False, True])
    for _ in range(100):
        agent.remember(B, 0, 1.0, 0.0, B, True, np.ones(2, dtype=bool))
        agent.remember(B, 1, 0.0, 0.0, B, True, np.ones(2, dtype=bool))
        agent.remember(A, 1, 0.5, 0.0, A, True, np.ones(2, dtype=bool))
        agent.remember(A, 0, 0.0, 0.0, B, False, only_b1)
    for _ in range(1500):
        agent.update()
    qa, qb = agent.q_values(A), agent.q_values(B)
    assert qb[0] == pytest.approx(1.0, abs=0.1)  # b0 is valuable in itself...
    assert qa[0] == pytest.approx(0.9 * qb[1], abs=0.1)  # ...but A->B bootstraps from b1 only
    assert agent.choose_action(A, np.ones(2, dtype=bool), greedy=True) == 1


def test_epsilon_decays_linearly_to_its_floor():
    agent = DQNAgent(2, 2, AgentConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=10))
    assert agent.epsilon == 1.0
    agent.steps = 5
    assert agent.epsilon == pytest.approx(0.55)
    agent.steps = 50
    assert agent.epsilon == pytest.approx(0.1)


def test_state_dict_round_trip_restores_q_values_and_counters():
    a = DQNAgent(4, 3, AgentConfig(), seed=0)
    a.steps = 17
    b = DQNAgent(4, 3, AgentConfig(), seed=99)
    b.load_state_dict(a.state_dict())
    obs = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(a.q_values(obs), b.q_values(obs))
    assert b.steps == 17


def test_greedy_choice_keeps_the_baseline_unless_another_action_is_better_by_the_margin():
    from shieldtune.config import AgentConfig

    agent = DQNAgent(2, 3, AgentConfig(baseline_margin=0.5, epsilon_start=0.0, epsilon_end=0.0))
    with torch.no_grad():
        for p in agent.q.parameters():
            p.zero_()
        agent.q[-1].bias.copy_(torch.tensor([0.0, 0.3, 0.2]))
    obs, allowed = np.zeros(2, dtype=np.float32), np.ones(3, dtype=bool)
    assert agent.choose_action(obs, allowed, baseline=2) == 2  # 0.3 - 0.2 < 0.5
    with torch.no_grad():
        agent.q[-1].bias.copy_(torch.tensor([0.0, 0.9, 0.2]))
    assert agent.choose_action(obs, allowed, baseline=2) == 1  # confident: 0.9 - 0.2 >= 0.5
    assert agent.choose_action(obs, np.array([True, True, False]), baseline=2) == 1
