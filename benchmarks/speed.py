"""Speed targets of shieldtune, each measured as a ratio against a baseline from the same run.

    python benchmarks/speed.py [--quick] [--repeats N] [--json FILE] [--profile] [--strict]
                                [--no-server]

Rows (medians over ``--repeats`` runs after a warm-up; ratios are medians of the
per-repeat ratios of interleaved, paired measurements):

1. ``train_segment`` samples/s vs a bare PyTorch loop over the same model,
   optimizer, batch size and data (target >= 0.95); the full environment step
   (``LocalStepExecutor.run``: train one segment + evaluate) for context, and the
   share of the step spent in evaluation.
2. Achieved training GFLOP/s (3 x forward FLOPs per sample) vs the machine's
   measured float32 ``torch.matmul`` peak.
3. MLflow logging overhead of a small ``run_tuning`` job, sqlite store and a real
   local ``mlflow server`` on loopback: time inside ``Tracker`` methods / job wall
   (target <= 2%), also without one-off setup and per-step logging alone, and the
   job's wall time against the same job with tracking off (target <= 1.02x).
4. Controller (agent update + shield) share of the job's wall time (target <= 1%).
5. FGSM and PGD robust-accuracy evaluation samples/s vs clean accuracy.

Markdown goes to stdout, progress to stderr. Torch's thread count is left at its
default. The CPU time other processes use during each part is measured from
``/proc/stat`` and reported, so contended numbers can be recognised.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import datetime as dt
import functools
import io
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    CLOCK_TICKS,
    CONTENDED_CORES,
    base_machine_info,
    interrupt_on_term_and_hup,
    markdown_table,
    median,
    own_cpu_seconds,
    stderr_logger,
    system_busy_seconds,
)

from shieldtune.config import Config, DataConfig, load_config
from shieldtune.control.tuner import run_tuning
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.job import Job
from shieldtune.safety.attacks import accuracy, fgsm_robust_accuracy, pgd_robust_accuracy
from shieldtune.tasks.contract import PIXELS, TaskData, TensorSplit
from shieldtune.tasks.mnist import MnistCnnTask
from shieldtune.tasks.mnist_data import load_mnist
from shieldtune.tasks.registry import make_task
from shieldtune.tracking.tracker import Tracker
from shieldtune.training.hyperparameters import fixed_hyperparameters
from shieldtune.training.segment import AdversarialTraining, make_optimizer, train_segment
from shieldtune.training.step import StepRequest

SETUP_METHODS = ("start", "log_model", "finish")
S_TRAIN, S_STEP = "1. train_segment vs bare loop", "1b/c. environment step"
S_MATMUL, S_ATTACKS = "2. matmul peak", "5. attacks"
PER_STEP_METHODS = ("log_step", "start_episode", "end_episode")
log = stderr_logger("speed")


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    repeats: int
    segment_budget: int  # samples per timed train_segment / bare loop
    attack_images: int  # validation images attacked in row 5
    matmul_n: int
    job_overrides: tuple[str, ...]  # the reduced tuning job of rows 3 and 4

    @staticmethod
    def make(quick: bool, repeats: int | None) -> Sizes:
        # A constraint the job can meet, so the final test report and log_model run too.
        job = ["safety.constraints=['val_acc >= 0.5']", "tuner.episodes=2"]
        # Quick keeps the default step (segment, evaluation) and takes fewer steps, so the
        # per-step shares stay representative; only per-job costs are spread over fewer steps.
        job += (
            ["env.steps_per_episode=2", "data.test_size=500"]
            if quick
            else ["env.steps_per_episode=4"]
        )
        return Sizes(
            repeats=repeats or (3 if quick else 5),
            segment_budget=3000 if quick else 6000,
            attack_images=1000 if quick else 2000,
            matmul_n=1024,
            job_overrides=tuple(job),
        )


# --------------------------------------------------------------------------- machine + contention


def machine_info() -> dict[str, Any]:
    import mlflow

    return {
        **base_machine_info(),
        "mlflow": mlflow.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg()[0],
        "mlflow_async_buffering_s": os.environ.get("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"),
    }


def _group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of the live processes in process group ``pgid`` (our mlflow server)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                rest = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid:
            total += sum(int(x) for x in rest[11:15])
    return total / CLOCK_TICKS


class CpuMeter:
    """Per section: wall time, our CPU, the mlflow server's CPU, and everyone else's CPU."""

    def __init__(self) -> None:
        self.server_pgid: int | None = None
        self.sections: list[dict[str, Any]] = []

    def _own(self) -> tuple[float, float]:
        server = _group_cpu_seconds(self.server_pgid) if self.server_pgid else 0.0
        return own_cpu_seconds(), server

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        busy0, (own0, srv0), t0 = system_busy_seconds(), self._own(), time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            busy1, (own1, srv1) = system_busy_seconds(), self._own()
            server = max(srv1 - srv0, 0.0)
            others = max(busy1 - busy0 - (own1 - own0) - server, 0.0)
            self.sections.append(
                {
                    "section": name,
                    "wall_s": wall,
                    "own_cores": (own1 - own0) / wall if wall else 0.0,
                    "server_cores": server / wall if wall else 0.0,
                    "others_cores": others / wall if wall else 0.0,
                }
            )


# --------------------------------------------------------------------------- result rows


@dataclass
class Row:
    what: str
    value: float
    baseline: float
    ratio: float
    unit: str  # unit of value and baseline
    baseline_what: str
    ratio_kind: str = "x"  # "x" (plain ratio) or "%" (share)
    target: tuple[str, float] | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    sections: tuple[str, ...] = ()  # the CpuMeter sections it was measured in
    contended: bool = False

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        op, thr = self.target
        return self.ratio >= thr if op == ">=" else self.ratio <= thr

    def _num(self, v: float) -> str:
        if self.unit == "samples/s":
            return f"{v:,.0f} samples/s"
        if self.unit == "GFLOP/s":
            return f"{v:.1f} GFLOP/s"
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"

    def _ratio(self, v: float) -> str:
        return f"{100 * v:.2f}%" if self.ratio_kind == "%" else f"{v:.3f}"

    def cells(self) -> list[str]:
        target = "—" if self.target is None else f"{self.target[0]} {self._ratio(self.target[1])}"
        result = {None: "info", True: "PASS", False: "**FAIL**"}[self.passed]
        if self.contended:
            result += " (contended)"
        return [
            self.what,
            self._num(self.value),
            f"{self._num(self.baseline)} ({self.baseline_what})",
            self._ratio(self.ratio),
            target,
            result,
        ]


# --------------------------------------------------------------------------- row 1 + 2: training


def bare_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TensorSplit,
    batch_size: int,
    budget: int,
    generator: torch.Generator,
) -> int:
    """The plain PyTorch loop: randperm + index + forward + CE + backward + step."""
    model.train()
    x, y, n = data.x, data.y, len(data)
    perm = torch.randperm(n, generator=generator)
    pos = processed = 0
    while processed < budget:
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        take = min(batch_size, budget - processed)
        idx = perm[pos : pos + take]
        pos += take
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        processed += take
    return processed


def _fresh(cfg: Config, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = make_task(cfg.task).build_model(seed)
    return model, make_optimizer(model, cfg.training)


def _time_env_segment(cfg: Config, data: TensorSplit, budget: int, seed: int) -> float:
    model, opt = _fresh(cfg, seed)
    hp = fixed_hyperparameters(cfg.training, make_task(cfg.task))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    stats = train_segment(
        model,
        opt,
        data,
        hp,
        budget,
        gen,
        adversarial=AdversarialTraining(cfg.safety.epsilon, PIXELS),
        max_loss=cfg.training.max_loss,
    )
    seconds = time.perf_counter() - t0
    assert stats.samples == budget and not stats.diverged, stats
    return budget / seconds


def _time_bare(cfg: Config, data: TensorSplit, budget: int, seed: int) -> float:
    model, opt = _fresh(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    done = bare_loop(model, opt, data, int(cfg.training.batch_size), budget, gen)
    seconds = time.perf_counter() - t0
    assert done == budget
    return budget / seconds


def bench_training(cfg: Config, splits: TaskData, sizes: Sizes) -> dict[str, list[float]]:
    data, budget = splits.train, sizes.segment_budget
    log(f"row 1: warm-up (train_segment and bare loop, {budget // 3} samples each)")
    _time_env_segment(cfg, data, budget // 3, seed=999)
    _time_bare(cfg, data, budget // 3, seed=999)
    env, bare, ratio = [], [], []
    for r in range(sizes.repeats):
        # One repeat is an A-B-B-A block (A first in even repeats, B in odd ones): linear drift
        # (other processes, clock changes) cancels within it. Throughput over both legs is
        # the harmonic mean of the two legs' rates (same samples each).
        first, second = (_time_env_segment, _time_bare)[:: 1 if r % 2 == 0 else -1]
        rates: dict[Any, list[float]] = {first: [], second: []}
        for fn in (first, second, second, first):
            rates[fn].append(fn(cfg, data, budget, seed=r))
        e = statistics.harmonic_mean(rates[_time_env_segment])
        b = statistics.harmonic_mean(rates[_time_bare])
        env.append(e)
        bare.append(b)
        ratio.append(e / b)
        log(
            f"row 1: repeat {r + 1}/{sizes.repeats}: train_segment {e:,.0f}/s, "
            f"bare {b:,.0f}/s, ratio {e / b:.3f}"
        )
    return {"env": env, "bare": bare, "ratio": ratio}


def bench_env_step(cfg: Config, splits: TaskData, sizes: Sizes) -> dict[str, list[float]]:
    executor = LocalStepExecutor(Job.from_config(cfg).steps.runner(splits))
    hp = fixed_hyperparameters(cfg.training, make_task(cfg.task))
    budget = cfg.training.segment_samples
    log(f"row 1: environment step warm-up (LocalStepExecutor.run, {budget} samples + evaluation)")
    state = executor.run(StepRequest(None, hp, budget, seed=12345)).state
    out: dict[str, list[float]] = defaultdict(list)
    for r in range(sizes.repeats):
        t0 = time.perf_counter()
        res = executor.run(StepRequest(state, hp, budget, seed=r))
        wall = time.perf_counter() - t0
        out["step_wall"].append(wall)
        out["step_throughput"].append(res.samples / wall)
        out["train_throughput"].append(res.samples / res.train_seconds)
        out["step_vs_train"].append((res.samples / wall) / (res.samples / res.train_seconds))
        out["eval_seconds"].append(res.eval_seconds)
        out["eval_share"].append(res.eval_seconds / wall)
        log(
            f"row 1: env step {r + 1}/{sizes.repeats}: {wall:.2f}s "
            f"(train {res.train_seconds:.2f}s, eval {res.eval_seconds:.2f}s)"
        )
    executor.close()
    return dict(out)


def bench_matmul_peak(n: int, min_seconds: float = 0.4) -> list[float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    rates = []
    t_end = time.perf_counter() + min_seconds
    while len(rates) < 10 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
        if len(rates) >= 200:
            break
    return rates


# --------------------------------------------------------------------------- row 5: attacks


def _seconds_per_call(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call of ``fn``, calling it at least once and for at least ``min_seconds``."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def bench_attacks(cfg: Config, splits: TaskData, sizes: Sizes) -> dict[str, Any]:
    s = cfg.safety
    model, opt = _fresh(cfg, seed=0)
    budget = sizes.segment_budget
    log(f"row 5: training the default model briefly ({budget} samples, one segment)")
    train_segment(
        model,
        opt,
        splits.train,
        fixed_hyperparameters(cfg.training, make_task(cfg.task)),
        budget,
        torch.Generator().manual_seed(0),
        adversarial=AdversarialTraining(s.epsilon, PIXELS),
    )
    model.eval()
    n = min(sizes.attack_images, len(splits.val))
    x, y = splits.val.x[:n], splits.val.y[:n]
    clean_acc = accuracy(model, x, y)
    runs = {
        "clean": lambda xx, yy: accuracy(model, xx, yy),
        "fgsm": lambda xx, yy: fgsm_robust_accuracy(model, xx, yy, s.epsilon),
        "pgd": lambda xx, yy: pgd_robust_accuracy(
            model, xx, yy, s.epsilon, s.pgd_steps, s.pgd_restarts, seed=0
        ),
    }
    log("row 5: warm-up (clean, FGSM, PGD on 200 images)")
    for fn in runs.values():
        fn(x[:200], y[:200])
    out: dict[str, Any] = defaultdict(list)
    for r in range(sizes.repeats):
        tp = {}
        for name, fn in runs.items():
            # Clean accuracy is fast: repeat it for >= 0.3 s so the clock resolves it.
            per_call = _seconds_per_call(functools.partial(fn, x, y), 0.3 if name == "clean" else 0)
            tp[name] = n / per_call
            out[name].append(tp[name])
        out["fgsm_ratio"].append(tp["fgsm"] / tp["clean"])
        out["pgd_ratio"].append(tp["pgd"] / tp["clean"])
        log(
            f"row 5: repeat {r + 1}/{sizes.repeats}: clean {tp['clean']:,.0f}/s, "
            f"FGSM {tp['fgsm']:,.0f}/s, PGD {tp['pgd']:,.0f}/s"
        )
    out["images"] = n
    out["clean_acc"] = clean_acc
    out["fgsm_acc"] = runs["fgsm"](x, y)
    out["pgd_acc"] = runs["pgd"](x, y)
    return dict(out)


# --------------------------------------------------------------------------- rows 3 + 4: tuning


class TrackerTimer:
    """Wraps every public method of ``Tracker`` (on the class) and accumulates its wall time.

    Nested calls (``end_episode`` calls ``log_parent``) count once, under the outer method.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._depth = 0
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        for name, fn in list(vars(Tracker).items()):
            if not name.startswith("_") and callable(fn):
                self._originals[name] = fn
                setattr(Tracker, name, self._wrap(name, fn))

    def uninstall(self) -> None:
        for name, fn in self._originals.items():
            setattr(Tracker, name, fn)
        self._originals.clear()

    def reset(self) -> None:
        self.seconds = defaultdict(float)
        self.calls = Counter()

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
                self._depth -= 1

        return timed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Runs the server command after asking Linux to SIGTERM it when this script dies, even by
