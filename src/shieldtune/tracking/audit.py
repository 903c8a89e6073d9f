"""The shield audit as a table a reviewer can read: one row per step.

``shield_audit.jsonl`` keeps every detail (each masked action with its predicted
cost); MLflow shows a JSONL file as one long line per step, cut off at the
right edge. These rows keep what answers "what did the shield do here?", and
go to MLflow twice: as a table (``mlflow.log_table``, queryable) and as an HTML
page the artifact viewer renders.
"""

from __future__ import annotations

import html
from typing import Any

COLUMNS = (
    "global_step",
    "episode",
    "step",
    "shield",
    "chosen_move",
    "predicted_cost",
    "observed_cost",
    "masked",
    "outcome",
)


def audit_rows(audit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per audited step (see :data:`COLUMNS`)."""
    rows = []
    for e in audit:
        if e.get("decision") == "exploit":
            rows.append(_exploit_row(e))
            continue
        masked = e.get("masked_by_critic") or []
        if e.get("diverged"):
            outcome = "diverged, rolled back"
        elif e.get("violation"):
            outcome = "broke the spec, rolled back"
        elif e.get("warmup"):
            outcome = "unsafe before the first safe state"
        else:
            outcome = "accepted" if e.get("accepted") else "not accepted"
        rows.append(
            {
                "global_step": e["global_step"],
                "episode": e["episode"],
                "step": e["step"],
                "shield": "masking" if e.get("shield_active") else "warm-up rule",
                "chosen_move": e["chosen_move"],
                "predicted_cost": round(float(e["chosen_predicted_cost"]), 4),
                "observed_cost": round(float(e["observed_cost"]), 4),
                "masked": _masked(masked),
                "outcome": outcome,
            }
        )
    return rows


def _exploit_row(e: dict[str, Any]) -> dict[str, Any]:
    """A population's exploit: a member behind or unsafe took a certified-safe member's state."""
    return {
        "global_step": e["global_step"],
        "episode": e["episode"],
        "step": e["step"],
        "shield": "exploit",
        "chosen_move": f"member {e['copier']} copies member {e['donor']}",
        "predicted_cost": "",
        "observed_cost": "",
        "masked": "",
        "outcome": f"copied ({e['reason']}: val_acc {e['copier_val_acc']:.4f} -> "
        f"{e['donor_val_acc']:.4f}, certified safe)",
    }


#: Masked moves listed by name in a row (the rest are counted; the JSONL has them all).
MASKED_SHOWN = 3


def _masked(masked: list[dict[str, Any]]) -> str:
    """``N: the MASKED_SHOWN moves predicted most unsafe, with their predicted cost``."""
    if not masked:
        return "0"
    worst = sorted(masked, key=lambda m: -m["predicted_cost"])[:MASKED_SHOWN]
    shown = ", ".join(f"{m['move']} ({m['predicted_cost']:+.2f})" for m in worst)
    more = f", +{len(masked) - len(worst)} more" if len(masked) > len(worst) else ""
    return f"{len(masked)}: {shown}{more}"


def audit_html(rows: list[dict[str, Any]]) -> str:
    """The rows as a self-contained HTML table (costs > 0 break the spec)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        style = ""
        if r["shield"] == "exploit":
            style = ' style="background:#e2ecfd"'
        elif r["outcome"] != "accepted":
            style = ' style="background:#fde2e2"'

        cells = "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS)
        body.append(f"<tr{style}>{cells}</tr>")
    return (
        "<!doctype html><meta charset='utf-8'><title>Shield audit</title>"
        "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}</style>"
        "<h2>Shield audit</h2><p>One row per step: the move the controller chose, the "
        "safety critic's predicted cost for it, the measured cost (&gt; 0 breaks the spec), "
        "how many moves the shield masked (the most unsafe with their predicted costs), and "
        "what happened. Red rows broke the spec; blue rows are a population's exploit "
        "decisions.</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
    )
