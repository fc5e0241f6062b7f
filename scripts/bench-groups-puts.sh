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
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-group-puts.XXXXXX)"
"$BALLOT" group create --replicas 3 --count 16 --endpoints "$ENDPOINTS" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  for groups in 0 1 16; do
    line=$("$BALLOT" bench put --endpoints "$ENDPOINTS" --clients 256 --conns 16 --duration 10s \
      --groups "$groups" 2>&1 | grep '^put:')
    echo "round $round, --groups $groups: $line"
  done
done
