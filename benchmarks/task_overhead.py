"""What the task layer costs: env-step throughput of this tree against a baseline commit.

Runs the default mnist-cnn environment (``shieldtune/Hyperparam-v0``, one
segment of ``training.segment_samples`` samples plus its evaluation per step)
alternately with the baseline's source (``--baseline``, default ``8e47cee``, the
last commit before tasks became plug-ins) and with this tree's, each in a fresh
subprocess, ``--rounds`` times, interleaved so both see the same machine load.
The same loop also times the DataLoader path: the same MNIST splits served by a
plain ``torch.utils.data.Dataset`` (one sample per ``__getitem__``), which is how
a task with data too large for memory is read.

Prints a Markdown table of medians (samples per second of the whole step,
training plus evaluation) and the ratios against the baseline measured in the
same run.

    python benchmarks/task_overhead.py [--rounds 5] [--steps 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import base_machine_info, markdown_table, median

REPO = Path(__file__).resolve().parents[1]

#: Runs in a subprocess against either tree: the env's public API has not changed.
PROBE = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
steps, variant = int(sys.argv[2]), sys.argv[3]
from shieldtune.config import load_config
try:
    from shieldtune.control.env import HyperparamEnv
except ImportError:  # the baseline tree
    from shieldtune.env import HyperparamEnv
overrides = ["tracking.enabled=false"]
if variant == "streamed":
    overrides.append("task.entry_point=task_overhead:streamed_mnist")
env = HyperparamEnv(load_config(None, overrides))
env.reset(seed=0)
keep = env.space.keep_action
env.step(keep)  # warm-up: first-call allocations, lazy imports
start = time.perf_counter()
before = env.samples_used
for _ in range(steps):
    env.step(keep)
samples = env.samples_used - before
print(json.dumps({"seconds": time.perf_counter() - start, "samples": samples}))
"""


def streamed_mnist():
    """mnist-cnn with its splits served one sample at a time (the DataLoader path)."""
    from torch.utils.data import Dataset

    from shieldtune.tasks.contract import TaskData
    from shieldtune.tasks.mnist import MnistCnnTask

    class Streamed(Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split)

        def __getitem__(self, i):
            return self.split.x[i], self.split.y[i]

    class StreamedMnist(MnistCnnTask):
        def load_data(self, cfg):
            data = super().load_data(cfg)
            return TaskData(
                *(Streamed(s) for s in (data.train, data.val, data.test)), source=data.source
            )

    return StreamedMnist()


def extract_baseline(ref: str, into: Path) -> Path:
    """The baseline's ``src/`` (``git archive``), unpacked under ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "--output", str(archive), ref, "src"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def probe(src: Path, variant: str, threads: int, steps: int) -> float:
    """Samples per second of one fresh process's env steps."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), str(REPO / "benchmarks")]),
        "MLFLOW_TRACKING_URI": "",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threads), str(steps), variant],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["samples"] / result["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="8e47cee", help="git ref of the baseline tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="timed env steps per process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--json", metavar="FILE", help="also write the raw numbers here")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shieldtune-baseline-") as tmp:
        baseline = extract_baseline(args.baseline, Path(tmp))
        runs: dict[str, list[float]] = {"baseline": [], "tasks": [], "streamed": []}
        for r in range(args.rounds):
            # Alternate the order every round so neither side always runs first.
            order = ["baseline", "tasks", "streamed"]
            for name in order if r % 2 == 0 else order[::-1]:
                src = baseline if name == "baseline" else REPO / "src"
                variant = "streamed" if name == "streamed" else "tensors"
                runs[name].append(probe(src, variant, args.threads, args.steps))
                print(
                    f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]:.0f} samples/s",
                    file=sys.stderr,
                    flush=True,
                )
    base = median(runs["baseline"])
    labels = {
        "baseline": f"baseline {args.baseline} (before tasks)",
        "tasks": "this tree, in-memory tensors (mnist-cnn fast path)",
        "streamed": "this tree, DataLoader path (Dataset, one sample per __getitem__)",
    }
    rows = [
        [
            labels[name],
            f"{median(v):.0f}",
            f"{min(v):.0f} - {max(v):.0f}",
            f"{median(v) / base:.3f}",
        ]
        for name, v in runs.items()
    ]
    info = base_machine_info()
    print(
        "env-step throughput, default mnist-cnn step (one segment + its evaluation), "
        f"{args.rounds} interleaved rounds x {args.steps} steps, {args.threads} torch thread(s), "
        f"{info['cpu']}, {info['usable_cores']} cores, {time.perf_counter() - start:.0f} s\n"
    )
    print(
        markdown_table(
            ["tree", "samples/s (median)", "range", "ratio vs baseline"],
            rows,
            ["---", "---:", "---:", "---:"],
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "machine": info}, indent=2))


if __name__ == "__main__":
    main()
