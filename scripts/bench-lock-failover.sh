#!/usr/bin/env bash
# How long a waiter waits for a lock whose holder's process was SIGKILLed: a 3-node `ballot dev`
# cluster on loopback; ROUNDS times, `ballot lock NAME --ttl TTL` holds the lock, a second
# `ballot lock NAME -- date +%s%N` waits for it, the holder is SIGKILLed (its lease is then kept
# by nobody), and the script prints the time from the SIGKILL to the waiter's command starting,
# and that time minus the TTL (the target: TTL plus under 100 ms). Figures in docs/benchmarks.md.
#
#   scripts/bench-lock-failover.sh [ROUNDS=5] [TTL_SECONDS=5] [BALLOT=target/release/ballot]
set -euo pipefail
ROUNDS=${1:-5}
TTL=${2:-5}
BALLOT=$(realpath "${3:-target/release/ballot}")
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-lock-failover.XXXXXX)"
OUT=$DEV_WORK/out
mkdir -p "$OUT"

# wait_for_lines FILE COUNT: until FILE has COUNT lines (at most 30 s).
wait_for_lines() {
  for _ in $(seq 1 3000); do
    [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.01
  done
  echo "no $2 lines in $1 within 30 s" >&2
  exit 1
}

# The waiter is in line once two keys are under NAME/.
contenders() { "$BALLOT" get "failover-$1/" --prefix --keys-only --endpoints "$ENDPOINTS" | grep -c . || true; }

for round in $(seq 1 "$ROUNDS"); do
  name=failover-$round
  "$BALLOT" lock "$name" --ttl "$TTL" --endpoints "$ENDPOINTS" >"$OUT/holder-$round" 2>&1 &
  holder=$!
  wait_for_lines "$OUT/holder-$round" 2
  "$BALLOT" lock "$name" --endpoints "$ENDPOINTS" -- date +%s%N >"$OUT/waiter-$round" 2>&1 &
  waiter=$!
  for _ in $(seq 1 3000); do
    [ "$(contenders "$round")" -ge 2 ] && break
    sleep 0.01
  done
  killed_ns=$(date +%s%N)
  kill -KILL "$holder"
  wait "$waiter"
  granted_ns=$(sed -n 1p "$OUT/waiter-$round")
  waited_ms=$(((granted_ns - killed_ns) / 1000000))
  echo "round $round: TTL ${TTL} s, holder SIGKILLed, waiter's command started after ${waited_ms} ms (TTL + $((waited_ms - TTL * 1000)) ms)"
done
