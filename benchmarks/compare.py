"""Tuning quality, safety and cost of shieldtune against its peers, side by side.

Every method gets the same data split, model, search space (learning rate x
batch size), safety spec and training budget (counted in training samples),
over the same seeds. Each method's best *feasible* state (all constraints met
on validation) is chosen on validation and evaluated once on the test split.

    python benchmarks/compare.py --quick            # < 15 min on 2 CPU cores
    python benchmarks/compare.py                    # full mode
    python benchmarks/compare.py --out results/     # also writes results.json + budget.png

Columns: best feasible test accuracy and its FGSM robust accuracy (test),
constraint violations during tuning (segments trained whose result broke the
spec after their training run had first been safe; warm-up segments of a
fresh model are excluded for every method alike), budget (samples) to reach
within 0.5 pp of the method's final best validation accuracy, wall time.
Medians over seeds with [min, max].
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shieldtune.config import Config, load_config
from shieldtune.control.tuner import run_tuning
from shieldtune.executors.local import LocalStepExecutor
from shieldtune.safety.spec import parse_constraints, spec_cost
from shieldtune.safety.suite import test_report
from shieldtune.tasks.checker import load_task_data
from shieldtune.tasks.contract import TaskData
from shieldtune.tasks.registry import make_task
from shieldtune.training.device import resolve_device
from shieldtune.training.hyperparameters import fixed_hyperparameters
from shieldtune.training.step import StepRequest, StepRunner, TrainState, build_model

WITHIN = 0.005  # "within 0.5 percentage points of the final best"


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Ledger:
    """Budget, violations and the best feasible state of one method on one seed."""

    cfg: Config
    budget: int
    samples: int = 0
    violations: int = 0
    best_acc: float = -1.0
    best_state: TrainState | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        return self.samples >= self.budget

    def record(
        self,
        samples: int,
        val_acc: float,
        feasible: bool,
        violation: bool,
        state: TrainState | None,
    ) -> None:
        self.samples += samples
        self.violations += int(violation)
        if feasible and val_acc > self.best_acc:
            self.best_acc, self.best_state = val_acc, state
        self.curve.append((self.samples, max(self.best_acc, 0.0)))


class TrainingRun:
    """One training run from a fresh model, segment by segment, booked in a ledger."""

    def __init__(self, ledger: Ledger, executor: LocalStepExecutor, init_seed: int) -> None:
        self.ledger, self.executor = ledger, executor
        self.constraints = parse_constraints(ledger.cfg.safety.constraints)
        self.hp_fixed = fixed_hyperparameters(ledger.cfg.training, make_task(ledger.cfg.task))
        self.seed = init_seed
        self.t = 0
        self.state = executor.run(StepRequest(None, self.hp_fixed, 0, init_seed)).state
        self.safe_reached = False
        self.val_acc = 0.0
        self.feasible = False
        self.cost = math.inf

    def segment(self, lr: float, bs: int) -> None:
        self.t += 1
        hp = {**self.hp_fixed, "learning_rate": lr, "batch_size": bs}
        seg = self.ledger.cfg.training.segment_samples
        res = self.executor.run(StepRequest(self.state, hp, seg, self.seed * 1000 + self.t))
        if res.diverged:
            self.ledger.record(res.samples, 0.0, False, True, None)
            self.val_acc, self.feasible = 0.0, False
            self.cost = self.ledger.cfg.shield.divergence_cost
            return
        cost = spec_cost(self.constraints, res.metrics)
        feasible = cost <= 0
        self.ledger.record(
            res.samples,
            res.metrics["val_acc"],
            feasible,
            not feasible and self.safe_reached,
            res.state,
        )
        self.safe_reached = self.safe_reached or feasible
        self.state, self.val_acc, self.feasible = res.state, res.metrics["val_acc"], feasible
        self.cost = cost

    def copy_from(self, other: "TrainingRun") -> None:
        """PBT exploit: take over another member's weights and optimizer state."""
        self.state = other.state
        self.safe_reached, self.val_acc, self.feasible, self.cost = (
            other.safe_reached,
            other.val_acc,
            other.feasible,
            other.cost,
        )


@dataclass
class Result:
    method: str
    seed: int
    test_acc: float | None
    test_fgsm: float | None
    violations: int
    budget_to_near_best: int | None
    wall_seconds: float
    curve: list[tuple[int, float]]


def _budget_to_near_best(curve: list[tuple[int, float]]) -> int | None:
    final = curve[-1][1] if curve else 0.0
    if final <= 0:
        return None
    return next(s for s, acc in curve if acc >= final - WITHIN)


