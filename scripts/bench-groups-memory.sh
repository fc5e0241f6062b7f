#!/usr/bin/env bash
# What a group that took writes and went quiet costs, and what hibernation gives back, on a
# 3-node `ballot dev` cluster (loopback, this machine): per node, anonymous resident memory
# (RssAnon) and the shared WAL's disk use with N idle groups, after puts into group 0 alone (the
# load's own buffers), after 100 puts of 256 bytes into each of the N groups, and once every
# group sleeps again and the store flusher and the compaction of sleeping groups have run.
#
#   scripts/bench-groups-memory.sh [N=200] [BALLOT=target/release/ballot]
#
# Figures go to docs/benchmarks.md ("Memory of groups that took writes"). Needs curl.
set -euo pipefail
N=${1:-200}
BALLOT=$(realpath "${2:-target/release/ballot}")
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-groups-memory.XXXXXX)"

counter() { curl -s "$1" | awk -v name="$2" '$1 == name { print $2 }'; }

measure() {
  local i anon wal
  for i in 0 1 2; do
    anon=$(awk '/RssAnon/ { print $2 }' "/proc/${PIDS[i]}/status")
    wal=$(du -sk "$DEV_WORK/data/n$((i + 1))/data/groups/wal" 2>/dev/null | cut -f1 || echo 0)
    echo "  n$((i + 1)): anonymous rss ${anon} KiB, shared WAL ${wal:-0} KiB"
  done
}

# Waits until every node reports all N groups asleep.
wait_all_asleep() {
  local i asleep
  for _ in $(seq 1 600); do
    asleep=0
    for i in 0 1 2; do
      [ "$(counter "${METRICS[i]}" ballot_groups_hibernating)" = "$N" ] && asleep=$((asleep + 1))
    done
    [ "$asleep" = 3 ] && return 0
    sleep 0.1
  done
  echo "the groups did not all fall asleep within 60 s" >&2
  exit 1
}

"$BALLOT" group create --replicas 3 --count "$N" --endpoints "$ENDPOINTS" >/dev/null
wait_all_asleep
sleep 2
echo "$N idle groups, never written:"
measure

"$BALLOT" bench put --total 20000 --key-space 100 --value-size 256 --clients 200 --conns 8 \
  --endpoints "$ENDPOINTS" >/dev/null
sleep 2
echo "after 20,000 puts into group 0 alone:"
measure

"$BALLOT" bench put --total $((N * 100)) --key-space 100 --value-size 256 --groups "$N" \
  --clients "$N" --conns 8 --endpoints "$ENDPOINTS" >/dev/null
echo "right after 100 puts into each of the $N groups:"
measure

wait_all_asleep
# The store flusher makes every store durable within its interval, and the node loop looks at
# which sleeping groups keep old WAL segments once a second.
sleep 5
echo "once all $N sleep again:"
measure
