"""The tuning job: N episodes of the shielded DQN controller loop.

Per step: the shield predicts the cost of every action and masks the unsafe
ones, the agent picks an allowed action epsilon-greedily, the environment
trains and evaluates one segment (rolling back if the result breaks the
spec), and agent and critic learn from the transition. The best *feasible*
checkpoint (every constraint met) and the schedule that produced it are kept,
evaluated once on the test split, and written out with the policy, the shield
audit log, plots and a JSON summary, all tracked in MLflow.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from shieldtune.checkpoint import (
    POLICY_KIND,
    atomic_save,
    register_kind,
    safe_load,
    save_model_checkpoint,
    save_policy,
)
from shieldtune.config import DEFAULT_OUTPUT_DIR, Config
from shieldtune.control.agent import DQNAgent
from shieldtune.control.env import HyperparamEnv
from shieldtune.control.shield import SafetyShield, ShieldDecision
from shieldtune.errors import CheckpointError, StorageError, first_line, is_existing_file
from shieldtune.executors.base import StepExecutor
from shieldtune.executors.factory import make_executor
from shieldtune.runlock import RunLock
from shieldtune.safety.stats import Decision
from shieldtune.safety.suite import test_report
from shieldtune.tasks.checker import check_model, load_task_data
from shieldtune.tasks.contract import TaskData
from shieldtune.tasks.registry import make_task
from shieldtune.tracking.plots import plot_steps
from shieldtune.tracking.publish import publish_checkpoint
from shieldtune.tracking.tracker import CONTROLLER_ARTIFACTS, Tracker, redact
from shieldtune.training.device import resolve_device
from shieldtune.training.step import StepResult, build_model


@dataclass
class BestFeasible:
    episode: int
    step: int
    global_step: int
    val_metrics: dict[str, float]
    init_seed: int
    schedule: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class TuningSummary:
    feasible_found: bool
    constraints: list[str]
    episodes_run: int
    steps_run: int
    samples_trained: int
    #: Trained segments whose measured result broke the spec (warm-up and violations).
    unsafe_segments: int
    #: Of those, segments after the episode's first safe state (rolled back), diverged ones
    #: included.
    violations: int
    #: Of those, segments before the episode's first safe state (nothing safe to return to).
    warmup_steps: int
    diverged_steps: int
    #: Accepted states certified safe / left undecided at safety.confidence.
    certified_safe_states: int
    undecided_states: int
    #: Extra attempts of steps whose worker failed or was evicted (all later succeeded).
    step_retries: int
    num_envs: int
    executor: str
    stop_reason: str
    best: dict[str, Any] | None
    test_metrics: dict[str, float] | None
    wall_seconds: float
    controller_seconds: float
    output_dir: str
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    registered_model: dict[str, Any] | None = None
    #: Where the controller's policy came from (cold start, a file, the packaged default).
    warm_start: str = "cold start"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Timer:
    """Accumulates the wall time of the controller's own work (agent + shield)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t


def _note(message: str) -> None:
    """A progress line on stderr for work that takes more than a few seconds."""
    print(message, file=sys.stderr, flush=True)


def _masked_detail(space, decision) -> list[dict[str, Any]]:
    return [
        {
            "action": int(a),
            "move": space.describe(int(a)),
            "predicted_cost": float(decision.predicted_costs[a]),
        }
        for a in np.flatnonzero(decision.masked_by_critic)
    ]


@dataclass
class _JobState:
    """Counters and logs of the whole job, shared by every environment slot."""

    records: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    best: BestFeasible | None = None
    next_episode: int = 0
    global_step: int = 0
    samples: int = 0
    violations: int = 0
    warmup: int = 0
    diverged: int = 0
    certified_safe: int = 0
    undecided: int = 0
    #: Where the controller's policy came from (kept across a resume).
    warm_start: str = "cold start"
    retries: int = 0
    stop_reason: str | None = None
    #: Wall and controller time spent before the last resume.
    wall_before: float = 0.0
    controller_before: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        snap = {k: v for k, v in vars(self).items() if k != "best"}
        snap["best"] = None if self.best is None else asdict(self.best)
        return snap

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> _JobState:
        best = snap["best"]
        return cls(**{**snap, "best": None if best is None else BestFeasible(**best)})


