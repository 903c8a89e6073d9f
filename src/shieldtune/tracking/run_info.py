"""What a reviewer sees first on a job's MLflow run: its name, tags and description.

The params hold the whole flattened config (about 90 keys); these say at a
glance what was tuned, under which spec, with which budget, and (added when
the job ends) the outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shieldtune.config import flatten
from shieldtune.job import Job

#: MLflow shows this tag as the run's description (markdown).
NOTE_TAG = "mlflow.note.content"
OUTCOME_HEADING = "## Outcome"


@dataclass(frozen=True)
class RunDescription:
    """What the job's parent run shows and where its model is registered."""

    #: Used unless ``tracking.run_name`` is set.
    name: str
    tags: dict[str, str]
    #: The flattened config (``section.key`` -> text).
    params: dict[str, str]
    seed: int
    registered_model_name: str


def describe_job(job: Job) -> RunDescription:
    """The run's name, tags (with the description), params and registered model name."""
    return RunDescription(
        job_run_name(job),
        describe(job),
        flatten(job.config),
        job.config.tuner.seed,
        job.registered_model_name,
    )


def job_run_name(job: Job) -> str:
    """``tune-<task>-<UTC time>``: unique enough to tell jobs apart in the run list (MLflow
    adds nothing random; ``tracking.run_name`` overrides it)."""
    task = job.task.name.replace(" ", "-")  # the task's own name, not its factory's
    return f"tune-{task}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def search_space_text(job: Job) -> str:
    parts = []
    for hp in job.config.env.search_space:
        extra = f", {hp.schedule}" if hp.schedule != "constant" else ""
        parts.append(f"{hp.name} [{hp.low:g}, {hp.high:g}] {hp.scale}{extra}")
    return "; ".join(parts)


def spec_text(job: Job) -> str:
    safety = job.config.safety
    return f"{' and '.join(safety.constraints)} (confidence {safety.confidence:g})"


def describe(job: Job) -> dict[str, str]:
    """Tags for the parent run: task, search space, spec, budget, and the description."""
    cfg = job.config
    budget = (
        f"{cfg.tuner.episodes} episode(s) x {cfg.env.steps_per_episode} segments of "
        f"{cfg.training.segment_samples} samples"
    )
    tags = {
        "shieldtune.task": cfg.task.entry_point,
        "shieldtune.search_space": search_space_text(job),
        "shieldtune.spec": spec_text(job),
        "shieldtune.budget": budget,
        "shieldtune.registered_model": job.registered_model_name,
    }
    tags[NOTE_TAG] = "\n".join(
        [
            f"Safety-shielded tuning of task `{cfg.task.entry_point}`.",
            "",
            f"- **Tuned:** {tags['shieldtune.search_space']}",
            f"- **Spec:** {tags['shieldtune.spec']}",
            f"- **Budget:** {budget}",
            f"- **Registered model:** `{job.registered_model_name}`",
        ]
    )
    return tags
