"""Crash-safe tuning: SIGKILL at random steps, resume, and end exactly like an unbroken run."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from shieldtune.cli import main

from .conftest import tiny_cli_args, tiny_dict

#: Fields that measure time, which no two runs share.
TIMINGS = ("train_seconds", "eval_seconds", "wall_seconds", "controller_seconds")
KILLS = 3


def job_args(runs: Path, *extra: str) -> list[str]:
    return tiny_cli_args(
        "safety.constraints=['fgsm_robust_acc >= 0.1']",
        "env.steps_per_episode=3",
        "tuner.episodes=3",
        "tuner.num_envs=2",
        f"tuner.output_dir={json.dumps(str(runs))}",
        "tracking.log_model=false",
        *extra,
    )


def start(args: list[str], store: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    return subprocess.Popen(
        [sys.executable, "-m", "shieldtune.cli", "tune", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def state_file(runs: Path) -> Path | None:
    found = list(runs.glob("*/controller_state.pt"))
    return found[0] if found else None


def kill_after_checkpoints(proc: subprocess.Popen, runs: Path, n: int, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s after its n-th new checkpoint; False if it finished first."""
    seen, last = 0, None
    while proc.poll() is None:
        path = state_file(runs)
        stamp = path.stat().st_mtime_ns if path and path.exists() else None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
            if seen >= n:
                time.sleep(delay)
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return True
        time.sleep(0.02)
    return False


def metric_history(store: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Every metric of the job's runs as (run, key) -> [(step, value)], runs named by role."""
    client = MlflowClient(f"sqlite:///{store}")
    [exp] = [e for e in client.search_experiments() if e.name == "shieldtune"]
    history = {}
    for run in client.search_runs([exp.experiment_id]):
        role = f"episode-{run.data.tags['episode']}" if "episode" in run.data.tags else "parent"
        for key in run.data.metrics:
            if key in TIMINGS:
                continue
            points = client.get_metric_history(run.info.run_id, key)
            history[(role, key)] = sorted((m.step, m.value) for m in points)
    return history


def comparable(runs: Path) -> tuple[dict, list[dict]]:
    [out] = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "wall_seconds",
        "controller_seconds",
        "output_dir",
        "mlflow_run_id",
        "tracking_uri",
    ):
        summary.pop(key)
    summary["best"].pop("checkpoint")
    steps = [
        {k: v for k, v in json.loads(line).items() if k not in TIMINGS}
        for line in (out / "steps.jsonl").read_text().splitlines()
    ]
    return summary, steps


@pytest.mark.integration
def test_job_killed_at_random_steps_resumes_to_the_same_result_and_metrics(tmp_path):
    whole_runs, broken_runs = tmp_path / "whole", tmp_path / "broken"
    whole = start(job_args(whole_runs), tmp_path / "whole.db")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    rng = random.Random(1234)
    args = job_args(broken_runs)
    proc = start(args, tmp_path / "broken.db")
    kills = 0
    for _ in range(KILLS):
        if not kill_after_checkpoints(proc, broken_runs, rng.randint(1, 2), rng.random() * 1.5):
            break
        kills += 1
        run_id = state_file(broken_runs).parent.name
        proc = start([*args, "--resume", run_id], tmp_path / "broken.db")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert kills >= 2, "the job finished before it could be killed twice; make it longer"

    assert comparable(broken_runs) == comparable(whole_runs)
    history = metric_history(tmp_path / "broken.db")
    assert history == metric_history(tmp_path / "whole.db")
    for (run, key), points in history.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{run} {key} logged a step twice: {steps}"