def _test_report(cfg: Config, splits: TaskData, state: TrainState | None) -> dict | None:
    if state is None:
        return None
    task = make_task(cfg.task)
    model = build_model(task, cfg.tuner.seed, torch.device("cpu"))
    model.load_state_dict(state.model)
    model.eval()
    device = resolve_device(cfg.training.device)
    return test_report(task, model, splits, cfg.safety, device, seed=cfg.tuner.seed)


# --------------------------------------------------------------------------- the search space


def grid(cfg: Config) -> tuple[list[float], list[int]]:
    """The values the shieldtune action space can reach: init * factor**k within bounds."""
    out = []
    for spec in cfg.env.search_space:
        lo_k = math.ceil(math.log(spec.low / spec.init, spec.factor) - 1e-9)
        hi_k = math.floor(math.log(spec.high / spec.init, spec.factor) + 1e-9)
        out.append([spec.init * spec.factor**k for k in range(lo_k, hi_k + 1)])
    lrs, bss = out
    return lrs, [round(b) for b in bss]


# --------------------------------------------------------------------------- methods


def shieldtune_method(overrides: list[str], warm: bool = False, one_run: bool = False) -> Callable:
    def run(cfg: Config, splits: TaskData, seed: int, tmp: Path) -> Result:
        base = [
            f"tuner.seed={seed}",
            "tracking.enabled=false",
            "tuner.progress=false",
            f"tuner.output_dir={tmp}",
        ]
        if warm:  # an earlier tuning run (another seed) supplies the policy: the retuning path
            prior = run_tuning(_with(cfg, [*base, f"tuner.seed={seed + 1000}", *overrides]), splits)
            overrides_ = [
                *overrides,
                f"tuner.warm_start={prior.output_dir}/agent.pt",
                "agent.epsilon_start=0.3",
            ]
        else:
            overrides_ = overrides
        if one_run:  # a single training run spanning the whole budget, like the hand schedules
            per_run = cfg.tuner.episodes * cfg.env.steps_per_episode
            overrides_ = [
                *overrides_,
                "tuner.episodes=1",
                f"env.steps_per_episode={per_run}",
                f"agent.epsilon_decay_steps={per_run}",
            ]
        start = time.perf_counter()
        s = run_tuning(_with(cfg, [*base, *overrides_]), splits)
        wall = time.perf_counter() - start
        steps = [
            json.loads(x) for x in (Path(s.output_dir) / "steps.jsonl").read_text().splitlines()
        ]
        curve, best, spent = [], 0.0, 0
        for r in steps:
            spent += cfg.training.segment_samples
            if r["accepted"] and r["cost"] <= 0:
                best = max(best, r["val_acc"])
            curve.append((spent, best))
        t = s.test_metrics or {}
        return Result(
            "",
            seed,
            t.get("test_acc"),
            t.get("fgsm_robust_acc"),
            s.violations,
            _budget_to_near_best(curve),
            wall,
            curve,
        )

    return run


def _with(cfg: Config, overrides: list[str]) -> Config:
    from shieldtune.config import apply_override, config_from_dict

    raw = cfg.to_dict()
    for o in overrides:
        apply_override(raw, o)
    return config_from_dict(raw)


def _baseline(
    body: Callable[[Ledger, LocalStepExecutor, np.random.Generator, int], None],
) -> Callable:
    """Wrap a baseline's search loop with the shared ledger, timing and test report."""

    def run(cfg: Config, splits: TaskData, seed: int, tmp: Path) -> Result:
        executor = LocalStepExecutor(StepRunner.from_config(cfg, splits))
        ledger = Ledger(cfg, _budget(cfg))
        start = time.perf_counter()
        body(ledger, executor, np.random.default_rng(seed), seed)
        t = _test_report(cfg, splits, ledger.best_state) or {}
        wall = time.perf_counter() - start  # includes the test report, as shieldtune's does
        return Result(
            "",
            seed,
            t.get("test_acc"),
            t.get("fgsm_robust_acc"),
            ledger.violations,
            _budget_to_near_best(ledger.curve),
            wall,
            ledger.curve,
        )

    return run


def _budget(cfg: Config) -> int:
    return cfg.tuner.episodes * cfg.env.steps_per_episode * cfg.training.segment_samples


