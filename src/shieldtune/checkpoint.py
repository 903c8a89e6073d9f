"""Saving and safely loading model checkpoints and controller policies.

Files are written atomically (temp file + rename) so a crash never leaves a
half-written checkpoint, and read with ``torch.load(weights_only=True)`` so a
tampered file cannot execute code: only tensors and plain containers load.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from shieldtune.errors import CheckpointError, first_line, is_existing_file

MODEL_KIND = "shieldtune.model/v1"
POLICY_KIND = "shieldtune.policy/v1"


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def safe_load(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a file written by :func:`atomic_save` and check its ``kind`` tag."""
    path = Path(path)
    if not is_existing_file(path):
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or not a safe weights-only file "
            f"({first_line(exc, 160)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{str(path)!r} is not a {kind} file (found {found!r})")
    return obj


def save_model_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    schedule: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    """Save a trained model with what produced it.

    ``config`` is the job's whole config, so evaluation can rebuild the model and
    splits; ``schedule`` is ``{"init_seed": int, "segments": [...]}``, enough to
    retrain the same weights (see :func:`shieldtune.pipeline.stages.replay_schedule`).
    """
    return atomic_save(
        {
            "kind": MODEL_KIND,
            "model_state": model_state,
            "config": config,
            "schedule": schedule,
            "metrics": dict(metrics),
        },
        path,
    )


def save_policy(
    path: str | Path, agent_state: dict, shield_state: dict, search_space: list[str]
) -> Path:
    return atomic_save(
        {
            "kind": POLICY_KIND,
            "agent": agent_state,
            "shield": shield_state,
            "search_space": search_space,
        },
        path,
    )
