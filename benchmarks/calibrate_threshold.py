"""Measure robustness across fixed schedules to calibrate a task's safety constraint.

A useful threshold is *binding* (the most accurate states break it, so an
unconstrained tuner would pick an unsafe model) yet *satisfiable* (states that
meet it exist, with good accuracy). A *binding spec that needs adversarial
training* is one no state trained with ``adv_mix = 0`` meets. This script
trains one full episode per constant (learning rate, batch size, adv_mix)
triple and seed, with the task and config you give, records every state
(segment end) it passes through, and prints per triple the best validation
accuracy and that state's FGSM robust accuracy, then per candidate threshold:
how many states meet it without and with adversarial training, the best
accuracy among them, and whether it binds.

    python benchmarks/calibrate_threshold.py --config configs/mnist-cnn.yaml [--seeds 2]
        [--lr 0.025 0.05 ...] [--batch 32 64 ...] [--adv-mix 0 0.25 0.5]
        [--thresholds 0.6 0.7 ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from shieldtune.config import load_config
from shieldtune.job import Job
from shieldtune.tasks.registry import make_task
from shieldtune.training.hyperparameters import fixed_hyperparameters
from shieldtune.training.step import StepRequest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mnist-cnn.yaml")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lr", type=float, nargs="+", default=[0.0125, 0.025, 0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--adv-mix", type=float, nargs="+", default=[0.0])
    ap.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, ["safety.constraints=[]", *args.overrides])
    runner = Job.from_config(cfg).steps.runner()
    fixed = fixed_hyperparameters(cfg.training, make_task(cfg.task))
    # (val_acc, fgsm, adv_mix) of every segment end
    states: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    print(
        f"task={cfg.task.entry_point}, epsilon={cfg.safety.epsilon}, "
        f"{cfg.env.steps_per_episode} segments x {cfg.training.segment_samples} samples, "
        f"{args.seeds} seeds\n"
    )
    print("| lr | batch | adv_mix | best val_acc (median) | fgsm at best (median) | diverged |")
    print("|---:|---:|---:|---:|---:|---:|")
    for lr, bs, mix in itertools.product(args.lr, args.batch, args.adv_mix):
        accs, fgsms, diverged = [], [], 0
        for seed in range(args.seeds):
            hp = {**fixed, "learning_rate": lr, "batch_size": bs, "adv_mix": mix}
            state = runner.run(StepRequest(None, hp, 0, 1000 * seed)).state
            best = (0.0, 0.0)
            for step in range(cfg.env.steps_per_episode):
                req = StepRequest(state, hp, cfg.training.segment_samples, 1000 * seed + step + 1)
                res = runner.run(req)
                if res.diverged:
                    diverged += 1
                    break
                state = res.state
                point = (res.metrics["val_acc"], res.metrics["fgsm_robust_acc"])
                states.append((*point, mix))
                best = max(best, point)
            accs.append(best[0])
            fgsms.append(best[1])
        print(
            f"| {lr} | {bs} | {mix} | {statistics.median(accs):.4f} | "
            f"{statistics.median(fgsms):.4f} | {diverged} |",
            flush=True,
        )
    top = max(states)
    print(f"\nmost accurate state overall: val_acc {top[0]:.4f} with fgsm_robust_acc {top[1]:.4f}")
    print(
        "\n| threshold | states meeting it (adv_mix = 0) | (adv_mix > 0) "
        "| best val_acc among them | binding? |"
    )
    print("|---:|---:|---:|---:|:---|")
    plain = [s for s in states if s[2] == 0]
    mixed = [s for s in states if s[2] > 0]
    for t in args.thresholds:
        ok = [a for a, f, _ in states if f >= t]
        ok_plain = sum(f >= t for _, f, _ in plain)
        ok_mixed = sum(f >= t for _, f, _ in mixed)
        best = f"{max(ok):.4f}" if ok else "none"
        binds = "yes" if top[1] < t else "no"
        if ok and ok_plain == 0:
            binds += ", needs adv_mix > 0"
        print(
            f"| fgsm_robust_acc >= {t} | {ok_plain}/{len(plain)} | {ok_mixed}/{len(mixed)} | "
            f"{best} | {binds} |"
        )
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
