#!/usr/bin/env bash
# A scripted etcdctl session against ballot: the proof that an unmodified etcd client works,
# with endpoints written as URLs (http://host:port) and the --cluster forms operators use. It
# starts a 3-node cluster as etcd members are started (one `ballot server` each, etcd's flags),
# adds a fourth member with `member add`, and mirrors into a one-node cluster. Installs Debian's
# etcd-client (etcdctl 3.4) when missing. Every step checks its output and waits for events
# with a deadline, never a fixed sleep; the first surprise fails the script with the command,
# what it printed and the end of every member's log.
#
#   scripts/etcdctl-session.sh [path/to/ballot]
set -eEuo pipefail
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND (exit status $?)"' ERR
cd "$(dirname "$0")/.."

BALLOT=${1:-${CARGO_TARGET_DIR:-target}/release/ballot}
if ! command -v etcdctl >/dev/null; then
  echo "== installing etcdctl (Debian package etcd-client)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client) >/dev/null
fi
etcdctl version | sed -n 1p # sed reads all of it: head exits early and SIGPIPE fails the pipeline
export ETCDCTL_API=3

DATA=$(mktemp -d /tmp/ballot-etcdctl.XXXXXX)
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for log in "$DATA"/*.log; do
      echo "--- end of $log"
      tail -n 15 "$log"
    done
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  exit 1
}

# A loopback port nothing listens on (a connection to it is refused), not handed out before,
# and below the kernel's ephemeral range: a port in that range may be bound at any moment as the
# local end of an outgoing connection, or by a server asking for port 0.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((EPHEMERAL_LOW > 12000)) || fail "the ephemeral port range starts at $EPHEMERAL_LOW: no room below it"
USED_PORTS=" "
free_port() {
  local port
  while :; do
    port=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    [[ $USED_PORTS == *" $port "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
    USED_PORTS+="$port "
    echo "$port"
    return
  done
}

# start_member NAME CLIENT_PORT PEER_PORT METRICS_PORT INITIAL_CLUSTER STATE TOKEN; its PID in
# MEMBER_PID. (Ports come from the caller: free_port in $(...) would forget what it handed out.)
start_member() {
  local name=$1 client=$2 peer=$3 metrics=$4 initial=$5 state=$6 token=$7
  "$BALLOT" server --name "$name" --data-dir "$DATA/$name" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --listen-metrics-urls "http://127.0.0.1:$metrics" \
    --initial-cluster "$initial" --initial-cluster-state "$state" --initial-cluster-token "$token" \
    >"$DATA/$name.log" 2>&1 &
  MEMBER_PID=$!
  PIDS+=("$MEMBER_PID")
}

# wait_for "what" SECONDS command...: runs the command until it succeeds.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${seconds}s"
    sleep 0.1
  done
  echo "ok   $what"
}

# expect "description" "expected substring" command...
expect() {
  local what=$1 want=$2
  shift 2
  local got
  got=$("$@" 2>&1) || {
    local status=$?
    echo "$got"
    fail "$what: exit status $status"
  }
  [[ "$got" == *"$want"* ]] || {
    echo "$got"
    fail "$what: expected '$want' in the output above"
  }
  echo "ok   $what"
}

# expect_exactly "description" "expected standard output" command...
expect_exactly() {
  local what=$1 want=$2
  shift 2
  local got
  got=$("$@" 2>/dev/null) || fail "$what: exit status $?"
  [[ "$got" == "$want" ]] || {
    printf 'got:\n%s\nwanted:\n%s\n' "$got" "$want"
    fail "$what"
  }
  echo "ok   $what"
}

# Long-running commands (watch, keep-alive, lock, elect, make-mirror) run in the background with
# their output in $DATA/NAME.out. `stop NAME` ends one with SIGTERM; `stop NAME INT` as Ctrl-C
# would, which lock and elect answer by giving up the lock or the leadership (a background
# command of a script starts with SIGINT ignored; etcdctl unignores it only where it handles it).
declare -A BACKGROUND
background() {
  local name=$1
  shift
  "$@" >"$DATA/$name.out" 2>&1 &
  BACKGROUND[$name]=$!
  PIDS+=($!)
}
printed() { [[ "$(cat "$DATA/$1.out")" == *"$2"* ]]; }
stop() {
  kill -"${2:-TERM}" "${BACKGROUND[$1]}" 2>/dev/null || true
  wait "${BACKGROUND[$1]}" 2>/dev/null || true
}

echo "== a 3-node cluster, and a 1-node cluster to mirror into"
TOKEN=etcdctl-session
declare -a CLIENT PEER METRICS
INITIAL=""
for i in 1 2 3; do
  CLIENT[i]=$(free_port)
  PEER[i]=$(free_port)
  METRICS[i]=$(free_port)
  INITIAL+="${INITIAL:+,}n$i=http://127.0.0.1:${PEER[i]}"
done
for i in 1 2 3; do
  start_member "n$i" "${CLIENT[i]}" "${PEER[i]}" "${METRICS[i]}" "$INITIAL" new "$TOKEN"
done
MIRROR_CLIENT=$(free_port)
MIRROR_PEER=$(free_port)
start_member m1 "$MIRROR_CLIENT" "$MIRROR_PEER" "$(free_port)" "m1=http://127.0.0.1:$MIRROR_PEER" new mirror
MIRROR=http://127.0.0.1:$MIRROR_CLIENT
EP="http://127.0.0.1:${CLIENT[1]},http://127.0.0.1:${CLIENT[2]},http://127.0.0.1:${CLIENT[3]}"
ctl() { etcdctl --endpoints="$EP" "$@"; }
wait_for "3 members healthy" 20 ctl endpoint health
wait_for "the mirror target healthy" 20 etcdctl --endpoints="$MIRROR" endpoint health

# endpoint status fields: endpoint, ID, version, DB size, is leader, is learner, term, ...
status_field() { # status_field FIELD (of the leader's line)
  ctl endpoint status --cluster 2>/dev/null | awk -F', ' -v field="$1" '$5 == "true" { print $field }'
}
key_count() { # key_count PREFIX COUNT: COUNT keys under PREFIX
  [[ $(ctl get "$1" --prefix --keys-only 2>/dev/null | awk 'NF' | wc -l) -eq $2 ]]
}

echo "== keys"
expect "put"                         "OK"               ctl put /app/a 1
expect "put another"                 "OK"               ctl put /app/b 2
expect_exactly "get --prefix"        $'/app/a\n1\n/app/b\n2' ctl get /app/ --prefix
expect_exactly "get a missing key"   ""                 ctl get /nothing
expect_exactly "put --prev-kv"       $'OK\n/app/b\n2'   ctl put /app/b 3 --prev-kv
expect "get -w json"                 '"count":1'        ctl get /app/a -w json
expect_exactly "del"                 "1"                ctl del /app/b
expect_exactly "del --prefix --prev-kv" $'1\n/app/a\n1' ctl del /app/ --prefix --prev-kv

echo "== txn"
ctl put /app/a 1 >/dev/null
expect "txn success branch"          "SUCCESS"          ctl txn <<'TXN'
value("/app/a") = "1"

put /app/a 10

put /app/a 0

TXN
expect_exactly "txn result visible"  $'/app/a\n10'      ctl get /app/a
expect "txn failure branch"          "FAILURE"          ctl txn <<'TXN'
value("/app/a") = "1"

put /app/a 11

put /app/c 3

TXN
expect_exactly "txn else branch ran" $'/app/c\n3'       ctl get /app/c
expect_exactly "txn --interactive" \
  $'compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n\n/app/a\n12' \
  ctl txn --interactive <<'TXN'
value("/app/a") = "10"

put /app/a 12
get /app/a

put /app/a 13

TXN

echo "== compaction"
REVISION=$(ctl get /app/a -w json | sed 's/.*"mod_revision":\([0-9]*\).*/\1/')
[[ $REVISION =~ ^[0-9]+$ ]] || fail "no mod_revision in get -w json"
expect "compaction"                  "compacted revision $((REVISION - 1))" ctl compaction $((REVISION - 1))
expect "a read below it is refused"  "required revision has been compacted" \
  bash -c "! etcdctl --endpoints=$EP get /app/a --rev $((REVISION - 2))"
