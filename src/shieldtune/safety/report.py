"""A safety report in words: each constraint, its measured value, bounds and verdict.

Used by ``shieldtune tune`` and ``shieldtune evaluate`` so a reviewer sees at a
glance which constraint holds, which does not, and how sure the numbers are.
"""

from __future__ import annotations

from shieldtune.safety.spec import Constraint
from shieldtune.safety.stats import Decision, Estimate, decide

#: How each verdict is printed.
VERDICTS = {
    Decision.SAFE: "certified",
    Decision.UNSAFE: "BROKEN",
    Decision.UNDECIDED: "undecided",
}


def constraint_rows(
    constraints: list[Constraint], report: dict[str, float], *, split: str = "test"
) -> list[tuple[str, str, str, str]]:
    """(constraint, value, bounds, verdict) per constraint of a report (test or val)."""
    rows = []
    for c in constraints:
        name = "test_acc" if (c.metric == "val_acc" and split == "test") else c.metric
        if name not in report:
            rows.append((str(c), "not measured", "", VERDICTS[Decision.UNDECIDED]))
            continue
        value = report[name]
        if f"{name}_low" not in report:  # a value without bounds (a float metric) proves nothing
            rows.append((str(c), f"{value:.4f}", "no bounds", VERDICTS[Decision.UNDECIDED]))
            continue
        low, high = report[f"{name}_low"], report[f"{name}_high"]
        verdict = decide(c.op, c.threshold, Estimate(value, low, high))
        rows.append((str(c), f"{value:.4f}", f"[{low:.4f}, {high:.4f}]", VERDICTS[verdict]))
    return rows


def interval(report: dict[str, float], name: str) -> str:
    """``[low, high]`` of a reported metric, or "" when it has no bounds."""
    if f"{name}_low" not in report:
        return ""
    return f"[{report[f'{name}_low']:.4f}, {report[f'{name}_high']:.4f}]"


def format_rows(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Aligned text lines of :func:`constraint_rows`."""
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]
