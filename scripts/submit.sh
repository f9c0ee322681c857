#!/usr/bin/env bash
# Submit a cifar-ray job to a Ray cluster with `ray job submit`, stream its log, exit with its fate.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: scripts/submit.sh [--no-wait] [--submission-id ID] train|predict|tune|serve [job args...]

Uploads this repository (without data, runs, venvs and caches: scripts/runtime_env.yaml) as
the job's working directory, on top of what the cluster's nodes have installed (the image of
the Dockerfile, or cluster-venv.yaml's venv), and runs `python -m jobs.train`,
`python -m jobs.predict`, `python -m jobs.tune` or `python -m jobs.serve` on the cluster. Streams the log and exits nonzero if the job fails.
RAY_ADDRESS picks the cluster (default http://127.0.0.1:8265, the one scripts/cluster-up.sh
starts); RAY_AUTH_MODE defaults to token.

Examples:
  scripts/submit.sh train --smoke-test
  scripts/submit.sh train --num-workers 4 --gpu --storage-path s3://bucket/runs --name r1
  scripts/submit.sh predict --model s3://bucket/runs/r1/model/model.pt \
      --input s3://bucket/images --output s3://bucket/preds --gpus-per-actor 1
  scripts/submit.sh --no-wait serve --model s3://bucket/runs/r1 --host 0.0.0.0 --replicas 1-4 \
      --token-file /etc/cifar/token   # on the head node; `ray job stop ID` takes it down
USAGE
}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-wait) extra+=(--no-wait); shift ;;
    --submission-id) extra+=(--submission-id "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    train|predict|tune|serve) break ;;
    *) echo "submit: expected train, predict, tune or serve, got '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }
kind=$1; shift
cd "$(dirname "$0")/.."
RAY=ray
[ -x .venv/bin/ray ] && RAY=.venv/bin/ray
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
exec "$RAY" job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env scripts/runtime_env.yaml "${extra[@]}" -- python -m "jobs.$kind" "$@"
