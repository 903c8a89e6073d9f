"""KFP component bodies: thin wrappers over :mod:`shieldtune.pipeline.stages`.

KFP embeds each function's source in the component spec and runs it in the
component image, so every body imports what it uses, and this module must
not use ``from __future__ import annotations`` (KFP reads real annotations).
The Google-style ``Args:`` sections become the inputs' descriptions in the
compiled YAML. Configuration travels as ``config_json``: ``check_inputs``
resolves the pipeline's parameters into one checked config and every later
component reads it. Every body runs under ``one_line_errors``: a user's error
ends the task with one line, never a traceback.
"""

from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    OutputPath,
)


def check_inputs(
    config_json: str,
    task_entry_point: str,
    task_kwargs_json: str,
    data_root: str,
    episodes: int,
    steps_per_episode: int,
    search_space_json: str,
    constraints_json: str,
    num_envs: int,
    executor: str,
) -> str:
    """Resolve the parameters into one config and check it, the task and its data.

    Never retried: what fails here is the user's to fix (bad config, unknown task,
    missing data, a spec no model could be certified against), so it fails at once.

    Its inputs are the pipelines' parameters (described in pipelines.PIPELINE_ARGS).

    Returns:
        The resolved config as JSON, read by every later task.
    """
    import json

    from shieldtune.pipeline.stages import one_line_errors, resolve_config

    with one_line_errors():
        cfg = resolve_config(
            config_json,
            {
                "entry_point": task_entry_point,
                "kwargs_json": task_kwargs_json,
                "data_root": data_root,
            },
            {
                "episodes": episodes,
                "steps_per_episode": steps_per_episode,
                "search_space_json": search_space_json,
                "constraints_json": constraints_json,
                "num_envs": num_envs,
                "executor": executor,
            },
        )
        return json.dumps(cfg.to_dict())


def prepare_data(config_json: str, dataset: Output[Dataset]):
    """The task's data as seeded splits (or a reference to large data) plus a manifest.

    Args:
        config_json: The resolved config (check_inputs' output).
        dataset: The splits and manifest.json; its metadata repeats the manifest.
    """
    from pathlib import Path

    from shieldtune.pipeline.stages import one_line_errors, pipeline_config, prepare_data

    with one_line_errors():
        manifest = prepare_data(pipeline_config(config_json, {}), Path(dataset.path))
        dataset.metadata.update({k: v for k, v in manifest.items() if k != "task_kwargs"})


