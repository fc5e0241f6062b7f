#!/usr/bin/env python3
"""Used by scripts/bench-sched.sh: watches sched/runs/ with `ballot watch -w json` for SECONDS,
stamps each run's first record on arrival, and prints latency percentiles from each run's due
time: committed (the leader's record arrived through the watch), started (the worker's start
record, by its clock), and the command's spawn time (reported apart).

    sched-latency.py BALLOT PHASE SECONDS
"""
import base64
import json
import selectors
import subprocess
import sys
import time


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(name, values):
    return (
        f"  {name:<10} n={len(values):<6} p50={percentile(values, 0.50):8.1f} ms  "
        f"p99={percentile(values, 0.99):8.1f} ms  max={max(values, default=float('nan')):8.1f} ms"
    )


def main():
    ballot, phase, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    watch = subprocess.Popen(
        [ballot, "watch", "sched/runs/", "--prefix", "-w", "json"],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    selector = selectors.DefaultSelector()
    selector.register(watch.stdout, selectors.EVENT_READ)
    end = time.time() + seconds
    committed, started, spawn = {}, {}, {}
    while time.time() < end:
        if not selector.select(timeout=max(0.0, end - time.time())):
            break
        line = watch.stdout.readline()
        if not line:
            break
        arrived_ms = time.time_ns() / 1e6
        for event in json.loads(line).get("Events") or []:
            kv = event.get("kv")
            if not kv or event.get("type", 0) == 1:
                continue
            key = base64.b64decode(kv["key"]).decode()
            run = json.loads(base64.b64decode(kv["value"]))
            due_ms = run["due_ms"]
            if key not in committed and run["state"] in ("assigned", "queued"):
                committed[key] = arrived_ms - due_ms
            if run["state"] == "running" and key not in started:
                started[key] = run["started_ms"] - due_ms
            if run["state"] in ("succeeded", "failed") and run.get("spawn_us"):
                spawn[key] = run["spawn_us"] / 1000.0
    watch.kill()
    print(f"{phase}: {len(committed)} runs")
    print(summary("committed", list(committed.values())))
    print(summary("started", list(started.values())))
    print(summary("spawn", list(spawn.values())))


if __name__ == "__main__":
    main()
