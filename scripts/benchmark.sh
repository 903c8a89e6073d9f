#!/usr/bin/env bash
# Install (first run only) and run the peer comparison; pass --quick for a smoke run.
# Example: bash scripts/benchmark.sh --seeds 5 --out results/peers
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test,bench]"
exec .venv/bin/python benchmarks/compare.py "$@"
