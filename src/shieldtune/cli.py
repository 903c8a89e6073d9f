"""``shieldtune`` command line: tune, evaluate, step, env-check, task-check, pipeline.

Every user error is printed as one line (``shieldtune: error: ...``) with exit
status 2; tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shieldtune.config import Config
from shieldtune.errors import CheckpointError, ConfigError, ShieldtuneError
from shieldtune.signals import interrupt_on_sigterm

if TYPE_CHECKING:
    from shieldtune.job import Job

EXAMPLE_CONFIG = "configs/mnist-cnn.yaml"


def _version() -> str:
    from shieldtune import __version__

    return __version__


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults apply where omitted)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set tuner.episodes=3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shieldtune",
        description="Safety-constrained RL hyperparameter tuning (DQN controller + safety shield).",
    )
    parser.add_argument("--version", action="version", version=f"shieldtune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    tune = sub.add_parser("tune", help="run a tuning job (logs to MLflow)")
    _add_config_args(tune)
    tune.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue an interrupted job from its saved controller state (the run id it "
        "printed; found under tuner.output_dir); its saved config is used",
    )

    ev = sub.add_parser(
        "evaluate", help="safety report of a checkpoint or registered model on the test split"
    )
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", metavar="PATH", help="a best_model.pt written by `shieldtune tune`"
    )
    src.add_argument(
        "--model-uri", metavar="URI", help="a registered model, e.g. models:/NAME@champion"
    )
    _add_config_args(ev)
    ev.add_argument("--output", metavar="FILE", help="also write the report as JSON here")

    step = sub.add_parser(
        "step",
        help="train and evaluate one environment step from a step store (what step pods run)",
    )
    step.add_argument(
        "--store",
        required=True,
        metavar="URI",
        help="where the request is and the result goes: dir:/PATH or mlflow:RUN_ID",
    )
    step.add_argument("--step-id", required=True, metavar="ID", help="the step's folder name")
    step.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)"
    )

    check = sub.add_parser(
        "env-check", help="run gymnasium's env_checker on shieldtune/Hyperparam-v0"
    )
    _add_config_args(check)

    pre = sub.add_parser(
        "pretrain",
        help="pre-train the controller (Q-network + safety critic) on proxy tuning jobs",
        description="Runs --runs short tuning jobs in turn over the given configs, each "
        "warm-started from the previous one's policy, with an fgsm_robust_acc threshold drawn "
        "from --thresholds, and writes the final policy (load it with tuner.warm_start=FILE).",
    )
    pre.add_argument("--config", dest="configs", action="append", required=True, metavar="FILE")
    pre.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key in every config",
    )
    pre.add_argument("--runs", type=int, default=24, help="proxy jobs to run (default 24)")
    pre.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[0.4, 0.5, 0.6, 0.7, 0.8],
        help="fgsm_robust_acc thresholds to draw from",
    )
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--out", required=True, metavar="FILE", help="where to write the policy")

    task_check = sub.add_parser(
        "task-check",
        help="check a task (built-in or your plug-in) against the task contract",
        description="Loads the task's data, builds its model and checks them against the "
        "contract (docs/tasks.md): splits, labels, output shape, reproducible seeding, loss, "
        "a short training segment, input domain, extra metrics and hyperparameters.",
    )
    _add_config_args(task_check)
    task_check.add_argument(
        "--task",
        metavar="ENTRY_POINT",
        help="a built-in task name or package.module:factory (default: the config's task)",
    )

    from shieldtune.pipeline.cli import add_pipeline_parser

    add_pipeline_parser(sub)
    return parser


def _cmd_tune(args: argparse.Namespace) -> int:
    from shieldtune.config import load_config
    from shieldtune.control.finish import SUMMARY_FILE, finished_summary
    from shieldtune.control.tuner import find_resume_state, run_tuning
    from shieldtune.job import Job
    from shieldtune.training.device import apply_threads

    cfg = load_config(args.config, args.overrides)
    if args.resume is not None:  # an empty --resume "$RUN_ID" must not start a fresh job
        state = find_resume_state(cfg.tuner.output_dir, args.resume)
        cfg = _resumed_config(
            cfg, state["config"], config_file=bool(args.config), overrides=args.overrides
        )
        summary = Path(cfg.tuner.output_dir) / args.resume / SUMMARY_FILE
        stopped = state["job"].get("stop_reason")
        if stopped and finished_summary(summary) is not None:
            print(
                f"run {args.resume} already finished ({stopped}); nothing to resume: its "
                f"summary is {summary}"
            )
            return 0
        job = Job.from_config(cfg)
        apply_threads(job.config.training.threads)
        if stopped:  # killed after its last step, before its summary was written whole
            print(f"run {args.resume} stopped ({stopped}); completing its report and publishing")
        else:
            print(f"resuming run {args.resume} after global step {state['job']['global_step']}")
        s = run_tuning(job, resume=state)
    else:
        job = Job.from_config(cfg)
        apply_threads(job.config.training.threads)
        s = run_tuning(job)
    _print_summary(job, s)
    print(f"outputs: {s.output_dir}")
    if s.tracking_uri:
        from shieldtune.tracking.tracker import ui_hint

        print(f"MLflow: run {s.mlflow_run_id} in {s.tracking_uri}")
        if s.registered_model:
            rm = s.registered_model
            verdict = f"now @{rm['alias']}" if rm["alias"] else "not promoted"
            print(
                f"registered model: {rm['name']} version {rm['version']}, {verdict}: {rm['reason']}"
            )
        print(f"browse: {ui_hint(s.tracking_uri)}")
    # As the pipeline does: a job that found no certified-safe model did not succeed.
    return 0 if s.best is not None else 1


def _print_summary(job: Job, s) -> None:
    """The job's closing lines: spec, honest unsafe-segment counts, chosen state, test report."""
    from shieldtune.safety.report import constraint_rows, format_rows

    cfg, constraints = job.config, job.constraints
    print(f"\nconstraints: {', '.join(s.constraints)} (confidence {cfg.safety.confidence:g})")
    print(
        f"steps: {s.steps_run} in {s.episodes_run} episodes, {s.samples_trained} samples "
        f"trained; {s.stop_reason}"
    )
    print(
        f"unsafe segments: {s.unsafe_segments} of {s.steps_run} ({s.warmup_steps} before the "
        f"first safe state, {s.violations} after it and rolled back, {s.diverged_steps} "
        f"diverged); accepted states certified safe: {s.certified_safe_states}, undecided: "
        f"{s.undecided_states}"
    )
    if s.best is None:
        print(
            "no certified-safe model was found: no accepted state met every constraint at "
            f"confidence {cfg.safety.confidence:g}; relax safety.constraints, widen "
            "env.search_space (e.g. adv_mix) or raise the budget"
        )
        return
    print(
        f"best certified-safe state: episode {s.best['episode']} step {s.best['step']}, "
        f"val_acc {s.best['val_metrics']['val_acc']:.4f}"
        + (
            f" ({s.best['ties']} later certified state(s) tied it; the earliest is kept)"
            if s.best.get("ties")
            else ""
        )
    )
    t = s.test_metrics
    if t is None:
        return
    extras = [f"acc {t['test_acc']:.4f}"]
    if "fgsm_robust_acc" in t:
        extras.append(
            f"fgsm {t['fgsm_robust_acc']:.4f}, pgd {t['pgd_robust_acc']:.4f} "
            f"(gap {t['fgsm_pgd_gap']:+.4f})"
        )
    extras.append(
        f"mia advantage {t['mia_advantage']:.4f} (p={t['mia_p_value']:.3g} vs no leakage), "
        f"tpr@1%fpr {t['mia_tpr_at_1fpr']:.4f}"
    )
    print(f"test: {', '.join(extras)}")
    for line in format_rows(constraint_rows(constraints, t)):
        print(line)
    gate = "passed" if t["constraints_satisfied"] else "FAILED"
    print(f"safety gate {gate}: every constraint must be certified on the test split")


