#!/usr/bin/env bash
# How long a waiter waits for a lock whose holder died: a 3-node `ballot dev` cluster on
# loopback; ROUNDS times, two ways:
#  - killed: `ballot lock NAME --ttl TTL` holds the lock, `ballot lock NAME -- date +%s%N` waits
#    for it, the holder is SIGKILLed; printed: the time from the SIGKILL to the waiter's command
#    starting (between TTL - TTL/3 and TTL plus the delay: the lease runs from the holder's last
#    renewal, sent every TTL/3);
#  - expired: the holder's lease is granted and never renewed (a holder killed just after a
#    renewal) and the holder's key put under NAME/ with it; printed: the time from the grant's
#    answer to the waiter's command starting, minus the TTL: what the lease's expiry and the
#    hand-over add (the target: under 100 ms). Figures in docs/benchmarks.md.
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
  wait "$holder" 2>/dev/null || true
  wait "$waiter"
  granted_ns=$(sed -n 1p "$OUT/waiter-$round")
  waited_ms=$(((granted_ns - killed_ns) / 1000000))
  echo "round $round, killed: TTL ${TTL} s, the waiter's command started ${waited_ms} ms after the holder's SIGKILL"

  name=expired-$round
  lease=$("$BALLOT" lease grant "$TTL" --endpoints "$ENDPOINTS" | awk '{print $2}')
  granted_ns=$(date +%s%N)
  "$BALLOT" put "$name/$lease" "" --lease "$lease" --endpoints "$ENDPOINTS" >/dev/null
  "$BALLOT" lock "$name" --endpoints "$ENDPOINTS" -- date +%s%N >"$OUT/expired-$round" 2>&1
  started_ns=$(sed -n 1p "$OUT/expired-$round")
  after_ms=$(((started_ns - granted_ns) / 1000000 - TTL * 1000))
  echo "round $round, expired: the waiter's command started TTL + ${after_ms} ms after the holder's lease was granted"
done
