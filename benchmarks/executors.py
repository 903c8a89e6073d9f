"""Wall time of one tuning job on the ``process`` executor (N=2 workers) against ``local``.

    python benchmarks/executors.py [--quick] [--repeats N] [--json FILE]

The same tuning job (``run_tuning`` with tracking off, no progress bar, no test
report, fixed seed; data loaded once outside the timed call) runs under three
settings, each ``--repeats`` times (default 3), interleaved A B C A B C ... so
that drift and other load on the machine hit every setting alike:

A. ``tuner.executor=local``, ``tuner.num_envs=1``: the baseline, one environment
   in this process, torch with its default thread count (all cores).
B. ``tuner.executor=local``, ``tuner.num_envs=2``: the same episodes, two
   environments stepped in turn in this process. Separates what batching the
   environments changes from what parallel workers change.
C. ``tuner.executor=process``, ``tuner.num_envs=2``: two spawned worker
   processes, each with ``tuner.worker_threads`` torch threads (default: cores /
   num_envs). Every job starts its own pool, so worker start-up (spawn, torch
   import, receiving the data splits) is part of its wall time.

Reported per setting: median wall time [min, max], env steps, seconds per
step, the ratio of medians against A, the wall time of the job's first round of
executor calls (the episode resets; for C it includes starting the pool), the
CPU other processes used meanwhile, and a sanity check on the results: B and C
must write the same ``steps.jsonl`` records apart from timing fields
(``*_seconds``) and ``env_index``. A is not compared, because with one
environment the episodes run one after another and the agent learns from a
different sequence of transitions. Torch's float reductions depend on the thread
count, so where C's workers get fewer threads than B, a final untimed check on
the ``--quick`` job compares B with C run at B's thread count.

Markdown goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    CONTENDED_CORES,
    base_machine_info,
    interrupt_on_term_and_hup,
    markdown_table,
    median,
    own_cpu_seconds,
    stderr_logger,
    system_busy_seconds,
)

from shieldtune.config import Config, load_config
from shieldtune.executors.base import StepExecutor
from shieldtune.executors.factory import make_executor
from shieldtune.executors.process import threads_per_worker
from shieldtune.job import Job
from shieldtune.tasks.checker import load_task_data
from shieldtune.tasks.contract import TaskData
from shieldtune.tasks.registry import make_task
from shieldtune.training.step import StepRequest, StepResult

# ``shieldtune.control.tuner`` (which pulls in mlflow) is imported inside run_job: spawned pool
# workers re-import this module, and a job started with the ``shieldtune`` command does not make
# its workers import it either, so their start-up stays what a real job's is.

#: Record fields that may differ between settings that compute the same thing.
IGNORED_FIELDS = ("env_index",)
log = stderr_logger("executors")


# --------------------------------------------------------------------------- settings + sizes


@dataclass(frozen=True)
class Setting:
    key: str
    executor: str
    num_envs: int
    what: str
    worker_threads: int | None = None  # tuner.worker_threads (None: the default)


SETTINGS = (
    Setting("A", "local", 1, "in-process, 1 env (baseline)"),
    Setting("B", "local", 2, "in-process, 2 envs in turn"),
    Setting("C", "process", 2, "process pool, 2 workers"),
)
#: Sanity check after the timed repeats, on the quick job: B against C with as many torch
#: threads per worker as this process has, so the arithmetic can match B exactly (torch's float
#: reductions depend on the thread count).
SANITY = Setting("C=", "process", 2, "process pool, threads as B", torch.get_num_threads())


@dataclass(frozen=True)
class Sizes:
    repeats: int
    job: tuple[str, ...]  # overrides shared by every setting

    @staticmethod
    def make(quick: bool, repeats: int | None) -> Sizes:
        job = [
            "tracking.enabled=false",
            "tuner.progress=false",
            "tuner.test_report=false",
            "tuner.seed=0",
            "data.train_size=6000",
        ]
        # Full: a step trains 16,000 samples (2.7 passes over the train split) and evaluates,
        # about 2 s with 2 torch threads on the idle build machine, so the 3-5 s a worker
        # needs to start is visible but does not dominate the job.
        job += (
            ["training.segment_samples=6000", "env.steps_per_episode=2", "tuner.episodes=2"]
            if quick
            else ["training.segment_samples=16000", "env.steps_per_episode=4", "tuner.episodes=4"]
        )
        return Sizes(repeats=repeats or (2 if quick else 3), job=tuple(job))


def setting_config(s: Setting, job: Sequence[str], output_dir: Path) -> Config:
    overrides = [
        *job,
        f"tuner.executor={s.executor}",
        f"tuner.num_envs={s.num_envs}",
        f"tuner.output_dir={output_dir}",
    ]
    if s.worker_threads is not None:
        overrides.append(f"tuner.worker_threads={s.worker_threads}")
    return load_config(None, overrides)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    return {
        **base_machine_info(),
        "worker_threads_default": threads_per_worker(2),
        "python": platform.python_version(),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- one job


class TimedExecutor:
    """Wraps the backend ``make_executor`` builds and times each round and ``close``."""

    def __init__(self, inner: StepExecutor) -> None:
        self.inner = inner
        self.rounds: list[float] = []
        self.close_seconds = 0.0

    def run(self, request: StepRequest) -> StepResult:
        return self.run_many([request])[0]

    def run_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        t0 = time.perf_counter()
        try:
            return self.inner.run_many(requests)
        finally:
            self.rounds.append(time.perf_counter() - t0)

    def close(self) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.close()
        finally:
            self.close_seconds = time.perf_counter() - t0


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without timing fields and the environment slot."""
    return [
        {k: v for k, v in r.items() if not k.endswith("_seconds") and k not in IGNORED_FIELDS}
        for r in records
    ]