def _hand_schedule(lr_at: Callable[[int, int, list[float], float, float], float]) -> Callable:
    """One long training run over the whole budget with a hand-written lr schedule."""

    def body(ledger: Ledger, executor: LocalStepExecutor, rng: np.random.Generator, seed: int):
        lr0 = ledger.cfg.training.learning_rate
        bs = ledger.cfg.training.batch_size
        run = TrainingRun(ledger, executor, seed)
        total = ledger.budget // ledger.cfg.training.segment_samples
        history: list[float] = []
        lr = lr0
        for t in range(total):
            lr = lr_at(t, total, history, lr, lr0)
            run.segment(lr, bs)
            history.append(run.val_acc)

    return _baseline(body)


def _fixed(t: int, total: int, history: list[float], lr: float, lr0: float) -> float:
    return lr0


def _cosine(t: int, total: int, history: list[float], lr: float, lr0: float) -> float:
    return lr0 * 0.5 * (1 + math.cos(math.pi * t / total))


def _plateau(t: int, total: int, history: list[float], lr: float, lr0: float) -> float:
    """ReduceLROnPlateau(mode=max, factor=0.5, patience=2) on validation accuracy."""
    if len(history) > 2 and max(history[-2:]) <= max(history[:-2]):
        return lr * 0.5
    return lr


def _trials(
    ledger: Ledger,
    executor: LocalStepExecutor,
    seed: int,
    propose: Callable[[int], tuple[float, int]],
    report: Callable[[int, float, float], None] | None = None,
) -> None:
    """Sequential trials, each one training run of steps_per_episode constant segments."""
    trial = 0
    steps = ledger.cfg.env.steps_per_episode
    while not ledger.exhausted:
        lr, bs = propose(trial)
        run = TrainingRun(ledger, executor, seed * 100 + trial)
        best_acc, best_cost = 0.0, math.inf
        for _ in range(steps):
            if ledger.exhausted:
                break
            run.segment(lr, bs)
            if run.feasible and run.val_acc > best_acc:
                best_acc = run.val_acc
            best_cost = min(best_cost, run.cost)
        if report:
            report(trial, best_acc, best_cost)
        trial += 1


def _random_search(ledger, executor, rng, seed):
    lrs, bss = grid(ledger.cfg)
    _trials(ledger, executor, seed, lambda _t: (float(rng.choice(lrs)), int(rng.choice(bss))))


def _optuna_tpe(ledger, executor, rng, seed):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lrs, bss = grid(ledger.cfg)
    # Optuna 5's constraint API: Trial.set_constraint (constraints_func is deprecated);
    # TPE then models feasibility and ranks infeasible trials below feasible ones.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    pending: dict[int, Any] = {}

    def propose(t: int) -> tuple[float, int]:
        trial = study.ask()
        pending[t] = trial
        return (
            trial.suggest_categorical("learning_rate", lrs),
            trial.suggest_categorical("batch_size", bss),
        )

    def report(t: int, best_acc: float, best_cost: float) -> None:
        trial = pending.pop(t)
        trial.set_constraint("spec_cost", float(best_cost))  # <= 0 means feasible
        study.tell(trial, best_acc)

    _trials(ledger, executor, seed, propose, report)