def tune(
    dataset: Input[Dataset],
    config_json: str,
    warm_start: bool,
    warm_start_model_uri: str,
    kfp_run_id: str,
    policy: Output[Artifact],
    schedule: Output[Artifact],
    metrics: Output[Metrics],
    mlflow_run_id: OutputPath(str),
) -> bool:
    """The DQN controller loop; opens the job's MLflow parent run.

    (The run id is an output file rather than a NamedTuple field: kfp.local cannot
    branch on NamedTuple fields.)

    Args:
        dataset: prepare_data's splits.
        config_json: The resolved config (check_inputs' output).
        warm_start: Start the controller from the policy behind warm_start_model_uri.
        warm_start_model_uri: models:/NAME@ALIAS or models:/NAME/VERSION; empty means
            models:/<registered model>@champion.
        kfp_run_id: This KFP run's id; labels the step Jobs and lets a retried attempt
            resume the one that died.
        policy: The trained controller policy (agent.pt).
        schedule: The best feasible schedule as JSON (null when none was found).
        metrics: Counts of the run (steps, unsafe segments, samples, wall time).
        mlflow_run_id: The job's MLflow parent run id.

    Returns:
        Whether a state certified safe under the spec was found.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    os.environ["SHIELDTUNE_KFP_RUN_ID"] = kfp_run_id

    from shieldtune.pipeline.stages import (
        load_prepared,
        one_line_errors,
        pipeline_config,
        tune,
    )

    with one_line_errors():
        cfg = pipeline_config(config_json, {})
        summary = tune(
            cfg, load_prepared(Path(dataset.path), cfg), warm_start, warm_start_model_uri
        )
    shutil.copyfile(Path(summary["output_dir"]) / "agent.pt", policy.path)
    best = summary["best"]
    plan = {"init_seed": best["init_seed"], "segments": best["schedule"]} if best else None
    Path(schedule.path).write_text(json.dumps(plan))
    counts = ("unsafe_segments", "violations", "warmup_steps", "steps_run", "samples_trained")
    for key in (*counts, "wall_seconds"):
        metrics.log_metric(key, float(summary[key]))
    if best:
        for key, value in best["val_metrics"].items():
            metrics.log_metric(f"best_{key}", float(value))
    policy.metadata["warm_start"] = summary["warm_start"]
    Path(mlflow_run_id).write_text(summary["mlflow_run_id"] or "")
    return bool(best)


def no_feasible_schedule(config_json: str, mlflow_run_id: str, tune_metrics: Input[Metrics]):
    """Fail the run with one line: nothing was certified safe, so nothing was trained.

    Never retried. The MLflow parent run is tagged shieldtune.outcome.

    Args:
        config_json: The resolved config (check_inputs' output).
        mlflow_run_id: The job's MLflow parent run id.
        tune_metrics: tune's counts (steps run).
    """
    from shieldtune.pipeline.stages import (
        one_line_errors,
        pipeline_config,
        report_no_feasible_schedule,
    )

    with one_line_errors():
        steps = int(tune_metrics.metadata.get("steps_run", 0))
        report_no_feasible_schedule(pipeline_config(config_json, {}), mlflow_run_id, steps)


def train_final(
    dataset: Input[Dataset],
    schedule: Input[Artifact],
    config_json: str,
    mlflow_run_id: str,
    model: Output[Model],
):
    """Retrain from scratch with the best feasible schedule (same seeds, same weights).

    Args:
        dataset: prepare_data's splits.
        schedule: tune's best feasible schedule.
        config_json: The resolved config (check_inputs' output).
        mlflow_run_id: The job's MLflow parent run id (final_* metrics go there).
        model: The trained model checkpoint (weights, config, schedule, val metrics).
    """
    import json
    from pathlib import Path

    from shieldtune.pipeline.stages import (
        load_prepared,
        log_final_metrics,
        one_line_errors,
        pipeline_config,
        train_final,
    )

    with one_line_errors():
        plan = json.loads(Path(schedule.path).read_text())
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
    """FGSM, PGD and membership inference on the test split, with confidence bounds.

    Args:
        dataset: prepare_data's splits.
        model: train_final's model.
        config_json: The resolved config (check_inputs' output).
        mlflow_run_id: The job's MLflow parent run id (test_* metrics go there).
        metrics: The test report: every metric with its bounds and the verdict.
        confusion: The confusion matrix on the test split.

    Returns:
        Whether every constraint is certified on the test split (the safety gate).
    """
    from pathlib import Path

    from shieldtune.pipeline.stages import (
        evaluate_safety,
        load_prepared,
        log_test_report,
        one_line_errors,
        pipeline_config,
    )

    with one_line_errors():
        cfg = pipeline_config(config_json, {})
        report, matrix, labels = evaluate_safety(
            cfg, load_prepared(Path(dataset.path), cfg), Path(model.path)
        )
        if mlflow_run_id:
            log_test_report(mlflow_run_id, report)
    for key, value in report.items():
        metrics.log_metric(key, float(value))
    confusion.log_confusion_matrix(labels, matrix)
    return bool(report["constraints_satisfied"])


def register_model(
    dataset: Input[Dataset],
    model: Input[Model],
    report: Input[Metrics],
    config_json: str,
    mlflow_run_id: str,
    card: Output[Markdown],
) -> str:
    """Register the model (once per run, however often retried) and decide promotion.

    The challenger becomes @champion only if it passes the safety gate and does at
    least as well as the current champion, re-evaluated on the same test split and
    spec; why is recorded on the model version and in the model card.

    Args:
        dataset: prepare_data's splits.
        model: train_final's model.
        report: evaluate_safety's test report.
        config_json: The resolved config (check_inputs' output).
        mlflow_run_id: The job's MLflow parent run id.
        card: The model card (constraints with confidence bounds, schedule, unsafe
            segments, the promotion decision).

    Returns:
        The pipeline's outcome as JSON: run id, gate, registered version, champion, why.
    """
    from pathlib import Path

    from shieldtune.pipeline.stages import (
        load_prepared,
        one_line_errors,
        pipeline_config,
        register,
    )

    with one_line_errors():
        cfg = pipeline_config(config_json, {})
        data = load_prepared(Path(dataset.path), cfg)
        values = {k: float(v) for k, v in report.metadata.items() if isinstance(v, int | float)}
        outcome, text = register(cfg, data, Path(model.path), values, mlflow_run_id)
    Path(card.path).write_text(text)
    return outcome