def digest(records: list[dict[str, Any]]) -> str:
    # Compared by digest, not ==: json.dumps writes NaN (a diverged step's metrics) as NaN,
    # which == would never find equal to itself.
    text = json.dumps(comparable(records), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_job(s: Setting, job: Sequence[str], splits: TaskData, scratch: Path) -> dict[str, Any]:
    from shieldtune.control.tuner import run_tuning

    out = Path(tempfile.mkdtemp(prefix=f"{s.key}-", dir=scratch))
    cfg = setting_config(s, job, out)
    # The backend the config names, built as run_tuning would build it, wrapped for timing.
    steps = Job.from_config(cfg).steps
    executor = TimedExecutor(make_executor(cfg.tuner, cfg.kubernetes, steps, splits, None))
    busy0, own0, t0 = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    summary = run_tuning(cfg, data=splits, executor=executor)
    wall = time.perf_counter() - t0
    busy1, own1 = system_busy_seconds(), own_cpu_seconds()
    own = own1 - own0
    records = [
        json.loads(line)
        for line in (Path(summary.output_dir) / "steps.jsonl").read_text().splitlines()
    ]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "setting": s.key,
        "wall_s": wall,
        "summary_wall_s": summary.wall_seconds,
        "steps": summary.steps_run,
        "episodes": summary.episodes_run,
        "num_envs": summary.num_envs,
        "executor": summary.executor,
        "first_round_s": executor.rounds[0] if executor.rounds else float("nan"),
        "rounds": len(executor.rounds),
        "round_s": executor.rounds,
        "close_s": executor.close_seconds,
        "train_s_sum": sum(r.get("train_seconds", 0.0) for r in records),
        "eval_s_sum": sum(r.get("eval_seconds", 0.0) for r in records),
        "own_cores": own / wall,
        "others_cores": max(busy1 - busy0 - own, 0.0) / wall,
        # The work the steps did: SGD updates depend on the batch sizes the agent chose.
        "sgd_updates": sum(
            math.ceil(cfg.training.segment_samples / r["batch_size"])
            for r in records
            if "batch_size" in r
        ),
        "best_val_acc": (summary.best or {}).get("val_metrics", {}).get("val_acc"),
        "violations": summary.violations,
        "records_digest": digest(records),
        "records": comparable(records),
    }


