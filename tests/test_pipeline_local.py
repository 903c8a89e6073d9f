"""The whole pipeline end to end through kfp.local (real KFP local runner, real artifacts).

Cold start (`tuning_pipeline`), then the scheduled-retuning path
(`retune_pipeline`) warm-starting from the champion the first run registered.
Both log into the embedded default MLflow store of the working folder.
"""

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
    try:
        assert main(["pipeline", "run", "--local", *sets()]) == 0
        assert main(["pipeline", "run", "--local", "--pipeline", "retune_pipeline", *sets()]) == 0
        yield work, MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    finally:
        mp.undo()


def _parents(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("shieldtune")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def test_pipeline_logs_every_stage_into_one_parent_run_with_episode_children(pipeline_runs):
    work, client = pipeline_runs
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
    _, client = pipeline_runs
    first, second = _parents(client)
    versions = sorted(
        client.search_model_versions("name='pipeline-test-model'"), key=lambda v: int(v.version)
    )
    assert [v.run_id for v in versions] == [first.info.run_id, second.info.run_id]
    assert all(v.tags["safety_gate"] == "passed" for v in versions)
    champion = client.get_model_version_by_alias("pipeline-test-model", "champion")
    assert champion.version == versions[-1].version
    assert first.data.tags["shieldtune.warm_start"] == "cold start"
    assert second.data.tags["shieldtune.warm_start"] == (
        "warm start from models:/pipeline-test-model@champion"
    )
    report = json.loads(versions[0].tags["test_metrics"])
    assert report["constraints_satisfied"] == 1.0
