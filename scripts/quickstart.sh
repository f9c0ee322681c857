#!/usr/bin/env bash
# README command 1: install, get CIFAR-10, train CIFAR10-quick through Ray Train on this machine
# (embedded Ray, GPU if there is one), and print where the model, summary and TensorBoard logs are.
#   scripts/quickstart.sh                  # 5 epochs (EPOCHS=20 for the full default recipe)
#   scripts/quickstart.sh --num-workers 2  # extra args go to python -m jobs.train
# Offline, CIFAR-10 cannot be downloaded: it says so and trains on a GENERATED CIFAR-format set
# instead, labelled "synthetic" in the log, summary.json and the checkpoint metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY=.venv/bin/python
DATA=data
if ! $PY -c "from cifar.data import download_cifar10; download_cifar10('$DATA')"; then
  echo
  echo "quickstart: CIFAR-10 could not be downloaded (offline?). Training on a GENERATED"
  echo "quickstart: CIFAR-format set in $DATA/synthetic instead: same pipeline, NOT CIFAR-10 numbers."
  echo
  DATA=data/synthetic
  [ -f "$DATA/cifar-10-batches-py/batches.meta" ] ||
    $PY -m cifar.synthetic "$DATA" --train "${SYNTH_TRAIN:-20000}" --test "${SYNTH_TEST:-4000}"
fi
exec $PY -m jobs.train --data-dir "$DATA" --no-download --epochs "${EPOCHS:-5}" \
  --storage-path "$PWD/runs" "$@"
