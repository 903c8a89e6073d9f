"""Population mode's cluster mechanics: the controller's own cost per round, and process speed.

    python benchmarks/population.py [--members 32] [--repeats 3] [--json FILE]

1. **Controller overhead at N members** (default 32). The population job runs on a stub
   executor that answers every step at once with a real-sized model state (the task's own
   model) and plausible metrics, so what is timed is everything but training: the DQN and the
   critic (acting, storing N transitions, the round's update), the shield's decisions, the
   exploit step, the records and the crash-safe checkpoint of every member after each round.
   What is timed is the controller's critical path: from one round's results to the next
   round's dispatch (a population learns from a round while the next one trains, and writes
   its checkpoint then). It is compared with the wall time of one real step of the same job
   (train one segment and evaluate it, measured here): a cluster keeps N pods busy only if
   that path is a small share of a step.
2. **Process executor speed-up at N = 2.** A population of 2 members (each the full
   budget) on the ``process`` executor against the same 2 members' worth of work as 2 single
   runs one after another on ``local``, both with one torch thread per training process, on
   the default job length (48 segments: spawning a worker, importing torch and building the
   task take seconds, which a 16-segment job cannot amortise).

Medians over ``--repeats``; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from shieldtune.config import load_config
from shieldtune.control.tuner import run_tuning
from shieldtune.job import Job
from shieldtune.tasks.contract import build_model
from shieldtune.training.step import StepRequest, StepResult, TrainState

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "tracking.enabled=false",
    "tuner.progress=false",
    "tuner.test_report=false",
    "env.steps_per_episode=16",
]
#: The process speed-up runs the default job length (see the module docstring).
FULL_LENGTH = [o for o in SMALL if not o.startswith("env.steps_per_episode")]


class StubExecutor:
    """Answers every step at once: the request's state (or a fresh model's), safe metrics."""

    def __init__(self, job: Job, step_seconds: float = 0.0) -> None:
        #: How long the N pods of a round train (all at once): the stub sleeps that long.
        self.step_seconds = step_seconds
        model = build_model(job.task, 0, torch.device("cpu"))
        self.fresh = TrainState({k: v.clone() for k, v in model.state_dict().items()}, {})
        self.calls = 0
        #: When each round's batch reached the executor and when its results were handed back:
        #: from one hand-back to the next dispatch is the controller's critical path.
        self.stamps: list[tuple[float, float]] = []

    def run(self, request: StepRequest) -> StepResult:
        self.calls += 1
        acc = 0.5 + 0.4 * min(1.0, self.calls / 500)
        metrics = {
            "val_acc": acc,
            "fgsm_robust_acc": 0.9,
            "fgsm_robust_acc_low": 0.85,
            "fgsm_robust_acc_high": 0.95,
            "mia_advantage": 0.01,
            "mia_tpr_at_1fpr": 0.0,
            "train_loss": 0.1,
            "certified": 1.0,
        }
        state = request.state or self.fresh
        return StepResult(state, metrics, False, request.budget_samples, 0.0, 0.0)

    def run_many(self, requests):
        start = time.perf_counter()
        results = [self.run(r) for r in requests]
        time.sleep(self.step_seconds)
        self.stamps.append((start, time.perf_counter()))
        return results

    def close(self) -> None:
        pass


def real_step_seconds(repeats: int) -> float:
    """One real step of the job (one segment trained and evaluated here), median."""
    cfg = load_config(REPO / "configs/mnist-cnn.yaml", SMALL)
    job = Job.from_config(cfg)
    runner = job.steps.runner()
    hp = {**job.fixed, **job.space.scheduled(job.space.initial(), 0.0)}
    state = runner.run(StepRequest(None, hp, 0, 1)).state
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        state = runner.run(StepRequest(state, hp, cfg.training.segment_samples, 2 + i)).state
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def controller_overhead(members: int, repeats: int) -> dict:
    """The controller's critical path per round of an N-member population whose pods each
    take a real step's time, against that step."""
    step_s = real_step_seconds(repeats)
    per_round, controller = [], 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(
                REPO / "configs/mnist-cnn.yaml",
                [*SMALL, f"tuner.num_envs={members}", f"tuner.output_dir={tmp}"],
            )
            job = Job.from_config(cfg)
            stub = StubExecutor(job, step_s)
            s = run_tuning(job, data=job.load_data(), executor=stub)
            # From one round's results to the next round's dispatch: what N pods wait for
            # (the learning update runs while they train, the checkpoint is written then).
            pairs = zip(stub.stamps[1:], stub.stamps[2:], strict=False)
            per_round.append(statistics.median(nxt[0] - cur[1] for cur, nxt in pairs))
            controller = s.controller_seconds / len(stub.stamps)
    round_s = statistics.median(per_round)
    return {
        "members": members,
        "round_seconds": round_s,
        "controller_seconds_per_round": controller,
        "real_step_seconds": step_s,
        "overhead_share": round_s / (round_s + step_s),
    }


def process_speedup(repeats: int) -> dict:
    """A 2-member population on ``process`` against 2 single runs in turn on ``local``."""
    pop, seq = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            base = [*FULL_LENGTH, f"tuner.output_dir={tmp}"]
            cfg = load_config(
                REPO / "configs/mnist-cnn.yaml",
                [*base, "tuner.num_envs=2", "tuner.executor=process", "tuner.worker_threads=1"],
            )
            job = Job.from_config(cfg)
            data = job.load_data()
            t = time.perf_counter()
            run_tuning(job, data=data)
            pop.append(time.perf_counter() - t)
            torch.set_num_threads(1)
            t = time.perf_counter()
            for seed in (0, 1):
                single = load_config(REPO / "configs/mnist-cnn.yaml", [*base, f"tuner.seed={seed}"])
                run_tuning(Job.from_config(single), data=data)
            seq.append(time.perf_counter() - t)
    p, q = statistics.median(pop), statistics.median(seq)
    return {"population_process_s": p, "two_sequential_local_s": q, "speedup": q / p}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"controller overhead at N={args.members}...", file=sys.stderr, flush=True)
    over = controller_overhead(args.members, args.repeats)
    print("process speed-up at N=2...", file=sys.stderr, flush=True)
    speed = process_speedup(args.repeats)
    print("| measurement | value |\n|---|---:|")
    print(f"| members | {over['members']} |")
    print(f"| population round on the stub executor (s, median) | {over['round_seconds']:.4f} |")
    print(
        f"| of it the DQN + critic + shield (s per round) | "
        f"{over['controller_seconds_per_round']:.4f} |"
    )
    print(f"| one real step of the same job (s, median) | {over['real_step_seconds']:.3f} |")
    print(f"| controller share of a step, round / (round + step) | {over['overhead_share']:.3%} |")
    print(f"| population N=2 on process (s, median) | {speed['population_process_s']:.1f} |")
    print(f"| 2 single runs in turn on local (s, median) | {speed['two_sequential_local_s']:.1f} |")
    print(f"| speed-up | {speed['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"overhead": over, "process": speed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
