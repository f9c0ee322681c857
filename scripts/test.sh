#!/usr/bin/env bash
# README command 2: install everything, lint, then run the whole test suite (Ray tests included).
set -euo pipefail
case "${1:-}" in
  -h|--help)
    cat <<'USAGE'
Usage: scripts/test.sh [pytest args...]

Installs everything into .venv (scripts/setup.sh), runs ruff check and ruff format --check,
then pytest with the given arguments:
  scripts/test.sh                       everything (Ray and multi-node cluster tests included)
  scripts/test.sh -m "not ray"          the fast suite, no Ray
  scripts/test.sh tests/test_readme.py  every README command, as written
USAGE
    exit 0 ;;
esac
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== pytest"
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS=0
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
