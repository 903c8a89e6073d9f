"""End-to-end tracking: tiny real tuning jobs against a real ``mlflow server`` on loopback.

A module-scoped fixture starts ``python -m mlflow server`` (sqlite backend, proxied
artifacts in a temp folder) on a free port and points ``MLFLOW_TRACKING_URI`` at it.
Everything is then checked through the server's REST API with ``MlflowClient``: the
run tree, per-step metric histories, params, tags, artifacts, the model registry
(safety-gate tag and ``champion`` alias), and ``shieldtune evaluate --model-uri``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import shieldtune
from shieldtune import cli
from shieldtune.config import Config, TrackingConfig, config_from_dict, flatten
from shieldtune.control.tuner import TuningSummary, run_tuning
from shieldtune.job import Job as ResolvedJob
from shieldtune.tracking.run_info import describe_job
from shieldtune.tracking.tracker import CHAMPION_ALIAS, readable

from .conftest import tiny_cli_args, tiny_dict
from .standins.mlflow_server import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: A constraint that every trained model meets, so the final safety gate passes.
EASY_SPEC = ["mia_advantage <= 0.9"]
#: A constraint nothing meets: no feasible model, so nothing may be registered.
IMPOSSIBLE_SPEC = ["fgsm_robust_acc >= 0.95"]  # certifiable on 300 samples, never reached
#: Overrides that rebuild the tiny data/safety config on the ``shieldtune`` command line.
TINY_EVAL_OVERRIDES = [
    "data.train_size=600",
    "data.val_size=300",
    "data.test_size=300",
    "safety.eval_samples=100",
    "safety.mia_samples=100",
    "safety.pgd_steps=3",
    "safety.pgd_restarts=1",
    f"safety.constraints={json.dumps(EASY_SPEC)}",
]
STEP_METRICS = (
    "val_acc",
    "fgsm_robust_acc",
    "mia_advantage",
    "reward",
    "cost",
    "learning_rate",
    "batch_size",
    "epsilon",
    "masked_actions",
)
PARENT_FILES = ("config.yaml", "summary.json", "steps.jsonl", "shield_audit.jsonl")


# --------------------------------------------------------------------------- server


@dataclass
class Server:
    uri: str
    workdir: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mlflow-server")
    try:
        server = MlflowServer(root).start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        workdir = root / "work"
        workdir.mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", server.uri)
            mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            mp.setenv("NO_PROXY", "127.0.0.1,localhost")
            mp.setenv("no_proxy", "127.0.0.1,localhost")
            # Anything that ignored MLFLOW_TRACKING_URI would write ./mlflow.db here.
            mp.chdir(workdir)
            try:
                yield Server(server.uri, workdir)
            finally:
                # Tracker.start() calls mlflow.set_tracking_uri(), a process-wide setting
                # (it also writes os.environ, which the MonkeyPatch context restores).
                mlflow.set_tracking_uri(None)
    finally:
        server.stop()


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    cfg: Config
    summary: TuningSummary
    experiment_id: str
    registered_model_name: str


def _tiny_job_config(tmp: Path, constraints: list[str], **sections: dict) -> Config:
    tag = uuid.uuid4().hex[:8]
    return config_from_dict(
        tiny_dict(
            tracking={
                "enabled": True,
                "experiment": f"it-{tag}",
                "registered_model_name": f"it-model-{tag}",
            },
            tuner={"output_dir": str(tmp / "runs")},
            safety={"constraints": constraints},
            **sections,
        )
    )


def _run_job(server: Server, cfg: Config) -> Job:
    summary = run_tuning(cfg)
    exp = MlflowClient(server.uri).get_experiment_by_name(cfg.tracking.experiment)
    assert exp is not None, f"experiment {cfg.tracking.experiment!r} was not created on the server"
    return Job(cfg, summary, exp.experiment_id, cfg.tracking.registered_model_name)


@pytest.fixture(scope="module")
def champion_job(mlflow_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Job:
    """One tiny job whose spec every model meets; 600-sample segments so test_acc clears 0.5."""
    cfg = _tiny_job_config(
        tmp_path_factory.mktemp("champion"), EASY_SPEC, training={"segment_samples": 600}
    )
    return _run_job(mlflow_server, cfg)


# --------------------------------------------------------------------------- helpers


def _parent_runs(client: MlflowClient, experiment_id: str) -> list:
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _child_runs(client: MlflowClient, parent_id: str) -> list:
    """Runs nested under ``parent_id`` in *any* experiment on the server."""
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(
        exp_ids,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        run_view_type=ViewType.ALL,
        max_results=1000,
    )


def _read_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


def _assert_registry_matches_summary(
    client: MlflowClient, name: str, summary: TuningSummary
) -> None:
    """Safety-gate tag and ``champion`` alias agree with the job's own test verdict."""
    versions = client.search_model_versions(f"name='{name}'")
    if not summary.feasible_found:
        assert summary.registered_model is None
        assert versions == [], f"no feasible model, yet {name!r} has versions {versions}"
        return
    assert len(versions) == 1, versions
    mv = versions[0]
    passed = bool(summary.test_metrics["constraints_satisfied"])
    assert mv.tags["safety_gate"] == ("passed" if passed else "failed")
    assert mv.run_id == summary.mlflow_run_id
    assert mv.tags["source_run_id"] == summary.mlflow_run_id
    assert json.loads(mv.tags["test_metrics"]) == pytest.approx(summary.test_metrics)
    aliases = client.get_registered_model(name).aliases
    assert (CHAMPION_ALIAS in aliases) == passed, aliases
    if passed:
        assert aliases[CHAMPION_ALIAS] == mv.version
    registered = summary.registered_model
    assert (registered["name"], registered["version"]) == (name, mv.version)
    assert registered["alias"] == (CHAMPION_ALIAS if passed else None)
    assert registered["promoted"] == passed
    assert mv.tags["promoted"] == str(passed).lower()
    assert mv.tags["promotion_reason"] == registered["reason"]
    # The model card is the version's description and an artifact of the run.
    assert mv.description == registered["card"]
    assert f"# {name} v{mv.version}" in mv.description
    assert "## Constraints (test split)" in mv.description
    assert "## Unsafe segments during tuning" in mv.description
    assert registered["reason"] in mv.description


