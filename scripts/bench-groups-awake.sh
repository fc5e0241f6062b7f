#!/usr/bin/env bash
# Peer traffic of many awake groups: a 3-node `ballot dev` cluster on loopback with N groups of 3
# replicas kept awake by a light load spread over all of them (`ballot bench put --groups N
# --clients 16`), measured over 10 s of it: per node, CPU (% of one core), puts/s, peer messages
# and socket writes per second, and the probes (heartbeats no client waits on, their answers,
# liveness pings) that went out coalesced, one write per peer per loop batch.
#
#   scripts/bench-groups-awake.sh [N=200] [BALLOT=target/release/ballot]
#
# Figures go to docs/benchmarks.md ("Probes of awake groups, coalesced"). Needs curl.
set -euo pipefail
N=${1:-200}
BALLOT=$(realpath "${2:-target/release/ballot}")
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-groups-awake.XXXXXX)"

counter() { curl -s "$1" | awk -v name="$2" '$1 == name { print $2 } END { }' | head -1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
or_zero() { [ -n "$1" ] && echo "$1" || echo 0; }

"$BALLOT" group create --replicas 3 --count "$N" --endpoints "$ENDPOINTS" >/dev/null
"$BALLOT" bench put --endpoints "$ENDPOINTS" --clients 16 --conns 4 --duration 20s \
  --groups "$N" >"$DEV_WORK/bench.out" 2>&1 &
BENCH=$!
sleep 5
seconds=10
names=(ballot_peer_messages_sent_total ballot_peer_socket_writes_total
  ballot_peer_frames_coalesced_total ballot_peer_coalesced_sends_total)
declare -A before
for i in 0 1 2; do
  before[$i,cpu]=$(cpu_ticks "${PIDS[i]}")
  for name in "${names[@]}"; do before[$i,$name]=$(or_zero "$(counter "${METRICS[i]}" "$name")"); done
done
sleep $seconds
for i in 0 1 2; do
  cpu=$(( ($(cpu_ticks "${PIDS[i]}") - before[$i,cpu]) * 100 / (seconds * $(getconf CLK_TCK)) ))
  line="  n$((i + 1)): cpu ${cpu}% of a core"
  for name in "${names[@]}"; do
    now=$(or_zero "$(counter "${METRICS[i]}" "$name")")
    short=${name#ballot_peer_}
    line="$line, ${short%_total} $(( (now - before[$i,$name]) / seconds ))/s"
  done
  echo "$line"
done
wait "$BENCH"
grep '^put:' "$DEV_WORK/bench.out"
echo "  groups asleep on n1 after the load: $(counter "${METRICS[0]}" ballot_groups_hibernating) of $(counter "${METRICS[0]}" ballot_groups)"
