#!/usr/bin/env bash
# ballot vs etcd on this machine, one after the other, with the same `ballot bench` grid.
#
# Starts a 3-node etcd (Debian's etcd-server; it and etcd-client and jq are installed if missing) and a 3-node ballot
# (`ballot dev`), both on loopback with durable writes (their defaults), and runs the grid
#   workloads: put, linearizable get, serializable get, txn (compare-and-swap)
#   clients:   1, 16, 64, 256 (connections: clients / 16, at least 1)
#   values:    256 bytes, key space of BENCH_KEY_SPACE keys (written once before the grid)
# against each, reads each system's server CPU (utime + stime of its 3 processes, from /proc)
# before and after every cell, and writes the table, the ratios ballot / etcd and the issue's
# targets (met / MISSED) into docs/benchmarks.md between the bench-vs-etcd markers.
#
# Both clusters stay up for the whole run and every cell runs etcd, ballot, ballot, etcd (ABBA),
# BENCH_ROUNDS times, the figures averaged: a shared VM's speed drifts by tens of percent over
# minutes, and running one system's grid after the other's puts that drift into the ratios. The
# idle cluster costs little (heartbeats) while the other is measured.
#
# Environment:
#   BENCH_SECONDS    seconds per cell (default 10; 2 for a quick check, labelled a smoke run)
#   BENCH_CLIENTS    client counts (default "1 16 64 256")
#   BENCH_WORKLOADS  cells (default "put get get-serializable txn"; also "lock": every client
#                    takes and releases one lock through the Lock service, etcd's and ours)
#   BENCH_ROUNDS     ABBA rounds per cell (default 1: each system runs each cell twice)
#   BENCH_KEY_SPACE  keys (default 10000)
#   BENCH_OUT        markdown file to update (default docs/benchmarks.md; "-": stdout only)
#   CARGO_TARGET_DIR where the release build goes (default target)
#
# Endpoints are given leader first (found with `etcdctl endpoint status`), so one connection
# talks to the leader and more connections spread over all three members, for both systems.
set -euo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 16 64 256"}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-"put get get-serializable txn"}
BENCH_KEY_SPACE=${BENCH_KEY_SPACE:-10000}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
VALUE_SIZE=256
REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH_OUT=${BENCH_OUT:-$REPO/docs/benchmarks.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BALLOT=$TARGET_DIR/release/ballot
CLOCK_TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/bench-vs-etcd.XXXXXX)
RESULTS=$WORK/results.tsv
STARTED_PIDS=()

log() { echo "bench-vs-etcd: $*" >&2; }

