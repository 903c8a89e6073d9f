"""Population mode: N whole-budget training runs of one episode, learning together.

With ``tuner.episodes: 1`` and ``tuner.num_envs: N > 1`` the one training run
becomes a population of N *members* stepping at the same time through the
executor (N worker processes, N Kubernetes Jobs in flight). One DQN and one
safety critic learn from all N transition streams. Members start spread: member
0 at the user's start values, every other member a seeded move of one factor
up, down or kept per hyperparameter (within the bounds), from its own init seed.

Every ``tuner.exploit_interval`` segments the shield runs PBT's exploit step
(Jaderberg et al. 2017, truncation selection) under the safety constraint: a
member in the bottom ``tuner.exploit_fraction`` by validation accuracy, or
one whose state is not certified safe, copies the full state (weights,
optimizer, hyperparameter levels, schedule position and history) of a member
drawn from the top fraction *that is certified safe*, and never from an unsafe
one. The explore step is the DQN's: the copier takes the policy's best allowed
action other than the one its donor takes next, so the learned policy is what
explores. Exploit moves are shield decisions and are recorded as such (the
audit, the members' MLflow runs, the plot).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shieldtune.config import TunerConfig
from shieldtune.control.env import HyperparamEnv
from shieldtune.control.job_state import JobState, Slot
from shieldtune.control.search_space import SearchSpace
from shieldtune.control.vector_env import HyperparamVectorEnv
from shieldtune.executors.base import StepExecutor
from shieldtune.job import Job
from shieldtune.rng import rng_state, set_rng_state
from shieldtune.tracking.tracker import Tracker


@dataclass(frozen=True)
class MemberView:
    """What the exploit rule reads of a member: its accepted state's accuracy and verdict."""

    index: int
    step: int
    val_acc: float
    certified_safe: bool


@dataclass(frozen=True)
class Exploit:
    """Member ``copier`` takes over member ``donor``'s state after segment ``step``."""

    copier: int
    donor: int
    step: int
    reason: str
    copier_val_acc: float
    donor_val_acc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def member_seed(seed: int, episode: int, member: int) -> int:
    """The reset seed of ``member``: member 0 keeps the single run's (so N = 1 is unchanged)."""
    if member == 0:
        return seed * 100_003 + episode
    return int(np.random.SeedSequence([seed, episode, member]).generate_state(1)[0] & 0x7FFFFFFF)


def spread_levels(space: SearchSpace, member: int, seed: int) -> dict[str, float]:
    """Member ``member``'s start levels: the user's for member 0; for the others one seeded
    move (down, keep or up by the dimension's factor) per hyperparameter, inside its bounds."""
    levels = space.initial()
    if member == 0:
        return levels
    rng = np.random.default_rng([seed, member, 7])
    moves = rng.integers(-1, 2, size=len(space.specs))
    if not moves.any():  # a member identical to member 0 adds nothing: move the first dimension
        moves[0] = 1 if member % 2 else -1
    return space.apply(levels, space.action_of(moves))


class ExploitRule:
    """PBT's truncation selection with certified-safe donors (see the module docstring)."""

    def __init__(self, interval: int, fraction: float, seed: int) -> None:
        self.interval = interval
        self.fraction = fraction
        self.rng = np.random.default_rng([seed, 11])

    def due(self, step: int) -> bool:
        """Whether the members decide after segment ``step`` (never after the last one)."""
        return self.interval > 0 and step > 0 and step % self.interval == 0

    def plan(self, members: list[MemberView]) -> list[Exploit]:
        """Which members copy which, best donors first; nothing when no member is certified
        safe (there is no state safe to copy)."""
        if len(members) < 2:
            return []
        k = max(1, math.floor(len(members) * self.fraction))
        ranked = sorted(members, key=lambda m: (-m.val_acc, m.index))
        donors = [m for m in ranked[:k] if m.certified_safe]
        if not donors:
            return []
        behind = {m.index for m in ranked[-k:]}
        donor_ids = {d.index for d in donors}
        out = []
        for m in members:
            if m.index in donor_ids:
                continue
            reason = "unsafe" if not m.certified_safe else "behind" if m.index in behind else None
            if reason is None:
                continue
            donor = donors[int(self.rng.integers(len(donors)))]
            if reason == "behind" and donor.val_acc <= m.val_acc:
                continue
            out.append(Exploit(m.index, donor.index, m.step, reason, m.val_acc, donor.val_acc))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def restore(self, snap: dict[str, Any]) -> None:
        set_rng_state(self.rng, snap["rng"])