# --------------------------------------------------------------------------- tests


def test_job_logs_one_parent_run_with_full_config_params_tags_and_artifacts(
    mlflow_server: Server, champion_job: Job, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_server.uri)
    summary, cfg = champion_job.summary, champion_job.cfg
    assert summary.tracking_uri == mlflow_server.uri
    assert not (mlflow_server.workdir / "mlflow.db").exists(), "MLFLOW_TRACKING_URI was ignored"

    parents = _parent_runs(client, champion_job.experiment_id)
    assert [r.info.run_id for r in parents] == [summary.mlflow_run_id]
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.info.status == "FINISHED"

    params = parent.data.params
    assert params["tuner.episodes"] == str(cfg.tuner.episodes) == "2"
    assert params == flatten(cfg), "params should be the whole flattened config"
    assert parent.data.tags["seed"] == str(cfg.tuner.seed)
    assert parent.data.tags["shieldtune.version"] == shieldtune.__version__
    assert parent.data.metrics["test_acc"] == pytest.approx(summary.test_metrics["test_acc"])

    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert set(PARENT_FILES) <= top, top
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/schedule.png"
    }
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "policy")} == {
        "policy/agent.pt"
    }
    png = Path(client.download_artifacts(parent.info.run_id, "plots/schedule.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = json.loads(_read_artifact(client, parent.info.run_id, "summary.json", tmp_path))
    assert logged == json.loads(json.dumps(summary.to_dict()))


def test_each_episode_is_a_nested_run_with_per_step_metric_history(
    mlflow_server: Server, champion_job: Job, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_server.uri)
    cfg, parent_id = champion_job.cfg, champion_job.summary.mlflow_run_id
    steps = cfg.env.steps_per_episode

    children = _child_runs(client, parent_id)
    assert len(children) == cfg.tuner.episodes
    by_episode = {int(r.data.tags["episode"]): r for r in children}
    assert sorted(by_episode) == list(range(cfg.tuner.episodes))

    records = [
        json.loads(line)
        for line in _read_artifact(client, parent_id, "steps.jsonl", tmp_path).splitlines()
    ]
    assert len(records) == cfg.tuner.episodes * steps
    q_loss_points = 0
    for episode, run in by_episode.items():
        # Named after the job, so episode runs of different jobs never share a name.
        parent_name = client.get_run(parent_id).info.run_name
        assert run.info.run_name == f"{parent_name}/episode-{episode:03d}"
        assert run.info.status == "FINISHED"
        assert set(STEP_METRICS) <= set(run.data.metrics), sorted(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
        logged = {m.step: m.value for m in history}
        # Logged at the precision the measurement has (6 significant digits).
        expected = {r["step"]: readable(r["val_acc"]) for r in records if r["episode"] == episode}
        assert logged == expected
        q_loss_points += len(client.get_metric_history(run.info.run_id, "q_loss"))
    # learning_starts=2: the agent learns from the second step on, so q_loss gets logged.
    assert q_loss_points >= 1


def test_episode_runs_live_in_the_jobs_experiment(mlflow_server: Server, champion_job: Job) -> None:
    client = MlflowClient(mlflow_server.uri)
    children = _child_runs(client, champion_job.summary.mlflow_run_id)
    assert len(children) == champion_job.cfg.tuner.episodes
    assert {r.info.experiment_id for r in children} == {champion_job.experiment_id}


def test_passing_safety_gate_registers_model_with_champion_alias(
    mlflow_server: Server, champion_job: Job
) -> None:
    summary = champion_job.summary
    assert summary.feasible_found
    assert summary.test_metrics is not None
    assert summary.test_metrics["constraints_satisfied"] == 1.0, summary.test_metrics
    _assert_registry_matches_summary(
        MlflowClient(mlflow_server.uri), champion_job.registered_model_name, summary
    )


def test_evaluate_cli_scores_the_registered_champion(
    mlflow_server: Server, champion_job: Job, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "report.json"
    argv = ["evaluate", "--model-uri", f"models:/{champion_job.registered_model_name}@champion"]
    for override in TINY_EVAL_OVERRIDES:
        argv += ["--set", override]
    argv += ["--output", str(out_file)]

    rc = cli.main(argv)

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(out_file.read_text())
    assert report["test_acc"] > 0.5
    assert report["constraints_satisfied"] == 1.0
    # Same checkpoint, same data and attack settings: the tuner's own test report.
    assert report == pytest.approx(champion_job.summary.test_metrics)
    assert "safety gate passed" in captured.out


def test_infeasible_spec_registers_no_model_but_still_logs_the_job(
    mlflow_server: Server, tmp_path: Path
) -> None:
    cfg = _tiny_job_config(tmp_path, IMPOSSIBLE_SPEC)
    job = _run_job(mlflow_server, cfg)
    summary = job.summary
    client = MlflowClient(mlflow_server.uri)

    assert summary.feasible_found is False
    assert summary.best is None
    assert summary.test_metrics is None
    # Never safe: every step is warm-up (nothing safe to roll back to), none a violation.
    assert summary.warmup_steps == summary.steps_run > 0
    assert summary.violations == 0
    _assert_registry_matches_summary(client, job.registered_model_name, summary)
    assert client.search_registered_models(f"name='{job.registered_model_name}'") == []

    parents = _parent_runs(client, job.experiment_id)
    assert [r.info.run_id for r in parents] == [summary.mlflow_run_id]
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert not any(k.startswith("test_") for k in parent.data.metrics), parent.data.metrics
    assert set(PARENT_FILES) <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(_child_runs(client, summary.mlflow_run_id)) == cfg.tuner.episodes


def test_a_store_another_job_is_creating_at_the_same_moment_is_retried_not_a_traceback(
    tmp_path, monkeypatch
):
    """Two jobs started at once on a new sqlite store: the second saw ``table ... already
    exists`` from MLflow's schema setup and died with a long traceback."""
    from shieldtune.tracking import tracker as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = tracking.MlflowClient
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.OperationalError) table latest_metrics already exists")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "MlflowClient", racing)
    t = tracking.Tracker(TrackingConfig(), "test", describe_job(ResolvedJob.from_config(Config())))
    try:
        t.start()
        assert t.parent_id and len(calls) == 2
    finally:
        t.finish()


def test_a_password_in_the_tracking_uri_appears_nowhere_the_job_writes_or_prints(
    mlflow_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """Issue: with ``MLFLOW_TRACKING_URI=http://user:PASS@host`` the password reached
    summary.json (``tracking_uri``), the MLflow artifact copy of it and stdout."""
    canary = "CANARY-uri-pass-93f1"
    uri = mlflow_server.uri.replace("http://", f"http://alice:{canary}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out_dir = tmp_path / "runs"
    spec = "safety.constraints=[fgsm_robust_acc >= 0.05]"  # a job that finds a model: exit 0
    args = tiny_cli_args("tuner.episodes=1", f"tuner.output_dir={out_dir}", spec)
    assert cli.main(["tune", *args]) == 0
    printed = capfd.readouterr()
    summary_path = next(out_dir.glob("*/summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["tracking_uri"].startswith("http://alice:***@")
    local = mlflow.artifacts.download_artifacts(
        run_id=summary["mlflow_run_id"], artifact_path="summary.json", dst_path=str(tmp_path / "a")
    )
    texts = {"stdout": printed.out, "stderr": printed.err, "artifact": Path(local).read_text()}
    texts |= {
        str(p): p.read_text(errors="replace")
        for p in out_dir.rglob("*")
        if p.suffix in (".json", ".jsonl", ".yaml")
    }
    leaks = [line for where, text in texts.items() for line in text.splitlines() if canary in line]
    assert leaks == []


def test_a_server_failure_while_logging_the_model_is_one_line_naming_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: MLflow down during ``log_model`` gave a 246-line traceback (it was not behind the
    retry wrapper)."""
    from mlflow.exceptions import MlflowException

    from shieldtune.errors import TrackingError
    from shieldtune.tracking import tracker as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    t = tracking.Tracker(TrackingConfig(), "test", describe_job(ResolvedJob.from_config(Config())))
    t.start()

    def down(*_args, **_kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/model-versions failed")

    monkeypatch.setattr(tracking.mlflow.pytorch, "log_model", down)
    import torch

    model = torch.nn.Linear(2, 2)
    report = {"test_acc": 1.0, "constraints_satisfied": 1.0}
    try:
        with pytest.raises(TrackingError) as err:
            t.publish(model, tmp_path / "x.pt", torch.zeros(1, 2), report, lambda _: report, {})
    finally:
        t.finish("FAILED")
    assert "\n" not in str(err.value) and f"--resume {t.parent_id}" in str(err.value)


def test_parent_run_is_named_after_the_job_and_says_what_was_tuned_the_spec_and_the_outcome(
    mlflow_server: Server, champion_job: Job
) -> None:
    """Issue: what was tuned was buried in 90 params, the outcome was a bare tag, and runs
    of different jobs shared names."""
    parent = MlflowClient(mlflow_server.uri).get_run(champion_job.summary.mlflow_run_id)
    tags = parent.data.tags
    assert parent.info.run_name.startswith("tune-mnist-cnn-")
    assert tags["shieldtune.task"] == "mnist-cnn"
    assert tags["shieldtune.search_space"].startswith("learning_rate [0.003, 0.8] log")
    assert tags["shieldtune.spec"] == "mia_advantage <= 0.9 (confidence 0.95)"
    registered = champion_job.summary.registered_model
    outcome = f"{registered['name']} v{registered['version']} promoted to @champion"
    assert tags["shieldtune.outcome"] == outcome
    note = tags["mlflow.note.content"]
    assert "**Tuned:** learning_rate" in note and "**Spec:** mia_advantage" in note
    assert f"**{outcome}**" in note.split("## Outcome")[1]


def test_splits_are_logged_as_dataset_inputs_and_the_shield_audit_as_a_table(
    mlflow_server: Server, champion_job: Job, tmp_path: Path
) -> None:
    """Issue: the run page showed "Datasets: None" and the audit only as raw JSONL."""
    client = MlflowClient(mlflow_server.uri)
    run_id = champion_job.summary.mlflow_run_id
    inputs = client.get_run(run_id).inputs.dataset_inputs
    got = {
        d.dataset.name: ({t.key: t.value for t in d.tags}["mlflow.data.context"], d.dataset)
        for d in inputs
    }
    assert {k: v[0] for k, v in got.items()} == {
        "mnist-cnn-train": "training",
        "mnist-cnn-val": "validation",
        "mnist-cnn-test": "testing",
    }
    assert json.loads(got["mnist-cnn-test"][1].profile)["targets_shape"] == [300]
    steps = champion_job.summary.steps_run
    table = json.loads(_read_artifact(client, run_id, "shield_audit_table.json", tmp_path))
    assert table["columns"][:3] == ["global_step", "episode", "step"]
    assert len(table["data"]) == steps
    page = _read_artifact(client, run_id, "shield_audit.html", tmp_path)
    assert page.count("<tr") == steps + 1  # the header and one row per step
    card = _read_artifact(client, run_id, "model_card.md", tmp_path)
    assert card == champion_job.summary.registered_model["card"]


def test_a_challenger_is_compared_with_the_champion_and_registering_again_adds_no_version(
    mlflow_server: Server, tmp_path: Path
) -> None:
    """Issue: a retried registration could add a second version, and @champion moved to any
    version past the gate without comparing it with the current champion."""
    from shieldtune.control.finish import publish_checkpoint
    from shieldtune.tracking.tracker import Tracker

    client = MlflowClient(mlflow_server.uri)
    cfg = _tiny_job_config(tmp_path, EASY_SPEC, training={"segment_samples": 600})
    name = cfg.tracking.registered_model_name
    first = _run_job(mlflow_server, cfg).summary
    assert first.registered_model["reason"] == "passed the safety gate; there was no champion"
    cfg.tuner.seed += 1  # another challenger
    second = _run_job(mlflow_server, cfg).summary
    mine = second.registered_model
    assert mine["previous_champion"] == first.registered_model["version"]
    # The champion re-measured on the challenger's split and spec: same model, same samples,
    # same attacks as its own job's report.
    champion_acc = mine["champion_report"]["test_acc"]
    assert champion_acc == pytest.approx(first.test_metrics["test_acc"])
    promoted = second.test_metrics["test_acc"] >= champion_acc
    assert mine["promoted"] == promoted, mine["reason"]
    assert f"champion v{first.registered_model['version']}" in mine["reason"]
    alias = client.get_registered_model(name).aliases[CHAMPION_ALIAS]
    assert alias == (mine["version"] if promoted else first.registered_model["version"])

    # A retried register task: the same run publishes again and finds its version.
    job = ResolvedJob.from_config(cfg)
    tracker = Tracker(cfg.tracking, shieldtune.__version__, describe_job(job))
    tracker.attach(second.mlflow_run_id)
    try:
        data = job.load_data()
        again = publish_checkpoint(
            tracker, job, data, Path(second.best["checkpoint"]), second.test_metrics, {}
        )
    finally:
        tracker.finish()
    assert again["version"] == mine["version"]
    assert len(client.search_model_versions(f"name='{name}'")) == 2
