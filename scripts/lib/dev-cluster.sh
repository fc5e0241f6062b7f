# Sourced by the benchmark scripts: starts a fresh 3-node `ballot dev` cluster in the background
# and waits until it takes a write. Usage: start_dev_cluster BALLOT WORK_DIR. Sets DEV_PID,
# ENDPOINTS (comma list), and the arrays PIDS, CLIENTS and METRICS (one per node, n1 first);
# stops the cluster and removes WORK_DIR on exit.
start_dev_cluster() {
  local ballot=$1
  DEV_WORK=$2
  "$ballot" dev --fresh --data-dir "$DEV_WORK/data" </dev/null >"$DEV_WORK/dev.log" 2>&1 &
  DEV_PID=$!
  trap stop_dev_cluster EXIT
  for _ in $(seq 1 300); do
    [ "$(grep -c 'metrics http' "$DEV_WORK/dev.log" || true)" -ge 3 ] && break
    sleep 0.1
  done
  ENDPOINTS=$(grep -o 'endpoints=[^ ]*' "$DEV_WORK/dev.log" | head -1 | cut -d= -f2)
  mapfile -t PIDS < <(grep -oE ' pid [0-9]+' "$DEV_WORK/dev.log" | awk '{print $2}')
  mapfile -t METRICS < <(grep -oE 'metrics http://[^ ]*' "$DEV_WORK/dev.log" | awk '{print $2}')
  mapfile -t CLIENTS < <(grep -oE 'client http://[^ ]*' "$DEV_WORK/dev.log" | awk '{print $2}')
  until "$ballot" put warm up --endpoints "$ENDPOINTS" >/dev/null 2>&1; do sleep 0.1; done
}

stop_dev_cluster() {
  kill "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null
  rm -rf "$DEV_WORK"
}
