"""Pictures of a tuning episode for Gymnasium's ``render()``: an RGB image and text rows.

``rgb_array`` draws the trajectory so far (each tuned hyperparameter as the segment
trained it, validation accuracy, and every constraint's metric with its threshold),
what a video recorder or a notebook shows; ``ansi`` is one text row per step.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from shieldtune.safety.spec import Constraint

#: Size of an ``rgb_array`` frame in pixels (width, height).
FRAME = (640, 480)


def trajectory_rgb(
    history: list[dict[str, Any]], tuned: list[str], constraints: list[Constraint]
) -> np.ndarray:
    """The episode so far as an ``(H, W, 3)`` uint8 image."""
    rows = [*tuned, "val_acc", *dict.fromkeys(c.metric for c in constraints)]
    dpi = 80
    fig = plt.figure(figsize=(FRAME[0] / dpi, FRAME[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    steps = [h["step"] for h in history]
    for ax, key in zip(axes, rows, strict=True):
        ax.plot(steps, [h.get(key, np.nan) for h in history], marker=".", linewidth=1)
        for c in constraints:
            if c.metric == key:
                ax.axhline(c.threshold, color="grey", linestyle="--", linewidth=0.8)
        rejected = [h["step"] for h in history if not h.get("accepted", True)]
        if rejected:
            ax.scatter(
                rejected,
                [h.get(key, np.nan) for h in history if not h.get("accepted", True)],
                marker="x",
                color="red",
                zorder=3,
            )
        ax.set_ylabel(key, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step (red x: rolled back; dashed: constraint threshold)", fontsize=7)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def trajectory_ansi(
    history: list[dict[str, Any]], tuned: list[str], constraints: list[Constraint]
) -> str:
    """One text row per step: the hyperparameters, validation accuracy, each constraint's
    metric (``!`` where it breaks the spec) and what happened to the segment."""
    metrics = list(dict.fromkeys(c.metric for c in constraints))
    header = ["step", *tuned, "val_acc", *metrics, "outcome"]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for h in history:
        cells = [f"{h['step']:>12d}"]
        cells += [f"{h.get(k, float('nan')):>12.4g}" for k in (*tuned, "val_acc")]
        for m in metrics:
            broken = any(c.metric == m and c.cost({m: h.get(m, np.nan)}) > 0 for c in constraints)
            cells.append(f"{h.get(m, float('nan')):>11.4f}{'!' if broken else ' '}")
        cells.append(f"{'accepted' if h.get('accepted', True) else 'rolled back':>12}")
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"