def _pbt(ledger, executor, rng, seed, population: int = 4, ready: int = 2):
    """Population Based Training (Jaderberg et al. 2017): truncation selection, perturb."""
    lrs, bss = grid(ledger.cfg)
    members = [TrainingRun(ledger, executor, seed * 100 + i) for i in range(population)]
    hps = [(float(rng.choice(lrs)), int(rng.choice(bss))) for _ in members]
    t = 0
    while not ledger.exhausted:
        for i, m in enumerate(members):
            if ledger.exhausted:
                break
            m.segment(*hps[i])
        t += 1
        if t % ready:
            continue
        # rank: feasible first, then validation accuracy
        order = sorted(range(population), key=lambda i: (members[i].feasible, members[i].val_acc))
        cut = max(1, population // 4)
        for loser, winner in zip(order[:cut], order[-cut:], strict=True):
            members[loser].copy_from(members[winner])  # exploit
            lr, bs = hps[winner]
            lr = float(np.clip(lr * rng.choice([0.8, 1.2]), min(lrs), max(lrs)))  # explore
            bs = int(np.clip(bs * rng.choice([0.5, 1, 2]), min(bss), max(bss)))
            hps[loser] = (lr, bs)


def methods() -> dict[str, Callable]:
    return {
        "shieldtune (shield, cold start)": shieldtune_method([]),
        "shieldtune (shield, warm start)": shieldtune_method([], warm=True),
        "shieldtune (shield, one run = whole budget)": shieldtune_method([], one_run=True),
        "shieldtune without shield": shieldtune_method(
            ["shield.enabled=false", "shield.rollback=false"]
        ),
        "shieldtune reward penalty (λ=2)": shieldtune_method(
            ["shield.enabled=false", "shield.rollback=false", "shield.cost_penalty=2.0"]
        ),
        "fixed schedule (lr 0.05, bs 64)": _hand_schedule(_fixed),
        "cosine annealing": _hand_schedule(_cosine),
        "ReduceLROnPlateau": _hand_schedule(_plateau),
        "random search": _baseline(_random_search),
        "Optuna TPE (constrained)": _baseline(_optuna_tpe),
        "PBT (Jaderberg et al.)": _baseline(_pbt),
    }


# --------------------------------------------------------------------------- report


def _fmt(values: list[float | None], digits: int = 4, scale: float = 1.0) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    miss = len(values) - len(vals)
    med = statistics.median(vals)
    text = f"{med:.{digits}f} [{min(vals):.{digits}f}, {max(vals):.{digits}f}]"
    return text + (f" ({miss} none)" if miss else "")


def table(results: list[Result]) -> str:
    lines = [
        "| method | best feasible test acc | its FGSM robust acc (test) | violations | "
        "samples to within 0.5 pp of final best | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == name]
        lines.append(
            f"| {name} | {_fmt([r.test_acc for r in rs])} | {_fmt([r.test_fgsm for r in rs])} | "
            f"{_fmt([float(r.violations) for r in rs], 0)} | "
            f"{_fmt([r.budget_to_near_best for r in rs], 0)} | "
            f"{_fmt([r.wall_seconds for r in rs], 0)} |"
        )
    return "\n".join(lines)


def machine_header(command: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"date {time.strftime('%Y-%m-%d')}; {cpu}; {os.cpu_count()} cores; torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads\ncommand: {command}\n"
    )


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, name in enumerate(dict.fromkeys(r.method for r in results)):
        rs = [r for r in results if r.method == name]
        xs = sorted({s for r in rs for s, _ in r.curve})
        med = [statistics.median(_at(r.curve, x) for r in rs) for x in xs]
        style = ("-", "--", ":")[i // 10 % 3]  # the colour cycle has 10 colours
        ax.plot(xs, med, label=name, linewidth=1.4, linestyle=style)
    ax.set_xlabel("training samples spent")
    ax.set_ylabel("best feasible validation accuracy (median over seeds)")
    ax.set_ylim(0.9, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _at(curve: list[tuple[int, float]], x: int) -> float:
    best = 0.0
    for s, acc in curve:
        if s > x:
            break
        best = acc
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 episodes of budget")
    ap.add_argument("--seeds", type=int, help="number of seeds (default: 2 quick, 3 full)")
    ap.add_argument("--episodes", type=int, help="budget in episodes of 8 segments (default 3/6)")
    ap.add_argument("--only", action="append", help="run only methods containing this text")
    ap.add_argument("--out", type=Path, help="folder for results.json and budget.png")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--replot",
        type=Path,
        metavar="RESULTS_JSON",
        help="re-render the table and PNG from a saved results.json, run nothing",
    )
    args = ap.parse_args()
    if args.replot:
        saved = [
            Result(**{**r, "curve": [tuple(p) for p in r["curve"]]})
            for r in json.loads(args.replot.read_text())
        ]
        print(table(saved))
        plot(saved, args.replot.with_name("budget.png"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or (2 if args.quick else 3)
    episodes = args.episodes or (3 if args.quick else 6)
    cfg = load_config(None, [f"tuner.episodes={episodes}", *args.overrides])
    splits = load_task_data(make_task(cfg.task), cfg.data)
    chosen = {
        k: v
        for k, v in methods().items()
        if not args.only or any(o.lower() in k.lower() for o in args.only)
    }
    print(
        f"budget: {_budget(cfg)} training samples per method and seed "
        f"({episodes} x {cfg.env.steps_per_episode} segments x {cfg.training.segment_samples}); "
        f"spec: {', '.join(cfg.safety.constraints)}; seeds: {list(range(seeds))}",
        file=sys.stderr,
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in chosen.items():
            for seed in range(seeds):
                t0 = time.perf_counter()
                r = method(cfg, splits, seed, Path(tmp) / f"{len(results)}")
                r.method = name
                results.append(r)
                print(
                    f"  {name} seed {seed}: test acc {r.test_acc}, violations {r.violations}, "
                    f"{time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(machine_header(" ".join(sys.argv)))
    print(table(results))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
        plot(results, args.out / "budget.png")
        print(f"\nwrote {args.out / 'results.json'} and {args.out / 'budget.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
