"""PNG plots of a tuning job for reviewers in MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shieldtune.safety.spec import Constraint


def plot_steps(
    records: list[dict],
    hyperparameters: list[str],
    path: Path,
    constraints: list[Constraint] | None = None,
    chosen_step: int | None = None,
) -> Path:
    """Schedule and metrics per global step.

    Marked: segments whose result broke the spec before the episode's first safe state
    (warm-up, orange), segments rolled back after it (red x), each constraint's threshold
    (dashed) with the metric's confidence band, and the chosen checkpoint (green line).
    """
    steps = [r["global_step"] for r in records]
    rows = [*hyperparameters, "val_acc", "fgsm_robust_acc", "cost", "reward"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows)), sharex=True)
    marks = {
        "unsafe, before the first safe state": (
            [i for i, r in enumerate(records) if r.get("warmup")],
            {"marker": "o", "facecolors": "none", "edgecolors": "orange"},
        ),
        "unsafe, rolled back": (
            [i for i, r in enumerate(records) if not r["accepted"]],
            {"marker": "x", "color": "red"},
        ),
    }
    thresholds = {c.metric: c.threshold for c in constraints or []}
    for ax, key in zip(axes, rows, strict=True):
        values = [r.get(key, float("nan")) for r in records]
        ax.plot(steps, values, marker=".", linewidth=1)
        low = [r.get(f"{key}_low", float("nan")) for r in records]
        high = [r.get(f"{key}_high", float("nan")) for r in records]
        if any(v == v for v in low):  # a confidence band where the metric has one
            ax.fill_between(steps, low, high, alpha=0.2, step="mid", label="confidence bounds")
        for label, (index, style) in marks.items():
            if index:
                ax.scatter(
                    [steps[i] for i in index],
                    [values[i] for i in index],
                    zorder=3,
                    label=label,
                    **style,
                )
        if key in thresholds:
            ax.axhline(
                thresholds[key],
                color="grey",
                linestyle="--",
                linewidth=0.8,
                label="constraint threshold",
            )
        if key in ("learning_rate", "weight_decay"):
            ax.set_yscale("log")
        if key == "cost":
            ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
        if chosen_step is not None:
            ax.axvline(chosen_step, color="green", linewidth=1.2, alpha=0.7)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    for boundary in [r["global_step"] for r in records if r["step"] == 1][1:]:
        for ax in axes:
            ax.axvline(boundary - 0.5, color="black", alpha=0.15)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper right")
    axes[-1].set_xlabel(
        "global environment step (thin lines: episode starts; green: the chosen checkpoint)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
