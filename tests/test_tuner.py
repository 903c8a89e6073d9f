"""The tuning loop end to end on real data (tracking off; MLflow has its own integration test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shieldtune.checkpoint import MODEL_KIND, safe_load
from shieldtune.config import config_from_dict
from shieldtune.control.tuner import run_tuning
from shieldtune.safety.spec import parse_constraints, spec_cost

from .conftest import tiny_dict
from .scripted import ScriptedExecutor, metrics


def tiny(tmp_path: Path, **sections):
    sections.setdefault("tracking", {"enabled": False})
    sections.setdefault("safety", {"constraints": ["fgsm_robust_acc >= 0.1"]})
    tuner = {"output_dir": str(tmp_path), **sections.pop("tuner", {})}
    return config_from_dict(tiny_dict(tuner=tuner, **sections))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_job_writes_summary_audit_and_a_feasible_best_checkpoint(tmp_path, tiny_data):
    cfg = tiny(tmp_path, safety={"constraints": ["fgsm_robust_acc >= 0.15"]})
    s = run_tuning(cfg, data=tiny_data)
    out = Path(s.output_dir)
    steps = read_jsonl(out / "steps.jsonl")
    audit = read_jsonl(out / "shield_audit.jsonl")
    assert s.steps_run == len(steps) == len(audit) == cfg.tuner.episodes * cfg.env.steps_per_episode
    assert s.violations == sum(r["violation"] for r in steps)
    assert s.warmup_steps == sum(r["warmup"] for r in steps)
    assert all(r["cost"] > 0 for r in steps if r["violation"] or r["warmup"])
    assert s.samples_trained == s.steps_run * cfg.training.segment_samples
    assert json.loads((out / "summary.json").read_text())["violations"] == s.violations
    assert (out / "schedule.png").read_bytes()[:4] == b"\x89PNG"
    assert s.feasible_found
    constraints = parse_constraints(cfg.safety.constraints)
    assert spec_cost(constraints, s.best["val_metrics"]) <= 0
    # The best schedule lists only accepted segments, each with every hyperparameter.
    assert all({"learning_rate", "batch_size", "momentum"} <= set(e) for e in s.best["schedule"])
    ckpt = safe_load(s.best["checkpoint"], MODEL_KIND)
    assert ckpt["schedule"] == {"init_seed": s.best["init_seed"], "segments": s.best["schedule"]}
    assert 0.0 <= s.test_metrics["pgd_robust_acc"] <= s.test_metrics["test_acc"]
    assert s.test_metrics["fgsm_pgd_gap"] == pytest.approx(
        s.test_metrics["fgsm_robust_acc"] - s.test_metrics["pgd_robust_acc"]
    )


def test_no_accepted_model_ever_violates_the_spec_under_rollback(tmp_path, tiny_data):
    # A constraint tight enough that some segments break it.
    cfg = tiny(
        tmp_path,
        safety={"constraints": ["fgsm_robust_acc >= 0.2"]},
        env={"steps_per_episode": 5},
    )
    s = run_tuning(cfg, data=tiny_data)
    steps = read_jsonl(Path(s.output_dir) / "steps.jsonl")
    assert s.violations > 0, "test needs at least one violation to mean anything"
    for episode in {r["episode"] for r in steps}:
        ep = [r for r in steps if r["episode"] == episode]
        first_safe = next((i for i, r in enumerate(ep) if r["cost"] <= 0), len(ep))
        assert all(r["warmup"] and r["accepted"] for r in ep[:first_safe])
        for r in ep[first_safe:]:
            assert r["accepted"] == (r["cost"] <= 0)
            assert r["violation"] == (r["cost"] > 0)


def test_no_feasible_model_is_reported_not_invented(tmp_path, tiny_data):
    cfg = tiny(tmp_path, safety={"constraints": ["fgsm_robust_acc >= 0.99"]}, tuner={"episodes": 1})
    s = run_tuning(cfg, data=tiny_data)
    assert not s.feasible_found and s.best is None and s.test_metrics is None
    # Never safe, so never anything to roll back to: all warm-up, no rejected segment.
    assert s.warmup_steps == s.steps_run and s.violations == 0


def test_same_seed_reproduces_the_same_job(tmp_path, tiny_data):
    a = run_tuning(tiny(tmp_path / "a"), data=tiny_data)
    b = run_tuning(tiny(tmp_path / "b"), data=tiny_data)
    assert (
        read_jsonl(Path(a.output_dir) / "steps.jsonl")[-1]["val_acc"]
        == (read_jsonl(Path(b.output_dir) / "steps.jsonl")[-1]["val_acc"])
    )
    assert a.best["schedule"] == b.best["schedule"]
    assert a.test_metrics == b.test_metrics


def test_early_stop_on_target_accuracy_and_on_violation_cap(tmp_path, tiny_data):
    s = run_tuning(tiny(tmp_path / "t", tuner={"target_val_acc": 0.05}), data=tiny_data)
    steps = read_jsonl(Path(s.output_dir) / "steps.jsonl")
    assert "target_val_acc" in s.stop_reason and s.best["val_metrics"]["val_acc"] >= 0.05
    # It stopped at the first feasible accepted step, not later.
    first_feasible = next(i for i, r in enumerate(steps) if r["accepted"] and r["cost"] <= 0)
    assert s.steps_run == first_feasible + 1
    # Safe from the start, then every segment breaks the spec: each is a violation.
    scripted = ScriptedExecutor([metrics(0.1)] + [metrics(0.9, fgsm=0.05)] * 10)
    s = run_tuning(
        tiny(
            tmp_path / "v",
            safety={"constraints": ["fgsm_robust_acc >= 0.5"]},
            tuner={"max_violations": 2},
        ),
        data=tiny_data,
        executor=scripted,
    )
    assert s.violations == 2 and s.steps_run == 2 and "max_violations" in s.stop_reason


def test_warm_start_continues_from_the_previous_policy(tmp_path, tiny_data, monkeypatch):
    from shieldtune.control import controller

    first = run_tuning(tiny(tmp_path / "a"), data=tiny_data)
    policy = Path(first.output_dir) / "agent.pt"
    saved = torch.load(policy, weights_only=True)
    assert saved["kind"] == "shieldtune.policy/v1"
    loaded = {}
    real_agent_load = controller.DQNAgent.load_state_dict

    def spy(self, state, warm_start=False):
        loaded["agent"] = (state["steps"], warm_start)
        return real_agent_load(self, state, warm_start)

    monkeypatch.setattr(controller.DQNAgent, "load_state_dict", spy)
    cfg = tiny(tmp_path / "b", tuner={"warm_start": str(policy), "episodes": 1})
    second = run_tuning(cfg, data=tiny_data)
    assert loaded["agent"] == (first.steps_run, True)
    assert second.steps_run == cfg.env.steps_per_episode


def test_warm_start_from_a_different_search_space_is_a_clear_error(tmp_path, tiny_data):
    from shieldtune.errors import CheckpointError

    first = run_tuning(tiny(tmp_path / "a", tuner={"episodes": 1}), data=tiny_data)
    cfg = tiny(
        tmp_path / "b",
        env={"search_space": [{"name": "learning_rate", "init": 0.05, "low": 0.01, "high": 0.4}]},
        tuner={"warm_start": str(Path(first.output_dir) / "agent.pt")},
    )
    with pytest.raises(CheckpointError, match="n_actions"):
        run_tuning(cfg, data=tiny_data)


def test_segments_that_break_the_spec_before_the_first_safe_state_are_counted(tmp_path, tiny_data):
    """Issue: a seed whose segments all broke the spec reported ``violations: 0``, because
    they were all warm-up. Every unsafe segment is counted, split into warm-up and after."""
    never_safe = [metrics(0.1, fgsm=0.05)] + [metrics(0.5, fgsm=0.1)] * 6
    s = run_tuning(
        tiny(
            tmp_path / "w",
            safety={"constraints": ["fgsm_robust_acc >= 0.5"]},
            tuner={"episodes": 2},
            env={"steps_per_episode": 2},
        ),
        data=tiny_data,
        executor=ScriptedExecutor(never_safe),
    )
    assert (s.unsafe_segments, s.warmup_steps, s.violations) == (4, 4, 0)
    assert s.best is None and not s.feasible_found


def test_only_states_certified_safe_are_selected(tmp_path, tiny_data):
    """A state that meets the spec on its point estimate but is not certified (undecided) is
    never the job's model; a certified one is."""
    undecided = {"metrics": {**metrics(0.95)["metrics"], "certified": 0.0}}
    certified = {"metrics": {**metrics(0.80)["metrics"], "certified": 1.0}}
    s = run_tuning(
        tiny(
            tmp_path / "c",
            tuner={"episodes": 1, "test_report": False},
            env={"steps_per_episode": 2},
        ),
        data=tiny_data,
        executor=ScriptedExecutor([metrics(0.1), undecided, certified]),
    )
    assert s.best["val_metrics"]["val_acc"] == 0.80
    assert (s.certified_safe_states, s.undecided_states) == (1, 1)


def test_two_untracked_jobs_started_in_the_same_second_never_share_a_folder(
    tmp_path, tiny_data, monkeypatch
):
    """Issue: without MLflow the folder was runs/<YYYYMMDD-HHMMSS>; the second job silently
    overwrote the first's summary, best model and state."""
    from shieldtune.control import job_state

    monkeypatch.setattr(job_state.time, "strftime", lambda _fmt, *_: "20261130-120000")
    cfg = tiny(tmp_path, tuner={"episodes": 1, "test_report": False})
    a = run_tuning(cfg, data=tiny_data)
    b = run_tuning(cfg, data=tiny_data)
    assert a.output_dir != b.output_dir
    assert Path(a.output_dir).name.startswith("20261130-120000-")
    assert (Path(a.output_dir) / "summary.json").is_file()
