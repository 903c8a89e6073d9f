#!/usr/bin/env bash
# Create ./.venv (Python 3.11) and install shieldtune with the pinned dependency set; with
# --tools (test.sh) also the docs extra and ./.venv-tools with the pinned standard scanners (checkov).
# Idempotent: a second run only re-checks the pins. Used by quickstart.sh, test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# torch + torchvision are pinned as a matching pair (see constraints.txt).
# --tools (test.sh) adds the docs extra: the test command also builds the documentation site.
EXTRAS="test"
if [ "${1:-}" = "--tools" ]; then EXTRAS="test,docs"; fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$EXTRAS]"
# The example task plug-in (examples/custom_task), which the tests tune end to end.
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e examples/custom_task
# Standard scanners whose dependency trees clash with constraints.txt (checkov, run by
# tests/test_checkov.py) get a venv of their own, .venv-tools, created only when
# missing; constraints-tools.txt pins every package in it (pip freeze of that venv).
if [ "${1:-}" = "--tools" ]; then
  if [ ! -x .venv-tools/bin/python ]; then
    "$PYTHON" -m venv .venv-tools
    .venv-tools/bin/python -m pip install --quiet --upgrade "pip>=24"
  fi
  .venv-tools/bin/python -m pip install --quiet -c constraints-tools.txt checkov
fi
