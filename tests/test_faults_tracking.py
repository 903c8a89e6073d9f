"""Faults of issue 21 around finishing, state files and MLflow: each test is named after the
behaviour it pins, and failed on the code before its fix.

* a kill right after the summary was written leaves no "finished" marker, and ``--resume``
  completes the publishing (B1);
* two crashes in a row between a checkpoint's sidecar and its state write leave the state
  resumable (B2);
* two better challengers finishing together: ``@champion`` ends on the better one, and the
  other says why it was not promoted (B3);
* an MLflow store that cannot be opened is one line, not an AssertionError (B9);
* output paths that cannot be written are one line before any work (B10);
* a resume whose MLflow run or store is gone says how to finish, and creates no store (B11);
* a registered version whose artifacts were deleted says so (B13).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from shieldtune.cli import main

from .conftest import tiny_cli_args

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, **extra}


def _one_line(err: str) -> str:
    """The single ``shieldtune: error:`` line ``err`` must consist of (no traceback)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("shieldtune: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _refused(argv: list[str], capsys, code: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == code
    return _one_line(capsys.readouterr().err)


def _job(runs: Path, *extra: str) -> list[str]:
    """A tiny tracked job that finds a model (one episode of two steps)."""
    return tiny_cli_args(
        "safety.constraints=[fgsm_robust_acc >= 0.05]",
        "env.steps_per_episode=2",
        "tuner.episodes=1",
        "tracking.log_model=false",
        f"tuner.output_dir={runs}",
        *extra,
    )


# ------------------------------------------------------------ B1: the finished marker


#: Runs the CLI with a SIGKILL of itself as soon as the summary is logged to MLflow: the moment
#: right after the old code had written summary.json into the run folder.
KILL_AFTER_SUMMARY = """
import os, signal, sys
from pathlib import Path
from shieldtune.tracking import tracker

logged = tracker.Tracker.log_artifact

def log_artifact(self, path, artifact_path=None):
    logged(self, path, artifact_path)
    if Path(path).name == "summary.json":
        os.kill(os.getpid(), signal.SIGKILL)

tracker.Tracker.log_artifact = log_artifact
from shieldtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_a_kill_right_after_the_summary_leaves_it_unfinished_and_resume_completes_it(tmp_path):
    """The MLflow run stayed RUNNING without its last metrics, and --resume said "already
    finished" (a 0-byte summary.json did the same). Now summary.json is the marker, written
    atomically and last; resume completes what is missing."""
    runs, db = tmp_path / "runs", tmp_path / "mlflow.db"
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    script = tmp_path / "kill_after_summary.py"
    script.write_text(KILL_AFTER_SUMMARY)
    argv = ["tune", *_job(runs)]
    killed = subprocess.run(
        [sys.executable, str(script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    (folder,) = runs.iterdir()
    assert not (folder / "summary.json").exists()  # not finished: the marker is written last
    (folder / "summary.json").write_text("")  # a torn write of an old version: still unfinished
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_run(folder.name).info.status == "RUNNING"

    cli = [sys.executable, "-m", "shieldtune.cli", *argv, "--resume", folder.name]
    resumed = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already finished" not in resumed.stdout
    assert "completing" in resumed.stdout
    run = client.get_run(folder.name)
    assert run.info.status == "FINISHED"
    for key in ("steps_run", "wall_seconds", "unsafe_segments", "test_acc"):
        assert key in run.data.metrics, sorted(run.data.metrics)
    assert "summary.json" in [a.path for a in client.list_artifacts(folder.name)]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps_run"] == 2 and summary["best"] is not None

    again = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_summary_that_is_empty_or_damaged_does_not_mark_a_run_finished(tmp_path):
    from shieldtune.control.finish import finished_summary

    path = tmp_path / "summary.json"
    assert finished_summary(path) is None
    for text in ("", "{", "[]", '{"steps_run": 3}'):
        path.write_text(text)
        assert finished_summary(path) is None, text
    path.write_text(json.dumps({"stop_reason": "completed all episodes"}))
    assert finished_summary(path) == {"stop_reason": "completed all episodes"}


# ------------------------------------------------------------ B2: checksums after two crashes


def test_two_crashes_between_the_sidecar_and_the_state_write_leave_the_state_resumable(
    tmp_path, monkeypatch
):
    """The sidecar's "previous" digest named the version of the first crash, never written,
    so the intact file on disk no longer matched ("does not match its checksum")."""
    from shieldtune import checkpoint

    kind = checkpoint.register_kind("test.two-crashes/v1", {"value": (int,)})
    path = tmp_path / "controller_state.pt"
    checkpoint.atomic_save({"kind": kind, "value": 0}, path)
    write = checkpoint._write

    def crash_before_the_file(data: bytes, target: Path) -> None:
        if target == path:
            raise KeyboardInterrupt("killed between the sidecar and the file")
        write(data, target)

    monkeypatch.setattr(checkpoint, "_write", crash_before_the_file)
    for value in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            checkpoint.atomic_save({"kind": kind, "value": value}, path)
    monkeypatch.setattr(checkpoint, "_write", write)
    assert checkpoint.safe_load(path, kind)["value"] == 0
    checkpoint.atomic_save({"kind": kind, "value": 3}, path)  # and it goes on as before
    assert checkpoint.safe_load(path, kind)["value"] == 3


def test_a_damaged_state_is_still_refused_after_the_next_save_crashed(tmp_path, monkeypatch):
    """The digest of the file on disk is listed only when the sidecar vouched for it."""
    from shieldtune import checkpoint
    from shieldtune.errors import CheckpointError

    kind = checkpoint.register_kind("test.damaged/v1", {"value": (int,)})
    path = tmp_path / "state.pt"
    checkpoint.atomic_save({"kind": kind, "value": 0}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    write = checkpoint._write

    def crash(data: bytes, target: Path) -> None:
        if target == path:
            raise KeyboardInterrupt
        write(data, target)

    monkeypatch.setattr(checkpoint, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"kind": kind, "value": 1}, path)
    with pytest.raises(CheckpointError, match="checksum"):
        checkpoint.safe_load(path, kind)


# ------------------------------------------------------------ B3: the promotion race


def _version(client: MlflowClient, root: Path, name: str, label: str) -> tuple[str, str]:
    """A run and a registered version of ``name`` whose files hold ``label``."""
    exp = client.get_experiment_by_name("race") or client.get_experiment(
        client.create_experiment("race", artifact_location=(root / "art").as_uri())
    )
    run = client.create_run(exp.experiment_id)
    files = root / label
    files.mkdir()
    (files / "best_model.pt").write_text(label)
    version = client.create_model_version(name, str(files), run_id=run.info.run_id)
    return run.info.run_id, str(version.version)


def _tracker(run_id: str, name: str):
    from shieldtune.config import TrackingConfig
    from shieldtune.tracking.run_info import RunDescription
    from shieldtune.tracking.tracker import Tracker

    tracker = Tracker(TrackingConfig(), "0", RunDescription("r", {}, {}, 0, name))
    tracker._connect()
    tracker.parent_id = run_id
    return tracker


_CARD = {
    "task": "t",
    "shieldtune_version": "0",
    "constraints": [],
    "confidence": 0.95,
    "report": {},
    "schedule": {},
    "counts": {},
    "data": {},
}
_ACC = {"old": 0.5, "better": 0.9, "worse": 0.8}


def _report(label: str) -> dict[str, float]:
    return {"test_acc": _ACC[label], "constraints_satisfied": 1.0}


@pytest.fixture
def race(tmp_path, monkeypatch):
    """A store whose model has a champion ("old") and two better challengers' versions."""
    from shieldtune.tracking.registry import CHAMPION_ALIAS

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("race-model")
    _, old = _version(client, tmp_path, "race-model", "old")
    client.set_registered_model_alias("race-model", CHAMPION_ALIAS, old)
    versions = {
        label: _version(client, tmp_path, "race-model", label) for label in ("better", "worse")
    }
    return client, versions


def _publish(run_id: str, label: str, results: dict, while_comparing=None) -> None:
    tracker = _tracker(run_id, "race-model")

    def evaluate(path: Path) -> dict[str, float]:
        if while_comparing is not None:  # the other job finishes meanwhile
            while_comparing()
        return _report(path.read_text())

    results[label] = tracker.publish(
        None, Path("unused"), None, _report(label), evaluate, {**_CARD, "report": _report(label)}
    )


def test_a_challenger_whose_champion_moved_while_it_compared_compares_again(race, monkeypatch):
    """Both printed "now @champion" and the alias ended on the worse one: each compared with
    the old champion and moved the alias without looking again. (Without the local store's
    lock, as on a server: the alias is re-read before it is moved.)"""
    import contextlib

    from shieldtune.tracking import tracker as tracking
    from shieldtune.tracking.registry import CHAMPION_ALIAS

    client, versions = race
    monkeypatch.setattr(tracking, "store_lock", lambda uri: contextlib.nullcontext(), raising=False)
    (run_a, better), (run_b, worse) = versions["better"], versions["worse"]
    results: dict[str, dict] = {}

    # The worse one compares with the old champion; the better one promotes meanwhile.
    def meanwhile() -> None:
        if "better" not in results:
            _publish(run_a, "better", results)

    _publish(run_b, "worse", results, meanwhile)
    assert str(client.get_model_version_by_alias("race-model", CHAMPION_ALIAS).version) == better
    assert results["better"]["alias"] == CHAMPION_ALIAS
    assert results["worse"]["alias"] is None
    assert f"v{better}" in results["worse"]["reason"], results["worse"]["reason"]
    assert "moved @champion" in results["worse"]["reason"]  # it says what happened
    assert client.get_model_version("race-model", worse).tags["promoted"] == "false"


def test_two_better_challengers_finishing_together_leave_champion_on_the_better_one(race):
    """Two jobs on one local store: the worse challenger is slow to compare, the better one
    finishes meanwhile. The alias must end on the better one."""
    import threading

    from shieldtune.tracking.registry import CHAMPION_ALIAS

    client, versions = race
    results: dict[str, dict] = {}
    comparing = threading.Event()

    def slow() -> None:
        comparing.set()
        time.sleep(2)

    worse = threading.Thread(target=_publish, args=(versions["worse"][0], "worse", results, slow))
    worse.start()
    assert comparing.wait(60)
    _publish(versions["better"][0], "better", results)
    worse.join(120)
    assert (
        str(client.get_model_version_by_alias("race-model", CHAMPION_ALIAS).version)
        == (versions["better"][1])
    )
    assert results["better"]["alias"] == CHAMPION_ALIAS


# ------------------------------------------------------------ B9: a store that cannot be opened


@pytest.mark.parametrize("kind", ["sqlite", "path"])
def test_a_tracking_store_that_cannot_be_opened_is_one_line(kind, tmp_path, capsys, monkeypatch):
    """An AssertionError from Tracker.finish hid the real error."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "notes.txt"
    store.write_text("not a database\n")
    uri = f"sqlite:///{store}" if kind == "sqlite" else str(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    line = _refused(["tune", *_job(tmp_path / "runs")], capsys)
    assert str(store) in line and "cannot be opened" in line, line
    assert store.read_text() == "not a database\n"
    assert os.environ["MLFLOW_TRACKING_URI"] == uri  # restored as it was


RACE = """
import sys, time
from shieldtune.config import TrackingConfig
from shieldtune.errors import ShieldtuneError
from shieldtune.tracking.run_info import RunDescription
from shieldtune.tracking.tracker import Tracker

tracker = Tracker(TrackingConfig(), "0", RunDescription("r", {}, {"a": "1"}, 0, "m"))
while time.time() < float(sys.argv[1]):
    pass
try:
    tracker.start()
    tracker.finish()
except ShieldtuneError as exc:
    print(f"shieldtune: error: {exc}")
    sys.exit(2)
print("opened")
"""


def test_three_jobs_creating_one_new_sqlite_store_at_once_all_open_it(tmp_path):
    """Their schema migrations broke each other ("duplicate column", "alembic_version ...
    0 found"); the store's creation is now serialised."""
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    go = str(time.time() + 15)  # all three past their imports first
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), go],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-1500:] for o in outs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("shieldtune")
    assert len(client.search_runs([exp.experiment_id])) == 3