def sanity_check(splits: TaskData, scratch: Path) -> dict[str, Any]:
    """B and C-with-B's-thread-count on the quick job: must write identical records."""
    job = Sizes.make(True, None).job
    b = run_job(SETTINGS[1], job, splits, scratch)
    c = run_job(SANITY, job, splits, scratch)
    return {
        "job": job,
        "wall_B_s": b["wall_s"],
        "wall_C_same_threads_s": c["wall_s"],
        "worker_threads": SANITY.worker_threads,
        "same_as_B": b["records_digest"] == c["records_digest"],
        "difference_from_B": first_difference(b["records"], c["records"]),
    }


def first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} records"
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        for k in sorted(set(ra) | set(rb)):
            if json.dumps(ra.get(k)) != json.dumps(rb.get(k)):
                return f"record {i} field {k}: {ra.get(k)!r} vs {rb.get(k)!r}"
    return "none"


# --------------------------------------------------------------------------- report


def summarise(
    runs: list[dict[str, Any]], sanity: dict[str, Any], machine: dict[str, Any]
) -> list[dict[str, Any]]:
    by = {s.key: [r for r in runs if r["setting"] == s.key] for s in SETTINGS}
    base = median([r["wall_s"] for r in by["A"]])
    ref, ref_digest = by["B"][0]["records"], by["B"][0]["records_digest"]
    rows = []
    for s in SETTINGS:
        rs = by[s.key]
        walls = [r["wall_s"] for r in rs]
        steps = sorted({r["steps"] for r in rs})
        threads = (
            f"{s.num_envs} x {machine['worker_threads_default']}"
            if s.executor == "process"
            else f"1 x {machine['torch_threads']}"
        )
        if s.key == "A":
            same = "n/a (other episode order)"
        elif s.key == "B":
            same = "reference" + ("" if len({r["records_digest"] for r in rs}) == 1 else " (!)")
        elif all(r["records_digest"] == ref_digest for r in rs):
            same = "yes"
        else:  # explained by the thread count when C with B's thread count matches B
            same = "no (threads, see notes)" if sanity["same_as_B"] else "**no**"
        rows.append(
            {
                "setting": s.key,
                "what": s.what,
                "executor": s.executor,
                "num_envs": s.num_envs,
                "procs_x_threads": threads,
                "wall_median_s": median(walls),
                "wall_min_s": min(walls),
                "wall_max_s": max(walls),
                "steps": steps[0] if len(steps) == 1 else steps,
                "s_per_step": median([r["wall_s"] / r["steps"] for r in rs]),
                "ratio_vs_A": median(walls) / base,
                "first_round_median_s": median([r["first_round_s"] for r in rs]),
                "close_median_s": median([r["close_s"] for r in rs]),
                "sgd_updates_median": median([r["sgd_updates"] for r in rs]),
                "train_s_per_step": median([r["train_s_sum"] / r["steps"] for r in rs]),
                "others_cores_max": max(r["others_cores"] for r in rs),
                "repeats_identical": len({r["records_digest"] for r in rs}) == 1,
                "same_as_B": same,
                "difference_from_B": (
                    "n/a"
                    if s.key == "A"
                    else "; ".join(sorted({first_difference(ref, r["records"]) for r in rs}))
                ),
            }
        )
    return rows


