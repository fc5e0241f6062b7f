#!/usr/bin/env bash
# Idle replicated groups on a 3-node `ballot dev` cluster (loopback, this machine): per node,
# CPU (% of one core over 10 s), resident memory, peer messages and liveness pings per second,
# open descriptors and disk, before and after creating N groups of 3 replicas (at least 100); the
# time to create them (100 one `ballot group create` process after another, the rest with
# `--count` over one connection); one group's time from create to
# first committed write; and, after SIGKILL of n1, how long until every group has a live leader.
#
#   scripts/bench-groups.sh [N=1000] [BALLOT=target/release/ballot]
#
# Figures go to docs/benchmarks.md ("Many groups on one node"). Needs curl.
set -euo pipefail
N=${1:-1000}
[ "$N" -ge 100 ] || { echo "N must be at least 100" >&2; exit 2; }
BALLOT=$(realpath "${2:-target/release/ballot}")
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-groups.XXXXXX)"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
counter() { curl -s "$1" | awk -v name="$2" '$1 == name { print $2 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One line per node: CPU over 10 s, RSS, peer messages and liveness pings sent per second.
measure() {
  local seconds=10 i before_cpu=() before_msg=() before_ping=()
  for i in 0 1 2; do
    before_cpu[i]=$(cpu_ticks "${PIDS[i]}")
    before_msg[i]=$(counter "${METRICS[i]}" ballot_peer_messages_sent_total)
    before_ping[i]=$(counter "${METRICS[i]}" ballot_node_liveness_frames_sent_total)
  done
  sleep $seconds
  for i in 0 1 2; do
    local cpu msg ping rss fds
    cpu=$(( ($(cpu_ticks "${PIDS[i]}") - before_cpu[i]) * 100 / (seconds * $(getconf CLK_TCK)) ))
    msg=$(( ($(counter "${METRICS[i]}" ballot_peer_messages_sent_total) - before_msg[i]) / seconds ))
    ping=$(( ($(counter "${METRICS[i]}" ballot_node_liveness_frames_sent_total) - before_ping[i]) / seconds ))
    rss=$(awk '/VmRSS/ { print $2 }' "/proc/${PIDS[i]}/status")
    fds=$(ls "/proc/${PIDS[i]}/fd" | wc -l)
    echo "  n$((i + 1)): cpu ${cpu}% of a core, rss ${rss} KiB, peer messages ${msg}/s, liveness pings ${ping}/s, fds ${fds}"
  done
}

sleep 3
echo "before any group (group 0 idle):"
measure

start=$(now)
for _ in $(seq 1 100); do
  "$BALLOT" group create --replicas 3 --endpoints "$ENDPOINTS" >/dev/null
done
echo "created 100 groups of 3 replicas in $(elapsed "$start" "$(now)") s (one CLI process each)"
if [ "$N" -gt 100 ]; then
  start=$(now)
  "$BALLOT" group create --replicas 3 --count $((N - 100)) --endpoints "$ENDPOINTS" >/dev/null
  echo "created $((N - 100)) more in $(elapsed "$start" "$(now)") s (group create --count, one connection)"
fi

# One more: create it, then its first write, each a CLI process; a CLI process that does
# nothing but a read of group 0 is the baseline.
start=$(now); "$BALLOT" get warm --endpoints "$ENDPOINTS" >/dev/null; read_only=$(elapsed "$start" "$(now)")
start=$(now)
id=$("$BALLOT" group create --replicas 3 --endpoints "$ENDPOINTS" | awk '{ print $2 }')
created=$(now)
"$BALLOT" put first write --group "$id" --endpoints "$ENDPOINTS" >/dev/null
echo "group $id: created in $(elapsed "$start" "$created") s, first write committed $(elapsed "$created" "$(now)") s later (a CLI process that only reads group 0 takes ${read_only} s)"

sleep 5
echo "after $((N + 1)) groups, idle:"
measure
echo "  groups asleep on n1: $(counter "${METRICS[0]}" ballot_groups_hibernating) of $(counter "${METRICS[0]}" ballot_groups)"
echo "  disk per node: $(du -sh "$DEV_WORK/data/n1" | cut -f1)"

# SIGKILL n1; ask n2 until no group names n1 as its leader or has none.
n1_decimal=$("$BALLOT" status --endpoints "${CLIENTS[0]}" -w json | grep -oE '"member_id": *[0-9]+' | head -1 | grep -oE '[0-9]+$')
n1_id=$(printf '%x' "$n1_decimal") # as `group list` prints it
led_by_n1=$("$BALLOT" group list --endpoints "${CLIENTS[1]}" | grep -c "leader ${n1_id}," || true)
kill -9 "${PIDS[0]}"
start=$(now)
while true; do
  listing=$("$BALLOT" group list --endpoints "${CLIENTS[1]}")
  waiting=$(grep -c -e "leader ${n1_id}," -e "no leader" <<<"$listing" || true)
  [ "$waiting" -eq 0 ] && break
  sleep 0.2
done
echo "SIGKILL n1 (leader of ${led_by_n1} sleeping groups): every group had a live leader again after $(elapsed "$start" "$(now)") s"
