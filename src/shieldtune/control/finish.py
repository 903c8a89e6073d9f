"""The end of a tuning job: the artifacts, the test report, the safety gate and publishing.

The best certified-safe checkpoint is evaluated once on the test split, the
run's artifacts (config, steps, shield audit, policy, plot, model checkpoint)
are written and logged, and the model is registered (with its input
preprocessing, ``TaskData.transform``, next to the weights) with its promotion decided
against the current champion, re-measured on the same test split under the same
spec (one path for ``shieldtune tune`` and the pipeline's ``register_model``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from shieldtune.checkpoint import atomic_write_text, save_model_checkpoint, save_policy
from shieldtune.control.controller import ShieldedController
from shieldtune.control.job_state import BestFeasible, JobState
from shieldtune.errors import CheckpointError
from shieldtune.job import Job, load_checkpoint
from shieldtune.safety.suite import test_report
from shieldtune.tasks.batches import first_inputs
from shieldtune.tasks.contract import TaskData, build_model
from shieldtune.tasks.preprocessing import PREPROCESSING_FILE, Transform
from shieldtune.tracking.model_card import card_fields
from shieldtune.tracking.plots import plot_steps
from shieldtune.tracking.tracker import Tracker, redact

#: The job's summary in its run folder, written last: its "finished" marker.
SUMMARY_FILE = "summary.json"


@dataclass
class TuningSummary:
    feasible_found: bool
    constraints: list[str]
    episodes_run: int
    steps_run: int
    samples_trained: int
    #: Trained segments whose measured result broke the spec (warm-up and violations).
    unsafe_segments: int
    #: Of those, segments after the episode's first safe state (rolled back), diverged ones
    #: after it included.
    violations: int
    #: Of those, segments before the episode's first safe state (nothing safe to return to).
    warmup_steps: int
    diverged_steps: int
    #: Accepted states certified safe / left undecided at safety.confidence.
    certified_safe_states: int
    undecided_states: int
    #: Extra attempts of steps whose worker failed or was evicted (all later succeeded).
    step_retries: int
    num_envs: int
    executor: str
    stop_reason: str
    best: dict[str, Any] | None
    test_metrics: dict[str, float] | None
    wall_seconds: float
    controller_seconds: float
    output_dir: str
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    registered_model: dict[str, Any] | None = None
    #: Where the controller's policy came from (cold start, a file, the packaged default).
    warm_start: str = "cold start"
    #: Members of the one training run (1: a single run, or episodes taken in turn).
    population: int = 1
    #: A population's exploit decisions: a member that copied a certified-safe one.
    exploits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finish_job(
    job: Job,
    data: TaskData,
    controller: ShieldedController,
    tracker: Tracker,
    out_dir: Path,
    state: JobState,
    run: dict[str, Any],
) -> TuningSummary:
    """Artifacts, the test report, publishing, and ``summary.json`` written last; ``run``
    holds num_envs, population, wall_seconds and controller_seconds."""
    s = state
    write_artifacts(job, controller, tracker, out_dir, s.records, s.audit, s.best)
    summary = report_best(job, data, tracker, out_dir, s.best, s.best_ties)
    assert s.stop_reason is not None
    result = TuningSummary(
        **summary,
        **run,
        episodes_run=s.next_episode,
        steps_run=s.global_step,
        samples_trained=s.samples,
        unsafe_segments=s.violations + s.warmup,
        violations=s.violations,
        warmup_steps=s.warmup,
        diverged_steps=s.diverged,
        certified_safe_states=s.certified_safe,
        undecided_states=s.undecided,
        step_retries=s.retries,
        executor=job.config.tuner.executor,
        stop_reason=s.stop_reason,
        warm_start=s.warm_start,
        exploits=len(s.exploits),
    )
    result.registered_model = publish(job, data, tracker, result)
    # MLflow gets a copy: the run folder's summary.json is the job's "finished" marker, which
    # write_summary() writes last, once the MLflow run is closed (a kill before that resumes
    # and completes whatever is missing).
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / SUMMARY_FILE
        copy.write_text(json.dumps(result.to_dict(), indent=2))
        tracker.log_artifact(copy)
    tracker.log_parent(
        {
            "wall_seconds": result.wall_seconds,
            "controller_seconds": result.controller_seconds,
            "violations": float(s.violations),
            "unsafe_segments": float(s.violations + s.warmup),
            "unsafe_warmup_segments": float(s.warmup),
            "steps_run": float(s.global_step),
            "diverged_steps": float(s.diverged),
        }
    )
    return result


def write_summary(out_dir: Path, result: TuningSummary) -> Path:
    """The finished marker, ``summary.json``: written atomically, after everything else."""
    return atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(result.to_dict(), indent=2))


def finished_summary(path: Path) -> dict[str, Any] | None:
    """The summary of a job that finished, or None when it is absent, empty or damaged (the
    job was stopped before its marker was written whole: resuming it completes it)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "stop_reason" in summary else None


