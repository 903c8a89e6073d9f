"""The proof that a user's plug-in works: ``examples/custom_task`` (an installed package outside
``src/``, with its own model, its own Dataset class and its own safety metric) tuned end to end
through ``shieldtune tune``, the ``process`` executor and the local KFP pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from shieldtune.cli import main
from shieldtune.config import load_config
from shieldtune.control.tuner import run_tuning

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "custom_task" / "digits.yaml"
SMALL = [
    "data.train_size=400",
    "data.val_size=150",
    "data.test_size=150",
    "training.segment_samples=256",
    "env.steps_per_episode=2",
    "tuner.episodes=2",
    "tuner.progress=false",
    "safety.pgd_steps=2",
    "safety.pgd_restarts=1",
]


def _sets(*extra: str) -> list[str]:
    return [arg for kv in (*SMALL, *extra) for arg in ("--set", kv)]


def test_the_example_is_an_installed_package_outside_the_source_tree():
    import digits_task

    import shieldtune

    where = Path(digits_task.__file__).resolve()
    assert where.parts[-5:-2] == ("examples", "custom_task", "src")  # the example's own tree
    # Not inside shieldtune's package (whatever the folder the repository was cloned into:
    # git names it "shieldtune" by default).
    package = Path(shieldtune.__file__).resolve().parent
    assert not where.is_relative_to(package)


def test_shieldtune_tune_tunes_the_plugin_and_reports_its_own_metric(tmp_path):
    # Loose enough that the tiny job finds a feasible model, so the final report runs.
    spec = "safety.constraints=[fgsm_robust_acc >= 0.0, confident_errors <= 1.0]"
    out = subprocess.run(
        [sys.executable, "-m", "shieldtune.cli", "tune", "--config", str(CONFIG), *_sets(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(next(tmp_path.glob("shieldtune-runs/*/summary.json")).read_text())
    assert summary["constraints"] == ["fgsm_robust_acc >= 0.0", "confident_errors <= 1.0"]
    assert 0.0 < summary["test_metrics"]["ece"] < 1.0
    lines = (tmp_path / summary["output_dir"] / "steps.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    assert len(steps) == 4 and all("label_smoothing" in r for r in steps)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["task.entry_point"] == "digits_task:make_task"
    assert "test_ece" in run.data.metrics
    assert summary["registered_model"]["name"] == "shieldtune-digits-cnn"


def test_process_workers_rebuild_the_plugin_and_match_the_local_run(tmp_path):
    def job(folder: str, *extra: str):
        cfg = load_config(
            CONFIG,
            [*SMALL, "tracking.enabled=false", f"tuner.output_dir={tmp_path / folder}", *extra],
        )
        return run_tuning(cfg)

    local = job("local", "tuner.num_envs=2")
    pooled = job("pool", "tuner.num_envs=2", "tuner.executor=process", "tuner.worker_threads=1")
    assert (pooled.executor, pooled.steps_run) == ("process", 4)

    def records(summary) -> list[dict]:
        lines = (Path(summary.output_dir) / "steps.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")}
            for line in lines
        ]

    assert records(pooled) == records(local)


@pytest.mark.integration
def test_the_local_pipeline_tunes_the_plugin_named_as_a_pipeline_parameter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The config names mnist-cnn; the pipeline's task parameter points it at the plug-in.
    argv = ["pipeline", "run", "--local", *_sets("tracking.registered_model_name=plugin-model")]
    argv += ["--set", "safety.constraints=[fgsm_robust_acc >= 0.0]"]
    from shieldtune.pipeline import cli as pipeline_cli

    real = pipeline_cli.pipeline_params

    def with_plugin(cfg, pipeline):
        params = real(cfg, pipeline)
        params["task_entry_point"] = "digits_task:make_task"
        params["task_kwargs_json"] = json.dumps({"channels": 4})
        return params

    monkeypatch.setattr(pipeline_cli, "pipeline_params", with_plugin)
    assert main(argv) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("shieldtune")
    (parent,) = [
        r
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert parent.data.params["task.entry_point"] == "digits_task:make_task"
    assert parent.data.params["task.kwargs"] == "{channels: 4}"
    assert "test_ece" in parent.data.metrics and "final_ece" in parent.data.metrics
    (version,) = client.search_model_versions("name='plugin-model'")
    assert version.tags["safety_gate"] in ("passed", "failed")
