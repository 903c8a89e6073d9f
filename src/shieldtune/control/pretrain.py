"""Pre-training the controller on cheap proxy runs, so a new tuning job does not start cold.

One tuning job has a few dozen steps: too few for a DQN and a safety critic to
learn from nothing. ``shieldtune pretrain`` runs many short whole-run jobs on
proxy tasks (configs/pretrain/ holds two: the speech task and the example
plug-in), each with a randomly drawn robustness threshold so that
some runs need adversarial training and some do not, and carries the Q-network
and the critic from each run into the next (a warm start). What it learns is
task-agnostic: the observation is validation accuracy, robust accuracy,
leakage, cost, the tuned levels and the budget progress, whatever the model.
The result is a policy file for ``tuner.warm_start``. (A policy pre-trained this
way on the speech task and the example plug-in was tried as the default start
and did not beat a cold start on MNIST; see docs/benchmarks.md. So it is the
tool for transfer from your own past tasks, not a shipped default.)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shieldtune.checkpoint import POLICY_KIND, safe_load
from shieldtune.config import Config, apply_override, config_from_dict


def _with(cfg: Config, overrides: Sequence[str]) -> Config:
    raw = cfg.to_dict()
    for assignment in overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw)


def pretrain(
    configs: Sequence[Config],
    thresholds: Sequence[float],
    runs: int,
    out: Path,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run ``runs`` proxy jobs in turn over ``configs``, each warm-started from the previous
    one's policy with an ``fgsm_robust_acc >= t`` spec (t drawn from ``thresholds``); write the
    final policy to ``out`` and return what was run."""
    from shieldtune.control.tuner import run_tuning

    rng = np.random.default_rng(seed)
    policy: Path | None = None
    log = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shieldtune-pretrain-") as tmp:
        for i in range(runs):
            base = configs[i % len(configs)]
            threshold = float(rng.choice(thresholds))
            overrides = [
                f"tuner.seed={seed + i}",
                f"safety.constraints=[fgsm_robust_acc >= {threshold}]",
                "tracking.enabled=false",
                "tuner.test_report=false",
                "tuner.progress=false",
                f"tuner.output_dir={tmp}/run-{i:03d}",
                f"tuner.warm_start={policy if policy is not None else 'null'}",
            ]
            cfg = _with(base, overrides)
            s = run_tuning(cfg)
            policy = Path(s.output_dir) / "agent.pt"
            entry = {
                "run": i,
                "task": cfg.task.entry_point,
                "threshold": threshold,
                "steps": s.steps_run,
                "unsafe_segments": s.unsafe_segments,
                "found": s.best is not None,
                "best_val_acc": s.best["val_metrics"]["val_acc"] if s.best else None,
            }
            log.append(entry)
            if progress:
                print(
                    f"pretrain {i + 1}/{runs}: {entry['task']} >= {threshold}: "
                    f"{'found' if entry['found'] else 'none'}, {s.unsafe_segments} unsafe of "
                    f"{s.steps_run} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        assert policy is not None, "runs must be >= 1"
        safe_load(policy, POLICY_KIND)  # the file it hands over is a valid policy
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy, out)
    record = {
        "runs": log,
        "seconds": round(time.perf_counter() - start, 1),
        "thresholds": list(thresholds),
        "tasks": sorted({c.task.entry_point for c in configs}),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return record
