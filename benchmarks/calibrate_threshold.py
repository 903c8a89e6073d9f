"""Measure FGSM robust accuracy across fixed schedules to calibrate the default constraint.

A useful default threshold is *binding* (the most accurate states break it, so
an unconstrained tuner would pick an unsafe model) yet *satisfiable* (states
that meet it exist, with good accuracy). This script trains one full episode
per constant (learning rate, batch size) pair and seed on the bundled data with
the default config, records every state (segment end) it passes through, and
prints per pair the best validation accuracy and that state's FGSM robust
accuracy, then per candidate threshold: the best accuracy among states meeting
it and the share of states that meet it.

    python benchmarks/calibrate_threshold.py [--seeds 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from shieldtune.config import load_config
from shieldtune.data import load_mnist
from shieldtune.executors.local import LocalStepExecutor, StepRequest
from shieldtune.training.segment import fixed_hyperparameters

LEARNING_RATES = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]
BATCH_SIZES = [16, 32, 64, 128, 256]
THRESHOLDS = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(None, ["safety.constraints=[]", *args.overrides])
    executor = LocalStepExecutor(cfg, load_mnist(cfg.data))
    states: list[tuple[float, float]] = []  # (val_acc, fgsm) of every segment end
    print(
        f"epsilon={cfg.safety.epsilon}, {cfg.env.steps_per_episode} segments x "
        f"{cfg.training.segment_samples} samples, {args.seeds} seeds\n"
    )
    print("| lr | batch | best val_acc (median) | fgsm_robust_acc at best (median) | diverged |")
    print("|---:|---:|---:|---:|---:|")
    for lr, bs in itertools.product(LEARNING_RATES, BATCH_SIZES):
        accs, fgsms, diverged = [], [], 0
        for seed in range(args.seeds):
            hp = {**fixed_hyperparameters(cfg.training), "learning_rate": lr, "batch_size": bs}
            state, best = None, (0.0, 0.0)
            for step in range(cfg.env.steps_per_episode):
                req = StepRequest(state, hp, cfg.training.segment_samples, 1000 * seed + step)
                res = executor.run(req)
                if res.diverged:
                    diverged += 1
                    break
                state = res.state
                point = (res.metrics["val_acc"], res.metrics["fgsm_robust_acc"])
                states.append(point)
                best = max(best, point)
            accs.append(best[0])
            fgsms.append(best[1])
        print(
            f"| {lr} | {bs} | {statistics.median(accs):.4f} | {statistics.median(fgsms):.4f} "
            f"| {diverged} |",
            flush=True,
        )
    top = max(states)
    print(f"\nmost accurate state overall: val_acc {top[0]:.4f} with fgsm_robust_acc {top[1]:.4f}")
    print("\n| threshold | states meeting it | best val_acc among them | binding? |")
    print("|---:|---:|---:|:---|")
    for t in THRESHOLDS:
        ok = [a for a, f in states if f >= t]
        best = f"{max(ok):.4f}" if ok else "none"
        print(
            f"| fgsm_robust_acc >= {t} | {len(ok)}/{len(states)} | {best} | "
            f"{'yes' if top[1] < t else 'no'} |"
        )


if __name__ == "__main__":
    main()
