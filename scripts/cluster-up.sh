#!/usr/bin/env bash
# Start a local multi-node Ray cluster on this machine, loopback only, token authentication on.
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: scripts/cluster-up.sh [--workers K] [--num-cpus N] [--num-gpus N] [--port P]
                             [--dashboard-port D] [--client-port C] [--expose]

Starts a Ray head on 127.0.0.1 plus K extra worker nodes on this machine (default K=1), each
with N CPUs and N GPUs (default: Ray detects them). Every Ray server (GCS, raylets, dashboard/
job server, client server) listens on 127.0.0.1 only, and token authentication is on: clients
need RAY_AUTH_MODE=token and the token in ~/.ray/auth_token (created here if missing).

  --port P            GCS port (default 6389)
  --dashboard-port D  dashboard / job-submission port (default 8265)
  --client-port C     Ray client server port (default 10001)
  --expose            listen on this machine's network address instead of loopback (only on a
                      trusted network: anyone who reaches the ports and has the token can run
                      code here)

Idempotent: if this cluster is already up it prints how to use it and exits 0. Refuses if a
port is taken by anything else. Stop it with scripts/cluster-down.sh (same --port).
USAGE
}
WORKERS=1 NUM_CPUS="" NUM_GPUS="" PORT=6389 DASH=8265 CLIENT=10001 EXPOSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --num-cpus) NUM_CPUS=$2; shift 2 ;;
    --num-gpus) NUM_GPUS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --dashboard-port) DASH=$2; shift 2 ;;
    --client-port) CLIENT=$2; shift 2 ;;
    --expose) EXPOSE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster-up: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
REPO=$PWD
[ -x .venv/bin/ray ] || scripts/setup.sh
export PATH="$REPO/.venv/bin:$PATH" RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
TMP="${CIFAR_RAY_CLUSTER_TMP:-/tmp/cifar-ray-cluster-$PORT}"
STATE="$TMP/cluster.env"
HOST=127.0.0.1
GCS="$HOST:$PORT"

