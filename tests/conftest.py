"""Shared fixtures: a tiny but real config (real MNIST images, real training)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from shieldtune.config import Config, config_from_dict
from shieldtune.tasks.contract import TaskData
from shieldtune.tasks.mnist_data import load_mnist

#: The real Kubernetes control plane (etcd, kube-apiserver, -controller-manager, -scheduler and
#: the node agent) as a session fixture, for the tests marked ``cluster``.
pytest_plugins = ["tests.cluster.fixtures"]

# One intra-op thread: the tests' models are tiny, and with two threads torch slows down
# by an order of magnitude whenever another process (an mlflow server) shares the 2 cores.
torch.set_num_threads(1)

# Keep MLflow from reaching out (no internet here) and tests quiet.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TINY = {
    "data": {"train_size": 600, "val_size": 300, "test_size": 300},
    "task": {"kwargs": {"conv1_channels": 4, "conv2_channels": 8, "hidden": 32}},
    "training": {"segment_samples": 600},
    "safety": {"eval_samples": 100, "mia_samples": 100, "pgd_steps": 3, "pgd_restarts": 1},
    # Two tuned dimensions with constant schedules, and an agent that explores and is not
    # anchored to the baseline: small, fast jobs whose moves are varied (the default
    # whole-run mode is tested where it matters, with its own settings).
    "env": {
        "steps_per_episode": 3,
        "search_space": [
            {"name": "learning_rate", "init": 0.05, "low": 0.003, "high": 0.8},
            {"name": "batch_size", "init": 64, "low": 16, "high": 512, "integer": True},
        ],
    },
    "agent": {
        "learning_starts": 2,
        "batch_size": 8,
        "epsilon_start": 1.0,
        "epsilon_end": 0.05,
        "epsilon_decay_steps": 4,
        "baseline_margin": None,
    },
    "shield": {"critic_min_samples": 2},
    "tuner": {"episodes": 2, "progress": False},
}


def tiny_dict(**sections: dict) -> dict:
    """The tiny config as a dict, with per-section overrides merged in."""
    out = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def tiny_cli_args(*extra: str) -> list[str]:
    """The tiny config as ``--set key=value`` CLI arguments (``extra`` assignments last)."""
    pairs = [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in TINY.items()
        for key, value in values.items()
    ]
    return [arg for kv in (*pairs, *extra) for arg in ("--set", kv)]


@pytest.fixture
def tiny_config() -> Config:
    return config_from_dict(tiny_dict(tracking={"enabled": False}))


@pytest.fixture(scope="session")
def tiny_data() -> TaskData:
    return load_mnist(config_from_dict(TINY).data)
