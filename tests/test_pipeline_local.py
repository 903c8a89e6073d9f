"""The whole pipeline end to end through kfp.local (real KFP local runner, real artifacts).

Cold start (`tuning_pipeline`), then the scheduled-retuning path
(`retune_pipeline`) warm-starting from the champion the first run registered.
Both log into the embedded default MLflow store of the working folder.
"""

import contextlib
import io
import json

import pytest
from mlflow.tracking import MlflowClient

from shieldtune.cli import main

from .conftest import tiny_cli_args


def sets(*extra: str) -> list[str]:
    return tiny_cli_args(
        "safety.constraints=[fgsm_robust_acc >= 0.1]",
        "tracking.registered_model_name=pipeline-test-model",
        *extra,
    )


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """Run tuning_pipeline then retune_pipeline once; share the store for the assertions."""
    work = tmp_path_factory.mktemp("kfp-local")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    printed = []
    try:
        for extra in ([], ["--pipeline", "retune_pipeline"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["pipeline", "run", "--local", *extra, *sets()]) == 0
            printed.append(out.getvalue())
        yield work, MlflowClient(f"sqlite:///{work / 'mlflow.db'}"), printed
    finally:
        mp.undo()


def _parents(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("shieldtune")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_pipeline_logs_every_stage_into_one_parent_run_with_episode_children(pipeline_runs):
    work, client, _ = pipeline_runs
    parents = _parents(client)
    assert len(parents) == 2  # one per pipeline run
    parent = parents[0]
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    metrics = parent.data.metrics
    # tune, train_final, evaluate_safety all logged into the same run.
    assert {"violations", "final_val_acc", "test_acc", "test_pgd_robust_acc"} <= set(metrics)
    assert "test_test_acc" not in metrics
    # train_final replays the best feasible schedule: the same model, the same val accuracy.
    best = client.get_metric_history(parent.info.run_id, "best_feasible_val_acc")
    assert metrics["final_val_acc"] == pytest.approx(max(m.value for m in best), abs=0)
    assert (work / "kfp-local" / "local_outputs").is_dir()


def test_gated_registration_sets_champion_and_retune_warm_starts_from_it(pipeline_runs):
    _, client, printed = pipeline_runs
    first, second = _parents(client)
    versions = sorted(
        client.search_model_versions("name='pipeline-test-model'"), key=lambda v: int(v.version)
    )
    assert [v.run_id for v in versions] == [first.info.run_id, second.info.run_id]
    assert all(v.tags["safety_gate"] == "passed" for v in versions)
    # The retune's challenger was compared with the champion on the same split and spec.
    decision = versions[1].tags["promotion_reason"]
    assert "champion v1" in decision, decision
    promoted = versions[1].tags["promoted"] == "true"
    champion = client.get_model_version_by_alias("pipeline-test-model", "champion")
    assert champion.version == versions[1 if promoted else 0].version
    # Issue: the run ended without its outcome; now it is printed at the end.
    assert f"MLflow run: {first.info.run_id}" in printed[0]
    assert "safety gate: passed" in printed[0]
    assert "registered: pipeline-test-model v1; now @champion" in printed[0]
    verdict = "now @champion" if promoted else "not promoted"
    assert f"registered: pipeline-test-model v2; {verdict}: {decision}" in printed[1]
    assert versions[1].description.startswith("# pipeline-test-model v2")
    assert first.data.tags["shieldtune.warm_start"] == "cold start"
    assert second.data.tags["shieldtune.warm_start"] == (
        "warm start from models:/pipeline-test-model@champion"
    )
    report = json.loads(versions[0].tags["test_metrics"])
    assert report["constraints_satisfied"] == 1.0


def test_missing_data_is_one_line_before_anything_is_launched(tmp_path, monkeypatch, capsys):
    """Issue: a missing data folder printed 206 lines with 4 tracebacks after 206 s of retries.
    The CLI now checks the task's data before it launches the pipeline."""
    monkeypatch.chdir(tmp_path)
    argv = ["pipeline", "run", "--local", "--set", "data.source=idx"]
    rc = main([*argv, "--set", "data.root=no-such-folder"])
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("shieldtune: error:")]
    assert len(errors) == 1 and "no-such-folder" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "kfp-local").exists()


def test_a_user_error_inside_the_pipeline_fails_check_inputs_once_and_nothing_runs_after(
    tmp_path, monkeypatch, capfd
):
    """The same error reaching the pipeline (e.g. a run started elsewhere) fails check_inputs
    at once: one error line, no retry, no later task."""
    from shieldtune.pipeline.local_run import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {"data": {"source": "idx", "root": "no-such-folder"}}
    with pytest.raises(RuntimeError, match="check-inputs"):
        run_local("tuning_pipeline", {"config_json": json.dumps(config)}, tmp_path / "kfp")
    out = capfd.readouterr()
    text = out.out + out.err
    assert text.count("shieldtune: error:") == 1, text
    assert "no-such-folder" in text and "Traceback" not in text
    assert "Executing task 'prepare-data'" not in text.replace("\x1b[96m", "").replace(
        "\x1b[0m", ""
    )


def test_no_feasible_schedule_fails_the_run_and_says_nothing_was_registered(
    tmp_path, monkeypatch, capsys
):
    """Issue: a pipeline that found no feasible schedule reported SUCCESS and "finished"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = tiny_cli_args(
        "safety.constraints=[fgsm_robust_acc >= 0.95]",
        "tracking.registered_model_name=infeasible-model",
        "tuner.episodes=1",
    )
    rc = main(["pipeline", "run", "--local", *argv])
    captured = capsys.readouterr()
    assert rc == 1
    assert "outcome: no feasible schedule" in captured.out
    assert "no model was trained or registered" in captured.out
    assert "no-feasible-schedule" in captured.err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = _parents(client)
    assert parent.data.tags["shieldtune.outcome"] == "no feasible schedule"
    assert client.search_registered_models("name='infeasible-model'") == []


def test_a_cluster_pod_without_an_mlflow_server_refuses_to_log_locally(monkeypatch):
    """Issue: without the Secret, tune logged to sqlite in the pod's /tmp, lost with the pod."""
    from shieldtune.config import config_from_dict
    from shieldtune.errors import ConfigError
    from shieldtune.pipeline.stages import require_cluster_tracking

    cfg = config_from_dict({})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="needs an MLflow server"):
        require_cluster_tracking(cfg.tracking)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")
    with pytest.raises(ConfigError, match="sqlite"):
        require_cluster_tracking(cfg.tracking)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    require_cluster_tracking(cfg.tracking)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    require_cluster_tracking(cfg.tracking)  # kfp.local and plain jobs may use the local store
