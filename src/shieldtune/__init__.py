"""shieldtune: safety-constrained RL hyperparameter tuning.

Public API::

    import shieldtune
    cfg = shieldtune.load_config("configs/mnist-cnn.yaml", ["tuner.episodes=3"])
    summary = shieldtune.tune(cfg)

and the Gymnasium environment ``gymnasium.make("shieldtune/Hyperparam-v0")``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from shieldtune.config import Config, load_config
from shieldtune.control.env import ENV_ID, register

try:
    __version__ = version("shieldtune")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

register()

if TYPE_CHECKING:
    from shieldtune.control.tuner import TuningSummary
    from shieldtune.job import Job


def tune(config: Config | Job) -> TuningSummary:
    """Run a whole tuning job (see :func:`shieldtune.control.tuner.run_tuning`); a config is
    resolved against its task first (one line if they do not fit)."""
    from shieldtune.control.tuner import run_tuning

    return run_tuning(config)


__all__ = ["ENV_ID", "Config", "__version__", "load_config", "tune"]


def __getattr__(name: str) -> Any:  # pragma: no cover - helpful error
    raise AttributeError(f"module 'shieldtune' has no attribute {name!r}")
