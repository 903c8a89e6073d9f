"""``shieldtune pipeline ...``: compile, run locally, upload, run remotely, schedule.

Host, namespace, experiment and bearer token come from flags or the
environment (``KFP_HOST``, ``KFP_NAMESPACE``, ``KFP_EXPERIMENT``,
``KFP_BEARER_TOKEN``) and are never written into the compiled YAML.
"""

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from shieldtune.errors import StorageError
from shieldtune.job import Job, load_job

PIPELINES = ("tuning_pipeline", "retune_pipeline")


def add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile, run, upload, schedule")
    actions = p.add_subparsers(dest="action", required=True)

    comp = actions.add_parser(
        "compile", help="write pipelines/*.yaml and components/*/component.yaml"
    )
    comp.add_argument("--output-dir", default=".", help="root folder to write into (default: .)")
    _add_image(comp)

    for name, help_text in (
        ("run", "run the pipeline: --local through kfp.local, or on a KFP host"),
        ("upload", "upload the pipeline (a new version if the name exists)"),
        ("schedule", "create a recurring run (max_concurrency=1, no catch-up)"),
    ):
        a = actions.add_parser(name, help=help_text)
        a.add_argument(
            "--pipeline",
            choices=PIPELINES,
            default="retune_pipeline" if name == "schedule" else "tuning_pipeline",
        )
        a.add_argument("--config", metavar="FILE", help="YAML config passed as config_json")
        a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        if name == "run":
            a.add_argument("--local", action="store_true", help="run here through kfp.local")
            a.add_argument("--workdir", default="kfp-local", help="kfp.local output root")
        a.add_argument("--host", help="KFP API endpoint (or KFP_HOST)")
        a.add_argument("--namespace", help="Kubeflow namespace (or KFP_NAMESPACE)")
        a.add_argument(
            "--experiment", help="KFP experiment (or KFP_EXPERIMENT; default shieldtune)"
        )
        a.add_argument("--token", help="bearer token (or KFP_BEARER_TOKEN; prefer the variable)")
        a.add_argument("--package", help="compiled pipeline YAML (default: compile one now)")
        a.add_argument(
            "--name", help="pipeline name on the server (default: shieldtune-<pipeline>)"
        )
        if name == "schedule":
            a.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 1"')
        if name in ("run", "schedule"):
            a.add_argument(
                "--service-account",
                help="ServiceAccount for every pod of the run (default: KFP's; see "
                "docs/cluster.md before setting it)",
            )
        _add_image(a)


def _add_image(p: argparse.ArgumentParser) -> None:
    from shieldtune.pipeline import DEFAULT_BASE_IMAGE

    p.add_argument(
        "--base-image",
        default=DEFAULT_BASE_IMAGE,
        help=f"component image (default: {DEFAULT_BASE_IMAGE})",
    )


def pipeline_params(job: Job, pipeline: str) -> dict[str, Any]:
    """Pipeline parameters for a job: the whole config as JSON plus the explicit ones."""
    cfg = job.config
    params: dict[str, Any] = {
        "config_json": json.dumps(cfg.to_dict()),
        "episodes": cfg.tuner.episodes,
        "steps_per_episode": cfg.env.steps_per_episode,
    }
    if pipeline == "retune_pipeline":
        params["champion_model_uri"] = f"models:/{job.registered_model_name}@champion"
    return params


