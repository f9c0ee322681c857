#!/usr/bin/env bash
# README command 2: install everything, lint, then run the whole test suite (Ray tests included).
#   scripts/test.sh                 # everything
#   scripts/test.sh -m "not ray"    # the fast suite only (extra args go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== pytest"
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS=0
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
