"""PNG plots of a tuning job for reviewers in MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_steps(records: list[dict], hyperparameters: list[str], path: Path) -> Path:
    """Schedule and metrics per global step; rejected (rolled-back) steps marked with x."""
    steps = [r["global_step"] for r in records]
    rows = [*hyperparameters, "val_acc", "fgsm_robust_acc", "cost", "reward"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows)), sharex=True)
    rejected = [i for i, r in enumerate(records) if not r["accepted"]]
    for ax, key in zip(axes, rows, strict=True):
        values = [r.get(key, float("nan")) for r in records]
        ax.plot(steps, values, marker=".", linewidth=1)
        if rejected:
            ax.scatter(
                [steps[i] for i in rejected],
                [values[i] for i in rejected],
                marker="x",
                color="red",
                zorder=3,
                label="rejected by rollback",
            )
        if key in ("learning_rate", "weight_decay"):
            ax.set_yscale("log")
        if key == "cost":
            ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    for boundary in [r["global_step"] for r in records if r["step"] == 1][1:]:
        for ax in axes:
            ax.axvline(boundary - 0.5, color="black", alpha=0.15)
    if rejected:
        axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("global environment step (vertical lines: episode starts)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