expect "compaction --physical"       "compacted revision $REVISION" ctl compaction --physical "$REVISION"

echo "== watch"
# From the next revision: the watch sees the events whether it starts before them or after.
NEXT=$(($(ctl get /app/a -w json | sed 's/.*"revision":\([0-9]*\),"raft_term.*/\1/') + 1))
background watch etcdctl --endpoints="$EP" watch /w --prefix --rev "$NEXT"
ctl put /w/x 1 >/dev/null
ctl del /w/x >/dev/null
wait_for "watch --prefix saw the put then the delete" 10 printed watch $'PUT\n/w/x\n1\nDELETE\n/w/x'
stop watch
background watch_prev etcdctl --endpoints="$EP" watch /w/x --rev "$NEXT" --prev-kv
wait_for "watch --prev-kv from a past revision" 10 printed watch_prev $'DELETE\n/w/x\n1\n/w/x'
stop watch_prev

echo "== leases"
LEASE=$(ctl lease grant 30 | sed -n 's/^lease \([0-9a-f]*\) granted with TTL(30s)$/\1/p')
[[ -n $LEASE ]] || fail "lease grant printed no lease"
echo "ok   lease grant"
expect "lease list"                  "$LEASE"           ctl lease list
expect "put --lease"                 "OK"               ctl put --lease="$LEASE" /leased v
expect "lease timetolive --keys"     "attached keys([/leased])" ctl lease timetolive "$LEASE" --keys
expect "lease keep-alive --once"     "lease $LEASE keepalived with TTL(30)" ctl lease keep-alive --once "$LEASE"
background keepalive etcdctl --endpoints="$EP" lease keep-alive "$LEASE"
wait_for "lease keep-alive (streaming)" 10 printed keepalive "lease $LEASE keepalived with TTL(30)"
stop keepalive
expect "lease revoke"                "lease $LEASE revoked" ctl lease revoke "$LEASE"
expect_exactly "revoke deleted the key" ""              ctl get /leased
expect "lease list after revoke"     "found 0 leases"   ctl lease list

