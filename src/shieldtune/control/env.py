"""``shieldtune/Hyperparam-v0``: hyperparameter tuning as a Gymnasium environment.

One episode is one training run from a fresh model; one step trains one
segment with the hyperparameters the action chose, then evaluates it.

* Observation (all in [-1, 1]): validation accuracy, FGSM robust accuracy,
  membership-inference advantage, the spec's cost, each hyperparameter
  normalised within its bounds (log scale where configured), budget progress,
  last reward.
* Action: ``Discrete(3**d)``, decrease / keep / increase each tunable
  hyperparameter by its configured factor.
* Reward: validation-accuracy gain (the seed's definition) plus
  ``shield.safety_shaping`` x the spec violation removed, optionally minus
  ``shield.cost_penalty * max(cost, 0)``.
* The budget's end is ``terminated`` (the observation carries budget progress, so
  it is part of the state, not a time limit); ``truncated`` is always False.
* ``render_mode``: ``rgb_array`` (the episode's trajectory so far as an image: the
  hyperparameters, validation accuracy and each constraint's metric with its threshold)
  or ``ansi`` (a text row per step); see :mod:`shieldtune.control.render`.
* ``action_masks()``: the allowed actions as booleans, for sb3-contrib's MaskablePPO.

``info``, the same keys after ``reset`` and ``step``:

* ``action_mask`` (int8, as Gymnasium's own envs; usable with
  ``action_space.sample(mask=...)``): actions the hard bounds allow next;
* ``step``: segments trained in this episode;
* ``hyperparameters``: the accepted levels now; ``proposed_hyperparameters``: the
  levels this step trained at (``trained_hyperparameters``: the values the optimizer
  used, a level with its schedule applied, e.g. times the cosine decay; after ``reset``:
  the initial levels);
* ``metrics``: the accepted state's metrics; ``observed_metrics``: this step's
  measured result, accepted or not (after ``reset``: the fresh model's);
* ``samples_used``: training samples spent in this episode;
* ``state_cost`` / ``state_certified``: the accepted state's cost and verdict;
  ``safe_reached``: the episode has had a safe state (warm-up is over);
* ``cost``: the observed result's signed violation (<= 0 is safe); ``costs``: per
  constraint; ``constraint_satisfied``: ``cost <= 0``; ``certified``: ``safe``,
  ``unsafe`` or ``undecided`` at ``safety.confidence``;
* ``violation``: broke the spec after the episode's first safe state; ``warmup``:
  broke it before; ``accepted``: False when the segment was rolled back;
  ``collapsed``: lost more than ``shield.collapse_drop`` accuracy (rolled back);
  ``diverged``: NaN/inf or exploding loss (ends the episode). All False after reset.

``last_timing`` (an attribute, not in ``info``, which stays a deterministic function
of seed and actions): the last step's train and evaluation seconds and attempts.
``accepted_checkpoint()``: the accepted model, its init seed and schedule.

Warm-up and violations: a fresh model is never safe (an untrained CNN has about
10% accuracy and no robustness), so until an episode first reaches a safe
state there is nothing safe to return to. Those warm-up segments are accepted
and reported with ``warmup=True``. From the first safe state on, a segment
whose result breaks the spec is a *violation*: it is recorded and, with
``shield.rollback``, not accepted: the model, optimizer state and
hyperparameters return to the last safe state, so no accepted model after
warm-up ever violates the spec. A diverging segment (NaN/inf or exploding
loss) is never accepted and ends the episode instead of crashing; it counts as
a violation after the first safe state and as warm-up before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from shieldtune.config import Config, config_from_dict
from shieldtune.executors.base import StepExecutor
from shieldtune.job import Job
from shieldtune.rng import rng_state, set_rng_state
from shieldtune.safety.spec import spec_cost
from shieldtune.safety.stats import Decision
from shieldtune.training.step import StepRequest, StepResult, TrainState

ENV_ID = "shieldtune/Hyperparam-v0"
OBS_METRICS = ("val_acc", "fgsm_robust_acc", "mia_advantage")


@dataclass(frozen=True)
class ScheduleEntry:
    """One accepted segment of the schedule that produced the current model."""

    step: int
    hyperparameters: dict[str, float]
    samples: int
    #: The segment's training seed: with the episode's init seed, replaying the
    #: accepted entries reproduces the model bit for bit on CPU.
    seed: int

    def to_dict(self) -> dict[str, float]:
        return {
            "step": self.step,
            "samples": self.samples,
            "seed": self.seed,
            **self.hyperparameters,
        }


@dataclass(frozen=True)
class AcceptedModel:
    """An episode's accepted model: enough to save it and to retrain it from scratch."""

    init_seed: int
    schedule: list[dict[str, float]]
    model_state: dict[str, Any]
    metrics: dict[str, float]


