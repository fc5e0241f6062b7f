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
    let dir = std::env::temp_dir().join(format!("ballot-native-{}", std::process::id()));
    let mut cluster = RunningCluster::start(env!("CARGO_BIN_EXE_ballot").as_ref(), 3, &dir, true)
        .expect("cluster starts");
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
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deletes_report_what_they_removed() {
    let dir = std::env::temp_dir().join(format!("ballot-native-del-{}", std::process::id()));
    let cluster = RunningCluster::start(env!("CARGO_BIN_EXE_ballot").as_ref(), 3, &dir, true)
        .expect("cluster starts");
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
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
