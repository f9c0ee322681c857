#!/usr/bin/env bash
# Stop the local Ray cluster that scripts/cluster-up.sh started (and nothing else).
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: scripts/cluster-down.sh [--port P]

Stops every process of the cluster started by scripts/cluster-up.sh with GCS port P (default
6389): its nodes, their workers and running jobs. Other Ray instances on this machine are left
alone (unlike `ray stop`, which stops them all).
USAGE
}
PORT=6389
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster-down: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
TMP="${CIFAR_RAY_CLUSTER_TMP:-/tmp/cifar-ray-cluster-$PORT}"
GCS=127.0.0.1:$PORT
if [ -f "$TMP/cluster.env" ]; then
  # shellcheck disable=SC1091
  . "$TMP/cluster.env"
  GCS=$GCS_ADDRESS
fi
.venv/bin/python -m jobs.local_cluster down --temp-dir "$TMP" --address "$GCS"
rm -f "$TMP/cluster.env"