# ------------------------------------------------------------ B10: paths that cannot be written


def test_evaluate_refuses_an_output_in_a_missing_folder_or_a_folder_before_evaluating(
    tmp_path, capsys
):
    missing = tmp_path / "nope" / "report.json"
    ckpt = str(tmp_path / "never-read.pt")  # refused before the checkpoint is even read
    line = _refused(["evaluate", "--checkpoint", ckpt, "--output", str(missing)], capsys)
    assert "--output" in line and "does not exist" in line
    line = _refused(["evaluate", "--checkpoint", ckpt, "--output", str(tmp_path)], capsys)
    assert "--output" in line and "folder" in line


def test_pipeline_output_folders_that_are_files_are_one_line(tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    line = _refused(["pipeline", "compile", "--output-dir", str(afile)], capsys)
    assert "--output-dir" in line and "not a folder" in line
    line = _refused(["pipeline", "run", "--local", "--workdir", str(afile / "sub")], capsys)
    assert "--workdir" in line and "not a folder" in line
    assert afile.read_text() == "x"


def test_evaluate_model_uri_with_a_store_file_that_is_no_database_is_one_line(
    tmp_path, capsys, monkeypatch
):
    store = tmp_path / "notes.db"
    store.write_text("not a database\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    line = _refused(["evaluate", "--model-uri", "models:/m/1"], capsys)
    assert str(store) in line and "MLFLOW_TRACKING_URI" in line


# ------------------------------------------------------------ B11: resume without its MLflow run


@pytest.mark.integration
def test_a_resume_whose_mlflow_run_or_store_is_gone_says_how_to_finish_it(
    tmp_path, capsys, monkeypatch
):
    """The message kept its "RUN_ID" placeholder and suggested a retry that could never
    work; resuming from another folder first created an empty mlflow.db there."""
    job_dir, other = tmp_path / "job", tmp_path / "other"
    job_dir.mkdir()
    other.mkdir()
    monkeypatch.chdir(job_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    argv = ["tune", *_job(runs)]
    assert main(argv) == 0
    (folder,) = runs.iterdir()
    (folder / "summary.json").unlink()  # killed before its marker: resume has work to do
    resume = [*argv, "--resume", folder.name]

    store = job_dir / "mlflow.db"
    monkeypatch.chdir(other)  # a new folder: no store here, and none may be made
    store.rename(job_dir / "moved.db")  # the job's store is gone
    line = _refused(resume, capsys)
    assert "RUN_ID" not in line and "does not exist" in line, line
    assert f"--resume {folder.name}" in line and "tracking.enabled=false" in line, line
    assert not (other / "mlflow.db").exists() and not store.exists()
    (job_dir / "moved.db").rename(store)
    capsys.readouterr()
    assert main(resume) == 0  # from another folder, the job's own store is found
    assert not (other / "mlflow.db").exists()
    assert MlflowClient(f"sqlite:///{store}").get_run(folder.name).info.status == "FINISHED"
    (folder / "summary.json").unlink()

    monkeypatch.chdir(job_dir)
    MlflowClient(f"sqlite:///{job_dir / 'mlflow.db'}").delete_run(folder.name)
    line = _refused(resume, capsys)
    assert "deleted" in line and folder.name in line and "RUN_ID" not in line, line
    assert f"--resume {folder.name}" in line and "tracking.enabled=false" in line

    capsys.readouterr()
    assert main([*resume, "--set", "tracking.enabled=false"]) == 0
    assert json.loads((folder / "summary.json").read_text())["best"] is not None


def test_a_resume_may_turn_tracking_off_but_not_on(tmp_path):
    from shieldtune.cli import _resumed_config
    from shieldtune.config import load_config

    saved = load_config(None, []).to_dict()
    off = _resumed_config(
        load_config(None, ["tracking.enabled=false"]),
        saved,
        overrides=["tracking.enabled=false"],
    )
    assert off.tracking.enabled is False
    saved["tracking"]["enabled"] = False
    still_off = _resumed_config(
        load_config(None, ["tracking.enabled=true"]), saved, overrides=["tracking.enabled=true"]
    )
    assert still_off.tracking.enabled is False


def test_a_resumed_tracker_s_errors_name_the_run_to_resume():
    from shieldtune.config import TrackingConfig
    from shieldtune.tracking.run_info import RunDescription
    from shieldtune.tracking.tracker import Tracker

    tracker = Tracker(TrackingConfig(), "0", RunDescription("r", {}, {}, 0, "m"))
    tracker.resume_command = "shieldtune tune --resume abc --set tuner.output_dir=/x"

    def fail() -> None:
        raise OSError("connection refused")

    with pytest.raises(Exception, match=r"--resume abc --set tuner\.output_dir=/x") as err:
        tracker._call(fail)
    assert "RUN_ID" not in str(err.value)


# ------------------------------------------------------------ B13: a version without its files


def test_a_registered_version_whose_artifacts_were_deleted_says_so(tmp_path, capsys, monkeypatch):
    """evaluate said "No such artifact: ''" and to set MLFLOW_TRACKING_URI; tune said the
    champion "was not logged by shieldtune"."""
    import shutil

    from shieldtune.tracking.registry import CHAMPION_ALIAS, decide_promotion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("gone")
    _, version = _version(client, tmp_path, "gone", "files")
    client.set_registered_model_alias("gone", CHAMPION_ALIAS, version)
    shutil.rmtree(tmp_path / "files")
    for model_uri in ("models:/gone@champion", f"models:/gone/{version}"):
        line = _refused(["evaluate", "--model-uri", model_uri], capsys)
        assert "artifacts are missing" in line and f"version {version}" in line, line
        assert "No such artifact" not in line and "set MLFLOW_TRACKING_URI" not in line

    challenger = {"test_acc": 0.9, "constraints_satisfied": 1.0}
    promotion = decide_promotion("gone", challenger, version, "2", torch.load, uri)
    assert "artifacts are missing" in promotion.reason
    assert "not logged by shieldtune" not in promotion.reason
