"""A tuning job's state on disk: its run folder, the lock, the crash-safe snapshot, resume.

After every round of environment steps the whole controller (networks,
optimizers, replay buffer, critic, RNG states, environments, counters,
best-so-far and the metric batches of that round) is saved atomically to
``STATE_FILE`` in the run's folder; :func:`find_resume_state` reads it back
so an interrupted job continues with no step lost or repeated and no MLflow
metric logged twice. One process holds a run at a time (:class:`RunLock`).
"""

from __future__ import annotations

import os
import secrets
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shieldtune.checkpoint import atomic_save, register_kind, safe_load
from shieldtune.config import DEFAULT_OUTPUT_DIR, TunerConfig
from shieldtune.control.shield import ShieldDecision
from shieldtune.errors import CheckpointError, StorageError, first_line, is_existing_file
from shieldtune.runlock import RunLock

CONTROLLER_KIND = register_kind(
    "shieldtune.controller/v2",
    {
        "config": (dict,),
        "run_label": (str,),
        "parent_run_id": (str, type(None)),
        "agent": (dict,),
        "shield": (dict,),
        "envs": (list,),
        "slots": (list,),
        "job": (dict,),
        "torch_rng": (torch.Tensor,),
        "pending_metrics": (list,),
        "population": (dict, type(None)),
    },
)
#: The crash-safe controller checkpoint in a job's output folder, rewritten after every round.
STATE_FILE = "controller_state.pt"


@dataclass
class BestFeasible:
    """The best certified-safe state so far, with what it takes to save and retrain it."""

    episode: int
    step: int
    global_step: int
    val_metrics: dict[str, float]
    init_seed: int
    schedule: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor] = field(repr=False)
    #: The population member (env slot) whose training run reached it.
    member: int = 0


@dataclass
class JobState:
    """Counters and logs of the whole job, shared by every environment slot."""

    records: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: A population's exploit decisions (who copied whom, when, why).
    exploits: list[dict[str, Any]] = field(default_factory=list)
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
    #: Later certified-safe states whose val_acc equalled the best's: the earliest (fewest
    #: samples trained) is kept, and the summary says how many tied.
    best_ties: int = 0
    stop_reason: str | None = None
    #: A population's last round is observed but not yet learned from (it is learned from
    #: while the next round trains).
    unlearned: bool = False
    #: Wall and controller time spent before the last resume.
    wall_before: float = 0.0
    controller_before: float = 0.0

    def count(self, info: dict[str, Any], samples: int, attempts: int) -> None:
        """Count one trained segment (its ``info``, samples and worker attempts)."""
        self.global_step += 1
        self.samples += samples
        self.retries += attempts - 1
        self.violations += int(bool(info["violation"]))
        self.warmup += int(info["warmup"])
        self.diverged += int(info["diverged"])
        self.certified_safe += int(info["certified"] == "safe")
        self.undecided += int(info["certified"] == "undecided")

    def consider(
        self, episode: int, member: int, info: dict[str, Any], model: Callable[[], Any]
    ) -> None:
        """Keep the state ``info`` describes if it is the best certified-safe one so far (only
        states certified safe at safety.confidence are ever selected); ``model()`` gives its
        :class:`~shieldtune.control.env.AcceptedModel`."""
        if not (info["accepted"] and info["state_certified"] == "safe"):
            return
        if self.best is not None:
            val_acc, best = info["metrics"]["val_acc"], self.best.val_metrics["val_acc"]
            self.best_ties += int(val_acc == best)
            if val_acc <= best:
                return
        self.best_ties = 0
        m = model()
        self.best = BestFeasible(
            episode,
            info["step"],
            self.global_step,
            m.metrics,
            m.init_seed,
            m.schedule,
            m.model_state,
            member,
        )

    def episode_metrics(self, episode_return: float) -> dict[str, float]:
        """What an episode's MLflow run gets when it ends."""
        return {
            "episode_return": episode_return,
            "violations_so_far": float(self.violations),
            "best_feasible_val_acc": self.best.val_metrics["val_acc"] if self.best else 0.0,
        }

    def snapshot(self) -> dict[str, Any]:
        """The counters and logs as of now (lists copied: the next round appends to them; the
        records and the best state's tensors are never changed once made)."""
        snap = {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}
        best = self.best
        snap["best"] = (
            None if best is None else {f.name: getattr(best, f.name) for f in fields(best)}
        )
        return snap

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> JobState:
        best = snap["best"]
        return cls(**{**snap, "best": None if best is None else BestFeasible(**best)})


