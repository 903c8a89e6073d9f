"""The Gymnasium environment: API conformance, rewards, rollback, divergence, masks."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import shieldtune  # noqa: F401  (registers shieldtune/Hyperparam-v0)
from shieldtune.config import config_from_dict
from shieldtune.control.env import ENV_ID, HyperparamEnv

from .conftest import tiny_dict
from .scripted import ScriptedExecutor, metrics


def scripted_env(outcomes, **sections) -> tuple[HyperparamEnv, ScriptedExecutor]:
    ex = ScriptedExecutor(outcomes)
    cfg = config_from_dict(
        tiny_dict(safety={"constraints": ["fgsm_robust_acc >= 0.5"]}, **sections)
    )
    return HyperparamEnv(cfg, ex), ex


def test_env_passes_gymnasium_check_env_with_real_training(tiny_config):
    env = HyperparamEnv(tiny_config)
    check_env(env, skip_render_check=True)


def test_gym_make_builds_the_registered_env():
    env = gym.make(ENV_ID, config=tiny_dict())
    assert isinstance(env.unwrapped, HyperparamEnv)
    assert env.action_space.n == 9


def test_reward_is_validation_accuracy_gain_and_observation_reports_it():
    env, _ex = scripted_env([metrics(0.1), metrics(0.6), metrics(0.7)])
    obs, info = env.reset(seed=0)
    assert info["constraint_satisfied"]
    _, r1, *_ = env.step(env.space.keep_action)
    obs, r2, term, trunc, info = env.step(env.space.keep_action)
    assert r1 == pytest.approx(0.5) and r2 == pytest.approx(0.1)
    assert obs[0] == pytest.approx(0.7)
    assert obs[-1] == pytest.approx(0.1)  # last reward
    assert not term and not trunc
    assert info["accepted"] and info["cost"] == pytest.approx(0.5 - 0.9)


def test_unsafe_segment_is_rolled_back_and_counted_as_violation():
    env, ex = scripted_env([metrics(0.1), metrics(0.8), metrics(0.95, fgsm=0.2), metrics(0.85)])
    env.reset(seed=0)
    env.step(env.space.keep_action)
    safe_state, safe_hp = env.state, dict(env.hyperparameters)
    up_lr = next(a for a in range(env.space.n_actions) if env.space.moves(a).tolist() == [1, 0])
    _, reward, term, _, info = env.step(up_lr)
    assert info["cost"] == pytest.approx(0.3) and not info["constraint_satisfied"]
    assert info["violation"] and not info["warmup"]
    assert not info["accepted"] and reward == 0.0 and not term
    assert env.state is safe_state and env.hyperparameters == safe_hp
    assert env.metrics["val_acc"] == pytest.approx(0.8)
    # The next segment continues from the safe checkpoint, not the rejected one.
    env.step(env.space.keep_action)
    assert ex.requests[-1].state is safe_state
    assert [e.step for e in env.schedule] == [1, 3]


def test_warmup_segments_before_the_first_safe_state_are_accepted_not_violations():
    env, _ = scripted_env(
        [
            metrics(0.1, fgsm=0.0),
            metrics(0.5, fgsm=0.3),
            metrics(0.8, fgsm=0.6),
            metrics(0.9, fgsm=0.4),
        ]
    )
    _, info = env.reset(seed=0)
    assert not info["constraint_satisfied"]
    _, _, _, _, info = env.step(env.space.keep_action)
    assert info["warmup"] and info["accepted"] and not info["violation"]
    _, _, _, _, info = env.step(env.space.keep_action)
    assert info["accepted"] and not info["warmup"] and info["constraint_satisfied"]
    _, _, _, _, info = env.step(env.space.keep_action)
    assert info["violation"] and not info["warmup"] and not info["accepted"]


def test_without_rollback_unsafe_segments_are_accepted():
    env, _ = scripted_env(
        [metrics(0.1), metrics(0.9, fgsm=0.2)], shield={"rollback": False, "safety_shaping": 0}
    )
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.space.keep_action)
    assert info["accepted"] and not info["constraint_satisfied"]
    assert reward == pytest.approx(0.8)


def test_cost_penalty_is_subtracted_from_reward():
    env, _ = scripted_env(
        [metrics(0.1), metrics(0.9, fgsm=0.2)],
        shield={"rollback": False, "cost_penalty": 2.0, "safety_shaping": 0},
    )
    env.reset(seed=0)
    _, reward, *_ = env.step(env.space.keep_action)
    assert reward == pytest.approx(0.8 - 2.0 * 0.3)


def test_reward_pays_for_each_unit_of_violation_an_accepted_segment_removes():
    """Issue: the reward ignored cost, so nothing steered an unsafe episode toward safety."""
    env, _ = scripted_env(
        [metrics(0.5, fgsm=0.1), metrics(0.5, fgsm=0.3), metrics(0.5, fgsm=0.6)],
        shield={"safety_shaping": 2.0},
    )
    env.reset(seed=0)  # cost 0.4 (fgsm 0.1 against >= 0.5)
    _, reward, _, _, info = env.step(env.space.keep_action)  # cost 0.2: 0.2 removed
    assert info["warmup"] and reward == pytest.approx(2.0 * 0.2)
    _, reward, *_ = env.step(env.space.keep_action)  # safe: the last 0.2 removed
    assert reward == pytest.approx(2.0 * 0.2)


def test_diverged_segment_ends_episode_as_violation_without_raising():
    env, _ = scripted_env(
        [metrics(0.1), metrics(0.8), {"diverged": True, "metrics": {"train_loss": float("nan")}}]
    )
    env.reset(seed=0)
    env.step(env.space.keep_action)
    _, reward, term, _, info = env.step(env.space.keep_action)
    assert term and info["diverged"] and not info["accepted"]
    assert info["cost"] == pytest.approx(1.0)
    assert reward == pytest.approx(-0.8)


def test_real_divergence_with_huge_learning_rate_terminates_episode():
    cfg = config_from_dict(
        tiny_dict(
            env={
                "search_space": [{"name": "learning_rate", "init": 8.0, "low": 1.0, "high": 10.0}]
            },
            training={"momentum": 0.99},
        )
    )
    env = HyperparamEnv(cfg)
    env.reset(seed=0)
    _, _reward, terminated, _truncated, info = env.step(env.space.keep_action)
    assert terminated and info["diverged"] and not info["accepted"]
    assert info["cost"] == cfg.shield.divergence_cost


def test_nan_weights_count_as_divergence_not_a_crash(tiny_config):
    env = HyperparamEnv(tiny_config)
    env.reset(seed=0)
    for tensor in env.state.model.values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    _, _, terminated, _, info = env.step(env.space.keep_action)
    assert terminated and info["diverged"]


def test_episode_terminates_when_the_budget_is_spent_and_tracks_it():
    """The budget's end is terminal (the observation carries budget progress), as the README
    says; it was reported as ``truncated``."""
    env, _ = scripted_env([metrics(0.1)] + [metrics(0.5 + 0.1 * i) for i in range(3)])
    env.reset(seed=0)
    for i in range(3):
        obs, _, term, trunc, _ = env.step(env.space.keep_action)
        assert term == (i == 2) and not trunc
    assert obs[-2] == pytest.approx(1.0)  # budget progress
    assert env.samples_used == 3 * config_from_dict(tiny_dict()).training.segment_samples


def test_action_mask_forbids_moves_past_the_bounds():
    env, _ = scripted_env(
        [metrics(0.1)],
        env={
            "search_space": [
                {"name": "learning_rate", "init": 0.4, "low": 0.05, "high": 0.4},
                {"name": "batch_size", "init": 16, "low": 16, "high": 64, "integer": True},
            ]
        },
    )
    _, info = env.reset(seed=0)
    mask = info["action_mask"]
    for a in range(env.space.n_actions):
        lr_move, bs_move = env.space.moves(a)
        assert mask[a] == (lr_move != 1 and bs_move != -1)


def test_reset_with_same_seed_is_deterministic(tiny_config):
    env = HyperparamEnv(tiny_config)
    o1, _ = env.reset(seed=7)
    s1 = env.step(4)[0]
    o2, _ = env.reset(seed=7)
    s2 = env.step(4)[0]
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(s1, s2)


def test_invalid_action_is_rejected():
    env, _ = scripted_env([metrics(0.1)])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in"):
        env.step(99)


def test_keeping_every_level_follows_a_cosine_schedule_over_the_budget():
    env, ex = scripted_env(
        [metrics(0.1)] + [metrics(0.9)] * 4,
        env={
            "steps_per_episode": 4,
            "search_space": [
                {
                    "name": "learning_rate",
                    "init": 0.08,
                    "low": 0.001,
                    "high": 0.8,
                    "schedule": "cosine",
                },
            ],
        },
    )
    env.reset(seed=0)
    for _ in range(4):
        env.step(env.space.keep_action)
    lrs = [r.hyperparameters["learning_rate"] for r in ex.requests[1:]]
    expected = [0.08 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert lrs == pytest.approx(expected)
    assert env.hyperparameters["learning_rate"] == 0.08  # the level the actions move


def test_the_baseline_ramps_the_safety_lever_while_unsafe_and_keeps_once_certified():
    from shieldtune.config import HyperparameterSpec
    from shieldtune.control.search_space import SearchSpace

    space = SearchSpace(
        [
            HyperparameterSpec("learning_rate", 0.05, 0.003, 0.8, schedule="cosine"),
            HyperparameterSpec("adv_mix", 0.0, 0.0, 0.5, "linear", 0.125, ramp="up"),
        ]
    )
    values = {"learning_rate": 0.05, "adv_mix": 0.25}
    assert space.moves(space.baseline_action(values, safe=False)).tolist() == [0, 1]
    assert space.baseline_action(values, safe=True) == space.keep_action
    at_top = {"learning_rate": 0.05, "adv_mix": 0.5}
    assert space.baseline_action(at_top, safe=False) == space.keep_action


def test_a_collapsing_segment_is_rolled_back_even_before_the_first_safe_state():
    env, ex = scripted_env(
        [metrics(0.1, fgsm=0.0), metrics(0.8, fgsm=0.2), metrics(0.1, fgsm=0.1), metrics(0.85)]
    )
    env.reset(seed=0)
    env.step(env.space.keep_action)  # warm-up, accepted
    good = env.state
    _, reward, _, _, info = env.step(env.space.keep_action)  # 0.8 -> 0.1: a collapse
    assert info["collapsed"] and not info["accepted"] and info["warmup"]
    assert reward < -0.5 and env.state is good
    env.step(env.space.keep_action)
    assert ex.requests[-1].state is good
