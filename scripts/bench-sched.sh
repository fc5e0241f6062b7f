#!/usr/bin/env bash
# The scheduler's dispatch latency: a 3-node `ballot dev` cluster on loopback and 3 `ballot
# worker` processes; two workloads, one after the other:
#  - burst: JOBS jobs (default 100) all due at the same second, every 10 s, for ROUNDS rounds;
#  - staggered: 1,000 jobs a minute (cron `S * * * * *`, S = job number mod 60: 16 or 17 jobs
#    due each second), for MINUTES minutes.
# Measured per run, from the due time (the slot, by this machine's clock):
#  - committed: when the leader's fenced record of the run arrives at a watch on sched/runs/
#    (so the commit, plus the watch's delivery: an upper bound on the commit);
#  - started: when the worker's start record (it holds the run's lock) was written;
#  - spawn: the time the worker spent spawning the command (reported apart).
# Figures in docs/benchmarks.md.
#
#   scripts/bench-sched.sh [JOBS=100] [ROUNDS=6] [MINUTES=2] [BALLOT=target/release/ballot]
set -euo pipefail
JOBS=${1:-100}
ROUNDS=${2:-6}
MINUTES=${3:-2}
BALLOT=$(realpath "${4:-target/release/ballot}")
# shellcheck source=lib/dev-cluster.sh
source "$(dirname "$0")/lib/dev-cluster.sh"
start_dev_cluster "$BALLOT" "$(mktemp -d /tmp/ballot-bench-sched.XXXXXX)"
OUT=$DEV_WORK/out
mkdir -p "$OUT"
export BALLOT_ENDPOINTS=$ENDPOINTS

WORKERS=()
for w in 1 2 3; do
  "$BALLOT" worker --name "w$w" --slots 128 >"$OUT/w$w.log" 2>&1 &
  WORKERS+=($!)
done
cleanup() {
  kill "${WORKERS[@]}" 2>/dev/null || true
  stop_dev_cluster
}
trap cleanup EXIT
until "$BALLOT" sched status | grep -q '^leader: w'; do sleep 0.1; done

# Burst: every job due at the same seconds (multiples of 10).
for j in $(seq 1 "$JOBS"); do
  "$BALLOT" sched job add "burst-$j" --every 10s --command true --overlap allow >/dev/null
done
python3 "$(dirname "$0")/lib/sched-latency.py" "$BALLOT" "burst ($JOBS jobs due together)" $((ROUNDS * 10 + 2))
for j in $(seq 1 "$JOBS"); do "$BALLOT" sched job rm "burst-$j" >/dev/null; done

# Staggered: 1,000 jobs a minute.
for j in $(seq 0 999); do
  "$BALLOT" sched job add "minute-$j" --cron "$((j % 60)) * * * * *" --command true --overlap allow >/dev/null
done
python3 "$(dirname "$0")/lib/sched-latency.py" "$BALLOT" "staggered (1,000 jobs a minute)" $((MINUTES * 60 + 2))
