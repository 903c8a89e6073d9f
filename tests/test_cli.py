"""The command line: tune, evaluate, env-check, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shieldtune.cli import main

from .conftest import tiny_cli_args


def sets(*extra: str) -> list[str]:
    return tiny_cli_args(
        "env.steps_per_episode=2",
        "tuner.episodes=1",
        "safety.constraints=[fgsm_robust_acc >= 0.1]",
        *extra,
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shieldtune.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_tune_then_evaluate_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", *sets("tracking.enabled=false")]) == 0
    out = capsys.readouterr().out
    assert "best certified-safe state" in out and "safety gate" in out
    ckpt = next(tmp_path.glob("shieldtune-runs/*/best_model.pt"))
    summary = json.loads((ckpt.parent / "summary.json").read_text())
    # Without --config, evaluate reuses the job's own config (same model, same splits).
    code = main(["evaluate", "--checkpoint", str(ckpt), "--output", "report.json"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == (0 if report["constraints_satisfied"] else 1)
    assert report == summary["test_metrics"]
    assert {
        "test_acc",
        "fgsm_robust_acc",
        "pgd_robust_acc",
        "fgsm_pgd_gap",
        "mia_advantage",
        "mia_tpr_at_1fpr",
    } <= set(report)
    # Readable: each constraint with its value, bounds and verdict, and the gate.
    printed = capsys.readouterr().out
    assert "fgsm_robust_acc >= 0.1" in printed and "certified" in printed
    assert "safety gate" in printed and "{" not in printed


def test_version_flag_prints_the_version(capsys):
    import shieldtune

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"shieldtune {shieldtune.__version__}"


def test_tune_with_default_tracking_uses_a_local_sqlite_store_and_says_how_to_browse(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["tune", *sets()]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # Issue: the final report and registration (about a minute) printed nothing meanwhile.
    assert "evaluating the best certified-safe checkpoint on the 300-sample test" in captured.err
    assert "comparing it with the current champion" in captured.err
    assert (tmp_path / "mlflow.db").is_file()
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in out
    assert "mlflow ui --backend-store-uri" in out


def test_env_check_passes(tmp_path, capsys):
    assert main(["env-check", *sets()]) == 0
    captured = capsys.readouterr()
    assert "passes gymnasium's check_env" in captured.out
    assert "every step trains and attacks the model" in captured.err  # progress meanwhile


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["tune", "--set", "tuner.episodes=-3"], "tuner.episodes"),
        (["tune", "--config", "missing.yaml"], "does not exist"),
        (["tune", "--set", "safety.constraints=[fgsm_robust_acc > 0.5]"], "safety.constraints[0]"),
        (["tune", "--set", "data.source=idx"], "data.root"),
        (["evaluate", "--checkpoint", "nope.pt"], "does not exist"),
        (["evaluate", "--model-uri", "runs:/abc/model"], "models:/NAME@ALIAS"),
    ],
)
def test_bad_input_prints_one_line_error_and_no_traceback(tmp_path, args, fragment):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shieldtune: error:") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_tampered_checkpoint_is_refused_with_one_line(tmp_path):
    bad = tmp_path / "best_model.pt"
    bad.write_bytes(b"\x80\x04not really a checkpoint")
    result = run_cli("evaluate", "--checkpoint", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "corrupted or not a safe weights-only file" in result.stderr


def test_pretrain_runs_proxy_jobs_and_writes_a_policy_a_job_can_start_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "proxy.yaml"
    config.write_text("tracking: {enabled: false}\n")
    policy = tmp_path / "policy.pt"
    argv = ["pretrain", "--config", str(config), "--runs", "2", "--out", str(policy)]
    assert main([*argv, *sets(), "--thresholds", "0.1", "0.5"]) == 0
    record = json.loads(policy.with_suffix(".json").read_text())
    assert len(record["runs"]) == 2 and {r["threshold"] for r in record["runs"]} <= {0.1, 0.5}
    out = run_cli(
        "tune", *sets("tracking.enabled=false", f"tuner.warm_start={policy}"), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-1000:]
    summary = json.loads(next(tmp_path.glob("shieldtune-runs/*/summary.json")).read_text())
    assert summary["warm_start"] == f"warm start from {policy}"


def test_evaluate_by_model_uri_without_a_store_here_names_what_is_missing_and_creates_nothing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["evaluate", "--model-uri", "models:/shieldtune-mnist-cnn@champion"]) == 2
    err = capsys.readouterr().err
    assert "mlflow.db does not exist" in err and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_credentials_in_the_tracking_uri_are_redacted_wherever_they_are_shown():
    from shieldtune.tracking.tracker import TrackingError, _retrying, redact, ui_hint

    uri = "http://alice:CANARY-s3cret@mlflow.example.com:5000"
    assert redact(uri) == "http://alice:***@mlflow.example.com:5000"
    assert "CANARY" not in ui_hint(uri)

    def fails():
        raise OSError(f"connection to {uri} refused")

    with pytest.raises(TrackingError) as err:
        _retrying(fails, uri)
    assert "CANARY" not in str(err.value) and "alice:***@" in str(err.value)


def test_a_config_file_above_a_megabyte_is_refused_before_it_is_parsed(tmp_path, capsys):
    huge = tmp_path / "huge.yaml"
    huge.write_text("safety:\n  constraints:\n" + "    - fgsm_robust_acc >= 0.5\n" * 60_000)
    assert main(["tune", "--config", str(huge)]) == 2
    assert "is at most 1000000 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "a/b/../c", "x" * 300])
def test_registered_model_names_that_mlflow_refuses_are_refused_at_config_time(name, capsys):
    assert main(["tune", "--set", f"tracking.registered_model_name={name!r}"]) == 2
    assert "tracking.registered_model_name" in capsys.readouterr().err


def test_http_retries_stay_within_what_mlflow_accepts(capsys):
    assert main(["tune", "--set", "tracking.http_retries=11"]) == 2
    assert "allowed: [0, 10]" in capsys.readouterr().err
