"""The model card: what a reviewer needs to accept (or refuse) a registered model.

One markdown text, logged as ``model_card.md`` in the job's MLflow run, set as
the model version's description (MLflow renders it on the version page) and,
in a pipeline, the register task's Markdown output (the KFP UI renders it).
It holds the spec and each constraint with its confidence interval, the test
metrics, the schedule that trained the model, how many segments broke the
spec on the way, the data, and why the model was or was not promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shieldtune.job import Job
from shieldtune.safety.report import constraint_rows, interval
from shieldtune.safety.spec import Constraint
from shieldtune.tasks.contract import TaskData
from shieldtune.tracking.registry import Promotion

#: Schedule rows shown in the card; longer schedules are shown every k-th segment.
MAX_SCHEDULE_ROWS = 16
_NOT_HPS = ("step", "samples", "seed")


@dataclass(frozen=True)
class CardFacts:
    task: str
    model_name: str
    version: str
    run_id: str
    shieldtune_version: str
    constraints: list[Constraint]
    confidence: float
    report: dict[str, float]
    schedule: dict[str, Any]
    #: steps_run, unsafe_segments, warmup_steps, violations, diverged_steps (what is known).
    counts: dict[str, float]
    #: source and the split sizes.
    data: dict[str, Any]
    promotion: Promotion


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def schedule_rows(schedule: dict[str, Any]) -> tuple[list[str], list[list[str]], int]:
    """Header, rows and the stride of the schedule table (every segment up to the cap)."""
    segments = schedule.get("segments") or []
    if not segments:
        return [], [], 1
    names = [k for k in segments[0] if k not in _NOT_HPS]
    stride = max(1, -(-len(segments) // MAX_SCHEDULE_ROWS))
    shown = segments[::stride]
    if shown[-1] is not segments[-1]:
        shown.append(segments[-1])
    rows = [[str(s["step"]), str(s["samples"]), *(_fmt(s[n]) for n in names)] for s in shown]
    return ["segment", "samples", *names], rows, stride


def render_card(f: CardFacts) -> str:
    verdict = "passed" if f.report.get("constraints_satisfied") else "FAILED"
    status = "@champion" if f.promotion.promoted else "not promoted"
    lines = [
        f"# {f.model_name} v{f.version} ({status})",
        "",
        f"- **Task:** `{f.task}`",
        f"- **Promotion:** {'promoted to @champion' if f.promotion.promoted else 'not promoted'}"
        f": {f.promotion.reason}",
        f"- **Safety gate:** {verdict} (every constraint must be certified on the test split "
        f"at confidence {f.confidence:g})",
        f"- **MLflow run:** `{f.run_id}`; shieldtune {f.shieldtune_version}",
        "",
        "## Constraints (test split)",
        "",
        *_table(
            ["constraint", "measured", f"{f.confidence:g} bound interval", "verdict"],
            [list(r) for r in constraint_rows(f.constraints, f.report)],
        ),
        "",
        "Bounds are one-sided Clopper-Pearson bounds, Bonferroni-split over the constraints; "
        "a constraint is certified only when the pessimistic end meets it.",
        "",
        "## Test metrics",
        "",
    ]
    metrics = [
        [k, f"{v:.4f}", interval(f.report, k)]
        for k, v in f.report.items()
        if not k.endswith(("_low", "_high")) and k not in ("certified", "constraints_satisfied")
    ]
    lines += _table(["metric", "value", "interval"], metrics)
    if f.promotion.champion_report is not None:
        theirs = f.promotion.champion_report
        lines += [
            "",
            f"Previous champion v{f.promotion.previous_champion} on the same split and spec: "
            + ", ".join(
                f"{k} {theirs[k]:.4f}"
                for k in ("test_acc", *(c.metric for c in f.constraints))
                if k in theirs
            )
            + f"; gate {'passed' if theirs.get('constraints_satisfied') else 'failed'}.",
        ]
    lines += ["", "## Unsafe segments during tuning", ""]
    c = f.counts
    if c:
        lines += _table(
            ["steps run", "unsafe", "before the first safe state", "after it (rolled back)"],
            [
                [
                    _count(c, "steps_run"),
                    _count(c, "unsafe_segments"),
                    _count(c, "warmup_steps"),
                    _count(c, "violations"),
                ]
            ],
        )
    else:
        lines.append("Not recorded.")
    header, rows, stride = schedule_rows(f.schedule)
    lines += ["", "## Schedule that trained this model", ""]
    if rows:
        every = "every segment" if stride == 1 else f"one segment in {stride}, and the last"
        lines += [
            f"{len(f.schedule['segments'])} segments from init seed {f.schedule['init_seed']} "
            f"({every}; the whole schedule is in the checkpoint):",
            "",
            *_table(header, rows),
        ]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Data", ""]
    lines += [f"- **{k}:** {v}" for k, v in f.data.items()]
    return "\n".join(lines) + "\n"


def _count(counts: dict[str, float], key: str) -> str:
    return str(int(counts[key])) if key in counts else "n/a"


def card_fields(
    job: Job,
    data: TaskData,
    report: dict[str, float],
    schedule: dict[str, Any],
    counts: dict[str, float],
    shieldtune_version: str,
) -> dict[str, Any]:
    """The :class:`CardFacts` a job knows before registration (all but version, run and
    decision)."""
    sizes = ", ".join(f"{n} {len(getattr(data, n))}" for n in ("train", "val", "test"))
    cfg = job.config
    return {
        "task": cfg.task.entry_point,
        "shieldtune_version": shieldtune_version,
        "constraints": list(job.constraints),
        "confidence": cfg.safety.confidence,
        "report": report,
        "schedule": schedule,
        "counts": counts,
        "data": {
            "source": data.source,
            "splits (samples)": sizes,
            "split seed": cfg.data.split_seed,
        },
    }