#: Keys a ``--resume`` may set: where the job's folder is, how it reports progress, and
#: (only to false) whether it logs to MLflow.
RESUME_KEYS = ("tuner.output_dir", "tuner.progress", "tracking.enabled")


def _resumed_config(
    given: Config, saved: dict, *, config_file: bool = False, overrides: list[str] | None = None
) -> Config:
    """The interrupted job's own config. With --resume, ``--set`` may only touch
    :data:`RESUME_KEYS`, and a ``--config`` file must describe the same job apart from them
    (a different job cannot continue this one's state)."""
    from shieldtune.config import config_from_dict, flatten

    cfg = config_from_dict(saved)
    cfg.tuner.progress = given.tuner.progress
    cfg.tuner.output_dir = given.tuner.output_dir
    touched = {".".join(o.partition("=")[0].strip().split(".")[:2]) for o in overrides or []}
    if "tracking.enabled" in touched or config_file:
        # Only off: a job whose MLflow run or store is gone can still be finished (a job
        # started without MLflow has no run to continue).
        cfg.tracking.enabled = cfg.tracking.enabled and given.tracking.enabled
    mine, theirs = flatten(given), flatten(cfg)
    keys = sorted(k for k in touched - set(RESUME_KEYS) if mine.get(k) != theirs.get(k))
    if keys:
        raise ConfigError(
            f"--resume continues the saved job, but --set changes {', '.join(keys[:3])}; "
            f"drop those settings (only {', '.join(RESUME_KEYS)} may be set)"
        )
    if config_file:
        differing = sorted(k for k in mine if k not in RESUME_KEYS and mine[k] != theirs.get(k))
        if differing:
            raise ConfigError(
                f"--resume continues the saved job, but the given config changes "
                f"{', '.join(differing[:3])}; drop those settings (only "
                f"{', '.join(RESUME_KEYS)} may differ)"
            )
    return cfg


