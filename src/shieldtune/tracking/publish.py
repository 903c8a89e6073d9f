"""Publish a trained checkpoint: register it once, decide promotion, write its model card.

The one path both the ``tune`` command's final phase and the pipeline's
``register_model`` task take (see :meth:`Tracker.publish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shieldtune.config import Config
from shieldtune.tasks.batches import first_inputs
from shieldtune.tasks.contract import TaskData
from shieldtune.tasks.registry import make_task
from shieldtune.tracking.model_card import card_fields
from shieldtune.tracking.tracker import Tracker
from shieldtune.training.step import checkpoint_report, load_model


def publish_checkpoint(
    tracker: Tracker,
    cfg: Config,
    data: TaskData,
    checkpoint: Path,
    report: dict[str, float],
    counts: dict[str, float],
) -> dict[str, Any] | None:
    """Register ``checkpoint`` (its test ``report`` measured on ``data.test``) in the job's
    run; ``counts`` are the run's step and unsafe-segment counts for the card."""
    model, ckpt, _ = load_model(checkpoint)
    card = card_fields(
        cfg, make_task(cfg.task), data, report, ckpt["schedule"], counts, tracker.version
    )
    return tracker.publish(
        model,
        checkpoint,
        first_inputs(data.test, 2),
        report,
        lambda path: checkpoint_report(path, cfg, data),
        card,
    )