cleanup() {
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- prerequisites -----------------------------------------------------------------------------

# etcd-server for the etcd cluster; etcd-client for etcdctl, which finds each cluster's leader.
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (Debian)"
    apt-get install -y "${missing[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
fi
for tool in etcd etcdctl jq awk; do
    command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done
log "building ballot (release)"
(cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p ballot >&2)

# --- helpers -----------------------------------------------------------------------------------

# A loopback port nothing listens on (and not handed out before in this run).
USED_PORTS=" "
free_port() {
    local port
    while true; do
        port=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# utime + stime of the given pids, in clock ticks.
cpu_ticks() {
    local total=0 pid fields
    for pid in "$@"; do
        # Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        fields=$(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

# Comma-separated endpoints (host:port), the leader first.
leader_first() {
    local endpoints=$1 leader
    leader=$(etcdctl --endpoints="$endpoints" endpoint status -w json 2>/dev/null |
        jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' | head -1) || true
    if [[ -z $leader ]]; then
        echo "$endpoints"
        return
    fi
    echo "$leader,$(echo "$endpoints" | tr ',' '\n' | grep -vx "$leader" | paste -sd,)"
}

wait_healthy() {
    local endpoints=$1 attempt
    for attempt in $(seq 1 100); do
        if etcdctl --endpoints="$endpoints" --command-timeout=1s endpoint health >/dev/null 2>&1 &&
            etcdctl --endpoints="$endpoints" --command-timeout=2s put bench-vs-etcd/ready 1 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "cluster at $endpoints did not become healthy"
    return 1
}

# write_keys SYSTEM ENDPOINTS: the key space, once, before the grid.
write_keys() {
    log "$1: writing $BENCH_KEY_SPACE keys"
    "$BALLOT" bench put --endpoints "$2" --clients 64 --conns 4 --sequential-keys \
        --total "$BENCH_KEY_SPACE" --key-space "$BENCH_KEY_SPACE" --value-size $VALUE_SIZE \
        --json >/dev/null
}

# run_cell SYSTEM ENDPOINTS WORKLOAD CLIENTS PID...: one run of one cell, a line of results.
run_cell() {
    local system=$1 endpoints=$2 workload=$3 clients=$4
    shift 4
    local pids=("$@") conns flags before after output
    conns=$((clients / 16))
    ((conns >= 1)) || conns=1
    case $workload in
        put) flags=(put) ;;
        get) flags=(get --no-preload) ;;
        get-serializable) flags=(get --serializable --no-preload) ;;
        txn) flags=(txn --no-preload) ;;
        lock) flags=(lock --key-prefix "bench-lock") ;;
        *) log "unknown workload $workload"; exit 1 ;;
    esac
    before=$(cpu_ticks "${pids[@]}")
    if ! output=$("$BALLOT" bench "${flags[@]}" --endpoints "$endpoints" --clients "$clients" \
        --conns "$conns" --duration "${BENCH_SECONDS}s" --key-space "$BENCH_KEY_SPACE" \
        --value-size $VALUE_SIZE --json); then
        # Keep going: one failed cell should not lose the whole comparison.
        log "$system $workload clients=$clients: the bench run FAILED"
        output='{"clients":'$clients',"ops":0,"ops_per_second":0,"errors":"failed",
            "latency_ms":{"p50":0,"p99":0},"bench_cpu":{"per_op_us":0}}'
    fi
    after=$(cpu_ticks "${pids[@]}")
    echo "$output" | jq -r --arg system "$system" --arg workload "$workload" \
        --argjson ticks $((after - before)) --argjson hz "$CLOCK_TICKS" \
        '[$system, $workload, .clients, .ops_per_second, .latency_ms.p50, .latency_ms.p99,
          .errors, (if .ops > 0 then $ticks / $hz * 1e6 / .ops else 0 end),
          .bench_cpu.per_op_us] | @tsv' >>"$RESULTS"
    log "$system $workload clients=$clients: $(echo "$output" |
        jq -r '"\(.ops_per_second | floor) ops/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors) errors"')"
}

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# --- etcd --------------------------------------------------------------------------------------

ETCD_PIDS=()
ETCD_ENDPOINTS=()
INITIAL_CLUSTER=""
declare -A CLIENT_PORT PEER_PORT
for name in e1 e2 e3; do
    CLIENT_PORT[$name]=$(free_port)
    PEER_PORT[$name]=$(free_port)
    INITIAL_CLUSTER+="${INITIAL_CLUSTER:+,}$name=http://127.0.0.1:${PEER_PORT[$name]}"
    ETCD_ENDPOINTS+=("127.0.0.1:${CLIENT_PORT[$name]}")
done
log "starting etcd ($(etcd --version | sed -n 1p)) in $WORK/etcd"
for name in e1 e2 e3; do
    mkdir -p "$WORK/etcd/$name"
    etcd --name "$name" --data-dir "$WORK/etcd/$name/data" \
        --listen-client-urls "http://127.0.0.1:${CLIENT_PORT[$name]}" \
        --advertise-client-urls "http://127.0.0.1:${CLIENT_PORT[$name]}" \
        --listen-peer-urls "http://127.0.0.1:${PEER_PORT[$name]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${PEER_PORT[$name]}" \
        --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token bench-vs-etcd \
        --initial-cluster-state new --logger zap --log-level warn \
        >"$WORK/etcd/$name/etcd.log" 2>&1 &
    ETCD_PIDS+=($!)
    STARTED_PIDS+=($!)
