#!/usr/bin/env bash
# Install (first run only) and run the main tuning job on the bundled real MNIST sample.
# Extra arguments go to `shieldtune tune`, e.g. scripts/quickstart.sh --set tuner.episodes=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/shieldtune tune --config configs/mnist-cnn.yaml "$@"