def _segment_seed(episode_seed: int, step: int, member: int = 0) -> int:
    """Segment ``step``'s data-order seed; a population member after the first has a stream
    of its own, so a member that copied another's state does not replay its batches."""
    key = [episode_seed, step] if member == 0 else [episode_seed, step, member]
    return int(np.random.SeedSequence(key).generate_state(1)[0] & 0x7FFFFFFF)


class HyperparamEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(
        self,
        config: Job | Config | dict | None = None,
        executor: StepExecutor | None = None,
        render_mode: str | None = None,
        *,
        member: int = 0,
        start_levels: dict[str, float] | None = None,
        steps_per_episode: int | None = None,
    ) -> None:
        """``config``: the job (or a config or plain config data, resolved here: the way
        ``gymnasium.make(ENV_ID, config=...)`` passes it). The env reads the job's search
        space, constraints, fixed hyperparameters, the episode's length and segment size, and
        the shield's judging rules; ``executor`` runs its steps (default: in this process).

        A population member (see :mod:`shieldtune.control.population`) has its own
        ``member`` index (its segments' data-order stream), ``start_levels`` and, when the
        budget is split between members, its own ``steps_per_episode``."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; choose one of "
                f"{', '.join(self.metadata['render_modes'])} or None"
            )
        self.render_mode = render_mode
        job = _as_job(config)
        self.space = job.space
        self.constraints = job.constraints
        self._fixed = job.fixed
        self._steps_per_episode = steps_per_episode or job.config.env.steps_per_episode
        self.member = member
        self._start_levels = dict(start_levels) if start_levels else None
        self._segment_samples = job.config.training.segment_samples
        self._rules = job.config.shield
        self._step_spec = job.steps
        self.action_space = gym.spaces.Discrete(self.space.n_actions)
        n_obs = len(OBS_METRICS) + 1 + len(self.space.specs) + 2
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(n_obs,), dtype=np.float32)
        self._executor = executor
        self.state: TrainState | None = None
        self.hyperparameters: dict[str, float] = self.space.initial()
        self.metrics: dict[str, float] = {}
        self.schedule: list[ScheduleEntry] = []
        self.episode_seed = 0
        self.t = 0
        self.samples_used = 0
        self._last_reward = 0.0
        self.cost = 0.0
        #: The accepted state's verdict at safety.confidence (only certified-safe states are
        #: ever selected as the job's model).
        self.certified = Decision.UNDECIDED
        self.safe_reached = False
        self.last_timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "attempts": 1}
        self._proposed: dict[str, float] | None = None
        #: The validation accuracy a state must beat to be selectable (a job sets it to its
        #: best certified state's; -inf certifies every state as far as the looks go).
        self.selection_bar = float("-inf")
        #: What render() draws: one row per step of this episode.
        self._history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ plumbing
    @property
    def executor(self) -> StepExecutor:
        if self._executor is None:
            from shieldtune.executors.local import LocalStepExecutor

            self._executor = LocalStepExecutor(self._step_spec.runner())
        return self._executor

    def attach_executor(self, executor: StepExecutor) -> None:
        """Hand the environment the executor its steps run on (the tuner starts it late)."""
        self._executor = executor

    @property
    def episode_budget(self) -> int:
        return self._steps_per_episode * self._segment_samples

    def full_hyperparameters(self, tuned: dict[str, float]) -> dict[str, float]:
        """Every hyperparameter of the segment at step ``t``: fixed ones, and the tuned levels
        with their schedules applied at this point of the episode's budget."""
        progress = max(self.t - 1, 0) / self._steps_per_episode
        return {**self._fixed, **self.space.scheduled(tuned, progress)}

    def _tuned(self, values: dict[str, float]) -> dict[str, float]:
        return {name: float(values[name]) for name in self.space.names}

    def action_mask(self) -> np.ndarray:
        """Actions the hard bounds allow from here, as int8 (Gymnasium's mask convention)."""
        return self.space.valid_mask(self.hyperparameters).astype(np.int8)

    def action_masks(self) -> np.ndarray:
        """The same as booleans: the method sb3-contrib's MaskablePPO calls."""
        return self.space.valid_mask(self.hyperparameters)

    def costs(self, metrics: dict[str, float]) -> dict[str, float]:
        return {str(c): c.cost(metrics) for c in self.constraints}

    def _observation(self) -> np.ndarray:
        m = [self.metrics.get(k, 0.0) for k in OBS_METRICS]
        obs = np.concatenate(
            [
                np.asarray([*m, self.cost], dtype=np.float32),
                self.space.normalise(self.hyperparameters),
                np.asarray(
                    [self.samples_used / self.episode_budget, self._last_reward], dtype=np.float32
                ),
            ]
        )
        return np.clip(obs, -1.0, 1.0).astype(np.float32)

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {
            "action_mask": self.action_mask(),
            "step": self.t,
            "hyperparameters": dict(self.hyperparameters),
            "metrics": dict(self.metrics),
            "samples_used": self.samples_used,
            "state_cost": float(self.cost),
            "state_certified": self.certified.name.lower(),
            "safe_reached": self.safe_reached,
            **extra,
        }

    def accepted_checkpoint(self) -> AcceptedModel:
        """The accepted state as a model a job may select: weights (a copy), the init seed
        and the schedule that reproduces it, and its validation metrics."""
        if self.state is None:
            raise RuntimeError("call reset() before accepted_checkpoint()")
        return AcceptedModel(
            self.episode_seed,
            [e.to_dict() for e in self.schedule],
            {k: v.clone() for k, v in self.state.model.items()},
            dict(self.metrics),
        )

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        request = self.prepare_reset(seed=seed)
        return self.complete_reset(self.executor.run(request))

    def step(self, action: int):
        return self.complete_step(self.executor.run(self.prepare_step(action)))

    # The gym calls above in two halves, so that a batch of environments can hand all
    # their segments to the executor at once (``run_many``) and train them in parallel.
    def prepare_reset(self, *, seed: int | None = None) -> StepRequest:
        """Start a new episode; returns the request that builds (and evaluates) a fresh model."""
        super().reset(seed=seed)
        self.episode_seed = int(self.np_random.integers(2**31 - 1))
        self.hyperparameters = dict(self._start_levels or self.space.initial())
        self.t = self.samples_used = 0
        self.schedule = []
        self._history = []
        self._last_reward = 0.0
        self._proposed = None
        return StepRequest(
            None, self.full_hyperparameters(self.hyperparameters), 0, self.episode_seed
        )

    def complete_reset(self, result: StepResult) -> tuple[np.ndarray, dict[str, Any]]:
        self.state, self.metrics = result.state, result.metrics
        self.cost = spec_cost(self.constraints, self.metrics)
        self.certified = Decision(int(self.metrics.get("certified", Decision.UNDECIDED)))
        self.safe_reached = self.cost <= 0
        info = self._info(
            cost=self.cost,
            costs=self.costs(self.metrics) if "val_acc" in self.metrics else {},
            constraint_satisfied=self.cost <= 0,
            certified=self.certified.name.lower(),
            violation=False,
            warmup=False,
            accepted=True,
            collapsed=False,
            diverged=False,
            proposed_hyperparameters=dict(self.hyperparameters),
            trained_hyperparameters=self._tuned(self.full_hyperparameters(self.hyperparameters)),
            observed_metrics=dict(self.metrics),
        )
        return self._observation(), info

    def prepare_step(self, action: int) -> StepRequest:
        """Apply ``action`` to the hyperparameters; returns the segment to train."""
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        if self._proposed is not None:
            raise RuntimeError("complete_step() the previous step before preparing another")
        self._proposed = self.space.apply(self.hyperparameters, int(action))
        self.t += 1
        return StepRequest(
            self.state,
            self.full_hyperparameters(self._proposed),
            self._segment_samples,
            _segment_seed(self.episode_seed, self.t, self.member),
            self.selection_bar,
        )

    def complete_step(self, result: StepResult):
        """Judge the trained segment (accept, roll back, or end on divergence)."""
        if self._proposed is None:
            raise RuntimeError("prepare_step() must come before complete_step()")
        proposed, self._proposed = self._proposed, None
        seed = _segment_seed(self.episode_seed, self.t, self.member)
        self.samples_used += result.samples
        previous_acc = self.metrics["val_acc"]
        previous_violation = max(self.cost, 0.0)
        if result.diverged:
            cost = self._rules.divergence_cost
            costs = {str(c): cost for c in self.constraints}
            observed = {"val_acc": 0.0}
            certified = Decision.UNSAFE
        else:
            cost = spec_cost(self.constraints, result.metrics)
            costs = self.costs(result.metrics)
            observed = result.metrics
            certified = Decision(int(result.metrics.get("certified", Decision.UNDECIDED)))
        unsafe = cost > 0
        # Before the episode's first safe state every unsafe segment is warm-up, a diverged one
        # included (there was never a safe state for it to come "after").
        warmup = unsafe and not self.safe_reached
        violation = unsafe and not warmup
        drop = self._rules.collapse_drop
        collapsed = (
            not result.diverged and drop is not None and observed["val_acc"] < previous_acc - drop
        )
        accepted = (
            not result.diverged
            and not (violation and self._rules.rollback)
            and not (collapsed and self._rules.rollback)
        )
        if accepted:
            self.state, self.metrics, self.hyperparameters = result.state, result.metrics, proposed
            self.cost = cost
            self.certified = certified
            self.safe_reached = self.safe_reached or not unsafe
            self.schedule.append(
                ScheduleEntry(self.t, self.full_hyperparameters(proposed), result.samples, seed)
            )
        # A collapse is rolled back but, like a divergence, pays what it would have cost.
        felt = accepted or result.diverged or collapsed
        reward = observed["val_acc"] - previous_acc if felt else 0.0
        reward -= self._rules.cost_penalty * max(cost, 0.0)
        if not result.diverged:
            # Shaping toward safety (potential -max(c, 0)): each unit of violation the accepted
            # state removes is rewarded, each unit it adds is charged.
            reward += self._rules.safety_shaping * (previous_violation - max(self.cost, 0.0))
        self._last_reward = float(np.clip(reward, -1.0, 1.0))
        terminated = bool(result.diverged) or self.t >= self._steps_per_episode
        truncated = False
        info = self._info(
            cost=cost,
            costs=costs,
            constraint_satisfied=not unsafe,
            certified=certified.name.lower(),
            violation=violation,
            warmup=warmup,
            accepted=accepted,
            collapsed=collapsed,
            diverged=result.diverged,
            proposed_hyperparameters=proposed,
            trained_hyperparameters=self._tuned(self.full_hyperparameters(proposed)),
            observed_metrics=dict(observed),
        )
        # Timings live outside ``info`` so that info is a deterministic function of seed and action.
        self.last_timing = {
            "train_seconds": result.train_seconds,
            "eval_seconds": result.eval_seconds,
            "attempts": result.attempts,
        }
        self._history.append(
            {
                "step": self.t,
                **info["trained_hyperparameters"],
                **{k: float(v) for k, v in observed.items()},
                "accepted": bool(accepted),
            }
        )
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | str | None:
        """The episode so far: an RGB image (``rgb_array``) or text rows (``ansi``)."""
        from shieldtune.control import render

        if self.render_mode == "rgb_array":
            return render.trajectory_rgb(self._history, self.space.names, self.constraints)
        if self.render_mode == "ansi":
            return render.trajectory_ansi(self._history, self.space.names, self.constraints)
        return None

    def snapshot(self) -> dict[str, Any]:
        """This environment between steps, for a crash-safe checkpoint (weights-only types)."""
        if self._proposed is not None:
            raise RuntimeError("snapshot() between prepare_step() and complete_step()")
        return {
            "model": None if self.state is None else self.state.model,
            "optimizer": None if self.state is None else self.state.optimizer,
            "hyperparameters": dict(self.hyperparameters),
            "metrics": dict(self.metrics),
            "schedule": [e.to_dict() for e in self.schedule],
            "episode_seed": self.episode_seed,
            "t": self.t,
            "samples_used": self.samples_used,
            "last_reward": self._last_reward,
            "history": [dict(h) for h in self._history],
            "cost": self.cost,
            "certified": int(self.certified),
            "safe_reached": self.safe_reached,
            "np_random": rng_state(self.np_random),
        }

    def adopt(self, donor: HyperparamEnv) -> None:
        """Take over ``donor``'s whole accepted state (weights, optimizer, levels, schedule
        position and history: PBT's exploit), keeping this env's own member stream and RNG."""
        own_rng = rng_state(self.np_random)
        self.restore(donor.snapshot())
        set_rng_state(self.np_random, own_rng)

    def restore(self, snap: dict[str, Any]) -> None:
        model = snap["model"]
        self.state = None if model is None else TrainState(model, snap["optimizer"] or {})
        self.hyperparameters = dict(snap["hyperparameters"])
        self.metrics = dict(snap["metrics"])
        self.schedule = [
            ScheduleEntry(
                int(e["step"]),
                {k: v for k, v in e.items() if k not in ("step", "samples", "seed")},
                int(e["samples"]),
                int(e["seed"]),
            )
            for e in snap["schedule"]
        ]
        self.episode_seed, self.t = int(snap["episode_seed"]), int(snap["t"])
        self.samples_used, self._last_reward = int(snap["samples_used"]), snap["last_reward"]
        self._history = [dict(h) for h in snap["history"]]
        self.cost, self.safe_reached = snap["cost"], bool(snap["safe_reached"])
        self.certified = Decision(int(snap["certified"]))
        set_rng_state(self.np_random, snap["np_random"])

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()


def _as_job(config: Job | Config | dict | None) -> Job:
    if isinstance(config, Job):
        return config
    return Job.from_config(config if isinstance(config, Config) else config_from_dict(config))


def register() -> None:
    """Register ``shieldtune/Hyperparam-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="shieldtune.control.env:HyperparamEnv")
