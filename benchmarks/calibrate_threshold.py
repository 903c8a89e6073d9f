"""Measure FGSM robust accuracy across fixed schedules to calibrate the default constraint.

A useful default threshold is *binding* (the most accurate unconstrained
schedules break it) but *satisfiable* (some schedules meet it with good
accuracy). This script trains one full episode per constant (learning rate,
batch size) pair on the bundled data with the default config and prints, per
pair, the best validation accuracy reached and the FGSM robust accuracy of
that state, plus the quantiles the README quotes.

    python benchmarks/calibrate_threshold.py [--seeds 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from shieldtune.config import load_config
from shieldtune.data import load_mnist
from shieldtune.executor import LocalStepExecutor, StepRequest
from shieldtune.training import fixed_hyperparameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(None, ["safety.constraints=[]", *args.overrides])
    executor = LocalStepExecutor(cfg, load_mnist(cfg.data))
    lrs = [0.0125, 0.025, 0.05, 0.1, 0.2, 0.4]
    batch_sizes = [16, 32, 64, 128, 256]
    print("| lr | batch | best val_acc (median) | fgsm_robust_acc at best (median) | diverged |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for lr, bs in itertools.product(lrs, batch_sizes):
        accs, fgsms, div = [], [], 0
        for seed in range(args.seeds):
            hp = {**fixed_hyperparameters(cfg.training), "learning_rate": lr, "batch_size": bs}
            state, best = None, (0.0, 0.0)
            for step in range(cfg.env.steps_per_episode):
                res = executor.run(
                    StepRequest(state, hp, cfg.training.segment_samples, 1000 * seed + step)
                )
                if res.diverged:
                    div += 1
                    break
                state = res.state
                if res.metrics["val_acc"] > best[0]:
                    best = (res.metrics["val_acc"], res.metrics["fgsm_robust_acc"])
            accs.append(best[0])
            fgsms.append(best[1])
        row = (lr, bs, statistics.median(accs), statistics.median(fgsms), div)
        rows.append(row)
        print(f"| {lr} | {bs} | {row[2]:.4f} | {row[3]:.4f} | {div} |", flush=True)
    good = sorted(rows, key=lambda r: -r[2])
    print("\ntop-5 accuracy schedules and their FGSM robust accuracy:")
    for r in good[:5]:
        print(f"  lr={r[0]} bs={r[1]}: val_acc {r[2]:.4f}, fgsm {r[3]:.4f}")


if __name__ == "__main__":
    main()