def _checkpoint_from_model_uri(args: argparse.Namespace) -> Path:
    """The checkpoint ``--model-uri`` names, downloaded with the HTTP retries the config and
    ``--set tracking.*`` give (MLflow's own default retries for minutes)."""
    from mlflow.exceptions import MlflowException

    from shieldtune.config import load_config
    from shieldtune.errors import first_line
    from shieldtune.tracking.registry import MissingArtifactsError, download_checkpoint
    from shieldtune.tracking.tracker import default_tracking_uri, redact

    uri = args.model_uri
    if not uri.startswith("models:/"):
        raise CheckpointError(
            f"--model-uri {uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    store = default_tracking_uri()
    # Only the tracking section is read here (the rest applies to the checkpoint's config).
    tracking = [o for o in args.overrides if o.split("=", 1)[0].strip().startswith("tracking.")]
    settings = load_config(args.config, tracking).tracking
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.http_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(settings.http_backoff_factor))
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        # Opening it would create an empty store here and then report "not found".
        raise CheckpointError(
            f"no MLflow store to resolve {uri} in: {store.removeprefix('sqlite:///')} does not "
            "exist; set MLFLOW_TRACKING_URI, or run where the tuning job ran"
        )
    print(f"downloading {uri} from {redact(store)}...", file=sys.stderr, flush=True)
    try:
        return download_checkpoint(uri, store)
    except MissingArtifactsError:
        raise  # the right store: the version's files are gone
    except (CheckpointError, MlflowException) as exc:
        raise CheckpointError(
            f"{redact(first_line(exc))} (MLflow store {redact(store)}); set "
            "MLFLOW_TRACKING_URI to the store that holds it"
        ) from None
    except Exception as exc:  # the store itself cannot be opened (a file that is no database)
        if not type(exc).__module__.startswith(("sqlalchemy", "alembic", "requests", "urllib3")):
            raise
        raise CheckpointError(
            f"MLflow store {redact(store)} cannot be opened to resolve {uri} "
            f"({type(exc).__name__}: {redact(first_line(exc))}); set MLFLOW_TRACKING_URI to "
            "the store that holds it"
        ) from None


