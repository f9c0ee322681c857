#!/usr/bin/env bash
# Idempotent: create .venv (if missing) and install cifar-ray with its dev extras into it.
# Usage: scripts/setup.sh        (re-running is cheap: pip skips what is already satisfied)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.cifar-ray-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  echo "setup: .venv is up to date with pyproject.toml"
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
echo "setup: installing cifar-ray[dev] (torch, torchvision, ray[default,train,data], ...)"
.venv/bin/python -m pip install --quiet -e '.[dev]'
touch "$stamp"
echo "setup: done ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