def test_resume_without_saved_state_is_a_one_line_error(tmp_path, capsys):
    code = main(["tune", "--set", f"tuner.output_dir={tmp_path}", "--resume", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "no saved controller state for run nope" in err
    assert err.count("\n") == 1


def test_tampered_controller_state_never_runs_code(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "controller_state.pt").write_bytes(pickle.dumps({"kind": Payload()}))
    code = main(["tune", "--set", f"tuner.output_dir={tmp_path}", "--resume", "run1"])
    out = capsys.readouterr()
    assert code == 2 and "code ran" not in out.out
    assert "corrupted or not a safe weights-only file" in out.err and out.err.count("\n") == 1


TUNE_TASK = """
import json, sys
from shieldtune.job import job_from_dict
from shieldtune.pipeline import stages
from shieldtune.tasks.mnist_data import load_mnist

job = job_from_dict(json.loads(sys.argv[1]))
summary = stages.tune(job, load_mnist(job.config.data))
print("SUMMARY", json.dumps({k: summary[k] for k in ("mlflow_run_id", "steps_run", "warm_start")}))
"""


@pytest.mark.integration
def test_retried_kfp_tune_task_resumes_the_attempt_that_died(tmp_path):
    """A KFP retry runs on a fresh pod: the state comes back from the MLflow run, found by
    the KFP run id, not from the dead pod's disk."""
    config = tiny_dict(
        safety={"constraints": ["fgsm_robust_acc >= 0.1"]},
        env={"steps_per_episode": 3},
        tuner={"episodes": 2, "output_dir": "runs", "progress": False},
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SHIELDTUNE_KFP_RUN_ID": "kfp-run-42",
    }

    def attempt(pod: str) -> subprocess.Popen:
        (tmp_path / pod).mkdir()
        return subprocess.Popen(
            [sys.executable, "-c", TUNE_TASK, json.dumps(config)],
            cwd=tmp_path / pod,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = attempt("pod-1")
    assert kill_after_checkpoints(first, tmp_path / "pod-1" / "runs", 2, 0.0)
    died_in = state_file(tmp_path / "pod-1" / "runs").parent.name  # its MLflow run id
    second = attempt("pod-2")
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    assert summary["mlflow_run_id"] == died_in
    assert summary["steps_run"] == 6
    assert "resumed after step" in summary["warm_start"]


def test_resuming_a_finished_run_says_so_and_does_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = "safety.constraints=[fgsm_robust_acc >= 0.05]"  # a job that finds a model: exit 0
    assert main(["tune", *tiny_cli_args("tracking.enabled=false", "tuner.episodes=1", spec)]) == 0
    run = next(tmp_path.glob("shieldtune-runs/*")).name
    before = (tmp_path / "shieldtune-runs" / run / "summary.json").read_text()
    capsys.readouterr()
    assert main(["tune", "--resume", run]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "shieldtune-runs" / run / "summary.json").read_text() == before


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(tmp_path):
    from shieldtune.runlock import RunLock, RunLockedError

    held = RunLock(tmp_path, "run1").acquire()
    try:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from shieldtune.runlock import RunLock;"
                f"RunLock(Path({str(tmp_path)!r}), 'run1').acquire()",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert child.returncode != 0 and "RunLockedError" in child.stderr
        assert f"already running in process {os.getpid()}" in child.stderr
    finally:
        held.release()
    RunLock(tmp_path, "run1").acquire().release()  # free again once the holder is gone
    with pytest.raises(RunLockedError):
        first = RunLock(tmp_path, "run1").acquire()
        try:
            RunLock(tmp_path, "run1").acquire()
        finally:
            first.release()


def test_a_state_file_with_a_flipped_byte_or_missing_keys_is_one_line(tmp_path, capsys):
    from shieldtune.checkpoint import atomic_save
    from shieldtune.control.job_state import CONTROLLER_KIND, STATE_FILE

    run = tmp_path / "run1"
    atomic_save({"kind": CONTROLLER_KIND}, run / STATE_FILE)  # well-formed, nothing in it
    assert main(["tune", "--set", f"tuner.output_dir={tmp_path}", "--resume", "run1"]) == 2
    err = capsys.readouterr().err
    assert "incomplete shieldtune.controller/v2 file" in err and err.count("\n") == 1
    data = bytearray((run / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (run / STATE_FILE).write_bytes(bytes(data))
    assert main(["tune", "--set", f"tuner.output_dir={tmp_path}", "--resume", "run1"]) == 2
    err = capsys.readouterr().err
    assert "does not match its checksum" in err and err.count("\n") == 1


def test_an_unwritable_output_dir_is_one_line_before_any_mlflow_run(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["tune", *tiny_cli_args(f"tuner.output_dir={blocker}")]
    assert main([*argv, "--set", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "cannot hold the run" in err and "Traceback" not in err and err.count("\n") == 1


def test_a_full_disk_is_one_line_with_the_resume_command_and_the_mlflow_run_failed(
    tmp_path, capsys, monkeypatch
):
    import errno

    from shieldtune import checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real, writes = checkpoint._write, []

    def disk_fills_up(data, path):
        writes.append(path)
        if len(writes) > 4:  # the first state files fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(data, path)

    monkeypatch.setattr(checkpoint, "_write", disk_fills_up)
    assert main(["tune", *tiny_cli_args("tracking.log_model=false")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert "shieldtune tune --resume" in err[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("shieldtune").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
