"""Population mode: one episode, N members training at once, exploit under the shield."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shieldtune.config import config_from_dict
from shieldtune.control.env import HyperparamEnv
from shieldtune.control.population import ExploitRule, MemberView, member_seed, spread_levels
from shieldtune.control.search_space import SearchSpace
from shieldtune.control.tuner import run_tuning
from shieldtune.job import Job

from .conftest import tiny_dict
from .scripted import ScriptedExecutor, metrics

STEP_TIMES = ("train_seconds", "eval_seconds", "attempts")


def population(tmp_path: Path, members: int = 2, **tuner) -> dict:
    return tiny_dict(
        tracking={"enabled": False},
        safety={"constraints": ["fgsm_robust_acc >= 0.05"]},
        env={"steps_per_episode": 4},
        tuner={
            "episodes": 1,
            "num_envs": members,
            "exploit_interval": 2,
            "output_dir": str(tmp_path),
            **tuner,
        },
    )


def steps_of(summary) -> list[dict]:
    lines = (Path(summary.output_dir) / "steps.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in STEP_TIMES} for x in lines]


def test_a_one_episode_job_with_two_envs_trains_two_members_counted_in_steps_run(
    tmp_path, tiny_data
):
    """Issue: n_envs = min(num_envs, episodes), so a one-episode job with num_envs=2 trained
    one run and left the second slot idle."""
    s = run_tuning(config_from_dict(population(tmp_path)), data=tiny_data)
    steps = steps_of(s)
    assert s.population == 2 and s.num_envs == 2 and s.episodes_run == 1
    assert s.steps_run == len(steps) == 2 * 4
    assert sorted({r["env_index"] for r in steps}) == [0, 1]
    assert all(r["episode"] == 0 for r in steps)
    assert s.samples_trained == 2 * 4 * 600
    assert "population" in s.stop_reason


def test_split_budget_shares_the_episodes_segments_between_members(tmp_path, tiny_data):
    cfg = config_from_dict(population(tmp_path, member_budget="split"))
    s = run_tuning(cfg, data=tiny_data)
    assert s.steps_run == 4 and s.samples_trained == 4 * 600  # the single run's samples
    assert [r["step"] for r in steps_of(s) if r["env_index"] == 1] == [1, 2]


def test_a_split_budget_with_more_members_than_segments_is_refused_in_one_line():
    from shieldtune.errors import ConfigError

    with pytest.raises(ConfigError, match="members cannot share"):
        config_from_dict(
            tiny_dict(
                env={"steps_per_episode": 3},
                tuner={"episodes": 1, "num_envs": 4, "member_budget": "split"},
            )
        )


def test_members_train_identically_on_the_local_and_the_process_executor(tmp_path, tiny_data):
    local = run_tuning(config_from_dict(population(tmp_path / "a")), data=tiny_data)
    pooled = run_tuning(
        config_from_dict(population(tmp_path / "b", executor="process", worker_threads=1)),
        data=tiny_data,
    )
    assert steps_of(local) == steps_of(pooled)
    assert local.best == {**pooled.best, "checkpoint": local.best["checkpoint"]}


def test_member_zero_keeps_the_users_start_values_and_the_others_start_spread():
    space = SearchSpace(config_from_dict(tiny_dict()).env.search_space)
    starts = [spread_levels(space, m, seed=0) for m in range(6)]
    assert starts[0] == space.initial()
    assert all(s != space.initial() for s in starts[1:])  # every other member moved
    for s in starts:
        for spec in space.specs:
            assert spec.low <= s[spec.name] <= spec.high
    assert starts == [spread_levels(space, m, seed=0) for m in range(6)]  # seeded
    assert member_seed(7, 0, 0) == 7 * 100_003  # member 0: the single run's init seed
    assert len({member_seed(7, 0, m) for m in range(6)}) == 6


def view(i, acc, safe=True, step=2):
    return MemberView(i, step, acc, safe)


def test_exploit_copies_only_from_certified_safe_members_in_the_top_fraction():
    rule = ExploitRule(interval=2, fraction=0.25, seed=0)
    # The most accurate member is not certified safe: nothing is safe to copy from it.
    assert rule.plan([view(0, 0.99, safe=False), view(1, 0.5), view(2, 0.6), view(3, 0.7)]) == []
    plan = rule.plan([view(0, 0.9), view(1, 0.5), view(2, 0.6, safe=False), view(3, 0.7)])
    assert {(e.copier, e.donor, e.reason) for e in plan} == {(1, 0, "behind"), (2, 0, "unsafe")}
    assert all(e.donor_val_acc > e.copier_val_acc for e in plan)
    assert not rule.due(1) and rule.due(2) and rule.due(4)
    assert rule.plan([view(0, 0.9)]) == []  # one member: nobody to copy


def test_a_member_that_copies_takes_over_the_donors_whole_state_but_keeps_its_stream():
    job = Job.from_config(config_from_dict(tiny_dict(tracking={"enabled": False})))
    outs = [metrics(0.2), metrics(0.6), metrics(0.3), metrics(0.4)]
    donor, copier = (HyperparamEnv(job, ScriptedExecutor(list(outs)), member=m) for m in (0, 1))
    for env in (donor, copier):
        env.reset(seed=0)
        env.step(env.space.keep_action)
    donor.step(int(np.flatnonzero(donor.action_masks())[-1]))
    copier.adopt(donor)
    assert copier.hyperparameters == donor.hyperparameters and copier.t == donor.t
    assert copier.schedule == donor.schedule and copier.metrics == donor.metrics
    assert all(torch.equal(copier.state.model[k], v) for k, v in donor.state.model.items())
    assert copier.member == 1  # its own data-order stream: it does not replay the donor
    assert (
        copier.prepare_step(copier.space.keep_action).seed
        != donor.prepare_step(donor.space.keep_action).seed
    )


def test_exploits_are_shield_decisions_in_the_audit_and_the_summary(tmp_path, tiny_data):
    cfg = config_from_dict(population(tmp_path, members=3, exploit_fraction=0.34))
    s = run_tuning(cfg, data=tiny_data)
    out = Path(s.output_dir)
    audit = [json.loads(x) for x in (out / "shield_audit.jsonl").read_text().splitlines()]
    exploits = [a for a in audit if a.get("decision") == "exploit"]
    assert s.exploits == len(exploits) >= 1
    for e in exploits:
        assert e["step"] == 2 and e["copier"] != e["donor"]
        assert e["donor_val_acc"] >= e["copier_val_acc"] or e["reason"] == "unsafe"
    # A member after its copy avoids its donor's next move: the policy explores.
    steps = steps_of(s)
    for e in exploits:
        nxt = {r["env_index"]: r["action"] for r in steps if r["step"] == e["step"] + 1}
        assert nxt[e["copier"]] != nxt[e["donor"]]


TUNE = """
import json, sys
from shieldtune.config import config_from_dict
from shieldtune.control.tuner import run_tuning
run_tuning(config_from_dict(json.loads(sys.argv[1])))
"""


def test_a_killed_population_resumes_every_member_bit_identically(tmp_path):
    """SIGKILL in the middle of a population job, then --resume: every member's steps, the
    exploits and the chosen model are those of an uninterrupted job."""
    from .test_resume import kill_after_checkpoints, state_file

    config = population(tmp_path / "killed", members=3, exploit_fraction=0.34)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", TUNE, json.dumps(config)], env=env)
    assert kill_after_checkpoints(proc, tmp_path / "killed", 3, 0.0)
    run = state_file(tmp_path / "killed").parent.name
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "shieldtune.cli",
            "tune",
            "--resume",
            run,
            "--set",
            f"tuner.output_dir={tmp_path / 'killed'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = config_from_dict(population(tmp_path / "whole", members=3, exploit_fraction=0.34))
    reference = run_tuning(whole)
    killed_dir = tmp_path / "killed" / run
    got = [
        {k: v for k, v in json.loads(x).items() if k not in STEP_TIMES}
        for x in (killed_dir / "steps.jsonl").read_text().splitlines()
    ]
    assert got == steps_of(reference)
    audit = lambda d: (d / "shield_audit.jsonl").read_text()  # noqa: E731
    assert audit(killed_dir) == audit(Path(reference.output_dir))


def test_a_tie_with_the_best_state_is_counted_and_the_earliest_kept():
    """Ties between certified states were broken silently (earliest wins)."""
    from shieldtune.control.job_state import JobState

    state = JobState()
    info = {"accepted": True, "state_certified": "safe", "step": 1, "metrics": {"val_acc": 0.9}}

    class Model:
        metrics, init_seed, schedule, model_state = {"val_acc": 0.9}, 0, [], {}

    state.consider(0, 0, info, Model)
    state.consider(0, 1, {**info, "step": 2}, Model)
    state.consider(0, 2, {**info, "step": 3, "metrics": {"val_acc": 0.8}}, Model)
    assert (state.best.step, state.best.member, state.best_ties) == (1, 0, 1)
    better = {**info, "step": 4, "metrics": {"val_acc": 0.95}}
    state.consider(0, 0, better, Model)
    assert (state.best.step, state.best_ties) == (4, 0)
