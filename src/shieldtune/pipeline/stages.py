"""The pipeline's stages as plain functions over files.

Each Kubeflow component is a thin wrapper around one of these, so the stages
are tested without Kubeflow and run the same locally, in ``kfp.local`` and in
a cluster pod: prepare data -> tune -> train final -> evaluate safety ->
register. Artifacts are files (tensors saved weights-only); every stage logs
into the one MLflow parent run that ``tune`` opens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from shieldtune.checkpoint import (
    MODEL_KIND,
    atomic_save,
    safe_load,
    save_model_checkpoint,
)
from shieldtune.config import Config, apply_override, config_from_dict
from shieldtune.data import MnistSplits, Split, load_mnist
from shieldtune.errors import CheckpointError, ConfigError
from shieldtune.executors.local import LocalStepExecutor, StepRequest, TrainState
from shieldtune.model import build_model
from shieldtune.safety.suite import safety_report
from shieldtune.tracking.tracker import Tracker, download_policy, log_to_run, set_run_tag

SPLITS_KIND = "shieldtune.splits/v1"


def pipeline_config(config_json: str, overrides: dict[str, Any]) -> Config:
    """A config from a JSON string plus explicit pipeline parameters (empty ones skipped)."""
    try:
        raw = json.loads(config_json) if config_json.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config_json is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config_json must be a JSON object of config sections")
    for key, value in overrides.items():
        if value in ("", None):
            continue
        apply_override(raw, f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return config_from_dict(raw)


# --------------------------------------------------------------------------- data


def prepare_data(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Load MNIST per config and save the three splits plus a manifest into ``out_dir``."""
    splits = load_mnist(cfg.data)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(
        {
            "kind": SPLITS_KIND,
            **{name: {"x": s.x, "y": s.y} for name, s in _named(splits)},
        },
        out_dir / "splits.pt",
    )
    manifest = {
        "source": splits.source,
        "split_seed": cfg.data.split_seed,
        **{f"{name}_size": len(s) for name, s in _named(splits)},
        **{
            f"{name}_class_counts": torch.bincount(s.y, minlength=10).tolist()
            for name, s in _named(splits)
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _named(splits: MnistSplits) -> list[tuple[str, Split]]:
    return [("train", splits.train), ("val", splits.val), ("test", splits.test)]


def load_prepared(out_dir: Path) -> MnistSplits:
    obj = safe_load(Path(out_dir) / "splits.pt", SPLITS_KIND)
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    return MnistSplits(
        *(Split(obj[n]["x"], obj[n]["y"]) for n in ("train", "val", "test")),
        source=manifest["source"],
    )


# --------------------------------------------------------------------------- tune


def find_kfp_resume_state(kfp_run_id: str, cfg: Config) -> dict[str, Any] | None:
    """The controller state of an unfinished tuning run of this KFP run, if one exists."""
    from shieldtune.control.tuner import CONTROLLER_KIND, STATE_FILE
    from shieldtune.tracking.tracker import find_controller_state

    path = find_controller_state(cfg.tracking.experiment, kfp_run_id, STATE_FILE)
    return None if path is None else safe_load(path, CONTROLLER_KIND)


def tune(cfg: Config, splits: MnistSplits, warm_start_model_uri: str = "") -> dict[str, Any]:
    """Run the controller loop; the registry is left to the gated register stage.

    With ``warm_start_model_uri`` (e.g. ``models:/NAME@champion``) the controller
    starts from the policy logged by the run that produced that model: the
    scheduled-retuning path. If no such model exists yet, it starts cold and
    says so in the summary.
    """
    from shieldtune.control.tuner import run_tuning
    from shieldtune.signals import interrupt_on_sigterm

    warm_note = "cold start"
    if warm_start_model_uri:
        policy = download_policy(warm_start_model_uri)
        if policy is not None:
            cfg.tuner.warm_start = str(policy)
            warm_note = f"warm start from {warm_start_model_uri}"
        else:
            warm_note = f"cold start: {warm_start_model_uri} does not exist yet"
    cfg.tracking.log_model = False
    cfg.tuner.test_report = False
    # A retried tune task continues the attempt that died, from the controller state that
    # attempt kept in MLflow (its pod's disk is gone).
    cfg.tuner.checkpoint_to_mlflow = cfg.tracking.enabled
    kfp_run_id = os.environ.get("SHIELDTUNE_KFP_RUN_ID", "")
    state = find_kfp_resume_state(kfp_run_id, cfg) if kfp_run_id and cfg.tracking.enabled else None
    if state is not None:
        cfg = config_from_dict(state["config"])
        warm_note += f"; resumed after step {state['job']['global_step']} of a failed attempt"
    with interrupt_on_sigterm():
        summary = run_tuning(cfg, splits=splits, resume=state).to_dict()
    summary["warm_start"] = warm_note
    if summary["mlflow_run_id"]:
        set_run_tag(summary["mlflow_run_id"], "shieldtune.warm_start", warm_note)
    return summary


# --------------------------------------------------------------------------- train final


def replay_schedule(cfg: Config, splits: MnistSplits, schedule: dict[str, Any]) -> TrainState:
    """Retrain a model from scratch with a recorded schedule (same seeds, same weights on CPU)."""
    executor = LocalStepExecutor(cfg, splits)
    segments = schedule["segments"]
    if not segments:
        raise CheckpointError("the schedule has no segments; nothing to train")
    first_hp = {k: v for k, v in segments[0].items() if k not in ("step", "samples", "seed")}
    state = executor.run(StepRequest(None, first_hp, 0, int(schedule["init_seed"]))).state
    for seg in segments:
        hp = {k: v for k, v in seg.items() if k not in ("step", "samples", "seed")}
        result = executor.run(StepRequest(state, hp, int(seg["samples"]), int(seg["seed"])))
        if result.diverged:
            raise CheckpointError(
                f"replaying segment {seg['step']} diverged; the schedule is unusable"
            )
        state = result.state
    return state


def train_final(
    cfg: Config, splits: MnistSplits, schedule: dict[str, Any], model_path: Path
) -> dict[str, float]:
    """Train the final model with the best feasible schedule and save it as a checkpoint."""
    state = replay_schedule(cfg, splits, schedule)
    model = build_model(cfg.model)
    model.load_state_dict(state.model)
    metrics = LocalStepExecutor(cfg, splits).evaluate(model, seed=cfg.tuner.seed)
    save_model_checkpoint(model_path, state.model, cfg.to_dict(), schedule, metrics)
    return metrics


# --------------------------------------------------------------------------- evaluate


def load_model(model_path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    ckpt = safe_load(model_path, MODEL_KIND)
    model = build_model(config_from_dict({"model": ckpt["config"].get("model", {})}).model)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"'{model_path}' does not fit the model it describes: {first}"
        ) from None
    model.eval()
    return model, ckpt


def confusion_matrix(model: torch.nn.Module, split: Split) -> list[list[int]]:
    with torch.no_grad():
        pred = torch.cat(
            [model(split.x[i : i + 1000]).argmax(1) for i in range(0, len(split), 1000)]
        )
    matrix = torch.zeros(10, 10, dtype=torch.int64)
    matrix.index_put_((split.y, pred), torch.ones_like(pred), accumulate=True)
    return matrix.tolist()


def evaluate_safety(
    cfg: Config, splits: MnistSplits, model_path: Path
) -> tuple[dict[str, float], list[list[int]]]:
    model, _ = load_model(model_path)
    return safety_report(model, splits, cfg.safety, seed=cfg.tuner.seed), confusion_matrix(
        model, splits.test
    )


# --------------------------------------------------------------------------- register


def register(
    cfg: Config,
    splits: MnistSplits,
    model_path: Path,
    report: dict[str, float],
    run_id: str,
    set_champion: bool,
) -> dict[str, Any] | None:
    """Log the model into the job's MLflow run and register it; alias only if ``set_champion``."""
    model, _ = load_model(model_path)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best_model.pt"
        shutil.copyfile(model_path, ckpt)
        tracker = Tracker(cfg, _version())
        tracker.attach(run_id)
        try:
            info = tracker.log_model(model, ckpt, splits.test.x[:2], set_champion, report)
        finally:
            tracker.finish()
    return info


def log_final_metrics(run_id: str, val_metrics: dict[str, float]) -> None:
    """Validation metrics of the retrained final model, as ``final_<metric>``."""
    log_to_run(run_id, {f"final_{k}": float(v) for k, v in val_metrics.items()})


def log_test_report(run_id: str, report: dict[str, float]) -> None:
    from shieldtune.control.tuner import with_test_prefix

    log_to_run(run_id, with_test_prefix(report))


def _version() -> str:
    from shieldtune import __version__

    return __version__
