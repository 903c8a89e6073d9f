"""Faults of issue 21 around plug-ins, workers and the model registry: each test is named after
the behaviour it pins, and failed on the code before its fix.

* bad plug-in data (NaN features, NaN logits, labels out of range) is one line at job start,
  in ``tune`` and in ``task-check`` alike (B4), and in ``pipeline run --local`` (B8);
* a first segment that diverges is unsafe *before* the first safe state (B5);
* process workers die with a SIGKILLed controller (B6);
* ``evaluate --model-uri`` honours ``tracking.http_retries`` (B7);
* a plug-in that calls ``sys.exit`` at import is one line (B12);
* one custom-metric contract: an ``Estimate`` (certifiable) or a float (reported only) (A6);
* the registered model ships its input preprocessing (A6).
"""

from __future__ import annotations

import http.server
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shieldtune.cli import main
from shieldtune.config import DataConfig, TaskConfig, config_from_dict

from .conftest import tiny_cli_args, tiny_dict
from .scripted import ScriptedExecutor, metrics

REPO = Path(__file__).resolve().parents[1]
PLUGINS = "tests.faulty_plugins"
#: A small job on the synthetic plug-ins (two segments, tracking off).
SMALL = [
    "--set",
    "tracking.enabled=false",
    "--set",
    "tuner.progress=false",
    "--set",
    "tuner.episodes=1",
    "--set",
    "env.steps_per_episode=2",
    "--set",
    "training.segment_samples=64",
    "--set",
    "safety.constraints=[val_acc >= 0.0]",
    "--set",
    "safety.eval_samples=30",
]