done
ENDPOINTS=$(IFS=,; echo "${ETCD_ENDPOINTS[*]}")
wait_healthy "$ENDPOINTS"
ENDPOINTS=$(leader_first "$ENDPOINTS")
ETCD_ENDPOINTS=$ENDPOINTS
log "etcd up: $ETCD_ENDPOINTS (leader first)"

# --- ballot ------------------------------------------------------------------------------------

log "starting ballot (ballot dev --nodes 3) in $WORK/ballot"
"$BALLOT" dev --nodes 3 --data-dir "$WORK/ballot" --fresh >"$WORK/ballot-dev.log" 2>&1 &
DEV_PID=$!
STARTED_PIDS+=("$DEV_PID")
for _ in $(seq 1 200); do
    grep -q "nodes up" "$WORK/ballot-dev.log" && break
    kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/ballot-dev.log" >&2; exit 1; }
    sleep 0.1
done
ENDPOINTS=$(grep -o 'client http://127.0.0.1:[0-9]*' "$WORK/ballot-dev.log" | sed 's|client http://||' | paste -sd,)
mapfile -t BALLOT_PIDS < <(pgrep -P "$DEV_PID")
((${#BALLOT_PIDS[@]} == 3)) || { log "expected 3 ballot servers, found ${#BALLOT_PIDS[@]}"; exit 1; }
wait_healthy "$ENDPOINTS"
BALLOT_ENDPOINTS=$(leader_first "$ENDPOINTS")
log "ballot up: $BALLOT_ENDPOINTS (leader first)"

# --- the grid ----------------------------------------------------------------------------------

write_keys etcd "$ETCD_ENDPOINTS"
write_keys ballot "$BALLOT_ENDPOINTS"
for workload in $BENCH_WORKLOADS; do
    for clients in $BENCH_CLIENTS; do
        for _ in $(seq 1 "$BENCH_ROUNDS"); do
            run_cell etcd "$ETCD_ENDPOINTS" "$workload" "$clients" "${ETCD_PIDS[@]}"
            run_cell ballot "$BALLOT_ENDPOINTS" "$workload" "$clients" "${BALLOT_PIDS[@]}"
            run_cell ballot "$BALLOT_ENDPOINTS" "$workload" "$clients" "${BALLOT_PIDS[@]}"
            run_cell etcd "$ETCD_ENDPOINTS" "$workload" "$clients" "${ETCD_PIDS[@]}"
        done
    done
done
ETCD_DISK_BYTES=$(du -sb "$WORK/etcd" | cut -f1)
BALLOT_DISK_BYTES=$(du -sb "$WORK/ballot" | cut -f1)
stop_pids "${ETCD_PIDS[@]}"
stop_pids "$DEV_PID"

# --- the report --------------------------------------------------------------------------------

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
memory=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
disk_source=$(df --output=source "$WORK" 2>/dev/null | tail -1 || echo unknown)
disk_fs=$(df --output=fstype "$WORK" 2>/dev/null | tail -1 || echo unknown)
disk_device=$(basename "$disk_source")
disk_model=$(lsblk -dno MODEL "$disk_source" 2>/dev/null | head -1 | xargs || true)
rotational=$(cat "/sys/block/${disk_device%%[0-9]*}/queue/rotational" 2>/dev/null || echo "?")
commit=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Only changes to what is built count (this run's own edit of docs/benchmarks.md does not).
if [[ -n $(cd "$REPO" && git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    commit+=" (with uncommitted changes to the code)"
fi
etcd_version=$(etcd --version | awk '/etcd Version/ {print $3}')
smoke=""
if ((BENCH_SECONDS < 10)); then
    smoke="**Smoke run** (${BENCH_SECONDS} s per cell): it checks that the script works; its figures are not to be quoted."
fi

SECTION=$WORK/section.md
awk -F'\t' -v smoke="$smoke" -v seconds="$BENCH_SECONDS" -v keys="$BENCH_KEY_SPACE" \
    -v cpu="$cpu_model" -v cores="$(nproc)" -v memory="$memory" -v kernel="$(uname -r)" \
    -v disk="$disk_source ($disk_fs${disk_model:+, $disk_model}, rotational=$rotational)" \
    -v commit="$commit" -v etcd_version="$etcd_version" -v date="$(date -u +%Y-%m-%d)" \
    -v load="$(cut -d' ' -f1-3 /proc/loadavg)" -v rounds="$BENCH_ROUNDS" \
    -v etcd_disk="$ETCD_DISK_BYTES" -v ballot_disk="$BALLOT_DISK_BYTES" '
function label(w) {
    if (w == "put") return "put"
    if (w == "get") return "get (linearizable)"
    if (w == "get-serializable") return "get (serializable)"
    if (w == "txn") return "txn (get + compare-and-swap)"
    return w
}
function fmt_rate(x) { return x >= 100 ? sprintf("%.0f", x) : sprintf("%.1f", x) }
function ratio(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "n/a" }
function verdict(ok) { return ok ? "met" : "**MISSED**" }
{
    key = $2 SUBSEP $3
    if (!(key in seen)) { seen[key] = 1; order[++cells] = key; workload[key] = $2; clients[key] = $3 }
    # Every run of a cell is averaged in (the ABBA order cancels a steady drift).
    n = ++runs[$1, key]
    rate[$1, key] += ($4 - rate[$1, key]) / n
    p50[$1, key] += ($5 - p50[$1, key]) / n
    p99[$1, key] += ($6 - p99[$1, key]) / n
    server_cpu[$1, key] += ($8 - server_cpu[$1, key]) / n
    errors[$1, key] += ($7 ~ /^[0-9]+$/) ? $7 : 0
    if (bench_min == "" || $9 < bench_min) bench_min = $9
    if ($9 > bench_max) bench_max = $9
}
END {
    print "## ballot vs etcd: `ballot bench`, 3 nodes each, durable writes"
    print ""
    if (smoke != "") { print smoke; print "" }
    printf "Measured %s on %s vCPUs (%s), %s RAM, Linux %s;\n", date, cores, cpu, memory, kernel
    printf "disk %s. ballot at commit %s, release build;\n", disk, commit
    printf "etcd %s (Debian etcd-server). Both with their default durability (each syncs its WAL before\n", etcd_version
    printf "acknowledging a write). Load average when the run ended: %s.\n", load
    print ""
    print "```"
    printf "BENCH_SECONDS=%s BENCH_ROUNDS=%s scripts/bench-vs-etcd.sh\n", seconds, rounds
    printf "# each cell: ballot bench WORKLOAD --endpoints LEADER,F1,F2 --clients C --conns max(1,C/16) \\\n"
    printf "#   --duration %ss --key-space %s --value-size 256 --json   (get: --serializable for the serializable rows)\n", seconds, keys
    print "```"
    print ""
    printf "The three nodes of each system and the bench share the machine. Both clusters were up for the\n"
    printf "whole run; each cell ran etcd, ballot, ballot, etcd (%s round(s)), and the table averages the\n", rounds
    print "runs, so a drift of the machine'"'"'s speed during the run weighs on both alike. Keys are"
    printf "written once before the grid (%s keys, random key per operation). Server CPU is utime + stime of\n", keys
    print "the three server processes from /proc over the cell, divided by its operations. A txn operation"
    print "is a get and a compare-and-swap txn on the key'"'"'s mod_revision (two requests)."
    print ""
    print "| workload | clients | ballot ops/s | etcd ops/s | ballot / etcd | ballot p50 / p99 ms | etcd p50 / p99 ms | server CPU µs/op ballot / etcd | errors ballot / etcd |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= cells; i++) {
        k = order[i]
        printf "| %s | %s | %s | %s | %s | %.3f / %.3f | %.3f / %.3f | %.1f / %.1f | %s / %s |\n", \
            label(workload[k]), clients[k], fmt_rate(rate["ballot", k]), fmt_rate(rate["etcd", k]), \
            ratio(rate["ballot", k], rate["etcd", k]), p50["ballot", k], p99["ballot", k], \
            p50["etcd", k], p99["etcd", k], server_cpu["ballot", k], server_cpu["etcd", k], \
            errors["ballot", k], errors["etcd", k]
    }
    print ""
    print "Targets of issue 5 (ballot against etcd in the same run):"
    print ""
    print "| target | ballot | etcd | result |"
    print "|---|---:|---:|---|"
    k = "put" SUBSEP "256"
    if (k in seen) printf "| puts at 256 clients: >= 3x etcd throughput | %s ops/s | %s ops/s (%s) | %s |\n", \
        fmt_rate(rate["ballot", k]), fmt_rate(rate["etcd", k]), ratio(rate["ballot", k], rate["etcd", k]), \
        verdict(rate["ballot", k] >= 3 * rate["etcd", k])
    k = "put" SUBSEP "64"
    if (k in seen) printf "| p99 put latency at 64 clients: <= half of etcd | %.3f ms | %.3f ms | %s |\n", \
        p99["ballot", k], p99["etcd", k], verdict(p99["ballot", k] <= p99["etcd", k] / 2)
    k = "put" SUBSEP "1"
    if (k in seen) printf "| one client, sequential puts: p50 <= 0.5 ms | %.3f ms | %.3f ms | %s |\n", \
        p50["ballot", k], p50["etcd", k], verdict(p50["ballot", k] <= 0.5)
    k = "put" SUBSEP "256"
    if (k in seen) printf "| server CPU per replicated put at 256 clients (3 nodes summed): <= 40 µs | %.1f µs | %.1f µs | %s |\n", \
        server_cpu["ballot", k], server_cpu["etcd", k], verdict(server_cpu["ballot", k] <= 40)
    k = "get" SUBSEP "64"
    if (k in seen) printf "| linearizable gets at 64 clients: >= 3x etcd | %s ops/s | %s ops/s (%s) | %s |\n", \
        fmt_rate(rate["ballot", k]), fmt_rate(rate["etcd", k]), ratio(rate["ballot", k], rate["etcd", k]), \
        verdict(rate["ballot", k] >= 3 * rate["etcd", k])
    k = "get-serializable" SUBSEP "64"
    if (k in seen) printf "| serializable gets at 64 clients: >= 3x etcd | %s ops/s | %s ops/s (%s) | %s |\n", \
        fmt_rate(rate["ballot", k]), fmt_rate(rate["etcd", k]), ratio(rate["ballot", k], rate["etcd", k]), \
        verdict(rate["ballot", k] >= 3 * rate["etcd", k])
    print ""
    printf "The bench itself used %.1f to %.1f µs of CPU per operation across the cells (user + system, from\n", bench_min, bench_max
    printf "getrusage). Data directories after the run: ballot %.0f MiB, etcd %.0f MiB.\n", ballot_disk / 1048576, etcd_disk / 1048576
}' "$RESULTS" >"$SECTION"

if [[ $BENCH_OUT == "-" ]]; then
    cat "$SECTION"
    exit 0
fi
BEGIN_MARK='<!-- bench-vs-etcd:begin (written by scripts/bench-vs-etcd.sh; edits here are overwritten) -->'
END_MARK='<!-- bench-vs-etcd:end -->'
if grep -qF -- "${BEGIN_MARK%% (*}" "$BENCH_OUT" 2>/dev/null; then
    awk -v section="$SECTION" -v begin="${BEGIN_MARK%% (*}" -v end="$END_MARK" '
        index($0, begin) == 1 { print; while ((getline line < section) > 0) print line; skipping = 1; next }
        index($0, end) == 1 { skipping = 0 }
        !skipping { print }
    ' "$BENCH_OUT" >"$WORK/out.md"
    cat "$WORK/out.md" >"$BENCH_OUT"
else
    { echo; echo "$BEGIN_MARK"; cat "$SECTION"; echo "$END_MARK"; } >>"$BENCH_OUT"
fi
cat "$SECTION"
log "wrote the table to $BENCH_OUT"