def _check_output_file(output: str) -> None:
    """Refuse an ``--output`` that cannot be written as a file: a folder, or a file in a
    folder that does not exist or is not writable."""
    from shieldtune.errors import StorageError

    path = Path(output)
    problem = None
    try:
        if path.is_dir():
            problem = "it is a folder; name a file (e.g. report.json) in it"
        elif not path.parent.is_dir():
            problem = f"its folder {str(path.parent)!r} does not exist; create it first"
        elif not os.access(path.parent, os.W_OK | os.X_OK):
            problem = f"its folder {str(path.parent)!r} is not writable"
    except OSError as exc:  # a name too long to look up
        problem = exc.strerror or str(exc)
    if problem:
        raise StorageError(f"--output {output!r} cannot be written: {problem}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from shieldtune.config import apply_override
    from shieldtune.job import job_from_dict, load_checkpoint, load_job
    from shieldtune.safety.suite import test_report
    from shieldtune.training.device import apply_threads

    if args.output:  # before minutes of evaluation, not after them
        _check_output_file(args.output)
    path = Path(args.checkpoint) if args.checkpoint else _checkpoint_from_model_uri(args)
    # The architecture always comes from the checkpoint: those are the weights it holds.
    model, ckpt, _ = load_checkpoint(path)
    if args.config:
        job = load_job(args.config, args.overrides)
    else:  # default to the tuning job's own config: same model, same splits
        raw = ckpt["config"]
        for assignment in args.overrides:
            apply_override(raw, assignment)
        job = job_from_dict(raw)
    cfg = job.config
    apply_threads(cfg.training.threads)
    data = job.load_data()
    device = job.device()
    print(
        f"evaluating {path} (task {job.task.name}) on the {len(data.test)}-sample test split: "
        "accuracy, FGSM, PGD, membership inference...",
        file=sys.stderr,
        flush=True,
    )
    report = test_report(job.task, model, data, cfg.safety, job.constraints, device, cfg.tuner.seed)
    for line in _report_lines(job, report):
        print(line)
    if args.output:
        from shieldtune.checkpoint import atomic_write_text

        atomic_write_text(args.output, json.dumps(report, indent=2))
    return 0 if report["constraints_satisfied"] else 1


def _report_lines(job: Job, report: dict[str, float]) -> list[str]:
    """A test report as text: every metric with its bounds, then each constraint's verdict."""
    from shieldtune.safety.report import constraint_rows, format_rows, interval

    lines = []
    for name, value in report.items():
        if name.endswith(("_low", "_high")) or name in ("certified", "constraints_satisfied"):
            continue
        bounds = interval(report, name)
        lines.append(f"{name:<20} {value:.4f}{'  ' + bounds if bounds else ''}")
    lines.append(f"constraints (confidence {job.config.safety.confidence:g}):")
    lines += format_rows(constraint_rows(job.constraints, report))
    gate = "passed" if report["constraints_satisfied"] else "FAILED"
    lines.append(f"safety gate {gate}: every constraint must be certified on the test split")
    return lines


def _cmd_step(args: argparse.Namespace) -> int:
    import re

    from shieldtune.executors.step_files import open_store, run_stored_step

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", args.step_id):
        raise ConfigError(
            f"--step-id {args.step_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
        )
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise ConfigError(f"--threads {args.threads} is out of range; allowed: [1, 1024]")
    result = run_stored_step(open_store(args.store), args.step_id, args.threads)
    state = "diverged" if result.diverged else f"val_acc {result.metrics.get('val_acc', 0.0):.4f}"
    print(f"step {args.step_id}: {result.samples} samples, {state}")
    return 0


def _cmd_env_check(args: argparse.Namespace) -> int:
    from gymnasium.utils.env_checker import check_env

    from shieldtune.control.env import HyperparamEnv
    from shieldtune.job import load_job

    env = HyperparamEnv(load_job(args.config, args.overrides))
    print(
        "running gymnasium's check_env: it resets and steps the env, and every step trains "
        "and attacks the model for one segment...",
        file=sys.stderr,
        flush=True,
    )
    check_env(env, skip_render_check=True)
    print(
        f"shieldtune/Hyperparam-v0 passes gymnasium's check_env: "
        f"{env.observation_space}, {env.action_space}"
    )
    return 0


def _cmd_task_check(args: argparse.Namespace) -> int:
    from shieldtune.job import load_job
    from shieldtune.tasks.checker import check_task
    from shieldtune.tasks.validation import certifiable_limits

    overrides = list(args.overrides)
    if args.task is not None:
        overrides.insert(0, f"task.entry_point={args.task}")
    job = load_job(args.config, overrides)  # checks the config against the task
    task, cfg = job.task, job.config
    print(f"checking task {task.name!r} ({cfg.task.entry_point})", file=sys.stderr)
    data = job.load_data()  # refuses a spec these split sizes could never certify
    for line in check_task(task, cfg.data, seed=cfg.tuner.seed, data=data):
        print(f"  ok  {line}")
    limits = certifiable_limits(cfg.safety, job.constraints, len(data.val), len(data.test))
    for i, lim in limits.items():
        c = job.constraints[i]
        print(
            f"  ok  spec {c}: certifiable; the most demanding threshold these splits can "
            f"certify is {lim['validation']:.4f} on {int(lim['validation_samples'])} validation "
            f"samples, {lim['test']:.4f} on {int(lim['test_samples'])} test samples"
        )
    print(f"task {task.name!r} passes the task contract")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from shieldtune.control.pretrain import pretrain
    from shieldtune.job import load_job

    if not 1 <= args.runs <= 10_000:
        raise ConfigError(f"--runs {args.runs} is out of range; allowed: [1, 10000]")
    if any(not 0.0 <= t <= 1.0 for t in args.thresholds):
        raise ConfigError("--thresholds must lie in [0, 1] (robust accuracies)")
    configs = [load_job(path, args.overrides).config for path in args.configs]
    record = pretrain(configs, args.thresholds, args.runs, Path(args.out), seed=args.seed)
    found = sum(r["found"] for r in record["runs"])
    print(
        f"policy written to {args.out} ({args.runs} proxy runs over {', '.join(record['tasks'])}; "
        f"{found} found a certified-safe model; {record['seconds']:.0f} s)"
    )
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from shieldtune.pipeline.cli import cmd_pipeline

    return cmd_pipeline(args)


COMMANDS = {
    "tune": _cmd_tune,
    "evaluate": _cmd_evaluate,
    "step": _cmd_step,
    "env-check": _cmd_env_check,
    "task-check": _cmd_task_check,
    "pretrain": _cmd_pretrain,
    "pipeline": _cmd_pipeline,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with interrupt_on_sigterm():
            return COMMANDS[args.command](args)
    except ShieldtuneError as exc:
        print(f"shieldtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shieldtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