def report(res: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m, sanity = res["machine"], res["sanity"]
    table = markdown_table(
        [
            "setting",
            "procs x torch threads",
            "wall s, median [min, max]",
            "steps",
            "s/step",
            "ratio vs A",
            "first round s",
            "same records as B",
            "others' CPU (cores, max)",
        ],
        [
            [
                f"{r['setting']}. {r['executor']}, num_envs={r['num_envs']} ({r['what']})",
                r["procs_x_threads"],
                f"{r['wall_median_s']:.1f} [{r['wall_min_s']:.1f}, {r['wall_max_s']:.1f}]",
                str(r["steps"]),
                f"{r['s_per_step']:.2f}",
                f"{r['ratio_vs_A']:.3f}",
                f"{r['first_round_median_s']:.2f}",
                r["same_as_B"],
                f"{r['others_cores_max']:.2f}",
            ]
            for r in rows
        ],
        ["---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---:"],
    )
    load0, load1 = m["loadavg_at_start"], res["loadavg_at_end"]
    out = [
        "# shieldtune executors: process pool vs in-process",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch {m['torch']} with {m['torch_threads']} threads in this process, "
        f"process workers {m['worker_threads_default']} thread(s) each by default, "
        f"Python {m['python']}",
        f"- date: {m['date_utc']}; mode: {'quick' if res['quick'] else 'full'}, "
        f"repeats {res['sizes']['repeats']} per setting, interleaved A B C; "
        f"runtime {res['runtime_s']:.0f} s",
        f"- load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}",
        f"- command: `{res['command']}`",
        f"- job: `run_tuning` with {', '.join(res['sizes']['job'])}",
        "",
        table,
        "",
        "Notes:",
        "",
        "- Wall time is measured around `run_tuning` (data loaded once beforehand); for C it "
        "includes starting the pool (spawn, torch import, sending the splits to each worker) "
        "and shutting it down. Ratio = median wall / median wall of A.",
        "- 'first round s': the job's first executor call, which builds and evaluates the fresh "
        "model of each starting episode (A: 1 env, B and C: 2 envs); for C it includes pool "
        "start-up.",
        f"- Threads: A and B run torch in one process with {m['torch_threads']} intra-op "
        f"threads; C runs {2} worker processes with {m['worker_threads_default']} thread(s) "
        f"each (`tuner.worker_threads` default = cores / num_envs), so on this machine C is "
        f"2 procs x {m['worker_threads_default']} thread vs A's 1 proc x "
        f"{m['torch_threads']} threads.",
        "- 'same records as B': `steps.jsonl` without `*_seconds` fields and `env_index`, "
        "every repeat of C against B's first repeat. A is not compared: with one environment "
        "the episodes run one after another, so the agent learns from a different sequence of "
        "transitions and its choices differ.",
    ]
    repeat_note = ", ".join(
        f"{r['setting']} {'yes' if r['repeats_identical'] else 'NO'}" for r in rows
    )
    out.append(f"- Records identical across the repeats of each setting: {repeat_note}.")
    for r in rows:
        if r["setting"] == "C" and r["same_as_B"] != "yes":
            out.append(f"- First difference C vs B: {r['difference_from_B']}.")
    out.append(
        "- Sanity check (not in the table; on the `--quick` job): B against C with "
        f"`tuner.worker_threads={SANITY.worker_threads}` (B's thread count; "
        f"{sanity['wall_C_same_threads_s']:.1f} s wall, B {sanity['wall_B_s']:.1f} s): "
        "records identical: "
        + (
            "**yes**, so the process backend computes exactly what the in-process one does "
            "at the same thread count; float reductions in torch depend on the thread count."
            if sanity["same_as_B"]
            else f"**no** (first difference: {sanity['difference_from_B']})."
        )
    )
    updates = ", ".join(f"{r['setting']} {r['sgd_updates_median']:,.0f}" for r in rows)
    out.append(
        f"- Work per job: every setting trains the same samples, but the agent picks the batch "
        f"sizes, so the number of SGD updates differs where the actions differ (median per "
        f"job): {updates}."
    )
    per_step = ", ".join(f"{r['setting']} {r['train_s_per_step']:.2f} s" for r in rows)
    out.append(
        f"- Training time per step as the executor measured it (median): {per_step}; "
        f"pool shutdown (median) in C: {rows[2]['close_median_s']:.2f} s."
    )
    out += ["", "Per repeat (wall s, with the cores other processes used during that job):", ""]
    out.append(per_repeat_table(res["runs"]))
    busiest = max(r["others_cores_max"] for r in rows)
    if busiest > CONTENDED_CORES:
        out += [
            "",
            f"**Contended:** other processes used up to {busiest:.2f} cores on average during "
            f"a job (of {m['usable_cores']}; jobs above {CONTENDED_CORES} marked *); absolute "
            "times are inflated and the ratios less reliable. Re-run on an idle machine before "
            "acting on them.",
        ]
    return "\n".join(out)


def per_repeat_table(runs: list[dict[str, Any]]) -> str:
    reps = sorted({r["repeat"] for r in runs})
    cell = {(r["repeat"], r["setting"]): r for r in runs}

    def fmt(r: dict[str, Any]) -> str:
        mark = "*" if r["others_cores"] > CONTENDED_CORES else ""
        return f"{r['wall_s']:.1f} ({r['others_cores']:.2f}){mark}"

    rows = []
    for rep in reps:
        a, b, c = (cell[(rep, k)] for k in ("A", "B", "C"))
        rows.append(
            [
                str(rep + 1),
                fmt(a),
                fmt(b),
                fmt(c),
                f"{b['wall_s'] / a['wall_s']:.3f}",
                f"{c['wall_s'] / a['wall_s']:.3f}",
            ]
        )
    return markdown_table(
        ["repeat", "A", "B", "C", "B/A", "C/A"],
        rows,
        ["---:", "---:", "---:", "---:", "---:", "---:"],
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller job, 2 repeats (~2 min)")
    ap.add_argument("--repeats", type=int, default=None, help="timed jobs per setting")
    ap.add_argument("--json", type=Path, default=None, help="also write raw results to this file")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = Sizes.make(args.quick, args.repeats)
    interrupt_on_term_and_hup()

    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="shieldtune-executors-"))
    try:
        res: dict[str, Any] = {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "command": shlex.join(
                ["python", "benchmarks/executors.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "machine": machine_info(),
        }
        m = res["machine"]
        log(
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
            f"load average {m['loadavg_at_start']}; scratch folder {scratch}"
        )
        base_cfg = setting_config(SETTINGS[0], sizes.job, scratch)
        splits = load_task_data(make_task(base_cfg.task), base_cfg.data)
        # Warm-up: one tiny job per setting (kernels, page cache of the workers' imports).
        tiny = [*sizes.job, "training.segment_samples=500", "env.steps_per_episode=1"]
        tiny += ["tuner.episodes=2"]
        for s in SETTINGS:
            log(f"warm-up {s.key} ({s.executor}, num_envs={s.num_envs})")
            run_job(s, tiny, splits, scratch)
        runs: list[dict[str, Any]] = []
        for rep in range(sizes.repeats):
            for s in SETTINGS:
                r = run_job(s, sizes.job, splits, scratch)
                r["repeat"] = rep
                runs.append(r)
                log(
                    f"repeat {rep + 1}/{sizes.repeats} {s.key}: {r['wall_s']:.1f}s wall, "
                    f"{r['steps']} steps, first round {r['first_round_s']:.2f}s, "
                    f"others {r['others_cores']:.2f} cores, records {r['records_digest']}"
                )
        log(f"sanity check: B vs process, num_envs=2, worker_threads={SANITY.worker_threads}")
        sanity = sanity_check(splits, scratch)
        log(f"sanity check: identical {sanity['same_as_B']} ({sanity['difference_from_B']})")
        res["loadavg_at_end"] = list(os.getloadavg())
        res["runtime_s"] = time.perf_counter() - start
        rows = summarise(runs, sanity, res["machine"])
        res["sanity"] = sanity
        res["runs"] = runs
        print(report(res, rows))
        if args.json:
            res["settings"] = [asdict(s) for s in SETTINGS]
            res["rows"] = rows
            res["runs"] = [{k: v for k, v in r.items() if k != "records"} for r in runs]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2, default=str))
            log(f"wrote {args.json}")
        log(f"done in {res['runtime_s']:.0f}s")
        return 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