def note(message: str) -> None:
    """A progress line on stderr for work that takes more than a few seconds."""
    print(message, file=sys.stderr, flush=True)


def write_artifacts(
    job: Job,
    controller: ShieldedController,
    tracker: Tracker,
    out_dir: Path,
    records: list[dict[str, Any]],
    audit: list[dict[str, Any]],
    best: BestFeasible | None,
) -> None:
    """Write and log the run's config, steps, shield audit, policy and schedule plot."""
    exploits = [a for a in audit if a.get("decision") == "exploit"]
    note(f"tuning done; writing the run's artifacts to {out_dir}")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))
    with open(out_dir / "shield_audit.jsonl", "w") as fh:
        for entry in audit:
            fh.write(json.dumps(entry) + "\n")
    with open(out_dir / "steps.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    policy_path = save_policy(
        out_dir / "agent.pt",
        controller.agent.state_dict(),
        controller.shield.state_dict(),
        job.space.names,
    )
    plot_path = None
    if records:
        chosen = None if best is None else best.global_step
        plot_path = plot_steps(
            records, job.space.names, out_dir / "schedule.png", job.constraints, chosen, exploits
        )
    for path, folder in (
        (out_dir / "config.yaml", None),
        (out_dir / "shield_audit.jsonl", None),
        (out_dir / "steps.jsonl", None),
        (policy_path, "policy"),
        (plot_path, "plots"),
    ):
        if path is not None:
            tracker.log_artifact(path, folder)
    tracker.log_audit(audit)


def report_best(
    job: Job,
    data: TaskData,
    tracker: Tracker,
    out_dir: Path,
    best: BestFeasible | None,
    ties: int = 0,
) -> dict[str, Any]:
    """Evaluate the best feasible checkpoint on test once and save it; the summary's fields
    (``ties``: later certified states as accurate as ``best``, which was kept as the earliest)."""
    test_metrics = best_dict = None
    if best is not None:
        if job.config.tuner.test_report:
            model = build_model(job.task, best.init_seed, torch.device("cpu"))
            model.load_state_dict(best.model_state)
            model.eval()
            device = job.device()
            note(
                f"evaluating the best certified-safe checkpoint on the {len(data.test)}-sample "
                "test split (accuracy, FGSM, PGD, membership inference)..."
            )
            test_metrics = test_report(
                job.task,
                model,
                data,
                job.config.safety,
                job.constraints,
                device,
                job.config.tuner.seed,
            )
        best_dict = {
            "episode": best.episode,
            "member": best.member,
            "step": best.step,
            "global_step": best.global_step,
            "val_metrics": best.val_metrics,
            "init_seed": best.init_seed,
            "schedule": best.schedule,
            "checkpoint": str(out_dir / "best_model.pt"),
            # Later certified states with the same val_acc (the earliest is kept).
            "ties": ties,
        }
        save_model_checkpoint(
            out_dir / "best_model.pt",
            best.model_state,
            job.to_dict(),
            {"init_seed": best.init_seed, "segments": best.schedule},
            test_metrics or best.val_metrics,
        )
        if test_metrics is not None:
            tracker.log_parent(with_test_prefix(test_metrics))
    return {
        "feasible_found": best is not None,
        "constraints": list(job.config.safety.constraints),
        "best": best_dict,
        "test_metrics": test_metrics,
        "output_dir": str(out_dir),
        "tracking_uri": redact(tracker.uri) if tracker.enabled else None,
        "mlflow_run_id": tracker.parent_id,
        "registered_model": None,
    }


