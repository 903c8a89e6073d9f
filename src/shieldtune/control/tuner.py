"""The tuning job: N episodes of the shielded DQN controller loop.

Per round, every environment slot with an episode to run either starts it
(a fresh model) or takes one step: the shield masks the actions it predicts
unsafe, the agent picks an allowed one, the vector env trains all the slots'
segments at once on the executor, and agent and critic learn from every
transition. The best *certified-safe* checkpoint and the schedule that
produced it are kept, evaluated once on the test split, and published
(:mod:`~shieldtune.control.finish`); after every round the whole controller is
saved so a killed job resumes where it stopped (:mod:`~shieldtune.control.job_state`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from shieldtune.config import Config
from shieldtune.control.controller import Learned, ShieldedController
from shieldtune.control.finish import TuningSummary, finish_job, with_test_prefix, write_summary
from shieldtune.control.job_state import (
    STATE_FILE,
    BackgroundSave,
    JobState,
    RunFolder,
    Slot,
    check_output_dir,
    completed_reason,
    early_stop,
    find_resume_state,
    new_run_label,
    restore_failed,
)
from shieldtune.control.population import (
    Population,
    exploit_rule,
    is_population,
    member_environments,
    member_seed,
    total_steps,
)
from shieldtune.control.records import StepContext, audit_entry, step_metrics, step_record
from shieldtune.control.vector_env import HyperparamVectorEnv, Outcome, Reset
from shieldtune.errors import StorageError
from shieldtune.executors.base import StepExecutor
from shieldtune.executors.factory import make_executor
from shieldtune.job import Job
from shieldtune.tasks.checker import check_model
from shieldtune.tasks.contract import TaskData, build_model
from shieldtune.tracking.run_info import describe_job
from shieldtune.tracking.tracker import CONTROLLER_ARTIFACTS, Tracker

__all__ = ["STATE_FILE", "TuningSummary", "find_resume_state", "run_tuning", "with_test_prefix"]


def run_tuning(
    job: Job | Config,
    data: TaskData | None = None,
    executor: StepExecutor | None = None,
    resume: dict[str, Any] | None = None,
) -> TuningSummary:
    """Run a whole tuning job and return its summary (also written as ``summary.json``);
    ``resume`` (from :func:`find_resume_state`) continues an interrupted job. A
    :class:`Config` is resolved into its :class:`Job` here, once."""
    from shieldtune import __version__

    start = time.perf_counter()
    job = job if isinstance(job, Job) else Job.from_config(job)
    cfg = job.config
    torch.manual_seed(cfg.tuner.seed)
    data = data if data is not None else job.load_data()
    # The model must fit the data before a run is opened or anything is trained.
    check_model(job.task, build_model(job.task, cfg.tuner.seed, torch.device("cpu")), data)
    if cfg.tuner.executor != "kubernetes":  # steps run on this machine: its device must exist
        job.device()
    vec = HyperparamVectorEnv(member_environments(job, executor), executor)
    streams = vec.num_envs if is_population(cfg.tuner) else 1
    obs_dim = int(vec.single_observation_space.shape[0])
    controller = ShieldedController(
        obs_dim, job.space, cfg.agent, cfg.shield, cfg.tuner.seed, streams
    )
    warm_note = "cold start"
    if cfg.tuner.warm_start and resume is None:
        warm_note = controller.warm_start(cfg.tuner.warm_start)
    check_output_dir(Path(cfg.tuner.output_dir))
    tracker = Tracker(cfg.tracking, __version__, describe_job(job))
    folder = None if resume is None else RunFolder(cfg.tuner.output_dir, resume["run_label"])
    status, bar, loop, result = "FAILED", None, None, None
    try:
        if resume is None:
            tracker.start()
            tracker.log_datasets(data, job.task.name)
            folder = RunFolder(cfg.tuner.output_dir, new_run_label(tracker.parent_id))
            tracker.resume_command = folder.resume_hint
        elif resume["parent_run_id"]:
            assert folder is not None
            tracker.resume_command = folder.resume_hint
            # (The local store the job started in: a resume from another folder finds it.)
            store = resume.get("tracking_store")
            tracker.attach(resume["parent_run_id"], resumed=True, store=store)
        loop = _Loop(job, vec, controller, tracker, folder, start)
        loop.begin(resume, warm_note)
        bar = tqdm(
            total=total_steps(job), desc="tuning", unit="step", disable=not cfg.tuner.progress
        )
        bar.update(loop.state.global_step)
        if executor is None:
            executor = make_executor(cfg.tuner, cfg.kubernetes, job.steps, data, tracker.parent_id)
        vec.attach_executor(executor)
        loop.run(bar)
        bar.close()
        result = loop.finish(data)
        status = "FINISHED"
        return result
    except StorageError as exc:
        if folder is None or not folder.saved:
            raise
        raise StorageError(
            f"{exc}; the state up to the last completed step is saved: after freeing space, "
            f"continue with {folder.resume_hint}"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if executor is not None:
            executor.close()
        try:
            tracker.finish(status)
            if result is not None and folder is not None:
                # The "finished" marker, last of all: a kill before it resumes and completes
                # the publishing (the MLflow run's metrics, artifacts, status).
                write_summary(folder.path, result)
        finally:
            if loop is not None:  # the lock is held until the state file is on disk
                loop.saver.join(then=False)
            if folder is not None:
                folder.release()


class _Loop:
    """The rounds of one job: slots, the vector env, the controller, counters and saving."""

    def __init__(
        self,
        job: Job,
        vec: HyperparamVectorEnv,
        controller: ShieldedController,
        tracker: Tracker,
        folder: RunFolder,
        start: float,
    ) -> None:
        self.job, self.cfg, self.vec = job, job.config, vec
        self.controller, self.tracker, self.folder = controller, tracker, folder
        self.start = start
        self.slots = [Slot(i) for i in range(vec.num_envs)]
        self.state = JobState()
        self.saver = BackgroundSave(folder)
        self.population = Population(exploit_rule(job)) if is_population(job.config.tuner) else None

    def begin(self, resume: dict[str, Any] | None, warm_note: str) -> None:
        """Restore a saved job, or save the first state (resumable from the moment its MLflow
        run exists: a kill before step 1 loses nothing); then print how to resume."""
        if resume is not None:
            try:
                self.controller.restore(resume["agent"], resume["shield"])
                self.vec.restore(resume["envs"])
                self.slots = [Slot.restore(s) for s in resume["slots"]]
                self.state = JobState.restore(resume["job"])
                torch.set_rng_state(resume["torch_rng"])
                if self.population is not None:
                    self.population.restore(resume["population"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise restore_failed(self.folder.run_label, exc) from None
            self.tracker.send(resume["pending_metrics"], dedupe=True)
        else:
            self.state.warm_start = warm_note
            self.checkpoint(wait=True)
        # Printed once the run can be resumed, always (it must survive a SIGKILL of a job that
        # shows no progress bar).
        print(
            f"run {self.folder.run_label}: state saved after every step; if interrupted, "
            f"continue with {self.folder.resume_hint}",
            file=sys.stderr,
            flush=True,
        )

    def checkpoint(self, wait: bool = False) -> None:
        """Save the controller after a round, then send the round's metrics (resent on resume
        if lost). The file is written in the background while the next round trains (a
        cluster's pods must not wait on the controller's disk); the round's metrics go out
        once it is on disk, and a kill before that resumes the round before, identically."""
        self.saver.join()
        pending = self.tracker.take_held()
        s = self.state
        state = {
            "config": self.job.to_dict(),
            "parent_run_id": self.tracker.parent_id,
            # A local store's URI (it holds no credentials), for a resume from another folder.
            "tracking_store": self.tracker.uri
            if self.tracker.parent_id and self.tracker.uri.startswith("sqlite:///")
            else None,
            **self.controller.snapshot(),
            "envs": self.vec.snapshot(),
            "slots": [slot.snapshot() for slot in self.slots],
            "job": {
                **s.snapshot(),
                "wall_before": s.wall_before + time.perf_counter() - self.start,
                "controller_before": s.controller_before + self.controller.timer.seconds,
            },
            "torch_rng": torch.get_rng_state(),
            "pending_metrics": pending,
            "population": None if self.population is None else self.population.snapshot(),
        }
        self.saver.start(state, lambda path: self._saved(path, pending))
        if wait:
            self.saver.join()

    def _saved(self, path: Path, pending: list[dict[str, Any]]) -> None:
        if self.cfg.tuner.checkpoint_to_mlflow:
            self.tracker.log_artifact(path, CONTROLLER_ARTIFACTS)
        self.tracker.send(pending)

    def run(self, bar: tqdm) -> None:
        """Rounds until every episode is done or a stop rule fires."""
        s = self.state
        while s.stop_reason is None:
            self.tracker.hold()
            self._begin_episodes()
            active = [slot for slot in self.slots if slot.episode is not None]
            if not active:
                s.stop_reason = completed_reason(self.population is not None, s)
                break
            # A state must beat the best certified one to be selectable (the selection bar).
            self.vec.step_async(
                self._commands(active), s.best.val_metrics["val_acc"] if s.best else -math.inf
            )
            # A population learns from a round while the next one trains (its members' pods
            # must not wait on the controller); a single run learns before it acts again.
            overlap, losses = self.population is not None, (None, None)
            if overlap and s.unlearned:
                losses, s.unlearned = self.controller.update(), False
            stepped = []
            for index, out in self.vec.step_wait().items():
                slot = self.slots[index]
                if slot.needs_reset:
                    slot.needs_reset = False
                    slot.obs, slot.info = out.obs, out.info
                    slot.decision = self.controller.first_decision(out.obs, out.info)
                    continue
                assert slot.obs is not None
                stepped.append((slot, out, self.controller.observe(slot.obs, slot.action, out)))
            if stepped and not overlap:
                losses = self.controller.update()
            s.unlearned = s.unlearned or (overlap and bool(stepped))
            for slot, out, decision in stepped:
                self._record(slot, out, Learned(decision, *losses))
                bar.update(1)
                best = f"{s.best.val_metrics['val_acc']:.4f}" if s.best else "-"
                bar.set_postfix(best=best, violations=s.violations)
                stop = early_stop(self.cfg.tuner, s.best, s.violations)
                if out.done or stop:
                    self._end_episode(slot)
                if stop and s.stop_reason is None:
                    s.stop_reason = stop
            if self.population is not None and s.stop_reason is None:
                self.population.exploit(self.slots, self.vec, s, self.tracker)
            if s.stop_reason is None:
                self.checkpoint()
        for slot in self.slots:  # an early stop leaves parallel episodes unfinished
            if slot.episode is not None:
                self._end_episode(slot)
        if s.unlearned:  # the last round's transitions, before the policy is saved
            self.controller.update()
            s.unlearned = False
        self.checkpoint(wait=True)

    def _begin_episodes(self) -> None:
        """Idle slots take the next episode; in population mode every member takes the one."""
        s = self.state
        for slot in self.slots:
            if slot.episode is None and s.next_episode < self.cfg.tuner.episodes:
                episode = s.next_episode
                slot.episode, slot.needs_reset, slot.episode_return = episode, True, 0.0
                member = slot.index if self.population is not None else None
                slot.run_id = self.tracker.start_episode(episode, member)
                if self.population is None or slot.index == len(self.slots) - 1:
                    s.next_episode += 1

    def _commands(self, active: list[Slot]) -> dict[int, Reset | int]:
        """Each active slot's command; members that just copied a donor choose after it."""
        commands: dict[int, Reset | int] = {}
        for slot in sorted(active, key=lambda sl: sl.copied_from is not None):
            if slot.needs_reset:
                assert slot.episode is not None
                member = slot.index if self.population is not None else 0
                commands[slot.index] = Reset(member_seed(self.cfg.tuner.seed, slot.episode, member))
                continue
            assert slot.obs is not None and slot.decision is not None and slot.info is not None
            avoid = None if slot.copied_from is None else commands.get(slot.copied_from)
            slot.action = self.controller.act(
                slot.obs, slot.decision, slot.info, avoid if isinstance(avoid, int) else None
            )
            slot.copied_from = None
            commands[slot.index] = slot.action
        return dict(sorted(commands.items()))

    def _record(self, slot: Slot, out: Outcome, learned: Learned) -> None:
        """Count and log one trained segment, and keep it if it is the best so far."""
        assert slot.decision is not None and slot.episode is not None
        s, info = self.state, out.info
        s.count(info, out.samples, int(out.timing["attempts"]))
        slot.episode_return += out.reward
        eps = self.controller.agent.epsilon
        ctx = StepContext(slot.episode, slot.index, s.global_step, slot.action, slot.decision, eps)
        record = step_record(self.job.space, ctx, out, learned)
        s.records.append(record)
        s.audit.append(audit_entry(self.job.space, ctx, out))
        self.tracker.log_step(slot.run_id, step_metrics(record), step=info["step"])
        s.consider(slot.episode, slot.index, info, self.vec.envs[slot.index].accepted_checkpoint)
        slot.obs, slot.info, slot.decision = out.obs, info, learned.decision

    def _end_episode(self, slot: Slot) -> None:
        assert slot.episode is not None
        metrics = self.state.episode_metrics(slot.episode_return)
        self.tracker.end_episode(slot.run_id, metrics, slot.episode)
        slot.episode = slot.run_id = None

    def finish(self, data: TaskData) -> TuningSummary:
        """Artifacts, the test report, publishing, and ``summary.json`` written last."""
        seconds = time.perf_counter() - self.start
        return finish_job(
            self.job,
            data,
            self.controller,
            self.tracker,
            self.folder.path,
            self.state,
            {
                "num_envs": self.vec.num_envs,
                "population": len(self.slots) if self.population is not None else 1,
                "wall_seconds": self.state.wall_before + seconds,
                "controller_seconds": self.state.controller_before + self.controller.timer.seconds,
            },
        )
