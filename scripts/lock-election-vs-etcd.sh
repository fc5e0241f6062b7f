#!/usr/bin/env bash
# etcd's Lock and Election services against ballot's, with a second client (Python grpcio, its
# stubs generated from the same .proto files): one-member etcd 3.4 and one-member ballot on
# loopback, the same sequence of calls to each (scripts/lib/lock-election-calls.py: grants,
# unlocks, campaign, proclaim, leader, resign, and each refusal), the two outputs diffed.
# Exit 0 when they are identical (answers, revisions, error codes and messages).
# Needs etcd and etcdctl (Debian's etcd-server and etcd-client) and pip (installs grpcio and grpcio-tools if missing).
#
#   scripts/lock-election-vs-etcd.sh [BALLOT=target/release/ballot]
set -euo pipefail
cd "$(dirname "$0")/.."
BALLOT=$(realpath "${1:-target/release/ballot}")
python3 -c 'import grpc, grpc_tools' 2>/dev/null || pip install -q grpcio grpcio-tools
WORK=$(mktemp -d /tmp/lock-election-vs-etcd.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
(cd crates/proto/proto && python3 -m grpc_tools.protoc -I. --python_out="$WORK" --grpc_python_out="$WORK" \
  etcd/api/etcdserverpb/rpc.proto etcd/api/mvccpb/kv.proto etcd/api/authpb/auth.proto \
  etcd/api/v3lockpb/v3lock.proto etcd/api/v3electionpb/v3election.proto)

# serve NAME COMMAND...: starts a server whose client port is $PORT and waits until it answers.
serve() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not listen on $PORT" >&2
  exit 1
}
# healthy: until the server on $PORT has a leader (etcdctl endpoint health writes nothing).
healthy() {
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$PORT" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing healthy on $PORT" >&2
  exit 1
}
PORT=$((20000 + RANDOM % 5000))
serve etcd etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$PORT" \
  --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((PORT + 1))" --log-level error
healthy
python3 scripts/lib/lock-election-calls.py "127.0.0.1:$PORT" "$WORK" >"$WORK/etcd.out" 2>&1
PORT=$((25000 + RANDOM % 5000))
serve ballot "$BALLOT" server --name n1 --data-dir "$WORK/ballot" \
  --listen-client-urls "http://127.0.0.1:$PORT" --advertise-client-urls "http://127.0.0.1:$PORT" \
  --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
  --initial-cluster "n1=http://127.0.0.1:$((PORT + 1))" --listen-metrics-urls "http://127.0.0.1:$((PORT + 2))"
healthy
python3 scripts/lib/lock-election-calls.py "127.0.0.1:$PORT" "$WORK" >"$WORK/ballot.out" 2>&1
if diff "$WORK/etcd.out" "$WORK/ballot.out"; then
  echo "identical: $(wc -l <"$WORK/ballot.out") answers"
else
  echo "etcd (<) and ballot (>) differ" >&2
  exit 1
fi