echo "== endpoints, maintenance"
expect "endpoint health"             "is healthy"       ctl endpoint health
for cluster in "" --cluster; do
  with=${cluster:+ $cluster}
  [[ $(ctl endpoint health ${cluster:+"$cluster"} 2>&1 | grep -c "^http://127.0.0.1:[0-9]* is healthy") -eq 3 ]] ||
    fail "endpoint health$with: not 3 healthy endpoints"
  echo "ok   endpoint health$with: 3 healthy"
  STATUS=$(ctl endpoint status ${cluster:+"$cluster"} -w table)
  [[ $(grep -c "| http://127.0.0.1:" <<<"$STATUS") -eq 3 && $(grep -c "|[[:space:]]*true |" <<<"$STATUS") -eq 1 ]] ||
    { echo "$STATUS"; fail "endpoint status$with -w table: not 3 members and 1 leader"; }
  echo "ok   endpoint status$with -w table: 3 members, 1 leader"
  hashes_agree() { [[ $(ctl endpoint hashkv ${cluster:+"$cluster"} | awk -F', ' '{ print $2 }' | sort -u | wc -l) -eq 1 &&
                      $(ctl endpoint hashkv ${cluster:+"$cluster"} | grep -c "^http://") -eq 3 ]]; }
  wait_for "endpoint hashkv$with: 3 members, one hash" 10 hashes_agree
  [[ $(ctl defrag ${cluster:+"$cluster"} | grep -c "^Finished defragmenting etcd member\[http://127.0.0.1:") -eq 3 ]] ||
    fail "defrag$with did not finish on 3 members"
  echo "ok   defrag$with: 3 members"
done
expect_exactly "alarm list"          ""                 ctl alarm list
expect "snapshot save"               "Snapshot saved at $DATA/backup.db" \
  etcdctl --endpoints="http://127.0.0.1:${CLIENT[1]}" snapshot save "$DATA/backup.db"
[[ -s "$DATA/backup.db" ]] || fail "snapshot save wrote nothing"

echo "== move-leader"
LEADER=$(status_field 2)
TARGET=$(ctl endpoint status --cluster | awk -F', ' '$5 == "false" { print $2; exit }')
expect "move-leader"                 "Leadership transferred from $LEADER to $TARGET" ctl move-leader "$TARGET"
leader_is() { [[ $(status_field 2) == "$1" ]]; }
wait_for "endpoint status names the new leader" 10 leader_is "$TARGET"

echo "== lock"
background lock1 etcdctl --endpoints="$EP" lock /locks/l1
wait_for "the first lock holder" 10 printed lock1 "/locks/l1/"
background lock2 etcdctl --endpoints="$EP" lock /locks/l1
wait_for "the second waits in line" 10 key_count /locks/l1/ 2
[[ ! -s "$DATA/lock2.out" ]] || fail "the second got the lock while the first held it: $(cat "$DATA/lock2.out")"
stop lock1 INT
wait_for "the second holds the lock once the first released it" 10 printed lock2 "/locks/l1/"
[[ $(cat "$DATA/lock2.out") != $(cat "$DATA/lock1.out") ]] || fail "both holders printed the same key"
stop lock2 INT
wait_for "the lock's keys are gone" 10 key_count /locks/l1/ 0
expect "lock -- command"             "inside the lock"  ctl lock /locks/l2 -- echo "inside the lock"

