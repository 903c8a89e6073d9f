"""KFP component bodies: thin wrappers over :mod:`shieldtune.pipeline.stages`.

KFP embeds each function's source in the component spec and runs it in the
component image, so every body imports what it uses, and this module must
not use ``from __future__ import annotations`` (KFP reads real annotations).
Configuration travels as ``config_json``: ``prepare_data`` resolves the
pipeline's config (its ``config_json`` with the task and data root the run
names) and returns it, and every later component reads that one config.
"""

from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Metrics,
    Model,
    Output,
    OutputPath,
)


def prepare_data(
    config_json: str,
    task_entry_point: str,
    task_kwargs_json: str,
    data_root: str,
    dataset: Output[Dataset],
) -> str:
    """The task's data -> seeded splits (or a reference to large data) + manifest.

    ``task_entry_point``, ``task_kwargs_json`` and ``data_root`` (empty: keep
    ``config_json``'s) name the task and where its data is; returns the resolved
    config as JSON, which every later component reads.
    """
    import json
    from pathlib import Path

    from shieldtune.pipeline.stages import pipeline_config, prepare_data, task_overrides

    overrides = task_overrides(task_entry_point, task_kwargs_json, data_root)
    cfg = pipeline_config(config_json, overrides)
    manifest = prepare_data(cfg, Path(dataset.path))
    dataset.metadata.update({k: v for k, v in manifest.items() if k != "task_kwargs"})
    return json.dumps(cfg.to_dict())


def tune(
    dataset: Input[Dataset],
    config_json: str,
    episodes: int,
    steps_per_episode: int,
    search_space_json: str,
    constraints_json: str,
    num_envs: int,
    executor: str,
    warm_start: bool,
    warm_start_model_uri: str,
    kfp_run_id: str,
    policy: Output[Artifact],
    schedule: Output[Artifact],
    metrics: Output[Metrics],
    mlflow_run_id: OutputPath(str),
) -> bool:
    """The DQN controller loop; opens the job's MLflow parent run (id in ``mlflow_run_id``).

    Returns whether a feasible schedule was found. (The run id is an output file
    rather than a NamedTuple field: kfp.local cannot branch on NamedTuple fields.)
    ``kfp_run_id`` labels the step Jobs of the ``kubernetes`` executor.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    os.environ["SHIELDTUNE_KFP_RUN_ID"] = kfp_run_id

    from shieldtune.pipeline.stages import load_prepared, pipeline_config, tune

    cfg = pipeline_config(
        config_json,
        {
            "tuner.episodes": episodes,
            "env.steps_per_episode": steps_per_episode,
            "env.search_space": search_space_json,
            "safety.constraints": constraints_json,
            "tuner.num_envs": num_envs,
            "tuner.executor": executor,
        },
        keep_zero=False,
    )
    summary = tune(cfg, load_prepared(Path(dataset.path), cfg), warm_start, warm_start_model_uri)
    shutil.copyfile(Path(summary["output_dir"]) / "agent.pt", policy.path)
    best = summary["best"]
    plan = {"init_seed": best["init_seed"], "segments": best["schedule"]} if best else None
    Path(schedule.path).write_text(json.dumps(plan))
    for key in ("violations", "warmup_steps", "steps_run", "samples_trained", "wall_seconds"):
        metrics.log_metric(key, float(summary[key]))
    if best:
        for key, value in best["val_metrics"].items():
            metrics.log_metric(f"best_{key}", float(value))
    policy.metadata["warm_start"] = summary["warm_start"]
    Path(mlflow_run_id).write_text(summary["mlflow_run_id"] or "")
    return bool(best)


def train_final(
    dataset: Input[Dataset],
    schedule: Input[Artifact],
    config_json: str,
    mlflow_run_id: str,
    model: Output[Model],
):
    """Retrain from scratch with the best feasible schedule (same seeds, same weights)."""
    import json
    from pathlib import Path

    from shieldtune.pipeline.stages import (
        load_prepared,
        log_final_metrics,
        pipeline_config,
        train_final,
    )

    plan = json.loads(Path(schedule.path).read_text())
    if plan is None:
        raise SystemExit("tuning found no feasible schedule; nothing to train")
    cfg = pipeline_config(config_json, {})
    val = train_final(cfg, load_prepared(Path(dataset.path), cfg), plan, Path(model.path))
    model.metadata.update({f"val_{k}": v for k, v in val.items()})
    if mlflow_run_id:
        log_final_metrics(mlflow_run_id, val)


def evaluate_safety(
    dataset: Input[Dataset],
    model: Input[Model],
    config_json: str,
    mlflow_run_id: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> bool:
    """FGSM / PGD / membership inference on the test split; True when every constraint holds."""
    from pathlib import Path

    from shieldtune.pipeline.stages import (
        evaluate_safety,
        load_prepared,
        log_test_report,
        pipeline_config,
    )

    cfg = pipeline_config(config_json, {})
    report, matrix, labels = evaluate_safety(
        cfg, load_prepared(Path(dataset.path), cfg), Path(model.path)
    )
    for key, value in report.items():
        metrics.log_metric(key, float(value))
    confusion.log_confusion_matrix(labels, matrix)
    if mlflow_run_id:
        log_test_report(mlflow_run_id, report)
    return bool(report["constraints_satisfied"])


def register_model(
    dataset: Input[Dataset],
    model: Input[Model],
    report: Input[Metrics],
    config_json: str,
    mlflow_run_id: str,
    set_champion: bool,
) -> str:
    """Log the model into the job's MLflow run and register it; alias `champion` if gated in."""
    import json
    from pathlib import Path

    from shieldtune.pipeline.stages import load_prepared, pipeline_config, register

    cfg = pipeline_config(config_json, {})
    data = load_prepared(Path(dataset.path), cfg)
    values = {k: float(v) for k, v in report.metadata.items() if isinstance(v, int | float)}
    info = register(cfg, data, Path(model.path), values, mlflow_run_id, set_champion)
    return json.dumps(info)