#: SIGKILL (PR_SET_PDEATHSIG survives exec), so a killed benchmark leaves no server behind.
_LAUNCHER = """
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 15)
except Exception:
    pass
if os.getppid() != int(os.environ["SHIELDTUNE_SPEED_PARENT"]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


class MlflowServer:
    """A real ``mlflow server`` on loopback in its own process group; stop() ends that group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tmp / "server.log"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-c",
            _LAUNCHER,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.tmp / 's.db'}",
            "--artifacts-destination",
            str(self.tmp / "art"),
            "--workers",
            "1",
        ]
        with open(self._log, "wb") as fh:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C here does not reach it first
                env={**os.environ, "SHIELDTUNE_SPEED_PARENT": str(os.getpid())},
            )
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # the group we created with start_new_session
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Stragglers (workers) in the group once the leader is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _job_config(sizes: Sizes, tmp: Path, label: str, tracking: bool, extra=()) -> Config:
    return load_config(
        None,
        [
            *sizes.job_overrides,
            f"tracking.enabled={str(tracking).lower()}",
            "tuner.progress=false",
            f"tuner.output_dir={tmp / ('runs-' + label)}",
            *extra,
        ],
    )


def _run_job(cfg: Config, splits: TaskData, timer: TrackerTimer) -> dict[str, Any]:
    timer.reset()
    # MLflow prints "View run ... at" links to stdout; keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        summary = run_tuning(cfg, splits)
        wall = time.perf_counter() - t0
    tracker = dict(timer.seconds)
    total = sum(tracker.values())
    setup = sum(tracker.get(m, 0.0) for m in SETUP_METHODS)
    per_step = sum(tracker.get(m, 0.0) for m in PER_STEP_METHODS)
    return {
        "wall": wall,
        "summary_wall": summary.wall_seconds,
        "controller": summary.controller_seconds,
        "steps": summary.steps_run,
        "tracker_total": total,
        "tracker_excl_setup": total - setup,
        "tracker_per_step": per_step,
        "tracker_methods": tracker,
        "tracker_calls": dict(timer.calls),
    }