def check_output_dir(folder: Path, option: str) -> None:
    """Refuse, in one line and before anything runs, a folder ``option`` that cannot be made
    or written: a file, or below a file or an unwritable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{str(existing)!r} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{str(existing)!r} is not writable"
    if problem:
        raise StorageError(f"{option} {str(folder)!r} cannot be used: {problem}")


def cmd_pipeline(args: argparse.Namespace) -> int:
    from shieldtune.pipeline.pipelines import compile_all

    if args.action == "compile":
        check_output_dir(Path(args.output_dir), "--output-dir")
        for path in compile_all(Path(args.output_dir), args.base_image):
            print(path)
        return 0
    job = load_job(args.config, args.overrides)  # the config and its task are checked here
    params = pipeline_params(job, args.pipeline)
    if args.action == "run" and args.local:
        return _run_local(args, job, params)
    from shieldtune.pipeline import remote

    target = remote.KfpTarget.from_env(args.host, args.namespace, args.token, args.experiment)
    name = args.name or f"shieldtune-{args.pipeline.replace('_', '-')}"
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(args.package) if args.package else _compile_one(args, Path(tmp))
        if args.action == "upload":
            result = remote.upload(target, package, name)
            print(
                f"pipeline {name}: id {result.pipeline_id}, version {result.version_id}"
                f"{' (new pipeline)' if result.created_pipeline else ' (new version)'}"
            )
        elif args.action == "run":
            rid = remote.run(target, package, name, params, service_account=args.service_account)
            print(f"run {rid} started in {target.host}")
        else:
            rid = remote.schedule(
                target, package, name, args.cron, params, service_account=args.service_account
            )
            print(f"recurring run {rid} scheduled ({args.cron}, max_concurrency=1, no catch-up)")
    return 0


def _run_local(args: argparse.Namespace, job: Job, params: dict[str, Any]) -> int:
    """Check the data here first, run through kfp.local, then print the outcome."""
    from shieldtune.pipeline.local_run import failure_message, run_local
    from shieldtune.pipeline.stages import ERRORS_FILE_ENV, OUTCOME_FILE_ENV
    from shieldtune.tracking.tracker import default_tracking_uri, redact, ui_hint

    print(
        f"checking task {job.config.task.entry_point!r} and its data...",
        file=sys.stderr,
        flush=True,
    )
    workdir = Path(args.workdir)
    check_output_dir(workdir, "--workdir")
    job.load_data()
    with tempfile.TemporaryDirectory() as tmp:
        outcome_file, errors_file = Path(tmp) / "outcome.json", Path(tmp) / "errors.txt"
        os.environ[OUTCOME_FILE_ENV] = str(outcome_file)
        os.environ[ERRORS_FILE_ENV] = str(errors_file)
        try:
            run_local(args.pipeline, params, workdir)
            failure = None
        except RuntimeError as exc:  # kfp.local: "Pipeline 'x' finished with status FAILURE..."
            failure = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        finally:
            os.environ.pop(OUTCOME_FILE_ENV, None)
            os.environ.pop(ERRORS_FILE_ENV, None)
        outcome = json.loads(outcome_file.read_text()) if outcome_file.is_file() else None
        errors = errors_file.read_text().splitlines() if errors_file.is_file() else []
    uri = default_tracking_uri()
    for line in outcome_lines(outcome):
        print(line)
    print(f"artifacts: {workdir}/local_outputs; MLflow: {redact(uri)}; browse: {ui_hint(uri)}")
    if failure:
        print(f"shieldtune: error: {failure_message(failure, errors)}", file=sys.stderr)
        return 1
    return 0


def outcome_lines(outcome: dict[str, Any] | None) -> list[str]:
    """The pipeline's outcome in words (the last stage wrote it)."""
    if outcome is None:
        return ["outcome: the pipeline stopped before it reached an outcome"]
    lines = [f"MLflow run: {outcome.get('mlflow_run_id') or 'none'}"]
    if not outcome["feasible"]:
        lines.append(f"outcome: no feasible schedule; {outcome['reason']}")
        return lines
    metrics = outcome.get("test_metrics") or {}
    hidden = ("constraints_satisfied", "certified", "cost", "attacked_samples")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k not in hidden)
    lines += [
        f"test: {shown}",
        f"safety gate: {outcome['safety_gate']}",
        f"registered: {outcome['registered'] or 'nothing'}; "
        f"{'now @champion' if outcome['champion'] else 'not promoted'}: {outcome['reason']}",
    ]
    return lines


def _compile_one(args: argparse.Namespace, out: Path) -> Path:
    from shieldtune.pipeline.pipelines import compile_all

    return next(p for p in compile_all(out, args.base_image) if p.stem == args.pipeline)