def _env() -> dict[str, str]:
    """A subprocess environment in which ``tests.*`` plug-ins import (as for a user's package
    on the path) and torch keeps to one thread on the loaded 2-core machine."""
    # Without MLflow HTTP settings an earlier in-process command of this suite may have left
    # (they take precedence over tracking.http_retries, as a user's own would).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(args: list[str], cwd: Path, timeout: float = 600, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "shieldtune.cli", *args],
        cwd=cwd,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_line(err: str) -> str:
    """The single ``shieldtune: error:`` line ``err`` must consist of (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("shieldtune: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI in-process: it must refuse with exit 2 and one error line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    return _one_line(err)


def _tune(plugin: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "tune",
        "--set",
        f"task.entry_point={PLUGINS}:{plugin}",
        "--set",
        f"tuner.output_dir={tmp_path / 'runs'}",
        *SMALL,
        *extra,
    ]


# ------------------------------------------------------------ B4: bad data at job start


@pytest.mark.parametrize(
    ("plugin", "fragments"),
    [
        ("nan_val_feature", ("val split", "sample 33", "not finite")),
        ("label_out_of_range", ("train split", "label 3", "sample 40", "[0, 2]")),
        ("negative_val_label", ("val split", "label -1", "sample 17")),
        ("streamed_label_out_of_range", ("train split", "label 3", "sample 40")),
        ("nan_logits", ("model", "not finite", "build_model")),
    ],
)
def test_bad_plugin_data_or_logits_stop_tune_at_job_start_with_one_line(
    plugin, fragments, tmp_path, capsys
):
    """NaN features or logits gave rc 0 and "relax safety.constraints"; a training label out
    of range an IndexError traceback. Now: one line naming the split, the problem and the fix,
    before a run folder exists."""
    line = _refused(_tune(plugin, tmp_path), capsys)
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "runs").exists()


def test_task_check_refuses_a_validation_label_of_minus_one(capsys):
    line = _refused(["task-check", "--task", f"{PLUGINS}:negative_val_label"], capsys)
    assert "val split" in line and "label -1" in line


def test_task_check_blames_the_model_not_the_loss_for_nan_logits(capsys):
    line = _refused(["task-check", "--task", f"{PLUGINS}:nan_logits"], capsys)
    assert "loss()" not in line
    assert "model" in line and "not finite" in line


def test_the_data_checks_leave_a_valid_job_s_random_state_as_it_was():
    """The new reads (samples of a streamed split, forward passes, the metric probe) run
    under a forked RNG, so a valid job trains exactly as before."""
    from shieldtune.job import job_from_dict

    job = job_from_dict(
        {
            "task": {"entry_point": f"{PLUGINS}:estimate_metric"},
            "safety": {"constraints": ["error_share <= 1.0"]},
        }
    )
    torch.manual_seed(7)
    before = torch.get_rng_state()
    job.load_data()
    assert torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------ B5: divergence before safety


def test_a_first_segment_that_diverges_counts_before_the_first_safe_state(tmp_path, tiny_data):
    """The summary said "1 after [the first safe state]" though no state was ever safe."""
    from shieldtune.control.tuner import run_tuning

    cfg = config_from_dict(
        tiny_dict(
            tracking={"enabled": False},
            safety={"constraints": ["fgsm_robust_acc >= 0.5"]},
            tuner={"episodes": 1, "output_dir": str(tmp_path), "test_report": False},
            env={"steps_per_episode": 3},
        )
    )
    diverged = {"diverged": True, "metrics": {"train_loss": math.nan}}
    s = run_tuning(cfg, data=tiny_data, executor=ScriptedExecutor([metrics(0.1, 0.05), diverged]))
    assert (s.steps_run, s.diverged_steps) == (1, 1)
    assert (s.unsafe_segments, s.warmup_steps, s.violations) == (1, 1, 0)
    (record,) = [json.loads(x) for x in (Path(s.output_dir) / "steps.jsonl").open()]
    assert record["warmup"] and not record["violation"] and not record["accepted"]


# ------------------------------------------------------------ B6: workers die with the parent


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_process_workers_die_with_their_sigkilled_controller(tmp_path):
    """The spawn workers (about 1 GB each on MNIST) were orphaned, blocked on a pipe forever."""
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "shieldtune.cli", "tune"]
    argv += tiny_cli_args(
        "tracking.enabled=false",
        "tuner.executor=process",
        "tuner.num_envs=2",
        "tuner.worker_threads=1",
        "tuner.episodes=200",
        f"tuner.output_dir={out}",
    )
    log = (tmp_path / "tune.log").open("w")
    job = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        # A saved controller state means a whole round ran: the workers are up and serving.
        deadline = time.monotonic() + 900
        while not list(out.rglob("controller_state.pt")):
            assert job.poll() is None, (tmp_path / "tune.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job saved no state in 15 minutes"
            time.sleep(0.5)
        workers = _children(job.pid)
        assert len(workers) >= 2, workers  # two workers (and multiprocessing's tracker)
        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 180  # generous: the machine is loaded
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their controller"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        for pid in workers:  # what this test started, by pid, should it have failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


# ------------------------------------------------------------ B7: evaluate --model-uri retries


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_evaluate_model_uri_against_a_closed_port_honours_http_retries(tmp_path):
    """It took 251 s (MLflow's own 7 retries with backoff): --set tracking.http_retries=0 was
    ignored there. With no retries it is one line at once (the limit only stops a hang)."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    args = ["evaluate", "--model-uri", "models:/m@champion", "--set", "tracking.http_retries=0"]
    out = _cli(args, tmp_path, timeout=150, MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "127.0.0.1" in _one_line(out.stderr)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request with 503 and counts them."""

    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def test_evaluate_model_uri_makes_exactly_the_configured_retries(tmp_path):
    """tracking.http_retries=1 means two requests in all (the counting server proves it)."""
    _Unavailable.requests = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        args = ["evaluate", "--model-uri", "models:/m@champion"]
        args += ["--set", "tracking.http_retries=1", "--set", "tracking.http_backoff_factor=0"]
        out = _cli(args, tmp_path, timeout=150, MLFLOW_TRACKING_URI=uri)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 2, out.stderr[-2000:]
    _one_line(out.stderr)
    assert _Unavailable.requests == 2


# ------------------------------------------------------------ B8: the local pipeline


@pytest.mark.integration
def test_local_pipeline_with_out_of_range_labels_stops_once_with_its_one_line(tmp_path):
    """It ran tune three times (three tracebacks) and then pointed at a one-line error that
    was never printed."""
    args = ["pipeline", "run", "--local", "--workdir", str(tmp_path / "kfp")]
    args += ["--set", f"task.entry_point={PLUGINS}:label_out_of_range", *SMALL[2:]]
    out = _cli(args, tmp_path, timeout=900)
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_line(out.stderr)
    assert "train split" in line and "label 3" in line
    assert "IndexError" not in out.stdout + out.stderr


def test_the_local_runner_repeats_the_failed_task_s_one_line_error_or_says_there_was_none():
    """The runner's closing message says what happened: the task that failed, its one-line
    error when it printed one, and otherwise that it failed unexpectedly (after retries)."""
    from shieldtune.pipeline.local_run import failure_message

    kfp = "Pipeline 'tuning-pipeline' finished with status FAILURE. Inner task failed: '{}'."
    user = failure_message(kfp.format("check-inputs"), ["task 'x': the val split has ..."])
    assert "check-inputs" in user and "the val split has" in user and "not retried" in user
    crash = failure_message(kfp.format("tune"), [])
    assert "tune" in crash and "one-line error" not in crash and "traceback" in crash
    assert "retried" in crash


# ------------------------------------------------------------ B12: sys.exit at import


def test_a_plugin_that_calls_sys_exit_at_import_is_one_line(tmp_path):
    """It exited silently with code 3."""
    out = _cli(["tune", "--set", "task.entry_point=tests.plugin_exits:make_task"], tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    line = _one_line(out.stderr)
    assert "tests.plugin_exits" in line and "sys.exit(3)" in line


# ------------------------------------------------------------ A6: one custom-metric contract


def test_estimate_and_a_proportion_helper_are_part_of_the_task_contract():
    from shieldtune import tasks
    from shieldtune.safety.stats import Estimate, clopper_pearson

    assert tasks.Estimate is Estimate
    est = tasks.proportion_estimate(3, 44, 0.025)
    assert (est.value, est.n) == (3 / 44, 44)
    assert (est.low, est.high) == pytest.approx(clopper_pearson(3, 44, 0.025))
    assert est.low < est.value < est.high  # 44 samples: real uncertainty, never zero width


def test_a_constraint_on_a_float_metric_is_refused_at_job_start(tmp_path, capsys):
    """A float carries no uncertainty, so such a constraint can never be certified."""
    argv = _tune("float_metric", tmp_path, "--set", "safety.constraints=[error_share <= 0.9]")
    line = _refused(argv, capsys)
    assert "error_share" in line and "Estimate" in line
    assert not (tmp_path / "runs").exists()


def test_task_check_accepts_an_estimate_metric_and_prints_its_bounds(capsys):
    assert main(["task-check", "--task", f"{PLUGINS}:estimate_metric"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "metric error_share" in x]
    low, high = (float(v) for v in line.split("[")[1].split("]")[0].split(","))
    assert 0.0 <= low < high <= 1.0


def test_task_check_accepts_a_float_metric_and_says_it_is_never_certified(capsys):
    assert main(["task-check", "--task", f"{PLUGINS}:float_metric"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "metric error_share" in x]
    assert "never certified" in line and "[" not in line


def _suite_metrics(plugin: str, constraints: list[str]) -> tuple[dict, list]:
    from shieldtune.job import job_from_dict
    from shieldtune.safety.suite import MetricSuite
    from shieldtune.tasks.contract import build_model

    job = job_from_dict(
        {"task": {"entry_point": f"{PLUGINS}:{plugin}"}, "safety": {"constraints": constraints}}
    )
    seen = []
    metric = job.task.metrics[0]
    spy = type(metric)(metric.name, metric.description, lambda s: seen.append(s) or metric.fn(s))
    job.task.metrics = (spy,)
    try:
        data = job.task.load_data(job.config.data)
        suite = MetricSuite(job.task, job.config.safety, job.constraints, torch.device("cpu"))
        model = build_model(job.task, 0, torch.device("cpu"))
        return suite.step_metrics(model, data, 0), seen
    finally:
        job.task.metrics = (metric,)


def test_a_float_metric_is_reported_without_bounds_never_as_certified():
    """It was shown as "[0.9790, 0.9790] certified": zero-width bounds on 44 samples."""
    from shieldtune.safety.report import constraint_rows
    from shieldtune.safety.spec import parse_constraints

    out, _ = _suite_metrics("float_metric", ["val_acc >= 0.0"])
    assert "error_share" in out
    assert "error_share_low" not in out and "error_share_high" not in out
    (row,) = constraint_rows(
        parse_constraints(["error_share <= 1.0"], {"error_share": ""}), out, split="val"
    )
    assert row[3] != "certified"


def test_a_metric_sees_the_level_its_bounds_must_hold_at_and_its_estimate_decides():
    out, seen = _suite_metrics("estimate_metric", ["error_share <= 1.0", "val_acc >= 0.0"])
    # Two constraints share 1 - confidence (0.05): each bound holds at 0.025, like accuracy's.
    assert seen[0].alpha == pytest.approx(0.025)
    assert out["error_share_low"] < out["error_share"] < out["error_share_high"]
    assert out["certified"] == 1.0


# ------------------------------------------------------------ A6: preprocessing ships


def _raw_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def test_builtin_tabular_and_speech_tasks_declare_their_input_transform():
    """Their models expect standardised inputs; the transform that makes them is declared with
    the data, and maps raw features to exactly the tensors the splits hold."""
    from shieldtune.tasks.preprocessing import load_preprocessing
    from shieldtune.tasks.registry import make_task
    from shieldtune.tasks.splits import seeded_split, split_sizes
    from shieldtune.tasks.tabular import DEFAULT_SIZES

    data = make_task(TaskConfig("breast-cancer", {})).load_data(DataConfig())
    x, _ = _raw_breast_cancer()
    rng = np.random.default_rng(DataConfig().split_seed)
    idx = seeded_split(len(x), split_sizes(DataConfig(), DEFAULT_SIZES), rng)
    again = load_preprocessing(json.loads(json.dumps(data.transform.to_dict())))
    assert torch.equal(again(x[idx[2]]), data.test.x)
    speech = make_task(TaskConfig("japanese-vowels", {})).load_data(DataConfig())
    from shieldtune.tasks.speech import load_raw_utterances

    series, _ = load_raw_utterances()
    assert len({s.shape[1] for s in series}) > 1  # raw utterances differ in length
    idx = seeded_split(len(series), (384, 128, 128), np.random.default_rng(DataConfig().split_seed))
    back = load_preprocessing(speech.transform.to_dict())
    assert torch.equal(back([series[i] for i in idx[2]]), speech.test.x)


def test_the_registered_model_ships_its_preprocessing_so_serving_needs_no_load_data(
    tmp_path, monkeypatch
):
    """The registered model expected standardised inputs but came without the transform."""
    import mlflow

    from shieldtune.control.tuner import run_tuning
    from shieldtune.job import load_checkpoint
    from shieldtune.tasks.preprocessing import PREPROCESSING_FILE, load_preprocessing

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_from_dict(
        {
            "task": {"entry_point": "breast-cancer", "kwargs": {"model": "linear"}},
            "training": {"segment_samples": 128},
            "safety": {"constraints": ["val_acc >= 0.5"], "pgd_steps": 2, "pgd_restarts": 1},
            "env": {"steps_per_episode": 2},
            "tuner": {"episodes": 1, "progress": False, "output_dir": str(tmp_path / "runs")},
            "tracking": {"registered_model_name": "bc-preprocessing"},
        }
    )
    summary = run_tuning(cfg)
    assert summary.registered_model is not None, summary.stop_reason
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served = Path(mlflow.artifacts.download_artifacts("models:/bc-preprocessing/1"))
    (spec,) = served.rglob(PREPROCESSING_FILE)
    transform = load_preprocessing(json.loads(spec.read_text()))
    (checkpoint,) = served.rglob("best_model.pt")  # the weights and the task's name only
    model, _, _ = load_checkpoint(checkpoint)
    x, y = _raw_breast_cancer()
    with torch.no_grad():
        acc = float((model(transform(x)).argmax(1).numpy() == y).mean())
    assert acc > 0.8  # raw features in, sensible predictions out
