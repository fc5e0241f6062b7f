//! `ballot bench` as a user runs it: against a real three-node cluster of `ballot server`
//! processes (exact operation counts, keys readable afterwards, compare-and-swap counts that
//! match the keys' versions, the open-loop rate, watch delivery), and without a server (bad
//! flags, an unreachable endpoint). Each test starts its own cluster and runs for a few seconds.

use ballot::dev_cluster::RunningCluster;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");

/// Output of one `ballot` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// The report of a `--json` run that succeeded.
    fn report(&self) -> Value {
        assert_eq!(self.code, 0, "{self:?}");
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {self:?}"))
    }
}

fn ballot(endpoints: &str, args: &[&str]) -> Run {
    let output = Command::new(BALLOT)
        .args(args)
        .env("BALLOT_ENDPOINTS", endpoints)
        .output()
        .expect("ballot runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A three-node cluster, stopped and its data removed when dropped (also on panic).
struct Cluster {
    running: Option<RunningCluster>,
    dir: PathBuf,
    endpoints: String,
}

impl Cluster {
    fn start(test: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("ballot-bench-{test}-{}", std::process::id()));
        let running = RunningCluster::start(BALLOT.as_ref(), 3, &dir, true)
            .unwrap_or_else(|e| panic!("the cluster starts: {e}"));
        let endpoints = running.plan.client_urls().join(",");
        Cluster {
            running: Some(running),
            dir,
            endpoints,
        }
    }

    fn bench(&self, args: &[&str]) -> Run {
        let mut words = vec!["bench"];
        words.extend_from_slice(args);
        ballot(&self.endpoints, &words)
    }

    /// `ballot get PREFIX --prefix -w json`, as JSON.
    fn get_prefix(&self, prefix: &str) -> Value {
        let run = ballot(&self.endpoints, &["get", prefix, "--prefix", "-w", "json"]);
        run.report()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.running.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn number(report: &Value, path: &str) -> f64 {
    let mut value = report;
    for field in path.split('.') {
        value = &value[field];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is a number in {report}"))
}

fn decode(base64_text: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(base64_text.as_str().expect("a base64 string"))
        .expect("valid base64")
}

#[test]
fn total_sends_exactly_that_many_puts_and_every_key_is_readable_afterwards() {
    let cluster = Cluster::start("total");
    let run = cluster.bench(&[
        "put",
        "--total",
        "300",
        "--sequential-keys",
        "--key-space",
        "300",
        "--key-prefix",
        "total/",
        "--clients",
        "8",
        "--conns",
        "3",
        "--value-size",
        "100",
        "--json",
    ]);
    let report = run.report();
    assert_eq!(number(&report, "ops"), 300.0, "{report}");
    assert_eq!(number(&report, "errors"), 0.0, "{report}");
    assert_eq!(report["workload"], "put");
    assert_eq!(
        (report["clients"].as_u64(), report["conns"].as_u64()),
        (Some(8), Some(3))
    );
    assert!(number(&report, "ops_per_second") > 0.0);
    let latency = |field: &str| number(&report, &format!("latency_ms.{field}"));
    assert!(latency("p50") > 0.0);
    assert!(latency("p50") <= latency("p90") && latency("p90") <= latency("p99"));
    assert!(latency("p99") <= latency("p99_9") && latency("p99_9") <= latency("max"));
    assert!(number(&report, "bench_cpu.per_op_us") > 0.0, "{report}");
    assert!(
        !run.stderr.contains("ops/s"),
        "no progress line in a log for a run shorter than 10 s: {run:?}"
    );

    let keys = cluster.get_prefix("total/");
    assert_eq!(keys["count"], 300, "each sequential key written once");
    let kvs = keys["kvs"].as_array().expect("kvs");
    assert_eq!(decode(&kvs[0]["key"]), b"total/0000000000");
    assert_eq!(decode(&kvs[299]["key"]), b"total/0000000299");
    assert!(kvs.iter().all(|kv| kv["version"] == 1), "one put per key");
    assert!(kvs.iter().all(|kv| decode(&kv["value"]).len() == 100));
}

#[test]
fn groups_spread_the_preload_and_the_clients_over_created_groups() {
    let cluster = Cluster::start("groups");
    let created = ballot(
        &cluster.endpoints,
        &["group", "create", "--replicas", "3", "--count", "2"],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let run = cluster.bench(&[
        "get",
        "--total",
        "200",
        "--key-space",
        "50",
        "--key-prefix",
        "grouped/",
        "--groups",
        "2",
        "--clients",
        "4",
        "--json",
    ]);
    let report = run.report();
    assert_eq!(number(&report, "ops"), 200.0, "{report}");
    assert_eq!(number(&report, "errors"), 0.0, "{report}");
    assert_eq!(number(&report, "groups"), 2.0, "{report}");
    assert_eq!(
        number(&report, "preloaded_keys"),
        100.0,
        "every key in each of the two groups: {report}"
    );
    let count_in = |group: &str| {
        let run = ballot(
            &cluster.endpoints,
            &[
                "get",
                "grouped/",
                "--prefix",
                "--count-only",
                "-w",
                "json",
                "--group",
                group,
            ],
        );
        assert_eq!(run.code, 0, "{run:?}");
        let value: Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
        value["count"].as_u64().unwrap_or(0)
    };
    assert_eq!(count_in("1"), 50);
    assert_eq!(count_in("2"), 50);
    assert_eq!(count_in("0"), 0, "group 0's keyspace is its own");
}

#[test]
fn reads_preload_missing_keys_once_and_count_linearizable_and_serializable_gets() {
    let cluster = Cluster::start("reads");
    let common = [
        "--key-space",
        "40",
        "--key-prefix",
        "reads/",
        "--clients",
        "4",
        "--json",
    ];
    let first = cluster
        .bench(&[&["get", "--total", "200"], &common[..]].concat())
        .report();
    assert_eq!(number(&first, "preloaded_keys"), 40.0, "{first}");
    assert_eq!(number(&first, "ops"), 200.0);
    assert_eq!(cluster.get_prefix("reads/")["count"], 40);

    let serializable = cluster
        .bench(&[&["get", "--serializable", "--total", "150"], &common[..]].concat())
        .report();
    assert_eq!(
        number(&serializable, "preloaded_keys"),
        0.0,
        "already there"
    );
    assert_eq!(number(&serializable, "ops"), 150.0);
    assert_eq!(serializable["serializable"], true);

    let mixed = cluster
        .bench(
            &[
                &["mixed", "--read-ratio", "0.75", "--total", "400"],
                &common[..],
            ]
            .concat(),
        )
        .report();
    let (gets, puts) = (number(&mixed, "mixed.gets"), number(&mixed, "mixed.puts"));
    assert_eq!(gets + puts, 400.0, "{mixed}");
    assert!(
        (240.0..=360.0).contains(&gets),
        "about 3 in 4 are gets: {mixed}"
    );
}

#[test]
fn txn_swaps_match_the_versions_the_keys_gained() {
    let cluster = Cluster::start("txn");
    let report = cluster
        .bench(&[
            "txn",
            "--total",
            "300",
            "--clients",
            "16",
            "--conns",
            "2",
            "--key-space",
            "3",
            "--key-prefix",
            "cas/",
            "--json",
        ])
        .report();
    let swapped = number(&report, "txn.swapped");
    let not_swapped = number(&report, "txn.not_swapped");
    assert_eq!(swapped + not_swapped, 300.0, "{report}");
    assert!(not_swapped > 0.0, "16 clients on 3 keys collide: {report}");
    // Each key was created by the preload (version 1); each swap is one more put.
    let keys = cluster.get_prefix("cas/");
    let versions: f64 = keys["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| kv["version"].as_f64().expect("version"))
        .sum();
    assert_eq!(versions, 3.0 + swapped, "{keys}");
}

#[test]
fn rate_holds_the_offered_load_and_watchers_receive_every_put() {
    let cluster = Cluster::start("rate");
    let limited = cluster
        .bench(&[
            "put",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--clients",
            "4",
            "--key-prefix",
            "rate/",
            "--json",
        ])
        .report();
    let ops = number(&limited, "ops");
    assert!(
        (170.0..=200.0).contains(&ops),
        "2 s at 100 ops/s: {limited}"
    );
    assert!(number(&limited, "ops_per_second") <= 110.0, "{limited}");
    assert_eq!(number(&limited, "rate"), 100.0);

    let watched = cluster
        .bench(&[
            "watch",
            "--watchers",
            "5",
            "--clients",
            "2",
            "--conns",
            "2",
            "--total",
            "100",
            "--key-prefix",
            "watched/",
            "--json",
        ])
        .report();
    assert_eq!(number(&watched, "ops"), 100.0, "{watched}");
    assert_eq!(number(&watched, "watch.events_expected"), 500.0);
    assert_eq!(
        number(&watched, "watch.events_received"),
        500.0,
        "{watched}"
    );
    let delivery = number(&watched, "watch.delivery_latency_ms.p50");
    assert!(delivery > 0.0 && delivery < 1_000.0, "{watched}");
}

#[test]
fn the_text_report_names_the_figures() {
    let cluster = Cluster::start("text");
    let run = cluster.bench(&["put", "--total", "50", "--key-prefix", "text/"]);
    assert_eq!(run.code, 0, "{run:?}");
    for expected in [
        "put: 50 ops in",
        "ops/s",
        "latency: p50",
        "p99.9",
        "max",
        "errors: none",
        "µs per operation",
    ] {
        assert!(run.stdout.contains(expected), "{expected:?} in {run:?}");
    }
}

#[test]
fn bad_flags_are_refused_with_a_clear_error_and_exit_2() {
    for (args, expected) in [
        (
            &["bench", "put", "--clients", "0"][..],
            "--clients must be between 1",
        ),
        (
            &["bench", "put", "--rate", "0"],
            "--rate must be a positive number",
        ),
        (
            &["bench", "put", "--serializable"],
            "--serializable applies to the reads",
        ),
        (
            &["bench", "get", "--read-ratio", "0.5"],
            "--read-ratio applies to mixed",
        ),
        (
            &["bench", "mixed", "--read-ratio", "2"],
            "--read-ratio must be between 0 and 1",
        ),
        (
            &["bench", "watch", "--value-size", "3"],
            "--value-size must be at least 8",
        ),
        (
            &["bench", "put", "--total", "0"],
            "--total must be at least 1",
        ),
        (
            &["bench", "put", "--total", "5", "--duration", "1s"],
            "cannot be used with",
        ),
        (&["bench", "scan"], "invalid value 'scan'"),
        (&["bench", "put", "--duration", "5x"], "unknown unit"),
    ] {
        let run = ballot("127.0.0.1:1", args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn an_unreachable_endpoint_fails_fast_with_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let started = std::time::Instant::now();
    let run = ballot(
        &format!("127.0.0.1:{port}"),
        &["bench", "put", "--total", "10", "--dial-timeout", "1s"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot connect to http://127.0.0.1:{port}")),
        "{run:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
