"""The Gymnasium env as outside RL libraries use it: stable-baselines3's DQN and sb3-contrib's
MaskablePPO train on it for a few hundred real steps (tiny segments on real MNIST images)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import shieldtune  # noqa: F401  (registers shieldtune/Hyperparam-v0)
from shieldtune.config import config_from_dict
from shieldtune.control.env import ENV_ID, HyperparamEnv

from .conftest import tiny_dict

#: Cheap steps: 64 training samples, 100 validation images, 50 of them attacked.
CHEAP = tiny_dict(
    data={"train_size": 300, "val_size": 100, "test_size": 100},
    training={"segment_samples": 64},
    safety={"eval_samples": 50, "eval_samples_max": 50, "constraints": ["fgsm_robust_acc >= 0.1"]},
    env={"steps_per_episode": 10},
)


class MaskChecker(gym.Wrapper):
    """Counts actions an agent took although the env's mask forbade them."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = self.forbidden = 0

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()

    def step(self, action):
        self.steps += 1
        self.forbidden += int(not self.env.unwrapped.action_masks()[int(action)])
        return self.env.step(action)


def test_gym_make_accepts_render_mode_and_reports_the_budget_end_as_terminated():
    env = gym.make(ENV_ID, config=CHEAP, render_mode=None)
    _, info = env.reset(seed=0)
    keys = set(info)
    assert info["action_mask"].dtype == np.int8
    assert env.action_space.sample(mask=info["action_mask"]) in range(env.action_space.n)
    ended = []
    for _ in range(10):
        _, _, terminated, truncated, info = env.step(env.unwrapped.space.keep_action)
        assert set(info) == keys  # every key from reset on
        ended.append((terminated, truncated))
    assert ended[-1] == (True, False) and not any(t for t, _ in ended[:-1])
    with pytest.raises(ValueError, match="render_mode 'human' is not supported"):
        HyperparamEnv(CHEAP, render_mode="human")


def test_stable_baselines3_dqn_trains_on_the_env():
    from stable_baselines3 import DQN

    env = MaskChecker(gym.make(ENV_ID, config=CHEAP))
    model = DQN("MlpPolicy", env, learning_starts=50, buffer_size=500, batch_size=16, seed=0)
    model.learn(total_timesteps=200)
    assert env.steps >= 200 and model.num_timesteps >= 200
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert env.action_space.contains(int(action))


def test_maskable_ppo_trains_on_the_env_and_never_takes_a_masked_action():
    from sb3_contrib import MaskablePPO

    env = MaskChecker(gym.make(ENV_ID, config=CHEAP))
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0)
    model.learn(total_timesteps=192)
    assert env.steps >= 192
    assert env.forbidden == 0


@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_sb3_make_vec_env_builds_the_env_and_renders_the_trajectory(vec_env):
    """Issue: make_vec_env asks for render_mode="rgb_array" by default, and the env refused
    it with a ValueError (SB3 only falls back on TypeError)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[vec_env]
    kwargs = {"start_method": "spawn"} if vec_env == "subproc" else None
    # A Config (not a dict) in env_kwargs: unpickling it in a spawned worker imports
    # shieldtune, which registers the env there too.
    vec = make_vec_env(
        ENV_ID,
        n_envs=2,
        env_kwargs={"config": config_from_dict(CHEAP)},
        vec_env_cls=cls,
        vec_env_kwargs=kwargs,
    )
    try:
        vec.reset()
        keep = np.full(2, gym.make(ENV_ID, config=CHEAP).unwrapped.space.keep_action)
        for _ in range(3):
            vec.step(keep)
        frames = vec.get_images()
        assert len(frames) == 2
        for frame in frames:
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
            assert frame.shape[:2] == (480, 640)
            assert frame.std() > 10  # something was drawn, not a blank canvas
    finally:
        vec.close()


def test_ansi_render_is_a_text_row_per_step_marking_broken_constraints():
    env = gym.make(ENV_ID, config=CHEAP, render_mode="ansi")
    env.reset(seed=0)
    for _ in range(2):
        env.step(env.unwrapped.space.keep_action)
    text = env.render()
    lines = text.splitlines()
    assert lines[0].split() == [
        "step",
        "learning_rate",
        "batch_size",
        "val_acc",
        "fgsm_robust_acc",
        "outcome",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert env.metadata["render_fps"] > 0
    assert set(env.metadata["render_modes"]) == {"rgb_array", "ansi"}
