//! `/metrics` (Prometheus text format) and `/health` over plain HTTP/1.1. Small enough to write
//! by hand: two GET routes, one response per connection, bounded request size.

use crate::node::{LatencySnapshot, NodeHandle};
use crate::transport::Transport;
use ballot_core::Role;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request head read before answering 400.
const REQUEST_BYTES_MAX: usize = 8192;

/// Serves until the task is dropped. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    node: NodeHandle,
    transport: Arc<Transport>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            let transport = transport.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&head);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, content_type, body) = match path {
                    "/metrics" => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        metrics(&node, &transport),
                    ),
                    "/health" => health(&node),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "not found: try /metrics or /health\n".into(),
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(local)
}

/// etcd's `/health` shape: healthy when this node knows a leader and can reach it for what only
/// the leader serves (the leader's client URL has been published).
fn health(node: &NodeHandle) -> (&'static str, &'static str, String) {
    let status = node.status();
    let reason = match status.leader {
        None => "no leader",
        Some(leader) => {
            let reachable = status
                .members
                .iter()
                .any(|m| m.id == leader && !m.client_urls.is_empty());
            if reachable {
                return (
                    "200 OK",
                    "application/json",
                    "{\"health\":\"true\",\"reason\":\"\"}\n".into(),
                );
            }
            "the leader has not published its client URLs yet"
        }
    };
    let body = format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}\n");
    ("503 Service Unavailable", "application/json", body)
}

fn metrics(node: &NodeHandle, transport: &Transport) -> String {
    let status = node.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "ballot_raft_term",
        "Current Raft term.",
        "gauge",
        status.term,
    );
    gauge(
        "ballot_raft_is_leader",
        "1 if this node is the leader.",
        "gauge",
        (status.role == Some(Role::Leader)) as u64,
    );
    gauge(
        "ballot_raft_has_leader",
        "1 if this node knows a leader.",
        "gauge",
        status.leader.is_some() as u64,
    );
    gauge(
        "ballot_raft_leader_changes_total",
        "Leader changes seen by this node.",
        "counter",
        status.leader_changes,
    );
    gauge(
        "ballot_raft_commit_index",
        "Highest log index known committed.",
        "gauge",
        status.commit_index,
    );
    gauge(
        "ballot_raft_applied_index",
        "Highest log index applied to the state machine.",
        "gauge",
        status.applied_index,
    );
    gauge(
        "ballot_raft_apply_lag_entries",
        "Committed entries not yet applied.",
        "gauge",
        status.commit_index.saturating_sub(status.applied_index),
    );
    gauge(
        "ballot_proposals_committed_total",
        "Proposals committed and applied.",
        "counter",
        status.proposals_committed,
    );
    gauge(
        "ballot_proposals_failed_total",
        "Proposals lost or refused when applied.",
        "counter",
        status.proposals_failed,
    );
    let stats = &transport.stats;
    gauge(
        "ballot_peer_messages_sent_total",
        "Raft messages queued to peers.",
        "counter",
        stats.messages_sent.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_messages_dropped_total",
        "Raft messages dropped (peer queue full or unknown peer).",
        "counter",
        stats.messages_dropped.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_messages_received_total",
        "Raft messages received from peers.",
        "counter",
        stats.messages_received.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_bytes_sent_total",
        "Bytes written to peer connections.",
        "counter",
        stats.bytes_sent.load(Ordering::Relaxed),
    );
    histogram(
        &mut out,
        "ballot_wal_fsync_duration_seconds",
        "WAL fdatasync latency.",
        &[("", &status.wal_sync)],
    );
    let peers: Vec<(String, &LatencySnapshot)> = status
        .peer_round_trips
        .iter()
        .map(|(peer, snapshot)| (format!("to=\"{peer:x}\""), snapshot))
        .collect();
    let peers: Vec<(&str, &LatencySnapshot)> = peers
        .iter()
        .map(|(label, s)| (label.as_str(), *s))
        .collect();
    histogram(
        &mut out,
        "ballot_peer_round_trip_seconds",
        "Heartbeat to answer time per peer (member id in hex), while this node leads.",
        &peers,
    );
    out
}

/// One Prometheus histogram family; `series` pairs a label set (`a="b"`, or empty) with its data.
fn histogram(out: &mut String, name: &str, help: &str, series: &[(&str, &LatencySnapshot)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, snapshot) in series {
        let with = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("{{{extra}}}"),
            (false, true) => format!("{{{labels}}}"),
            (false, false) => format!("{{{labels},{extra}}}"),
        };
        for (bound, count) in &snapshot.buckets {
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1e6)
            };
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                with(&format!("le=\"{le}\""))
            );
        }
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            with(""),
            snapshot.sum_micros as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{} {}", with(""), snapshot.count);
    }
}