@dataclass
class Slot:
    """One environment of the vector env and the episode it is running (the controller's
    view of it: the last observation, ``info`` and shield decision, the action taken)."""

    index: int
    episode: int | None = None
    run_id: str | None = None
    needs_reset: bool = False
    obs: np.ndarray | None = None
    #: The last ``info`` the env returned (what the controller decides from).
    info: dict[str, Any] | None = None
    decision: ShieldDecision | None = None
    action: int = 0
    episode_return: float = 0.0
    #: A population member that has just copied this member's state (its next action avoids
    #: the donor's; see shieldtune.control.population).
    copied_from: int | None = None

    def snapshot(self) -> dict[str, Any]:
        snap = dict(vars(self))
        snap["obs"] = None if self.obs is None else torch.from_numpy(self.obs.copy())
        snap["decision"] = None if self.decision is None else self.decision.snapshot()
        snap["info"] = None if self.info is None else _plain(self.info)
        return snap

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Slot:
        d, obs, info = snap["decision"], snap["obs"], snap["info"]
        return cls(
            **{
                **snap,
                "obs": None if obs is None else obs.numpy(),
                "decision": None if d is None else ShieldDecision.restore(d),
                "info": None
                if info is None
                else {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in info.items()},
            }
        )


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as weights-only-loadable data (arrays such as the action mask as tensors)."""
    return {
        k: torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for k, v in info.items()
    }


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


def check_output_dir(folder: Path) -> None:
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


def new_run_label(parent_run_id: str | None) -> str:
    """The run's MLflow id, or without MLflow a time stamp plus a random suffix: two jobs
    started in the same second must never share (and overwrite) a folder."""
    return parent_run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


class RunFolder:
    """The run's folder under ``tuner.output_dir``, held by this process, with its state file."""

    def __init__(self, output_dir: str, run_label: str) -> None:
        self.output_dir = output_dir
        self.run_label = run_label
        self.path = Path(output_dir) / run_label
        try:
            # (A retried pipeline task resumes from MLflow on a fresh disk: create it.)
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {str(self.path)!r}: {exc.strerror or exc}") from None
        self.lock = RunLock(self.path, run_label).acquire()
        #: Whether a state file exists, so an error can point at ``--resume``.
        self.saved = False

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def resume_hint(self) -> str:
        where = (
            ""
            if self.output_dir == DEFAULT_OUTPUT_DIR
            else f" --set tuner.output_dir={shlex.quote(self.output_dir)}"
        )
        return f"shieldtune tune --resume {self.run_label}{where}"

    def save(self, state: dict[str, Any]) -> Path:
        """Write the controller's state atomically (kind and label added here)."""
        path = atomic_save(
            {"kind": CONTROLLER_KIND, "run_label": self.run_label, **state}, self.state_file
        )
        self.saved = True
        return path

    def release(self) -> None:
        self.lock.release()


class BackgroundSave:
    """Writes the controller's state on a thread while the next round trains; :meth:`join`
    waits for it, re-raises its error (a full disk) and then runs what comes after it."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._after: Callable[[Path], None] | None = None
        self._path: Path | None = None

    def start(self, state: dict[str, Any], after: Callable[[Path], None]) -> None:
        """Write ``state`` (no other write may be running); ``after(path)`` runs on join."""
        assert self._thread is None, "join() the previous save first"

        def write() -> None:
            try:
                self._path = self.folder.save(state)
            except BaseException as exc:  # surfaced by join(), in the controller's thread
                self._error = exc

        self._after = after
        self._thread = threading.Thread(target=write, name="shieldtune-checkpoint", daemon=True)
        self._thread.start()

    def join(self, then: bool = True) -> None:
        """Wait for the running save; with ``then``, raise its error or run its after-step."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        error, after, self._error, self._after = self._error, self._after, None, None
        if not then:
            return
        if error is not None:
            raise error
        assert after is not None and self._path is not None
        after(self._path)


def restore_failed(run_label: str, exc: Exception) -> CheckpointError:
    """The one-line error for a state file that is incomplete or from another version."""
    return CheckpointError(
        f"the saved state of run {run_label} is incomplete or from another version "
        f"({type(exc).__name__}: {first_line(exc, 120)}); it cannot be resumed"
    )


def completed_reason(population: bool, state: JobState) -> str:
    """Why a job that ran out of episodes stopped (a diverged run ends early, and says so)."""
    what = "the population's training runs" if population else "all episodes"
    if state.diverged:
        return f"completed {what} ({state.diverged} diverged segment(s) ended a run early)"
    return f"completed {what}"


def early_stop(t: TunerConfig, best: BestFeasible | None, violations: int) -> str | None:
    """The stop rule a job has hit (tuner.target_val_acc, tuner.max_violations), if any."""
    if (
        t.target_val_acc is not None
        and best is not None
        and best.val_metrics["val_acc"] >= t.target_val_acc
    ):
        return f"reached target_val_acc {t.target_val_acc}"
    if t.max_violations is not None and violations >= t.max_violations:
        return f"hit max_violations {t.max_violations}"
    return None
