"""What a reviewer sees first on a job's MLflow run: its name, tags and description.

The params hold the whole flattened config (about 90 keys); these say at a
glance what was tuned, under which spec, with which budget, and (added when
the job ends) the outcome.
"""

from __future__ import annotations

import time

from shieldtune.config import Config

#: MLflow shows this tag as the run's description (markdown).
NOTE_TAG = "mlflow.note.content"
OUTCOME_HEADING = "## Outcome"


def job_run_name(cfg: Config) -> str:
    """``tune-<task>-<UTC time>``: unique enough to tell jobs apart in the run list (MLflow
    adds nothing random; ``tracking.run_name`` overrides it)."""
    task = cfg.task.entry_point.rsplit(":", 1)[-1].replace(".", "-")
    return f"tune-{task}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def search_space_text(cfg: Config) -> str:
    parts = []
    for hp in cfg.env.search_space:
        extra = f", {hp.schedule}" if hp.schedule != "constant" else ""
        parts.append(f"{hp.name} [{hp.low:g}, {hp.high:g}] {hp.scale}{extra}")
    return "; ".join(parts)


def spec_text(cfg: Config) -> str:
    return f"{' and '.join(cfg.safety.constraints)} (confidence {cfg.safety.confidence:g})"


def describe(cfg: Config) -> dict[str, str]:
    """Tags for the parent run: task, search space, spec, budget, and the description."""
    budget = (
        f"{cfg.tuner.episodes} episode(s) x {cfg.env.steps_per_episode} segments of "
        f"{cfg.training.segment_samples} samples"
    )
    tags = {
        "shieldtune.task": cfg.task.entry_point,
        "shieldtune.search_space": search_space_text(cfg),
        "shieldtune.spec": spec_text(cfg),
        "shieldtune.budget": budget,
        "shieldtune.registered_model": cfg.registered_model_name,
    }
    tags[NOTE_TAG] = "\n".join(
        [
            f"Safety-shielded tuning of task `{cfg.task.entry_point}`.",
            "",
            f"- **Tuned:** {tags['shieldtune.search_space']}",
            f"- **Spec:** {tags['shieldtune.spec']}",
            f"- **Budget:** {budget}",
            f"- **Registered model:** `{cfg.registered_model_name}`",
        ]
    )
    return tags