echo "== elect"
background observer etcdctl --endpoints="$EP" elect --listen /elections/e1
background alice etcdctl --endpoints="$EP" elect /elections/e1 alice
wait_for "alice is elected" 10 printed alice $'\nalice'
wait_for "the observer sees alice" 10 printed observer $'\nalice'
background bob etcdctl --endpoints="$EP" elect /elections/e1 bob
wait_for "bob campaigns" 10 key_count /elections/e1/ 2
[[ ! -s "$DATA/bob.out" ]] || fail "bob was elected while alice led: $(cat "$DATA/bob.out")"
stop alice INT
wait_for "bob is elected once alice resigned" 10 printed bob $'\nbob'
wait_for "the observer sees bob" 10 printed observer $'\nbob'
stop bob INT
stop observer

echo "== make-mirror"
ctl put /mirror/a 1 >/dev/null
ctl put /mirror/b 2 >/dev/null
background mirror etcdctl --endpoints="$EP" make-mirror --prefix /mirror/ "$MIRROR"
ctl put /mirror/c 3 >/dev/null
mirrored() { [[ $(etcdctl --endpoints="$MIRROR" get /mirror/ --prefix) == $'/mirror/a\n1\n/mirror/b\n2\n/mirror/c\n3' ]]; }
wait_for "make-mirror copied the keys, old and new" 20 mirrored
stop mirror

echo "== members"
# The member commands print IDs padded to 16 columns with spaces (%16x), member list does not.
padded() { printf '%16s' "$1"; }
expect "member list"                 "started, n1, http://127.0.0.1:${PEER[1]}, http://127.0.0.1:${CLIENT[1]}, false" ctl member list
[[ $(ctl member list | wc -l) -eq 3 ]] || fail "member list does not show 3 members"
N4_CLIENT=$(free_port)
N4_PEER=$(free_port)
ADDED=$(ctl member add n4 --learner --peer-urls="http://127.0.0.1:$N4_PEER")
N4=$(sed -n 's/^Member *\([0-9a-f]*\) added to cluster.*/\1/p' <<<"$ADDED")
N4_INITIAL=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$ADDED")
[[ -n $N4 && $N4_INITIAL == *"n4=http://127.0.0.1:$N4_PEER"* && $ADDED == *'ETCD_INITIAL_CLUSTER_STATE="existing"'* ]] ||
  { echo "$ADDED"; fail "member add --learner"; }
echo "ok   member add --learner"
expect "the learner is listed, unstarted" "$N4, unstarted, , http://127.0.0.1:$N4_PEER, , true" ctl member list
start_member n4 "$N4_CLIENT" "$N4_PEER" "$(free_port)" "$N4_INITIAL" existing "$TOKEN"
N4_PID=$MEMBER_PID
listed() { [[ $(ctl member list) == *"$1"* ]]; }
wait_for "n4 starts as a learner" 20 listed "$N4, started, n4, http://127.0.0.1:$N4_PEER, http://127.0.0.1:$N4_CLIENT, true"
# The leader refuses to promote a learner that has not caught up yet.
wait_for "member promote" 20 ctl member promote "$N4"
expect "n4 is a voter"               "$N4, started, n4, http://127.0.0.1:$N4_PEER, http://127.0.0.1:$N4_CLIENT, false" ctl member list
[[ $(ctl endpoint status --cluster | wc -l) -eq 4 ]] || fail "endpoint status --cluster does not show 4 members"
echo "ok   endpoint status --cluster: 4 members"
expect "n4 serves reads"             $'/app/c\n3'      etcdctl --endpoints="http://127.0.0.1:$N4_CLIENT" get /app/c
GHOST_PEER=$(free_port)
GHOST_MOVED=$(free_port)
GHOST=$(ctl member add ghost --learner --peer-urls="http://127.0.0.1:$GHOST_PEER" |
  sed -n 's/^Member *\([0-9a-f]*\) added to cluster.*/\1/p')
[[ -n $GHOST ]] || fail "member add ghost"
expect "member update"               "Member $(padded "$GHOST") updated in cluster" ctl member update "$GHOST" --peer-urls="http://127.0.0.1:$GHOST_MOVED"
expect "member list shows the new peer URL" "$GHOST, unstarted, , http://127.0.0.1:$GHOST_MOVED, , true" ctl member list
expect "member remove a learner"     "Member $(padded "$GHOST") removed from cluster" ctl member remove "$GHOST"
expect "member remove a voter"       "Member $(padded "$N4") removed from cluster" ctl member remove "$N4"
kill -TERM "$N4_PID"
wait "$N4_PID" 2>/dev/null || true
[[ $(ctl member list | wc -l) -eq 3 ]] || fail "member list does not show 3 members after the removals"
wait_for "3 members healthy after the removals" 20 ctl endpoint health --cluster
expect "a write after the membership changes" "OK" ctl put /after-members yes

echo "etcdctl session: all steps passed"
