"""PNG plots of a tuning job for reviewers in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shieldtune.safety.spec import Constraint


def _rows(hyperparameters: list[str], records: list[dict], constraints: list[Constraint]):
    """The panels: each tuned hyperparameter, validation accuracy, every constrained metric
    (a task's own included, so a rollback it caused is explained), cost and reward."""
    metrics = list(dict.fromkeys(c.metric for c in constraints))
    if not metrics and any("fgsm_robust_acc" in r for r in records):
        metrics = ["fgsm_robust_acc"]
    return [*hyperparameters, "val_acc", *[m for m in metrics if m != "val_acc"], "cost", "reward"]


def plot_steps(
    records: list[dict],
    hyperparameters: list[str],
    path: Path,
    constraints: list[Constraint] | None = None,
    chosen_step: int | None = None,
    exploits: list[dict[str, Any]] | None = None,
) -> Path:
    """Schedule and metrics per step.

    A hyperparameter's panel shows the value the optimizer used (the level with its schedule
    applied, e.g. times the cosine decay) and, faint, the level the actions set. Marked:
    segments whose result broke the spec before the episode's first safe state (warm-up,
    orange), segments rolled back (red x: they broke the spec or collapsed), each
    constraint's threshold (dashed) with the metric's confidence band, and the chosen
    checkpoint (green). A population (one episode, several members) is drawn as one line
    per member over its own steps, with each exploit (a member taking over another's
    state) as a dotted line.
    """
    constraints = constraints or []
    members = sorted({r.get("env_index", 0) for r in records})
    population = len(members) > 1 and len({r["episode"] for r in records}) == 1
    x_key = "step" if population else "global_step"
    groups = [[r for r in records if r.get("env_index", 0) == m] for m in members]
    if not population:
        groups = [records]
    rows = _rows(hyperparameters, records, constraints)
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows)), sharex=True)
    thresholds = {c.metric: c.threshold for c in constraints}
    for ax, key in zip(axes, rows, strict=True):
        for g, group in enumerate(groups):
            label = f"member {members[g]}" if population else None
            _draw(ax, key, group, x_key, label, f"C{g}")
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
            chosen = [r[x_key] for r in records if r["global_step"] == chosen_step]
            if chosen:
                ax.axvline(chosen[0], color="green", linewidth=1.2, alpha=0.7)
        for e in exploits or []:
            ax.axvline(e["step"] + 0.5, color="purple", linestyle=":", linewidth=0.9)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    if not population:
        for boundary in [r["global_step"] for r in records if r["step"] == 1][1:]:
            for ax in axes:
                ax.axvline(boundary - 0.5, color="black", alpha=0.15)
    for e in exploits or []:
        axes[0].annotate(
            f"{e['copier']}<-{e['donor']}",
            (e["step"] + 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            color="purple",
        )
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize=6, loc="upper right")
    axes[-1].set_xlabel(
        "member's step (one line per member; purple dotted: exploits; green: the chosen checkpoint)"
        if population
        else "global environment step (thin lines: episode starts; green: the chosen checkpoint)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _draw(ax, key: str, records: list[dict], x_key: str, label: str | None, color: str) -> None:
    """One line of ``key`` over ``records``, with its band and unsafe marks."""
    xs = [r[x_key] for r in records]
    trained = f"{key}_trained"
    if any(trained in r for r in records):
        level = [r.get(key, float("nan")) for r in records]
        ax.plot(xs, level, linewidth=0.8, alpha=0.3, color=color)
        values = [r.get(trained, float("nan")) for r in records]
    else:
        values = [r.get(key, float("nan")) for r in records]
    ax.plot(xs, values, marker=".", linewidth=1, label=label, color=color)
    low = [r.get(f"{key}_low", float("nan")) for r in records]
    high = [r.get(f"{key}_high", float("nan")) for r in records]
    if any(v == v for v in low):  # a confidence band where the metric has one
        ax.fill_between(
            xs, low, high, alpha=0.15, step="mid", label="confidence bounds", color=color
        )
    marks = {
        "unsafe, before the first safe state": (
            [i for i, r in enumerate(records) if r.get("warmup")],
            {"marker": "o", "facecolors": "none", "edgecolors": "orange"},
        ),
        "rolled back (broke the spec or collapsed)": (
            [i for i, r in enumerate(records) if not r["accepted"]],
            {"marker": "x", "color": "red"},
        ),
    }
    for mark, (index, style) in marks.items():
        if index:
            ax.scatter(
                [xs[i] for i in index], [values[i] for i in index], zorder=3, label=mark, **style
            )
