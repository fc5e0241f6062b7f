//! The native HTTP/JSON key API of real `ballot server` processes: writes through any member,
//! the three read levels, strict argument errors, and what each level does when the member asked
//! has lost its quorum (stale still answers; default and consistent refuse).

use ballot::dev_cluster::RunningCluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Reply {
    status: u16,
    head: String,
    body: serde_json::Value,
}

fn http(port: u16, method: &str, target: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("http port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        head: head.to_string(),
        body,
    }
}

/// A 3-node cluster of `ballot server` processes, stopped on drop; its directory is removed
/// unless the test failed.
struct Cluster {
    running: RunningCluster,
    dir: std::path::PathBuf,
}

impl Cluster {
    fn start(test: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("ballot-native-{test}-{}", std::process::id()));
        let running = RunningCluster::start(env!("CARGO_BIN_EXE_ballot").as_ref(), 3, &dir, true)
            .expect("cluster starts");
        Cluster { running, dir }
    }
}

impl std::ops::Deref for Cluster {
    type Target = RunningCluster;
    fn deref(&self) -> &RunningCluster {
        &self.running
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut RunningCluster {
        &mut self.running
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.running.stop();
        if std::thread::panicking() {
            eprintln!("cluster data and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_leader(port: u16) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines().any(|l| l == "ballot_raft_is_leader 1")
}

#[test]
fn read_levels_writes_and_errors_over_http() {
    let mut cluster = Cluster::start("levels");
    let nodes = cluster.plan.nodes.clone();
    let leader = nodes
        .iter()
        .position(|n| is_leader(n.metrics_port))
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let port = nodes[follower].metrics_port;

    // A write through a follower is forwarded to the leader.
    let put = http(port, "PUT", "/v1/kv/greeting", b"hello");
    assert_eq!(put.status, 200, "{:?}", put.body);
    let revision = put.body["revision"].as_i64().unwrap();
    assert!(revision >= 2, "{:?}", put.body);

    for level in ["consistent", "default"] {
        let got = http(port, "GET", &format!("/v1/kv/greeting?level={level}"), b"");
        assert_eq!(got.status, 200, "{level}: {:?}", got.body);
        assert_eq!(got.body["kvs"][0]["value"], "hello", "{level}");
        assert_eq!(got.body["level"], level);
        assert!(got.head.contains(&format!("x-ballot-read-level: {level}")));
        assert!(got.body["revision"].as_i64().unwrap() >= revision);
    }
    // A stale read answers from the follower's own store: it sees the write once applied there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = http(port, "GET", "/v1/kv/greeting?level=stale", b"");
        if got.status == 200 {
            assert_eq!(got.body["kvs"][0]["mod_revision"].as_i64(), Some(revision));
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {:?}", got.body);
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = http(port, "GET", "/v1/kv/gree?prefix&level=consistent", b"");
    assert_eq!(listed.body["kvs"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["kvs"][0]["key"], "greeting");

    // Bad input is named, and nothing is written.
    let bad = http(port, "GET", "/v1/kv/greeting?level=fast", b"");
    assert_eq!(bad.status, 400);
    assert!(bad.body["error"]
        .as_str()
        .unwrap()
        .contains("stale, default or consistent"));
    assert_eq!(
        http(port, "GET", "/v1/kv/absent?level=consistent", b"").status,
        404
    );
    assert_eq!(http(port, "PATCH", "/v1/kv/greeting", b"x").status, 405);
    assert_eq!(http(port, "GET", "/v1/kv/?level=stale", b"").status, 400);

    // The follower alone: its store still answers stale reads, but no leader can vouch for
    // anything fresher.
    cluster.kill(&nodes[leader].name);
    cluster.kill(&nodes[other].name);
    let stale = http(port, "GET", "/v1/kv/greeting?level=stale", b"");
    assert_eq!(stale.status, 200, "{:?}", stale.body);
    assert_eq!(stale.body["kvs"][0]["value"], "hello");
    for level in ["default", "consistent"] {
        let refused = http(port, "GET", &format!("/v1/kv/greeting?level={level}"), b"");
        assert!(
            refused.status == 503 || refused.status == 504,
            "{level} without a quorum must refuse, got {} {:?}",
            refused.status,
            refused.body
        );
    }
}

#[test]
fn deletes_report_what_they_removed() {
    let cluster = Cluster::start("del");
    let port = cluster.plan.nodes[0].metrics_port;
    for key in ["a/1", "a/2", "b"] {
        assert_eq!(
            http(port, "PUT", &format!("/v1/kv/{key}"), b"v").status,
            200
        );
    }
    let deleted = http(port, "DELETE", "/v1/kv/a%2F?prefix", b"");
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["deleted"], 2);
    let left = http(port, "GET", "/v1/kv/a?prefix&level=consistent", b"");
    assert_eq!(left.body["kvs"].as_array().unwrap().len(), 0);
    assert_eq!(http(port, "GET", "/v1/kv/b", b"").status, 200);
}

#[test]
fn the_schedulers_records_are_read_as_json_lists() {
    let cluster = Cluster::start("sched");
    let port = cluster.plan.nodes[1].metrics_port;
    let run = br#"{"job":"j","slot":"000000000001","state":"queued"}"#;
    for (key, value) in [
        ("sched%2Fruns%2Fj%2F000000000001", &run[..]),
        ("sched%2Fruns%2Fk%2F000000000001", b"not json"),
        ("sched%2Fjobs%2Fj", br#"{"name":"j"}"#),
    ] {
        assert_eq!(
            http(port, "PUT", &format!("/v1/kv/{key}"), value).status,
            200
        );
    }
    let runs = http(port, "GET", "/v1/sched/runs/j", b"");
    assert_eq!(runs.status, 200, "{:?}", runs.body);
    assert_eq!(
        runs.body["runs"],
        serde_json::json!([{"job":"j","slot":"000000000001","state":"queued"}])
    );
    let all = http(port, "GET", "/v1/sched/runs", b"");
    assert_eq!(
        all.body["runs"][1], "not json",
        "a value that is not JSON comes as a string"
    );
    assert_eq!(
        http(port, "GET", "/v1/sched/jobs", b"").body["jobs"][0]["name"],
        "j"
    );
    assert_eq!(
        http(port, "GET", "/v1/sched/workers", b"").body["workers"],
        serde_json::json!([])
    );
    let unknown = http(port, "GET", "/v1/sched/cursors", b"");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["error"]
        .as_str()
        .unwrap()
        .contains("use jobs, workers, runs"));
    assert_eq!(http(port, "PUT", "/v1/sched/jobs", b"x").status, 405);
}

/// `ballot ARGS...`; its exit status and what it printed on stdout and stderr.
fn ballot(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ballot"))
        .args(args)
        .output()
        .expect("ballot runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn fenced_writes_apply_only_while_the_lock_is_held_with_their_token() {
    let cluster = Cluster::start("fence");
    let port = cluster.plan.nodes[1].metrics_port;
    let endpoints = format!("127.0.0.1:{}", cluster.plan.nodes[2].client_port);
    // Two contenders for lock "jobs", as the lock recipes write them: the first created holds.
    let holder = http(port, "PUT", "/v1/kv/jobs%2Fa", b"").body["revision"]
        .as_i64()
        .expect("the holder's revision");
    let waiter = http(port, "PUT", "/v1/kv/jobs%2Fb", b"").body["revision"]
        .as_i64()
        .expect("the waiter's revision");

    let fenced = |method: &str, key: &str, token: i64, value: &[u8]| {
        http(
            port,
            method,
            &format!("/v1/kv/{key}?fence=jobs:{token}"),
            value,
        )
    };
    let written = fenced("PUT", "out", holder, b"by the holder");
    assert_eq!(written.status, 200, "{:?}", written.body);
    let refused = fenced("PUT", "out", waiter, b"by the waiter");
    assert_eq!(refused.status, 412, "{:?}", refused.body);
    let message = refused.body["error"].as_str().unwrap();
    assert!(
        message.starts_with("ballot: the fence does not hold")
            && message.contains(&format!("held with token {holder}")),
        "{message}"
    );
    // Through gRPC metadata, from the CLI, on another member.
    let (ok, text) = ballot(&[
        "put",
        "out",
        "by the waiter",
        "--fence",
        &format!("jobs:{waiter}"),
        "--endpoints",
        &endpoints,
    ]);
    assert!(!ok && text.contains("the fence does not hold"), "{text}");

    // The holder leaves: its token no longer holds, the waiter's does.
    assert_eq!(http(port, "DELETE", "/v1/kv/jobs%2Fa", b"").status, 200);
    let refused = fenced("PUT", "out", holder, b"by the old holder");
    assert_eq!(refused.status, 412, "{:?}", refused.body);
    let message = refused.body["error"].as_str().unwrap();
    assert!(
        message.contains("no key under the lock has that token")
            && message.contains(&format!("held with token {waiter}")),
        "{message}"
    );
    let (ok, text) = ballot(&[
        "put",
        "out",
        "by the waiter",
        "--fence",
        &format!("jobs:{waiter}"),
        "--endpoints",
        &endpoints,
    ]);
    assert!(ok, "{text}");
    let refused = fenced("DELETE", "out", holder, b"");
    assert_eq!(refused.status, 412, "{:?}", refused.body);
    // A key re-created under the old holder's name has a new token: the old one stays dead.
    assert_eq!(http(port, "PUT", "/v1/kv/jobs%2Fa", b"").status, 200);
    assert_eq!(fenced("PUT", "out", holder, b"again").status, 412);

    // Only the writes whose fence held were applied.
    let out = http(port, "GET", "/v1/kv/out?level=consistent", b"");
    assert_eq!(
        out.body["kvs"][0]["value"], "by the waiter",
        "{:?}",
        out.body
    );
    assert_eq!(out.body["kvs"][0]["version"], 2, "{:?}", out.body);

    // Bad fences are refused before anything is proposed.
    for (fence, why) in [
        ("jobs", "not LOCKNAME:TOKEN"),
        ("jobs:0", "not a positive integer"),
        (":5", "names no lock"),
    ] {
        let bad = http(port, "PUT", &format!("/v1/kv/out?fence={fence}"), b"x");
        assert_eq!(bad.status, 400, "{fence}: {:?}", bad.body);
        assert!(
            bad.body["error"].as_str().unwrap().contains(why),
            "{fence}: {:?}",
            bad.body
        );
    }
    let (ok, text) = ballot(&[
        "put",
        "out",
        "x",
        "--fence",
        "jobs",
        "--endpoints",
        &endpoints,
    ]);
    assert!(!ok && text.contains("not LOCKNAME:TOKEN"), "{text}");
}

#[test]
fn sequential_keys_only_grow_are_never_reused_and_can_be_ephemeral() {
    let cluster = Cluster::start("seq");
    let port = cluster.plan.nodes[0].metrics_port;
    let endpoints = format!("127.0.0.1:{}", cluster.plan.nodes[1].client_port);
    let next = |query: &str| {
        let put = http(
            port,
            "PUT",
            &format!("/v1/kv/q%2Fitem-?sequential{query}"),
            b"v",
        );
        assert_eq!(put.status, 200, "{:?}", put.body);
        put.body["key"]
            .as_str()
            .expect("the created key")
            .to_string()
    };
    assert_eq!(next(""), "q/item-0000000001");
    assert_eq!(next(""), "q/item-0000000002");
    // A number is never given twice, even once its key is gone.
    assert_eq!(
        http(port, "DELETE", "/v1/kv/q%2Fitem-0000000002", b"").status,
        200
    );
    assert_eq!(next(""), "q/item-0000000003");

    // With a lease the key is ephemeral: it goes with the lease, the counter stays.
    let (ok, granted) = ballot(&["lease", "grant", "60", "--endpoints", &endpoints]);
    assert!(ok, "{granted}");
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease ID granted ...");
    let ephemeral = next(&format!("&lease={lease}"));
    assert_eq!(ephemeral, "q/item-0000000004");
    let (ok, revoked) = ballot(&["lease", "revoke", lease, "--endpoints", &endpoints]);
    assert!(ok, "{revoked}");
    let gone = http(
        port,
        "GET",
        "/v1/kv/q%2Fitem-0000000004?level=consistent",
        b"",
    );
    assert_eq!(gone.status, 404, "{:?}", gone.body);

    // Writers racing for one prefix each get a number of their own, and none is skipped.
    let writers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| {
                        let put = http(port, "PUT", "/v1/kv/q%2Fitem-?sequential", b"v");
                        assert_eq!(put.status, 200, "{:?}", put.body);
                        put.body["key"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut raced: Vec<String> = writers
        .into_iter()
        .flat_map(|writer| writer.join().expect("a writer"))
        .collect();
    raced.sort();
    let expected: Vec<String> = (5..45).map(|n| format!("q/item-{n:010}")).collect();
    assert_eq!(raced, expected);

    // From the CLI, which prints the key it created.
    let (ok, created) = ballot(&[
        "put",
        "--sequential",
        "q/item-",
        "v",
        "--endpoints",
        &endpoints,
    ]);
    assert!(ok, "{created}");
    assert_eq!(created, "q/item-0000000045\n");

    // The prefix's own key is the counter: anything else there is refused, nothing written.
    assert_eq!(
        http(port, "PUT", "/v1/kv/mine", b"not a number").status,
        200
    );
    let refused = http(port, "PUT", "/v1/kv/mine?sequential", b"v");
    assert_eq!(refused.status, 412, "{:?}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("not a sequence counter"),
        "{:?}",
        refused.body
    );
    let listed = http(port, "GET", "/v1/kv/mine?prefix&level=consistent", b"");
    assert_eq!(listed.body["kvs"].as_array().unwrap().len(), 1);
}
