"""Step executors: the step file format, ``shieldtune step``, the process pool, parallel envs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from shieldtune.cli import main
from shieldtune.config import config_from_dict
from shieldtune.control.tuner import run_tuning
from shieldtune.errors import StepFailedError
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.executors.process import ProcessStepExecutor, threads_per_worker
from shieldtune.executors.step_files import (
    REQUEST_FILE,
    RESULT_FILE,
    DirStepStore,
    read_result,
    request_payload,
)
from shieldtune.job import Job
from shieldtune.training.step import StepRequest, StepResult, TrainState

from .conftest import tiny_dict
from .test_tuner import read_jsonl, tiny

HYPER = {
    "learning_rate": 0.05,
    "batch_size": 64,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "adv_mix": 0.0,
}


def assert_same_result(a: StepResult, b: StepResult) -> None:
    assert a.metrics == b.metrics
    assert a.diverged == b.diverged and a.samples == b.samples
    assert a.state.model.keys() == b.state.model.keys()
    for k in a.state.model:
        assert torch.equal(a.state.model[k], b.state.model[k]), k


@pytest.fixture
def first_step(tiny_config, tiny_data) -> tuple[StepRequest, StepResult]:
    """A trained segment from a fresh model, and the request that continues from it."""
    local = LocalStepExecutor(Job.from_config(tiny_config).steps.runner(tiny_data))
    start = local.run(StepRequest(None, HYPER, 300, seed=3))
    return StepRequest(start.state, HYPER, 300, seed=4), local.run(
        StepRequest(start.state, HYPER, 300, seed=4)
    )


def test_step_command_reproduces_the_in_process_step_bit_for_bit(
    tmp_path, tiny_config, first_step, capsys
):
    request, expected = first_step
    store = DirStepStore(tmp_path / "steps")
    store.put("s1", REQUEST_FILE, request_payload(request, Job.from_config(tiny_config).steps))
    assert main(["step", "--store", store.uri, "--step-id", "s1", "--threads", "1"]) == 0
    assert "step s1: 300 samples, val_acc" in capsys.readouterr().out
    assert_same_result(read_result(store, "s1", attempts=1), expected)


def test_step_command_refuses_a_pickled_request_in_one_line(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / REQUEST_FILE).write_bytes(pickle.dumps({"kind": Payload()}))
    assert main(["step", "--store", f"dir:{tmp_path}", "--step-id", "s1"]) == 2
    out = capsys.readouterr()
    assert "code ran" not in out.out
    assert out.err.startswith("shieldtune: error: checkpoint") and out.err.count("\n") == 1
    assert not (tmp_path / "s1" / RESULT_FILE).exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "has no 'step'"),
        (
            {
                "step": {},
                "model": None,
                "optimizer": None,
                "hyperparameters": {},
                "budget_samples": 10,
                "seed": 2**70,
            },
            "out of range",
        ),
        (
            {
                "step": {},
                "model": None,
                "optimizer": None,
                "hyperparameters": {},
                "budget_samples": 10,
                "seed": 2**40,
                "certify_above": float("-inf"),
            },
            "the seed must be in [0, 2**31)",
        ),
        (
            {
                "step": {"task": {}},
                "model": None,
                "optimizer": None,
                "hyperparameters": {},
                "budget_samples": 10,
                "seed": 1,
                "certify_above": float("-inf"),
            },
            "a step spec must be a mapping of the sections task, data, training, safety",
        ),
        (
            {
                "step": {"task": {}, "data": {}, "training": {"batch_size": 0}, "safety": {}},
                "model": None,
                "optimizer": None,
                "hyperparameters": {},
                "budget_samples": 10,
                "seed": 1,
                "certify_above": float("-inf"),
            },
            "config key 'training.batch_size' = 0 is out of range",
        ),
    ],
)
def test_a_well_formed_step_request_with_wrong_contents_is_one_line(
    payload, message, tmp_path, capsys
):
    """Issue: a request missing keys, or with a seed of 2**70, ended in a KeyError or
    ValueError traceback."""
    from shieldtune.checkpoint import atomic_save
    from shieldtune.executors.step_files import REQUEST_KIND

    atomic_save({"kind": REQUEST_KIND, **payload}, tmp_path / "s1" / REQUEST_FILE)
    assert main(["step", "--store", f"dir:{tmp_path}", "--step-id", "s1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "s3://bucket", "--step-id", "a"], "must be dir:/PATH or mlflow:RUN_ID"),
        (["--store", "dir:/x", "--step-id", "../etc"], "--step-id '../etc' must be"),
        (["--store", "dir:/x", "--step-id", "a", "--threads", "0"], "--threads 0 is out of"),
    ],
)
def test_step_command_rejects_bad_arguments_in_one_line(args, message, capsys):
    assert main(["step", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_result_that_is_missing_is_a_failed_step_not_a_crash(tmp_path):
    with pytest.raises(StepFailedError, match="finished but its result is unusable"):
        read_result(DirStepStore(tmp_path), "nope", attempts=1)


def test_process_pool_returns_what_the_local_executor_computes(tiny_config, tiny_data, first_step):
    request, expected = first_step
    fresh = StepRequest(None, HYPER, 300, seed=3)
    pool = ProcessStepExecutor(Job.from_config(tiny_config).steps, tiny_data, 2, threads=1)
    try:
        results = pool.run_many([fresh, request])
    finally:
        pool.close()
    assert_same_result(results[1], expected)
    assert [r.attempts for r in results] == [1, 1]


def test_process_pool_retries_a_failing_step_then_reports_it(tiny_config, tiny_data):
    cfg = config_from_dict(tiny_dict(tracking={"enabled": False}, tuner={"step_retries": 1}))
    pool = ProcessStepExecutor(
        Job.from_config(cfg).steps, tiny_data, 1, retries=cfg.tuner.step_retries, threads=1
    )
    # A state from some other model: the worker raises on load_state_dict every time.
    broken = StepRequest(TrainState({"bogus": torch.zeros(1)}), HYPER, 300, seed=1)
    try:
        with pytest.raises(
            StepFailedError, match=r"failed 2 times \(tuner.step_retries=1\).*Missing key"
        ):
            pool.run_many([broken])
    finally:
        pool.close()


def test_threads_are_split_between_workers():
    assert threads_per_worker(2, cpus=8) == 4
    assert threads_per_worker(4, cpus=2) == 1


def test_parallel_envs_on_the_process_pool_match_the_local_run(tmp_path, tiny_data):
    sections = {"env": {"steps_per_episode": 2}, "tuner": {"episodes": 3, "num_envs": 2}}
    local = run_tuning(tiny(tmp_path / "local", **sections), data=tiny_data)
    sections["tuner"] = {**sections["tuner"], "executor": "process", "worker_threads": 1}
    pooled = run_tuning(tiny(tmp_path / "pool", **sections), data=tiny_data)
    assert (pooled.executor, pooled.num_envs) == ("process", 2)
    for s in (local, pooled):
        assert s.episodes_run == 3 and s.steps_run == 6 and s.step_retries == 0
    # Episodes 0 and 1 run side by side, then episode 2 takes the first free slot.
    steps = read_jsonl(Path(pooled.output_dir) / "steps.jsonl")
    assert [r["env_index"] for r in steps] == [0, 1, 0, 1, 0, 0]
    assert [r["episode"] for r in steps] == [0, 1, 0, 1, 2, 2]
    # Same requests, same deterministic training: the same job whichever backend ran it.
    assert _without_timings(steps) == _without_timings(
        read_jsonl(Path(local.output_dir) / "steps.jsonl")
    )
    assert pooled.best["val_metrics"] == local.best["val_metrics"]
    assert pooled.best["schedule"] == local.best["schedule"]


def _without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def test_a_step_never_changes_the_state_it_started_from(tiny_config, tiny_data):
    """Rollback returns to the request's state, so training must not step its momentum
    buffers in place (torch's load_state_dict keeps the tensors it is given)."""
    local = LocalStepExecutor(Job.from_config(tiny_config).steps.runner(tiny_data))
    start = local.run(StepRequest(None, HYPER, 300, seed=3)).state
    start = local.run(StepRequest(start, HYPER, 300, seed=4)).state
    before = {k: v.clone() for k, v in start.optimizer["state"][0].items()}
    model_before = {k: v.clone() for k, v in start.model.items()}
    local.run(StepRequest(start, HYPER, 300, seed=5))
    for k, v in before.items():
        assert torch.equal(start.optimizer["state"][0][k], v), k
    for k, v in model_before.items():
        assert torch.equal(start.model[k], v), k