@dataclass
class _Slot:
    """One of the ``num_envs`` environments and the episode it is running."""

    index: int
    env: HyperparamEnv
    episode: int | None = None
    run_id: str | None = None
    needs_reset: bool = False
    obs: np.ndarray | None = None
    decision: ShieldDecision | None = None
    action: int = 0
    episode_return: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        d = self.decision
        return {
            "env": self.env.snapshot(),
            "episode": self.episode,
            "run_id": self.run_id,
            "needs_reset": self.needs_reset,
            "obs": None if self.obs is None else torch.from_numpy(self.obs.copy()),
            "decision": None
            if d is None
            else {
                "allowed": torch.from_numpy(d.allowed.copy()),
                "predicted_costs": torch.from_numpy(np.asarray(d.predicted_costs).copy()),
                "masked_by_critic": torch.from_numpy(d.masked_by_critic.copy()),
                "critic_applied": bool(d.critic_applied),
            },
            "action": self.action,
            "episode_return": self.episode_return,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.env.restore(snap["env"])
        self.episode, self.run_id = snap["episode"], snap["run_id"]
        self.needs_reset, self.action = bool(snap["needs_reset"]), int(snap["action"])
        self.episode_return = float(snap["episode_return"])
        self.obs = None if snap["obs"] is None else snap["obs"].numpy()
        d = snap["decision"]
        self.decision = (
            None
            if d is None
            else ShieldDecision(
                d["allowed"].numpy(),
                d["predicted_costs"].numpy(),
                d["masked_by_critic"].numpy(),
                d["critic_applied"],
            )
        )

    def begin(self, episode: int, tracker: Tracker) -> None:
        self.episode, self.needs_reset, self.episode_return = episode, True, 0.0
        self.run_id = tracker.start_episode(episode)

    def end(self, tracker: Tracker, job: _JobState) -> None:
        assert self.episode is not None
        tracker.end_episode(
            self.run_id,
            {
                "episode_return": self.episode_return,
                "violations_so_far": float(job.violations),
                "best_feasible_val_acc": job.best.val_metrics["val_acc"] if job.best else 0.0,
            },
            self.episode,
        )
        self.episode = self.run_id = None


def _learn_from_step(
    cfg: Config,
    slot: _Slot,
    result: StepResult,
    agent: DQNAgent,
    shield: SafetyShield,
    tracker: Tracker,
    job: _JobState,
    controller: _Timer,
) -> bool:
    """Judge one trained segment, learn from the transition, log it; True if the episode ended."""
    env, obs, action, decision = slot.env, slot.obs, slot.action, slot.decision
    next_obs, reward, terminated, truncated, info = env.complete_step(result)
    done = terminated or truncated
    job.global_step += 1
    job.samples += result.samples
    job.retries += result.attempts - 1
    cost = float(info["cost"])
    with controller:
        rejected = (info["violation"] or info["collapsed"]) and not info["accepted"]
        rolled_back = action if rejected else None
        next_decision = shield.decide(
            next_obs, info["action_mask"], rolled_back, warmup_cost=_warmup_cost(env)
        )
        agent.remember(obs, action, reward, cost, next_obs, done, next_decision.allowed)
        shield.record()
        q_loss = agent.update()
        critic_loss = shield.update(agent.buffer)
    violation = bool(info["violation"])
    job.violations += int(violation)
    job.warmup += int(info["warmup"])
    job.diverged += int(info["diverged"])
    job.certified_safe += int(info["certified"] == "safe")
    job.undecided += int(info["certified"] == "undecided")
    slot.episode_return += reward
    observed = info["observed_metrics"]
    record = {
        "episode": slot.episode,
        "env_index": slot.index,
        "step": env.t,
        "global_step": job.global_step,
        "action": int(action),
        "move": env.space.describe(action),
        **{k: float(v) for k, v in info["proposed_hyperparameters"].items()},
        "val_acc": observed.get("val_acc", float("nan")),
        "fgsm_robust_acc": observed.get("fgsm_robust_acc", float("nan")),
        "mia_advantage": observed.get("mia_advantage", float("nan")),
        # Everything else measured: bounds (<metric>_low/_high), verdict, task metrics, ...
        **{k: float(v) for k, v in observed.items() if k not in ("train_loss",)},
        "verdict": info["certified"],
        "unsafe": cost > 0,
        "reward": float(reward),
        "cost": cost,
        "violation": violation,
        "warmup": bool(info["warmup"]),
        "accepted": bool(info["accepted"]),
        "diverged": bool(info["diverged"]),
        "epsilon": agent.epsilon,
        "q_loss": q_loss,
        "critic_loss": critic_loss,
        "masked_actions": int(decision.masked_by_critic.sum()),
        "samples_used": int(info["samples_used"]),
        **env.last_timing,
    }
    job.records.append(record)
    job.audit.append(
        {
            "episode": slot.episode,
            "step": env.t,
            "global_step": job.global_step,
            "shield_active": decision.critic_applied,
            "allowed": np.flatnonzero(decision.allowed).tolist(),
            "masked_by_critic": _masked_detail(env.space, decision),
            "masked_by_bounds": np.flatnonzero(
                ~decision.allowed & ~decision.masked_by_critic
            ).tolist(),
            "chosen": int(action),
            "chosen_move": env.space.describe(action),
            "chosen_predicted_cost": float(decision.predicted_costs[action]),
            "observed_cost": cost,
            "costs": info["costs"],
            "violation": violation,
            "warmup": bool(info["warmup"]),
            "accepted": bool(info["accepted"]),
            "diverged": bool(info["diverged"]),
        }
    )
    step_metrics = {
        k: float(v)
        for k, v in record.items()
        if k not in _NOT_METRICS and v is not None and not (isinstance(v, float) and np.isnan(v))
    }
    tracker.log_step(slot.run_id, step_metrics, step=env.t)
    best = job.best
    # Only states certified safe at safety.confidence are ever selected.
    if (
        info["accepted"]
        and env.certified is Decision.SAFE
        and (best is None or env.metrics["val_acc"] > best.val_metrics["val_acc"])
    ):
        job.best = BestFeasible(
            slot.episode,
            env.t,
            job.global_step,
            dict(env.metrics),
            env.episode_seed,
            [e.to_dict() for e in env.schedule],
            {k: v.clone() for k, v in env.state.model.items()},
        )
    slot.obs, slot.decision = next_obs, next_decision
    return done


_NOT_METRICS = (
    "episode",
    "env_index",
    "step",
    "global_step",
    "action",
    "move",
    "samples_used",
    "verdict",
)


CONTROLLER_KIND = register_kind(
    "shieldtune.controller/v1",
    {
        "config": (dict,),
        "run_label": (str,),
        "parent_run_id": (str, type(None)),
        "agent": (dict,),
        "shield": (dict,),
        "slots": (list,),
        "job": (dict,),
        "torch_rng": (torch.Tensor,),
        "pending_metrics": (list,),
    },
)
#: The crash-safe controller checkpoint in a job's output folder, rewritten after every round.
STATE_FILE = "controller_state.pt"


def find_resume_state(output_dir: str | Path, run_id: str) -> dict[str, Any]:
    """The saved controller state of job ``run_id`` (its MLflow run id or output folder name)."""
    if not run_id or "/" in run_id or run_id in (".", "..") or not run_id.isprintable():
        raise CheckpointError(f"--resume {run_id!r} must be a run id (an output folder name)")
    path = Path(output_dir) / run_id / STATE_FILE
    if not is_existing_file(path):
        raise CheckpointError(
            f"no saved controller state for run {run_id} at {str(path)!r}; pass the run id "
            "printed by the interrupted job and the same tuner.output_dir"
        )
    return safe_load(path, CONTROLLER_KIND)


def run_tuning(
    cfg: Config,
    data: TaskData | None = None,
    executor: StepExecutor | None = None,
    resume: dict[str, Any] | None = None,
) -> TuningSummary:
    """Run a whole tuning job and return its summary (also written as ``summary.json``).

    After every round of environment steps the whole controller (networks, optimizers,
    replay buffer, critic, RNG states, environments, counters, best-so-far and the metric
    batches of that round) is saved atomically to ``STATE_FILE``; ``resume`` (from
    :func:`find_resume_state`) continues such a job where it stopped, with no step lost or
    repeated and no MLflow metric logged twice.
    """
    from shieldtune import __version__

    start = time.perf_counter()
    torch.manual_seed(cfg.tuner.seed)
    task = make_task(cfg.task)
    data = data if data is not None else load_task_data(task, cfg.data)
    # The model must fit the data before a run is opened or anything is trained.
    check_model(task, build_model(task, cfg.tuner.seed, torch.device("cpu")), data)
    if cfg.tuner.executor != "kubernetes":  # steps run on this machine: its device must exist
        resolve_device(cfg.training.device)
    env = HyperparamEnv(cfg)  # sizes the networks; the slots' environments do the work
    obs_dim = int(env.observation_space.shape[0])
    n_actions = int(env.action_space.n)
    agent = DQNAgent(
        obs_dim, n_actions, cfg.agent, seed=cfg.tuner.seed, baseline_action=env.space.keep_action
    )
    shield = SafetyShield(obs_dim, n_actions, cfg.shield, seed=cfg.tuner.seed)
    warm_note = "cold start"
    if cfg.tuner.warm_start and resume is None:
        warm_note = _warm_start(cfg.tuner.warm_start, agent, shield)

    _check_output_dir(Path(cfg.tuner.output_dir))
    tracker = Tracker(cfg, __version__)
    lock: RunLock | None = None
    if resume is not None:  # one process per run, before anything is logged again
        run_label = resume["run_label"]
        # (A retried pipeline task resumes from MLflow on a fresh disk: create it.)
        out_dir = _make_run_dir(Path(cfg.tuner.output_dir) / run_label)
        lock = RunLock(out_dir, run_label).acquire()
    n_envs = min(cfg.tuner.num_envs, cfg.tuner.episodes)
    slots: list[_Slot] = []
    job = _JobState()
    controller = _Timer()
    total_steps = cfg.tuner.episodes * cfg.env.steps_per_episode
    status = "FAILED"
    state_file: Path | None = None
    bar = None
    try:
        if resume is None:
            tracker.start()
            tracker.log_datasets(data, task.name)
            # Without MLflow, a time stamp plus a random suffix: two jobs started in the
            # same second must never share (and overwrite) a folder.
            run_label = tracker.parent_id or (
                f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
            )
            out_dir = _make_run_dir(Path(cfg.tuner.output_dir) / run_label)
            lock = RunLock(out_dir, run_label).acquire()
        elif resume["parent_run_id"]:
            tracker.attach(resume["parent_run_id"], resumed=True)
        where = (
            ""
            if cfg.tuner.output_dir == DEFAULT_OUTPUT_DIR
            else f" --set tuner.output_dir={shlex.quote(cfg.tuner.output_dir)}"
        )
        hint = f"shieldtune tune --resume {run_label}{where}"
        # The environments get their executor once the first state is saved (starting one
        # can take seconds: loading data, spawning workers).
        slots = [_Slot(i, HyperparamEnv(cfg, executor)) for i in range(n_envs)]

        def checkpoint() -> None:
            """Save the controller, then send the round's metrics (resent on resume if lost)."""
            pending = tracker.take_held()
            atomic_save(
                {
                    "kind": CONTROLLER_KIND,
                    "config": cfg.to_dict(),
                    "run_label": run_label,
                    "parent_run_id": tracker.parent_id,
                    "agent": agent.snapshot(),
                    "shield": shield.snapshot(),
                    "slots": [slot.snapshot() for slot in slots],
                    "job": {
                        **job.snapshot(),
                        "wall_before": job.wall_before + time.perf_counter() - start,
                        "controller_before": job.controller_before + controller.seconds,
                    },
                    "torch_rng": torch.get_rng_state(),
                    "pending_metrics": pending,
                },
                out_dir / STATE_FILE,
            )
            nonlocal state_file
            state_file = out_dir / STATE_FILE
            if cfg.tuner.checkpoint_to_mlflow:
                tracker.log_artifact(out_dir / STATE_FILE, CONTROLLER_ARTIFACTS)
            tracker.send(pending)

        if resume is not None:
            try:
                agent.restore(resume["agent"])
                shield.restore(resume["shield"])
                for slot, snap in zip(slots, resume["slots"], strict=True):
                    slot.restore(snap)
                job = _JobState.restore(resume["job"])
                torch.set_rng_state(resume["torch_rng"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise CheckpointError(
                    f"the saved state of run {run_label} is incomplete or from another version "
                    f"({type(exc).__name__}: {first_line(exc, 120)}); it cannot be resumed"
                ) from None
            tracker.send(resume["pending_metrics"], dedupe=True)
        else:  # resumable from the moment its MLflow run exists: a kill before step 1 loses
            job.warm_start = warm_note  # nothing and leaves nothing unresumable
            checkpoint()
        # Printed once the run can be resumed, always (it must survive a SIGKILL of a job that
        # shows no progress bar).
        print(
            f"run {run_label}: state saved after every step; if interrupted, continue with {hint}",
            file=sys.stderr,
            flush=True,
        )
        bar = tqdm(total=total_steps, desc="tuning", unit="step", disable=not cfg.tuner.progress)
        bar.update(job.global_step)
        if executor is None:
            executor = make_executor(cfg, data, tracker.parent_id)
        for slot in slots:
            slot.env.attach_executor(executor)

        # Each round hands one request per slot to the executor: a fresh model for a slot
        # starting its next episode, the next segment for a slot inside one.
        while job.stop_reason is None:
            tracker.hold()
            for slot in slots:
                if slot.episode is None and job.next_episode < cfg.tuner.episodes:
                    slot.begin(job.next_episode, tracker)
                    job.next_episode += 1
            active = [s for s in slots if s.episode is not None]
            if not active:
                job.stop_reason = "completed all episodes"
                break
            requests = []
            for slot in active:
                if slot.needs_reset:
                    seed = cfg.tuner.seed * 100_003 + slot.episode
                    requests.append(slot.env.prepare_reset(seed=seed))
                else:
                    with controller:
                        explore = None
                        if not slot.env.safe_reached:
                            explore = max(agent.epsilon, cfg.agent.epsilon_unsafe)
                        env = slot.env
                        safe = env.certified is Decision.SAFE
                        slot.action = agent.choose_action(
                            slot.obs,
                            slot.decision.allowed,
                            epsilon=explore,
                            baseline=env.space.baseline_action(env.hyperparameters, safe),
                        )
                    requests.append(slot.env.prepare_step(slot.action))
            for slot, result in zip(active, executor.run_many(requests), strict=True):
                if slot.needs_reset:
                    slot.obs, info = slot.env.complete_reset(result)
                    slot.needs_reset = False
                    with controller:
                        slot.decision = shield.decide(
                            slot.obs, info["action_mask"], warmup_cost=_warmup_cost(slot.env)
                        )
                    continue
                done = _learn_from_step(cfg, slot, result, agent, shield, tracker, job, controller)
                bar.update(1)
                bar.set_postfix(
                    best=f"{job.best.val_metrics['val_acc']:.4f}" if job.best else "-",
                    violations=job.violations,
                )
                stop = _early_stop(cfg, job.best, job.violations)
                if done or stop:
                    slot.end(tracker, job)
                if stop and job.stop_reason is None:
                    job.stop_reason = stop
            if job.stop_reason is None:
                checkpoint()
        for slot in slots:  # an early stop leaves parallel episodes unfinished
            if slot.episode is not None:
                slot.end(tracker, job)
        checkpoint()
        bar.close()
        summary = _finish(
            cfg, data, env, agent, shield, tracker, out_dir, job.records, job.audit, job.best
        )
        summary.update(
            episodes_run=job.next_episode,
            steps_run=job.global_step,
            samples_trained=job.samples,
            unsafe_segments=job.violations + job.warmup,
            violations=job.violations,
            warmup_steps=job.warmup,
            diverged_steps=job.diverged,
            certified_safe_states=job.certified_safe,
            undecided_states=job.undecided,
            step_retries=job.retries,
            num_envs=n_envs,
            executor=cfg.tuner.executor,
            stop_reason=job.stop_reason,
            warm_start=job.warm_start,
            wall_seconds=job.wall_before + time.perf_counter() - start,
            controller_seconds=job.controller_before + controller.seconds,
        )
        result = TuningSummary(**summary)
        result.registered_model = _publish(cfg, data, tracker, result)
        (out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
        tracker.log_artifact(out_dir / "summary.json")
        tracker.log_parent(
            {
                "wall_seconds": result.wall_seconds,
                "controller_seconds": result.controller_seconds,
                "violations": float(job.violations),
                "unsafe_segments": float(job.violations + job.warmup),
                "unsafe_warmup_segments": float(job.warmup),
                "steps_run": float(job.global_step),
                "diverged_steps": float(job.diverged),
            }
        )
        status = "FINISHED"
        return result
    except StorageError as exc:
        if state_file is None:
            raise
        raise StorageError(
            f"{exc}; the state up to the last completed step is saved: after freeing space, "
            f"continue with {hint}"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if executor is not None:
            executor.close()
        try:
            tracker.finish(status)
        finally:
            if lock is not None:
                lock.release()


def _make_run_dir(folder: Path) -> Path:
    """``folder`` (and its parents), or a one-line StorageError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {str(folder)!r}: {exc.strerror or exc}") from None
    return folder


def _check_output_dir(folder: Path) -> None:
    """Refuse, before any MLflow run is opened and without creating anything, a
    ``tuner.output_dir`` that cannot hold runs: a file, or below an unwritable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if existing.exists() and not existing.is_dir():
        problem = f"{str(existing)!r} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{str(existing)!r} is not writable"
    if problem:
        raise StorageError(
            f"tuner.output_dir {str(folder)!r} cannot hold the run: {problem}; point it at a "
            "writable folder"
        )


def _warm_start(source: str, agent: DQNAgent, shield: SafetyShield) -> str:
    """Load a policy file into the agent and the critic; what happened, in words."""
    policy = safe_load(source, POLICY_KIND)
    agent.load_state_dict(policy["agent"], warm_start=True)
    shield.load_state_dict(policy["shield"], warm_start=True)
    return f"warm start from {source}"


def _warmup_cost(env: HyperparamEnv) -> float | None:
    """The episode's current cost while it has not yet been safe (the shield's warm-up rule)."""
    return None if env.safe_reached else float(env.cost)


def _early_stop(cfg: Config, best: BestFeasible | None, violations: int) -> str | None:
    t = cfg.tuner
    if (
        t.target_val_acc is not None
        and best is not None
        and best.val_metrics["val_acc"] >= t.target_val_acc
    ):
        return f"reached target_val_acc {t.target_val_acc}"
    if t.max_violations is not None and violations >= t.max_violations:
        return f"hit max_violations {t.max_violations}"
    return None


def _finish(
    cfg: Config,
    data: TaskData,
    env: HyperparamEnv,
    agent: DQNAgent,
    shield: SafetyShield,
    tracker: Tracker,
    out_dir: Path,
    records: list[dict[str, Any]],
    audit: list[dict[str, Any]],
    best: BestFeasible | None,
) -> dict[str, Any]:
    """Evaluate the best feasible checkpoint on test and write/log every artifact."""
    _note(f"tuning done; writing the run's artifacts to {out_dir}")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with open(out_dir / "shield_audit.jsonl", "w") as fh:
        for entry in audit:
            fh.write(json.dumps(entry) + "\n")
    with open(out_dir / "steps.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    policy_path = save_policy(
        out_dir / "agent.pt", agent.state_dict(), shield.state_dict(), env.space.names
    )
    plot_path = None
    if records:
        chosen = None if best is None else best.global_step
        plot_path = plot_steps(
            records, env.space.names, out_dir / "schedule.png", env.constraints, chosen
        )
    for path, folder in (
        (out_dir / "config.yaml", None),
        (out_dir / "shield_audit.jsonl", None),
        (out_dir / "steps.jsonl", None),
        (policy_path, "policy"),
        (plot_path, "plots"),
    ):
        if path is not None:
            tracker.log_artifact(path, folder)
    tracker.log_audit(audit)

    test_metrics = best_dict = None
    if best is not None:
        if cfg.tuner.test_report:
            task = make_task(cfg.task)
            model = build_model(task, best.init_seed, torch.device("cpu"))
            model.load_state_dict(best.model_state)
            model.eval()
            device = resolve_device(cfg.training.device)
            _note(
                f"evaluating the best certified-safe checkpoint on the {len(data.test)}-sample "
                "test split (accuracy, FGSM, PGD, membership inference)..."
            )
            test_metrics = test_report(task, model, data, cfg.safety, device, cfg.tuner.seed)
        best_dict = {
            "episode": best.episode,
            "step": best.step,
            "global_step": best.global_step,
            "val_metrics": best.val_metrics,
            "init_seed": best.init_seed,
            "schedule": best.schedule,
            "checkpoint": str(out_dir / "best_model.pt"),
        }
        save_model_checkpoint(
            out_dir / "best_model.pt",
            best.model_state,
            cfg.to_dict(),
            {"init_seed": best.init_seed, "segments": best.schedule},
            test_metrics or best.val_metrics,
        )
        if test_metrics is not None:
            tracker.log_parent(with_test_prefix(test_metrics))
    return {
        "feasible_found": best is not None,
        "constraints": list(cfg.safety.constraints),
        "best": best_dict,
        "test_metrics": test_metrics,
        "output_dir": str(out_dir),
        "tracking_uri": redact(tracker.uri) if tracker.enabled else None,
        "mlflow_run_id": tracker.parent_id,
        "registered_model": None,
    }


def _publish(
    cfg: Config, data: TaskData, tracker: Tracker, result: TuningSummary
) -> dict[str, Any] | None:
    """Register the chosen model and decide promotion (or record that nothing was found)."""
    if result.best is None:
        tracker.set_outcome(
            "no feasible schedule",
            f"no state was certified safe in {result.steps_run} steps; nothing was registered",
        )
        return None
    if result.test_metrics is None:
        return None
    if not (tracker.enabled and cfg.tracking.log_model):
        gate = "passed" if result.test_metrics["constraints_satisfied"] else "failed"
        tracker.set_outcome(f"safety gate {gate}", "tracking.log_model is off: not registered")
        return None
    counts = {
        k: float(getattr(result, k))
        for k in ("steps_run", "unsafe_segments", "warmup_steps", "violations", "diverged_steps")
    }
    _note(
        f"registering the model as {cfg.registered_model_name} and comparing it with the "
        "current champion on the same test split..."
    )
    return publish_checkpoint(
        tracker, cfg, data, Path(result.best["checkpoint"]), result.test_metrics, counts
    )


def with_test_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """``test_``-prefixed metric names for MLflow (``test_acc`` stays as it is)."""
    return {k if k.startswith("test_") else f"test_{k}": v for k, v in metrics.items()}