class Population:
    """The exploit step of a population's rounds, applied to the slots and their envs."""

    def __init__(self, rule: ExploitRule) -> None:
        self.rule = rule

    def exploit(
        self, slots: list[Slot], vec: HyperparamVectorEnv, state: JobState, tracker: Tracker
    ) -> None:
        """After a round: when the members are due, each copier takes its donor's state."""
        views = [
            MemberView(
                slot.index,
                int(slot.info["step"]),
                float(slot.info["metrics"]["val_acc"]),
                slot.info["state_certified"] == "safe",
            )
            for slot in slots
            if slot.episode is not None and slot.info is not None and not slot.needs_reset
        ]
        steps = {v.step for v in views}
        if len(steps) != 1 or not self.rule.due(steps.pop()):
            return
        for e in self.rule.plan(views):
            copier, donor = slots[e.copier], slots[e.donor]
            assert donor.obs is not None and donor.info is not None
            vec.envs[e.copier].adopt(vec.envs[e.donor])
            copier.obs, copier.info = donor.obs.copy(), dict(donor.info)
            copier.decision, copier.copied_from = donor.decision, e.donor
            entry = {
                "decision": "exploit",
                "episode": copier.episode,
                "global_step": state.global_step,
                **e.to_dict(),
            }
            state.exploits.append(entry)
            state.audit.append(entry)
            tracker.tag_lineage(copier.run_id, e.step, e.donor, e.reason)

    def snapshot(self) -> dict[str, Any]:
        return self.rule.snapshot()

    def restore(self, snap: dict[str, Any]) -> None:
        self.rule.restore(snap)


def member_environments(job: Job, executor: StepExecutor | None) -> list[HyperparamEnv]:
    """The envs of a job: ``num_envs`` members of the one episode (spread start levels, the
    budget full or split), or ``min(num_envs, episodes)`` envs taking the episodes in turn."""
    t = job.config.tuner
    if not is_population(t):
        return [HyperparamEnv(job, executor) for _ in range(min(t.num_envs, t.episodes))]
    return [
        HyperparamEnv(
            job,
            executor,
            member=m,
            start_levels=spread_levels(job.space, m, t.seed),
            steps_per_episode=member_steps(job),
        )
        for m in range(t.num_envs)
    ]


def member_steps(job: Job) -> int:
    """Segments each member trains: the episode's, or its share (tuner.member_budget split)."""
    t, steps = job.config.tuner, job.config.env.steps_per_episode
    return steps if t.member_budget == "full" else max(1, steps // t.num_envs)


def exploit_rule(job: Job) -> ExploitRule:
    """The job's rule, every tuner.exploit_interval segments (default: a member's quarter)."""
    t = job.config.tuner
    interval = t.exploit_interval
    if interval is None:
        interval = max(2, member_steps(job) // 4)
    return ExploitRule(interval, t.exploit_fraction, t.seed)


def is_population(tuner: TunerConfig) -> bool:
    """One episode stepped by several envs: a population of training runs."""
    return tuner.episodes == 1 and tuner.num_envs > 1


def total_steps(job: Job) -> int:
    """Segments the whole job trains (every member's, in population mode)."""
    t = job.config.tuner
    if not is_population(t):
        return t.episodes * job.config.env.steps_per_episode
    return t.num_envs * member_steps(job)
