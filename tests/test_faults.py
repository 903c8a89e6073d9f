"""Fault injection: step pods disrupted on the real Kubernetes control plane (tests/cluster), a
real MLflow server restarted mid-run.

(Missing or corrupted data files are covered in test_data.py.)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from shieldtune.control.tuner import run_tuning
from shieldtune.tracking.tracker import readable

from .cluster.steps import Disruptor
from .conftest import tiny_cli_args
from .standins.mlflow_server import MlflowServer
from .test_k8s_executor import k8s_config, with_sections
from .test_tuner import read_jsonl

FAILURE_RATE = 0.2


@pytest.mark.cluster
def test_job_completes_when_a_fifth_of_step_pods_fail(tmp_path, step_cluster, tiny_data):
    """About every fifth step pod (seeded) is evicted through the Eviction API or has its
    process killed (exit code 137); the real Job controller fails those Jobs, the executor's
    retries absorb it, and no step is lost or run twice.

    Fresh-model steps (an episode's reset) are step Jobs too and are disrupted alike; their
    retries are not in ``steps.jsonl`` or ``summary.step_retries``, so the Jobs are counted
    from what the executor POSTed. A step's last allowed attempt is never disrupted, so the
    seed cannot make the job fail whatever order the pods start in."""
    rng = random.Random(7)
    retries = 3

    def flaky(pod, index: int) -> str | None:
        hit = rng.random() < FAILURE_RATE
        action = rng.choice(["kill", "evict"]) if hit else None
        attempt = int(pod.metadata.labels["batch.kubernetes.io/job-name"].rsplit("-", 1)[1])
        return action if attempt <= retries else None

    episodes, steps_per_episode, envs = 2, 3, 2
    cfg = with_sections(
        k8s_config(step_cluster, tmp_path),
        env={"steps_per_episode": steps_per_episode},
        tuner={"episodes": episodes, "num_envs": envs, "step_retries": retries},
    )
    with Disruptor(step_cluster, flaky) as disruptor:
        summary = run_tuning(cfg, data=tiny_data)
    step_cluster.wait_idle()
    assert disruptor.injected, f"the seed must inject at least one failure ({disruptor.errors})"
    steps = read_jsonl(Path(summary.output_dir) / "steps.jsonl")
    # Every step is accounted for: all trained once, in order.
    assert summary.steps_run == len(steps) == episodes * steps_per_episode
    assert sorted((r["episode"], r["step"]) for r in steps) == [
        (e, t) for e in range(episodes) for t in range(1, steps_per_episode + 1)
    ]
    assert summary.step_retries == sum(r["attempts"] - 1 for r in steps)
    # One Job per attempt: shieldtune-step-<step id>-<attempt>, attempts 1, 2, ... per step.
    attempts: dict[str, list[int]] = {}
    for job in step_cluster.created_jobs():
        step_id, attempt = job["metadata"]["name"].removeprefix("shieldtune-step-").split("-")
        attempts.setdefault(step_id, []).append(int(attempt))
    assert all(a == list(range(1, len(a) + 1)) for a in attempts.values()), attempts
    assert len(attempts) == summary.steps_run + episodes  # the steps and the resets
    # Every retry follows a disrupted Job; a disruption can come too late to fail its pod
    # (the step had just finished), so some disrupted Jobs may have succeeded.
    failed = {f"shieldtune-step-{s}-{n}" for s, a in attempts.items() for n in a[:-1]}
    assert failed and failed <= {job for job, _ in disruptor.injected}


def tune_command(runs: Path, http_retries: int) -> list[str]:
    """A tiny 8-step job (2 episodes x 4 steps) writing under ``runs``."""
    args = tiny_cli_args(
        "safety.constraints=['fgsm_robust_acc >= 0.1']",
        "env.steps_per_episode=4",
        "tuner.episodes=2",
        f"tuner.output_dir={json.dumps(str(runs))}",
        "tracking.log_model=false",
        f"tracking.http_retries={http_retries}",
    )
    return [sys.executable, "-m", "shieldtune.cli", "tune", *args]


def wait_for_first_checkpoint(proc: subprocess.Popen, runs: Path) -> None:
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/controller_state.pt")):
        assert proc.poll() is None, "the job ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def assert_every_step_logged_once(server: MlflowServer, out_dir: Path) -> None:
    """Each step record of the job is in its episode's MLflow run, once, at its step."""
    steps = read_jsonl(out_dir / "steps.jsonl")
    assert len(steps) == 8
    client = MlflowClient(server.uri)
    children = client.search_runs(
        [client.get_experiment_by_name("shieldtune").experiment_id],
        f"tags.mlflow.parentRunId = '{out_dir.name}'",
    )
    by_episode = {int(r.data.tags["episode"]): r.info.run_id for r in children}
    assert sorted(by_episode) == [0, 1]
    for key in ("val_acc", "reward", "cost", "learning_rate"):
        for episode, run_id in by_episode.items():
            logged = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            mine = [r for r in steps if r["episode"] == episode]
            assert sorted(logged) == [(r["step"], readable(r[key])) for r in mine]


@pytest.mark.integration
def test_mlflow_server_restarted_mid_run_loses_no_metric(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    runs = tmp_path / "runs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    proc = subprocess.Popen(tune_command(runs, http_retries=8), env=env, text=True)
    try:
        wait_for_first_checkpoint(proc, runs)
        server.stop()  # the job keeps training while its tracking server is down
        time.sleep(3)
        server.start()
        assert proc.wait(timeout=600) == 0
        [out_dir] = [p for p in runs.iterdir() if p.is_dir()]
        assert_every_step_logged_once(server, out_dir)
    finally:
        proc.kill()
        server.stop()


def test_unreachable_mlflow_at_start_is_one_line_and_starts_nothing(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # nothing listens there
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shieldtune.cli",
            "tune",
            *tiny_cli_args("tracking.http_retries=0", f"tuner.output_dir={tmp_path / 'runs'}"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("shieldtune: error: MLflow at http://127.0.0.1:9 failed")
    assert "MLFLOW_TRACKING_URI" in line and not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_mlflow_down_past_the_retries_stops_the_job_and_resume_loses_nothing(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    runs = tmp_path / "runs"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    cmd = tune_command(runs, http_retries=1)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_checkpoint(proc, runs)
        server.stop()
        assert proc.wait(timeout=300) == 2
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert "Traceback" not in err and "shieldtune: error: MLflow at" in err
    [out_dir] = [p for p in runs.iterdir() if p.is_dir()]
    assert f"shieldtune tune --resume {out_dir.name}" in err
    server.start()
    try:
        resumed = subprocess.run(
            [*cmd, "--resume", out_dir.name], env=env, capture_output=True, text=True, timeout=600
        )
        assert resumed.returncode == 0, resumed.stderr
        assert_every_step_logged_once(server, out_dir)
    finally:
        server.stop()
