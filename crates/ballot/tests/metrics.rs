//! `/metrics` of a real three-node cluster as Prometheus scrapes it: the leader reports a term,
//! WAL fsync latencies and a round-trip histogram for each of its two peers.

use ballot::dev_cluster::RunningCluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics port answers");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the first sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn the_leader_reports_fsync_latency_and_round_trips_to_each_peer() {
    let dir = std::env::temp_dir().join(format!("ballot-metrics-{}", std::process::id()));
    let cluster = RunningCluster::start(env!("CARGO_BIN_EXE_ballot").as_ref(), 3, &dir, true)
        .expect("cluster starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader_metrics = loop {
        // Heartbeats go out every 100 ms: give the leader a few answers from each peer.
        std::thread::sleep(Duration::from_millis(500));
        let leader = cluster.plan.nodes.iter().find_map(|node| {
            let text = scrape(node.metrics_port);
            (sample(&text, "ballot_raft_is_leader") == Some(1.0)).then_some(text)
        });
        if let Some(text) = leader {
            let peers = text
                .lines()
                .filter(|l| l.starts_with("ballot_peer_round_trip_seconds_count{to=\""))
                .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) > Some(0))
                .count();
            if peers == 2 {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "no leader with two timed peers");
    };
    assert!(sample(&leader_metrics, "ballot_raft_term").unwrap() >= 1.0);
    assert!(sample(&leader_metrics, "ballot_wal_fsync_duration_seconds_count").unwrap() >= 1.0);
    for name in [
        "ballot_log_compaction_index",
        "ballot_snapshot_images_built_total",
        "ballot_snapshot_images_installed_total",
        "ballot_peer_direct_writes_total",
    ] {
        assert!(
            sample(&leader_metrics, name).is_some(),
            "{name} is exported"
        );
    }
    let inf = sample(
        &leader_metrics,
        "ballot_peer_round_trip_seconds_bucket{to=\"",
    );
    assert!(inf.is_some(), "buckets carry the peer label");
    // Loopback round trips are far below a second: the 1 s bucket holds every sample.
    for line in leader_metrics.lines().filter(|l| {
        l.starts_with("ballot_peer_round_trip_seconds_bucket") && l.contains("le=\"1\"")
    }) {
        let peer = line
            .split("to=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let count = sample(
            &leader_metrics,
            &format!("ballot_peer_round_trip_seconds_count{{to=\"{peer}\"}}"),
        )
        .unwrap();
        let within_a_second: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(within_a_second, count, "{line}");
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