print_usage() {
  # shellcheck disable=SC1090
  . "$STATE"
  cat <<INFO
Ray cluster is up: head $GCS_ADDRESS + $WORKER_NODES worker node(s), token authentication on.
  job submission / dashboard: $RAY_ADDRESS   (listening on $LISTEN only)
  submit a job:   scripts/submit.sh train --smoke-test      (RAY_ADDRESS=$RAY_ADDRESS)
  or by hand:     RAY_AUTH_MODE=token RAY_ADDRESS=$RAY_ADDRESS ray job submit --working-dir . -- python -m jobs.train --smoke-test
  connect:        RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $REPO/.venv/bin/python -c "import ray; ray.init('$GCS_ADDRESS'); print(ray.cluster_resources())"
                  (the second variable gives the connecting process the loopback address the
                  nodes have; without it ray.init waits for a node at this machine's address)
  stop:           scripts/cluster-down.sh --port $PORT
INFO
}

if [ -f "$STATE" ] && .venv/bin/python -m jobs.local_cluster count --temp-dir "$TMP" \
    --address "$GCS" | grep -qv '^0$' && \
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 timeout 30 ray status --address "$GCS" >/dev/null 2>&1; then
  echo "cluster-up: already running (state in $STATE)"
  print_usage
  exit 0
fi
if ! busy=$(.venv/bin/python -m jobs.local_cluster ports-free "$PORT" "$DASH" "$CLIENT"); then
  echo "cluster-up: port(s) $busy on 127.0.0.1 are in use by another program, not by a cluster" \
    "this script started. Stop that program, or pick free ports with --port/--dashboard-port/" \
    "--client-port." >&2
  exit 1
fi
rm -rf "$TMP"
mkdir -p "$TMP"
# the head's dashboard agent (which runs submitted jobs) on a free port: Ray's default, 52365,
# is taken by any other Ray on this machine, and then the job server takes no jobs
AGENT=$(.venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
ray get-auth-token --generate >/dev/null 2>&1 || true
res=()
[ -n "$NUM_CPUS" ] && res+=(--num-cpus "$NUM_CPUS")
[ -n "$NUM_GPUS" ] && res+=(--num-gpus "$NUM_GPUS")
if [ "$EXPOSE" = 1 ]; then
  echo "cluster-up: WARNING --expose: Ray listens on this machine's network address; keep it on" \
    "a trusted network." >&2
  ray start --head --port "$PORT" --dashboard-host 0.0.0.0 --dashboard-port "$DASH" \
    --ray-client-server-port "$CLIENT" --dashboard-agent-listen-port "$AGENT" --temp-dir "$TMP" \
    --disable-usage-stats "${res[@]}" >"$TMP/head.log" 2>&1 \
    || { cat "$TMP/head.log" >&2; exit 1; }
  HEAD_IP=$(.venv/bin/python -c "import ray._private.services as s; print(s.get_node_ip_address())")
  GCS="$HEAD_IP:$PORT"
  for i in $(seq 1 "$WORKERS"); do
    ray start --address "$GCS" --temp-dir "$TMP/node$i" --disable-usage-stats "${res[@]}" \
      >>"$TMP/workers.log" 2>&1 \
      || { cat "$TMP/workers.log" >&2; exit 1; }
  done
  LISTEN="all interfaces"
else
  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use 127.0.0.1 as the head's address, and a
  # node whose address is 127.0.0.1 binds its servers to loopback (see jobs/local_cluster.py).
  # Each node its own cache ($CIFAR_RAY_CACHE: model copies, decoded folders), as separate
  # machines have, unless the caller set one for all.
  CIFAR_RAY_CACHE="${CIFAR_RAY_CACHE:-$TMP/cache}" \
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --port "$PORT" --dashboard-host "$HOST" \
    --dashboard-port "$DASH" --ray-client-server-port "$CLIENT" --dashboard-agent-listen-port "$AGENT" \
    --temp-dir "$TMP" --disable-usage-stats "${res[@]}" >"$TMP/head.log" 2>&1 \
    || { cat "$TMP/head.log" >&2; exit 1; }
  wargs=(--address "$GCS")
  [ -n "$NUM_CPUS" ] && wargs+=(--num-cpus "$NUM_CPUS")
  [ -n "$NUM_GPUS" ] && wargs+=(--num-gpus "$NUM_GPUS")
  for i in $(seq 1 "$WORKERS"); do
    # Each node its own temp dir: nodes sharing one would unpack job working dirs into the
    # same folder and delete it from under each other's running jobs.
    CIFAR_RAY_CACHE="${CIFAR_RAY_CACHE:-$TMP/node$i/cache}" \
    .venv/bin/python -m jobs.local_cluster worker "${wargs[@]}" --temp-dir "$TMP/node$i" \
      >>"$TMP/workers.log" 2>&1 \
      || { cat "$TMP/workers.log" >&2; exit 1; }
  done
  LISTEN="127.0.0.1"
fi
cat >"$STATE" <<ENV
GCS_ADDRESS=$GCS
RAY_ADDRESS=http://127.0.0.1:$DASH
WORKER_NODES=$WORKERS
LISTEN="$LISTEN"
ENV
# wait until every node has registered
want=$((WORKERS + 1))
for _ in $(seq 1 60); do
  n=$(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python - "$GCS" <<'PY' 2>/dev/null || echo 0
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(n["Alive"] for n in ray.nodes()))
PY
)
  [ "$n" = "$want" ] && break
  sleep 1
done
[ "$n" = "$want" ] || { echo "cluster-up: only $n of $want nodes came up; see $TMP" >&2; exit 1; }
# wait until the job server takes submissions: its agent on the head registers after the nodes
# ("No available agent to submit job" until then); a no-op job shows it does
ready=
for _ in $(seq 1 30); do
  if RAY_ADDRESS="http://127.0.0.1:$DASH" RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" .venv/bin/ray \
      job submit --no-wait --submission-id "cluster-up-ready-$(date +%s%N)" -- true \
      >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 1
done
[ -n "$ready" ] || { echo "cluster-up: the job server takes no jobs yet; see $TMP" >&2; exit 1; }
print_usage
