#!/usr/bin/env bash
# A scripted etcdctl session against a 3-node ballot cluster: the proof that an unmodified etcd
# client works. Installs Debian's etcd-client (etcdctl 3.4) when missing. Every step checks its
# output; the first surprise fails the script with the command and what it printed.
#
#   scripts/etcdctl-session.sh [path/to/ballot]
set -euo pipefail
cd "$(dirname "$0")/.."

BALLOT=${1:-${CARGO_TARGET_DIR:-target}/release/ballot}
if ! command -v etcdctl >/dev/null; then
  echo "== installing etcdctl (Debian package etcd-client)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client) >/dev/null
fi
etcdctl version | sed -n 1p # sed reads all of it: head exits early and SIGPIPE fails the pipeline

DATA=$(mktemp -d /tmp/ballot-etcdctl.XXXXXX)
"$BALLOT" dev --nodes 3 --data-dir "$DATA" > "$DATA/dev.out" 2>&1 &
DEV_PID=$!
cleanup() { kill -TERM "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -q "nodes up" "$DATA/dev.out" 2>/dev/null && break; sleep 0.2; done
grep -q "nodes up" "$DATA/dev.out" || { echo "cluster did not start:"; cat "$DATA/dev.out"; exit 1; }
# host:port endpoints: etcdctl 3.4 sends an http:// endpoint as the HTTP/2 authority on some calls.
EP=$(grep -o "client http://[0-9.:]*" "$DATA/dev.out" | sed 's|client http://||' | paste -sd,)
FOLLOWERS_TOO=$EP
ctl() { etcdctl --endpoints="$EP" "$@"; }

expect() { # expect "description" "expected substring" command...
  local what=$1 want=$2; shift 2
  local got
  got=$("$@" 2>&1) || { echo "FAIL: $what: exit $?"; echo "$got"; exit 1; }
  if [[ "$got" != *"$want"* ]]; then echo "FAIL: $what: expected '$want' in:"; echo "$got"; exit 1; fi
  echo "ok   $what"
}

expect "put"                    "OK"             ctl put /app/a 1
expect "put another"            "OK"             ctl put /app/b 2
expect "get --prefix"           $'/app/a\n1\n/app/b\n2' ctl get /app/ --prefix
expect "get a missing key"      ""               ctl get /nothing
expect "del"                    "1"              ctl del /app/b
expect "txn success branch"     "SUCCESS"        ctl txn <<'TXN'
value("/app/a") = "1"

put /app/a 10

put /app/a 0

TXN
expect "txn result visible"     $'/app/a\n10'    ctl get /app/a
expect "txn failure branch"     "FAILURE"        ctl txn <<'TXN'
value("/app/a") = "1"

put /app/a 11

put /app/c 3

TXN
expect "txn else branch ran"    $'/app/c\n3'     ctl get /app/c

# watch: events for a prefix, in order
timeout 5 etcdctl --endpoints="$EP" watch /w --prefix > "$DATA/watch.out" 2>&1 &
sleep 1
ctl put /w/x 1 >/dev/null; ctl del /w/x >/dev/null
sleep 1
expect "watch saw put then delete" $'PUT\n/w/x\n1\nDELETE\n/w/x' cat "$DATA/watch.out"

# leases: grant, attach, keep alive, time-to-live, revoke deletes the key
LEASE=$(ctl lease grant 30 | awk '{print $2}')
expect "lease grant"            "$LEASE"         echo "$LEASE"
expect "put with lease"         "OK"             ctl put --lease="$LEASE" /leased v
expect "lease keep-alive"       "keepalived with TTL(30)" ctl lease keep-alive --once "$LEASE"
expect "lease timetolive"       "attached keys([/leased])" ctl lease timetolive "$LEASE" --keys
expect "lease revoke"           "revoked"        ctl lease revoke "$LEASE"
expect "revoke deleted the key" ""               ctl get /leased
[[ -z "$(ctl get /leased)" ]] || { echo "FAIL: leased key survived its lease"; exit 1; }

expect "member list"            "started"        ctl member list
[[ $(ctl member list | wc -l) -eq 3 ]] || { echo "FAIL: member list does not show 3 members"; ctl member list; exit 1; }
expect "endpoint status"        "true"           ctl endpoint status -w table
expect "endpoint health"        "is healthy"     ctl endpoint health

# lock and elect combine leases, transactions and watches
expect "lock"                   "inside the lock" timeout 10 etcdctl --endpoints="$EP" lock /locks/l1 -- echo "inside the lock"
timeout 4 etcdctl --endpoints="$EP" elect /elections/e1 candidate-a > "$DATA/elect.out" 2>&1 || true
expect "elect"                  "candidate-a"    cat "$DATA/elect.out"

# every member answers: a write through the last endpoint only (a follower most of the time)
LAST=${EP##*,}
expect "write via one member"   "OK"             etcdctl --endpoints="$LAST" put /via-one yes
expect "read via another"       $'/via-one\nyes' etcdctl --endpoints="${EP%%,*}" get /via-one

echo "etcdctl session: all steps passed"