def publish(
    job: Job, data: TaskData, tracker: Tracker, result: TuningSummary
) -> dict[str, Any] | None:
    """Register the chosen model and decide promotion (or record that nothing was found)."""
    if result.best is None:
        tracker.set_outcome(
            "no feasible schedule",
            f"no state was certified safe in {result.steps_run} steps; nothing was registered",
        )
        return None
    if result.test_metrics is None:
        return None
    if not (tracker.enabled and job.config.tracking.log_model):
        gate = "passed" if result.test_metrics["constraints_satisfied"] else "failed"
        tracker.set_outcome(f"safety gate {gate}", "tracking.log_model is off: not registered")
        return None
    counts = {
        k: float(getattr(result, k))
        for k in ("steps_run", "unsafe_segments", "warmup_steps", "violations", "diverged_steps")
    }
    note(
        f"registering the model as {job.registered_model_name} and comparing it with the "
        "current champion on the same test split..."
    )
    return publish_checkpoint(
        tracker, job, data, Path(result.best["checkpoint"]), result.test_metrics, counts
    )


def publish_checkpoint(
    tracker: Tracker,
    job: Job,
    data: TaskData,
    checkpoint: Path,
    report: dict[str, float],
    counts: dict[str, float],
) -> dict[str, Any] | None:
    """Register ``checkpoint`` (its test ``report`` measured on ``data.test``) in the job's
    run, with the data's input transform next to it; ``counts`` are the run's step and
    unsafe-segment counts for the card."""
    model, ckpt, _ = load_checkpoint(checkpoint)
    card = card_fields(job, data, report, ckpt["schedule"], counts, tracker.version)
    with tempfile.TemporaryDirectory() as tmp:
        return tracker.publish(
            model,
            checkpoint,
            first_inputs(data.test, 2),
            report,
            lambda path: checkpoint_report(path, job, data),
            card,
            preprocessing_files(data.transform, Path(tmp)),
        )


def preprocessing_files(transform: Transform | None, folder: Path) -> list[Path]:
    """``transform`` written as ``folder/preprocessing.json`` to ship with the model (see
    shieldtune.tasks.preprocessing); nothing for a task whose model eats raw inputs."""
    if transform is None:
        return []
    path = folder / PREPROCESSING_FILE
    path.write_text(json.dumps(transform.to_dict(), indent=2))
    return [path]


def checkpoint_report(path: Path, job: Job, data: TaskData) -> dict[str, float]:
    """The test report of a checkpoint's model on ``data`` under ``job``'s spec: the current
    champion re-measured on the challenger's split (see shieldtune.tracking.registry)."""
    model, _, theirs = load_checkpoint(path)
    if theirs.config.task.entry_point != job.config.task.entry_point:
        raise CheckpointError(
            f"it is a model of task {theirs.config.task.entry_point!r}, not "
            f"{job.config.task.entry_point!r}"
        )
    cfg = job.config
    return test_report(
        job.task, model, data, cfg.safety, job.constraints, job.device(), cfg.tuner.seed
    )


def with_test_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """``test_``-prefixed metric names for MLflow (``test_acc`` stays as it is)."""
    return {k if k.startswith("test_") else f"test_{k}": v for k, v in metrics.items()}