@contextlib.contextmanager
def _env_var(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def bench_tuning(sizes: Sizes, tmp: Path, meter: CpuMeter, use_server: bool) -> dict[str, Any]:
    import mlflow

    sqlite_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfgs = {
        "off": _job_config(sizes, tmp, "off", tracking=False),
        "sqlite": _job_config(sizes, tmp, "sqlite", tracking=True),
        "server": _job_config(sizes, tmp, "server", tracking=True),
    }
    if not use_server:
        del cfgs["server"]
    tiny = ["tuner.episodes=1", "env.steps_per_episode=1"]
    splits = load_mnist(cfgs["off"].data)
    timer = TrackerTimer()
    server = MlflowServer(tmp)
    jobs: dict[str, list[dict[str, Any]]] = {k: [] for k in cfgs}
    cold: dict[str, Any] = {}
    server_error = None if use_server else "skipped (--no-server)"
    cwd = Path.cwd()
    timer.install()
    os.chdir(tmp)  # the sqlite store puts artifacts under ./mlartifacts
    try:
        if "server" in cfgs:
            log("rows 3-4: starting mlflow server on loopback")
            server.start()
            assert server.proc is not None
            meter.server_pgid = server.proc.pid
        log("rows 3-4: warm-up job (tracking off, 1 step)")
        _run_job(_job_config(sizes, tmp, "warm", False, tiny), splits, timer)
        if "server" in cfgs:
            try:
                server.wait_ready()
                log(f"rows 3-4: mlflow server ready at {server.uri}")
            except RuntimeError as exc:
                log(f"rows 3-4: skipping the mlflow server rows: {exc}")
                server_error = str(exc).splitlines()[0]
                server.stop()
                del cfgs["server"]
        with _env_var("MLFLOW_TRACKING_URI", sqlite_uri):
            log("rows 3-4: cold job on a fresh sqlite store (creates schema, experiment, model)")
            cold["sqlite"] = _run_job(_job_config(sizes, tmp, "cold-s", True, tiny), splits, timer)
        if "server" in cfgs:
            with _env_var("MLFLOW_TRACKING_URI", server.uri):
                log("rows 3-4: cold job on the fresh mlflow server")
                cold["server"] = _run_job(
                    _job_config(sizes, tmp, "cold-h", True, tiny), splits, timer
                )
        uris = {"off": None, "sqlite": sqlite_uri, "server": server.uri}
        for r in range(sizes.repeats):
            order = list(cfgs)
            order = order[r % len(order) :] + order[: r % len(order)]  # drift hits all alike
            for variant in order:
                with (
                    meter.section(f"tuning job ({variant})"),
                    _env_var("MLFLOW_TRACKING_URI", uris[variant]),
                ):
                    res = _run_job(cfgs[variant], splits, timer)
                jobs[variant].append(res)
                log(
                    f"rows 3-4: repeat {r + 1}/{sizes.repeats} {variant:6s}: "
                    f"wall {res['wall']:.2f}s, tracker {res['tracker_total']:.3f}s, "
                    f"controller {res['controller']:.3f}s"
                )
    finally:
        timer.uninstall()
        os.chdir(cwd)
        mlflow.set_tracking_uri(None)
        server.stop()
        meter.server_pgid = None
    jobs = {k: v for k, v in jobs.items() if v}
    return {"jobs": jobs, "cold": cold, "server_error": server_error}


# --------------------------------------------------------------------------- profiling


def profile_training(cfg: Config, splits: TaskData, budget: int) -> str:
    out = io.StringIO()
    for name, fn in (("train_segment", _time_env_segment), ("bare loop", _time_bare)):
        prof = cProfile.Profile()
        prof.enable()
        fn(cfg, splits.train, budget, 0)
        prof.disable()
        out.write(f"\n==== cProfile: {name} ({budget} samples), top 20 by tottime ====\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
    return out.getvalue()


# --------------------------------------------------------------------------- main


def build_rows(res: dict[str, Any], flops: int) -> list[Row]:
    rows: list[Row] = []
    tr, st, mm, tu, at = (res[k] for k in ("training", "env_step", "matmul", "tuning", "attacks"))
    rows.append(
        Row(
            "1. Training-segment throughput: `train_segment` vs bare PyTorch loop",
            median(tr["env"]),
            median(tr["bare"]),
            median(tr["ratio"]),
            "samples/s",
            "bare loop",
            target=(">=", 0.95),
            samples=tr,
            sections=(S_TRAIN,),
        )
    )
    rows.append(
        Row(
            "1b. Full environment step (`LocalStepExecutor.run`: train + evaluate)",
            median(st["step_throughput"]),
            median(st["train_throughput"]),
            median(st["step_vs_train"]),
            "samples/s",
            "its training part",
            samples=st,
            sections=(S_STEP,),
        )
    )
    rows.append(
        Row(
            "1c. Evaluation share of the environment step",
            median(st["eval_seconds"]),
            median(st["step_wall"]),
            median(st["eval_share"]),
            "s",
            "step wall",
            ratio_kind="%",
            samples=st,
            sections=(S_STEP,),
        )
    )
    train_flops = 3 * flops
    achieved = [t * train_flops / 1e9 for t in tr["env"]]
    peak = median(mm)
    rows.append(
        Row(
            "2. Achieved training GFLOP/s (3 x forward FLOPs) vs float32 matmul peak",
            median(achieved),
            peak,
            median(achieved) / peak,
            "GFLOP/s",
            f"matmul {res['sizes']['matmul_n']}^2",
            samples={"achieved": achieved, "matmul": mm},
            sections=(S_TRAIN, S_MATMUL),
        )
    )
    jobs = tu["jobs"]
    off_wall = [j["wall"] for j in jobs["off"]]
    for backend, label in (("sqlite", "sqlite store"), ("server", "mlflow server")):
        if backend not in jobs:
            continue
        js = jobs[backend]
        wall = [j["wall"] for j in js]
        for key, what in (
            ("tracker_total", f"3. MLflow: Tracker time / job wall ({label})"),
            ("tracker_excl_setup", "3. … excluding one-off setup (start, log_model, finish)"),
            ("tracker_per_step", "3. … per-step logging only (log_step, start/end_episode)"),
        ):
            vals = [j[key] for j in js]
            rows.append(
                Row(
                    what,
                    median(vals),
                    median(wall),
                    median([v / w for v, w in zip(vals, wall, strict=True)]),
                    "s",
                    "job wall",
                    ratio_kind="%",
                    target=("<=", 0.02),
                    samples={key: vals, "wall": wall},
                    sections=(f"tuning job ({backend})",),
                )
            )
        rows.append(
            Row(
                f"3. Job wall, tracking on ({label}) vs tracking off",
                median(wall),
                median(off_wall),
                median([w / o for w, o in zip(wall, off_wall, strict=True)]),
                "s",
                "tracking off",
                target=("<=", 1.02),
                samples={"on": wall, "off": off_wall},
                sections=("tuning job (off)", f"tuning job ({backend})"),
            )
        )
    ctrl = [j["controller"] for j in jobs["off"]]
    swall = [j["summary_wall"] for j in jobs["off"]]
    rows.append(
        Row(
            "4. Controller (agent update + shield) / job wall, tracking off",
            median(ctrl),
            median(swall),
            median([c / w for c, w in zip(ctrl, swall, strict=True)]),
            "s",
            "`wall_seconds`",
            ratio_kind="%",
            target=("<=", 0.01),
            samples={"controller": ctrl, "wall": swall},
            sections=("tuning job (off)",),
        )
    )
    for key, what in (("fgsm", "5. FGSM robust-accuracy evaluation"), ("pgd", "5. PGD-10 x 2")):
        rows.append(
            Row(
                f"{what} throughput vs clean accuracy",
                median(at[key]),
                median(at["clean"]),
                median(at[f"{key}_ratio"]),
                "samples/s",
                "`accuracy`",
                samples={key: at[key], "clean": at["clean"]},
                sections=(S_ATTACKS,),
            )
        )
    return rows


def report(res: dict[str, Any], rows: list[Row], meter: CpuMeter, runtime: float) -> str:
    m, sizes, tu, at = res["machine"], res["sizes"], res["tuning"], res["attacks"]
    out = [
        "# shieldtune speed benchmark",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch {m['torch']} with {m['torch_threads']} threads, mlflow {m['mlflow']}, "
        f"Python {m['python']}",
        f"- date: {m['date']}; mode: {'quick' if res['quick'] else 'full'}, "
        f"repeats {sizes['repeats']}; runtime {runtime:.0f} s; "
        f"1-min load average at start {m['loadavg_at_start']:.2f}; "
        f"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS={m['mlflow_async_buffering_s'] or 'unset'}",
        "",
        markdown_table(
            ["what", "value (median)", "baseline (median)", "ratio", "target", "result"],
            [r.cells() for r in rows],
            ["---", "---:", "---:", "---:", "---:", ":---:"],
        ),
        "",
        "Notes:",
        "",
        f"- Ratios are medians of per-repeat ratios of interleaved paired runs. Row 1: each repeat "
        f"is an A-B-B-A block of 4 runs of {sizes['segment_budget']} samples, each from the "
        "repeat's same freshly seeded default model (SGD, batch 64, `fixed_hyperparameters`, "
        "adv_mix 0) on the bundled train split; the bare "
        "loop draws the same batches and also calls `zero_grad(set_to_none=True)`.",
    ]
    jobs = tu["jobs"]
    steps = jobs["off"][0]["steps"]
    out.append(
        f"- Rows 3-4 job: `run_tuning` with {', '.join(sizes['job_overrides'])} "
        f"({steps} env steps; the loose constraint makes a feasible checkpoint likely, so the "
        "final test report and `log_model` run), data loaded once "
        "outside the timed call; job wall is measured around `run_tuning` (includes "
        "`Tracker.finish`, which flushes the async metric queue)."
    )
    if tu["server_error"]:
        out.append(f"- mlflow server rows left out: {tu['server_error']}")
    for backend in ("sqlite", "server"):
        if backend not in jobs:
            continue
        js = jobs[backend]
        per_method = defaultdict(list)
        for j in js:
            for k, v in j["tracker_methods"].items():
                per_method[k].append(v)
        calls = js[0]["tracker_calls"]
        parts = ", ".join(
            f"{k} {median(v):.3f}s/{calls.get(k, 0)}"
            for k, v in sorted(per_method.items(), key=lambda kv: -median(kv[1]))
        )
        log_step_ms = (
            1000 * median(per_method.get("log_step", [0.0])) / max(calls.get("log_step", 1), 1)
        )
        cold = tu["cold"].get(backend, {})
        out.append(
            f"- {backend}: Tracker time per method (median seconds/calls per job): {parts}. "
            f"`log_step` costs {log_step_ms:.2f} ms per env step in the caller (the batch itself "
            f"is written by MLflow's async thread). Cold first job on the fresh store (1 step): "
            f"Tracker {cold.get('tracker_total', float('nan')):.2f}s of "
            f"{cold.get('wall', float('nan')):.2f}s wall (not in the table)."
        )
    step_wall = median(res["env_step"]["step_wall"])
    n_steps = Config().env.steps_per_episode
    projected = []
    for backend in ("sqlite", "server"):
        if backend not in jobs:
            continue
        per_call = {
            m: median(
                [
                    j["tracker_methods"].get(m, 0.0) / max(j["tracker_calls"].get(m, 1), 1)
                    for j in jobs[backend]
                ]
            )
            for m in PER_STEP_METHODS
        }
        episode_cost = n_steps * per_call["log_step"] + per_call["start_episode"]
        episode_cost += per_call["end_episode"]
        projected.append(f"{100 * episode_cost / (n_steps * step_wall):.2f}% ({backend})")
    out.append(
        f"- Projection to a default episode ({n_steps} steps of row 1b's {step_wall:.2f} s, "
        "per-call Tracker times from above): per-episode logging "
        "(log_step per step + start/end_episode) would be "
        + " and ".join(projected)
        + " of the episode's wall time. One-off setup (start, log_model, finish) is "
        "amortised over the job, so its share shrinks as jobs get longer."
    )
    out.append(
        f"- Row 5: default model trained briefly (one {sizes['segment_budget']}-sample segment; "
        f"clean acc {at['clean_acc']:.3f}, FGSM robust {at['fgsm_acc']:.3f}, PGD robust "
        f"{at['pgd_acc']:.3f} on {at['images']} validation images, epsilon 0.1, PGD 10 steps x 2 "
        "restarts). Cost model in forward-pass equivalents (backward ~ 2 forwards): clean 1, "
        "FGSM 5 (attack fwd+bwd, attacked fwd, clean fwd) -> ratio ~0.20; PGD 63 "
        "(clean fwd + 2 x (10 x fwd+bwd + fwd)) -> ratio ~0.016."
    )
    out += [
        "",
        "CPU use per timed part (cores, averaged over its wall time; 'others' = processes "
        f"not started by this script; {m['usable_cores']} cores available):",
        "",
        markdown_table(
            ["part", "wall", "this script", "mlflow server", "others"],
            [
                [
                    s["section"],
                    f"{s['wall_s']:.1f} s",
                    f"{s['own_cores']:.2f}",
                    f"{s['server_cores']:.2f}",
                    f"{s['others_cores']:.2f}",
                ]
                for s in _merge_sections(meter.sections)
            ],
            ["---", "---:", "---:", "---:", "---:"],
        ),
    ]
    busiest = max((s["others_cores"] for s in meter.sections), default=0.0)
    if busiest > CONTENDED_CORES:
        out += [
            "",
            f"**Contended:** other processes used up to {busiest:.2f} cores during a timed part "
            "(rows marked 'contended'); "
            "with torch using every core, absolute numbers (and paired ratios, less so) are "
            "unreliable. Re-run on an idle machine before acting on a failure.",
        ]
    return "\n".join(out)


def _merge_sections(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, float]] = {}
    for s in sections:
        m = merged.setdefault(s["section"], {"wall_s": 0.0, "own": 0.0, "srv": 0.0, "oth": 0.0})
        m["wall_s"] += s["wall_s"]
        m["own"] += s["own_cores"] * s["wall_s"]
        m["srv"] += s["server_cores"] * s["wall_s"]
        m["oth"] += s["others_cores"] * s["wall_s"]
    return [
        {
            "section": k,
            "wall_s": v["wall_s"],
            "own_cores": v["own"] / v["wall_s"] if v["wall_s"] else 0.0,
            "server_cores": v["srv"] / v["wall_s"] if v["wall_s"] else 0.0,
            "others_cores": v["oth"] / v["wall_s"] if v["wall_s"] else 0.0,
        }
        for k, v in merged.items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats and smaller sizes (~4 min)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write results to this file")
    ap.add_argument(
        "--profile", action="store_true", help="cProfile train_segment and the bare loop (stderr)"
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument(
        "--no-server", action="store_true", help="skip the rows that need a local mlflow server"
    )
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = Sizes.make(args.quick, args.repeats)
    interrupt_on_term_and_hup()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    start = time.perf_counter()
    meter = CpuMeter()
    tmp = Path(tempfile.mkdtemp(prefix="shieldtune-speed-"))
    try:
        res: dict[str, Any] = {"quick": args.quick, "sizes": asdict(sizes)}
        res["machine"] = machine_info()
        log(
            f"{res['machine']['cpu']}, torch {res['machine']['torch']} "
            f"({res['machine']['torch_threads']} threads); scratch folder {tmp}"
        )
        cfg = Config()
        splits = load_mnist(DataConfig())
        with meter.section(S_TRAIN):
            res["training"] = bench_training(cfg, splits, sizes)
        with meter.section(S_STEP):
            res["env_step"] = bench_env_step(cfg, splits, sizes)
        with meter.section(S_MATMUL):
            log(f"row 2: float32 matmul peak ({sizes.matmul_n}x{sizes.matmul_n})")
            res["matmul"] = bench_matmul_peak(sizes.matmul_n)
        with meter.section(S_ATTACKS):
            res["attacks"] = bench_attacks(cfg, splits, sizes)
        res["tuning"] = bench_tuning(
            sizes, tmp, meter, use_server=not args.no_server
        )  # sections per job inside
        if args.profile:
            log("profiling train_segment and the bare loop")
            print(profile_training(cfg, splits, sizes.segment_budget), file=sys.stderr)
        rows = build_rows(res, MnistCnnTask().flops_per_sample())
        others = {s["section"]: s["others_cores"] for s in _merge_sections(meter.sections)}
        for row in rows:
            row.contended = any(others.get(sec, 0.0) > CONTENDED_CORES for sec in row.sections)
        runtime = time.perf_counter() - start
        print(report(res, rows, meter, runtime))
        if args.json:
            res["rows"] = [{**asdict(r), "passed": r.passed, "cells": r.cells()} for r in rows]
            res["cpu_sections"] = meter.sections
            res["runtime_s"] = runtime
            args.json.write_text(json.dumps(res, indent=2, default=str))
            log(f"wrote {args.json}")
        failed = [r.what for r in rows if r.passed is False]
        log(f"done in {runtime:.0f}s; {len(failed)} target(s) failed")
        return 1 if (args.strict and failed) else 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
