#!/usr/bin/env bash
# Install (first run only), lint, and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --tools
# The real Kubernetes control plane the cluster tests start (built once from the pinned Go
# modules, then reused from its cache in seconds; see docs/cluster.md).
bash scripts/k8s-control-plane.sh build >/dev/null
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
# The documentation site, with its generated config and API reference: any broken link,
# missing page or docstring that does not render fails here.
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
