#!/usr/bin/env bash
# Puts spread over 16 groups against puts into one: a 3-node `ballot dev` cluster on loopback
# with 16 groups of 3 replicas, then ROUNDS rounds of three interleaved 10 s runs of
# `ballot bench put --clients 256 --conns 16`: group 0 alone, group 1 alone, and groups 1-16
# (client i on group 1 + i mod 16). Compare the medians; figures in docs/benchmarks.md.
#
#   scripts/bench-groups-puts.sh [ROUNDS=5] [BALLOT=target/release/ballot]
set -euo pipefail
ROUNDS=${1:-5}
BALLOT=$(realpath "${2:-target/release/ballot}")
WORK=$(mktemp -d /tmp/ballot-bench-group-puts.XXXXXX)
DEV_PID=
cleanup() {
  [ -n "$DEV_PID" ] && kill "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
"$BALLOT" dev --fresh --data-dir "$WORK/data" </dev/null >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 300); do
  [ "$(grep -c 'metrics http' "$WORK/dev.log" || true)" -ge 3 ] && break
  sleep 0.1
done
ENDPOINTS=$(grep -o 'endpoints=[^ ]*' "$WORK/dev.log" | head -1 | cut -d= -f2)
until "$BALLOT" put warm up --endpoints "$ENDPOINTS" >/dev/null 2>&1; do sleep 0.1; done
"$BALLOT" group create --replicas 3 --count 16 --endpoints "$ENDPOINTS" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  for groups in 0 1 16; do
    line=$("$BALLOT" bench put --endpoints "$ENDPOINTS" --clients 256 --conns 16 --duration 10s \
      --groups "$groups" 2>&1 | grep '^put:')
    echo "round $round, --groups $groups: $line"
  done
done
