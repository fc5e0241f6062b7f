//! `/metrics` (Prometheus text format), `/health` and the native key API ([`crate::native`]) over
//! plain HTTP/1.1. Small enough to write by hand: a few routes, one response per connection,
//! bounded head and body sizes.

use crate::native::{NativeApi, KV_PATH, SCHED_PATH};
use crate::node::{
    LatencySnapshot, NodeHandle, ETCD_DISK_BOUNDS_MICROS, ETCD_ROUND_TRIP_BOUNDS_MICROS,
};
use crate::transport::Transport;
use ballot_core::{GroupId, Role};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read before answering 400.
const REQUEST_BYTES_MAX: usize = 8192;

/// Serves until the task is dropped. Returns the bound address. With `native`, also serves the
/// HTTP/JSON key API under [`crate::native::KV_PATH`] (and the scheduler's records under
/// [`crate::native::SCHED_PATH`]), taking bodies up to `body_bytes_max`.
pub async fn serve(
    listen: SocketAddr,
    node: NodeHandle,
    transport: Arc<Transport>,
    native: Option<(Arc<NativeApi>, usize)>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            let transport = transport.clone();
            let native = native.clone();
            tokio::spawn(async move {
                answer(stream, &node, &transport, native.as_ref()).await;
            });
        }
    });
    Ok(local)
}

/// Reads one request and writes one response; the connection closes after it.
async fn answer(
    mut stream: TcpStream,
    node: &NodeHandle,
    transport: &Transport,
    native: Option<&(Arc<NativeApi>, usize)>,
) {
    let mut received = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if received.len() >= REQUEST_BYTES_MAX {
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"request head too long\n",
            )
            .await;
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let target = words.next().unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body): (&str, &str, Vec<u8>) = match path {
        "/metrics" => match GroupSelection::of_query(target.split_once('?').map(|(_, q)| q)) {
            Ok(groups) => (
                "200 OK",
                "text/plain; version=0.0.4",
                metrics(node, transport, &groups).into_bytes(),
            ),
            Err(error) => (
                "400 Bad Request",
                "text/plain",
                format!("{error}\n").into_bytes(),
            ),
        },
        "/health" => {
            let (status, content_type, body) = health(node);
            (status, content_type, body.into_bytes())
        }
        _ if (path.starts_with(KV_PATH) || path.starts_with(SCHED_PATH)) && native.is_some() => {
            let (api, body_bytes_max) = native.expect("checked above");
            let length = content_length(&head).unwrap_or(0);
            if length > *body_bytes_max {
                let message = format!(
                    "{{\"error\":\"etcdserver: request is too large ({length} bytes; the limit is {body_bytes_max})\"}}\n"
                );
                let _ = respond(
                    &mut stream,
                    "413 Payload Too Large",
                    "application/json",
                    message.as_bytes(),
                )
                .await;
                return;
            }
            let mut request_body = received[head_end..].to_vec();
            while request_body.len() < length {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request_body.extend_from_slice(&buf[..n]),
                }
            }
            request_body.truncate(length);
            let answer = api.handle(&method, &target, &request_body).await;
            let mut text = answer.body.to_string();
            text.push('\n');
            let mut extra = String::new();
            for (name, value) in &answer.headers {
                let _ = write!(extra, "{name}: {value}\r\n");
            }
            let _ = respond_with(
                &mut stream,
                answer.status,
                "application/json",
                &extra,
                text.as_bytes(),
            )
            .await;
            return;
        }
        _ => (
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics, /health or /v1/kv/<key>\n".to_vec(),
        ),
    };
    let _ = respond(&mut stream, status, content_type, &body).await;
}

fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    respond_with(stream, status, content_type, "", body).await
}

async fn respond_with(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await
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

/// Which groups get series of their own (`/metrics?groups=all` or `?groups=1,7`): none by
/// default, so that a node hosting a thousand groups still serves a readable page of node
/// aggregates.
#[derive(Debug, PartialEq)]
enum GroupSelection {
    None,
    All,
    Listed(Vec<GroupId>),
}

impl GroupSelection {
    fn of_query(query: Option<&str>) -> Result<GroupSelection, String> {
        let Some(value) = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("groups="))
        else {
            return Ok(GroupSelection::None);
        };
        if value == "all" {
            return Ok(GroupSelection::All);
        }
        value
            .split(',')
            .map(|id| {
                id.parse::<GroupId>().map_err(|_| {
                    format!(
                        "groups={value}: use groups=all or a comma list of group ids (as \
                         `ballot group list` prints them)"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(GroupSelection::Listed)
    }

    fn includes(&self, group: GroupId) -> bool {
        match self {
            GroupSelection::None => false,
            GroupSelection::All => true,
            GroupSelection::Listed(ids) => ids.contains(&group),
        }
    }
}

/// One series with its help and type lines, in Prometheus' text format.
fn metric(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Aggregates over the groups beyond 0 this node hosts, and the series of the selected ones.
fn group_metrics(out: &mut String, node: &NodeHandle, selection: &GroupSelection) {
    let hosted = node.hosted_groups();
    let mut aggregate =
        |name: &str, help: &str, kind: &str, value: u64| metric(out, name, help, kind, value);
    let count = |test: &dyn Fn(&crate::node::NodeStatus) -> bool| {
        hosted.iter().filter(|(_, status)| test(status)).count() as u64
    };
    aggregate(
        "ballot_groups_leading",
        "Groups beyond 0 whose replica on this node leads.",
        "gauge",
        count(&|status| status.role == Some(Role::Leader)),
    );
    aggregate(
        "ballot_groups_without_leader",
        "Groups beyond 0 whose replica on this node knows no leader.",
        "gauge",
        count(&|status| status.leader.is_none()),
    );
    aggregate(
        "ballot_groups_proposals_committed_total",
        "Client proposals applied by the groups beyond 0 this node leads, summed.",
        "counter",
        hosted
            .iter()
            .map(|(_, status)| status.proposals_committed)
            .sum(),
    );
    let selected: Vec<&(GroupId, crate::node::NodeStatus)> = hosted
        .iter()
        .filter(|(group, _)| selection.includes(*group))
        .collect();
    if selected.is_empty() {
        return;
    }
    type Field = fn(&crate::node::NodeStatus) -> u64;
    let series: [(&str, &str, &str, Field); 6] = [
        (
            "ballot_group_term",
            "The group's term as its replica here sees it.",
            "gauge",
            |s| s.term,
        ),
        (
            "ballot_group_is_leader",
            "1 if the group's replica here leads.",
            "gauge",
            |s| (s.role == Some(Role::Leader)) as u64,
        ),
        (
            "ballot_group_has_leader",
            "1 if the group's replica here knows a leader.",
            "gauge",
            |s| s.leader.is_some() as u64,
        ),
        (
            "ballot_group_commit_index",
            "The group's commit index here.",
            "gauge",
            |s| s.commit_index,
        ),
        (
            "ballot_group_applied_index",
            "The group's applied index here.",
            "gauge",
            |s| s.applied_index,
        ),
        (
            "ballot_group_proposals_committed_total",
            "Client proposals the group applied while its replica here led.",
            "counter",
            |s| s.proposals_committed,
        ),
    ];
    for (name, help, kind, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (group, status) in &selected {
            let _ = writeln!(out, "{name}{{group=\"{group}\"}} {}", field(status));
        }
    }
}

fn metrics(node: &NodeHandle, transport: &Transport, groups: &GroupSelection) -> String {
    let status = node.status();
    let mut out = String::new();
    let mut gauge =
        |name: &str, help: &str, kind: &str, value: u64| metric(&mut out, name, help, kind, value);
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
    gauge(
        "ballot_log_compaction_index",
        "Index the log was last compacted at (the state machine durable through it); 0 if never.",
        "gauge",
        status.compaction_index,
    );
    gauge(
        "ballot_snapshot_images_built_total",
        "Snapshot images built for followers whose next entry was compacted away.",
        "counter",
        status.snapshot_images_built,
    );
    gauge(
        "ballot_snapshot_images_installed_total",
        "Snapshot images installed from a leader.",
        "counter",
        status.snapshot_images_installed,
    );
    gauge(
        "ballot_peer_messages_unknown_group_total",
        "Peer messages of a replicated group this node does not host, dropped.",
        "counter",
        status.unknown_group_messages,
    );
    gauge(
        "ballot_groups",
        "Replicated groups this node hosts a replica of, group 0 included.",
        "gauge",
        status.groups_hosted,
    );
    gauge(
        "ballot_groups_hibernating",
        "Of those, the groups asleep: not ticked until a request, a message or node liveness wakes them.",
        "gauge",
        status.groups_asleep,
    );
    gauge(
        "ballot_node_liveness_peers_declared_down_total",
        "Times node liveness declared a peer down (nothing heard from it for an election timeout).",
        "counter",
        status.peers_declared_down,
    );
    let stats = &transport.stats;
    gauge(
        "ballot_peer_messages_sent_total",
        "Protocol messages written or queued to peers.",
        "counter",
        stats.messages_sent.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_messages_dropped_total",
        "Protocol messages dropped (peer queue full or unknown peer).",
        "counter",
        stats.messages_dropped.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_bytes_queued",
        "Bytes waiting in the peer queues (bounded per peer; beyond it messages are dropped).",
        "gauge",
        stats.bytes_queued.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_messages_received_total",
        "Protocol messages received from peers.",
        "counter",
        stats.messages_received.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_direct_writes_total",
        "Protocol messages the replica thread wrote to a peer socket itself (nothing was queued).",
        "counter",
        stats.direct_writes.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_socket_writes_total",
        "Writes to peer sockets, by the node loop itself or by a peer's writer task.",
        "counter",
        stats.socket_writes.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_frames_coalesced_total",
        "Probes no client waits on and liveness pings, held during a batch and sent together.",
        "counter",
        stats.frames_coalesced.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_peer_coalesced_sends_total",
        "Sends of held frames: one per peer per batch that held any.",
        "counter",
        stats.coalesced_sends.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_node_liveness_frames_sent_total",
        "Node liveness pings sent to peers (one per peer each heartbeat interval while any group exists).",
        "counter",
        stats.liveness_sent.load(Ordering::Relaxed),
    );
    gauge(
        "ballot_node_liveness_frames_received_total",
        "Node liveness pings received from peers.",
        "counter",
        stats.liveness_received.load(Ordering::Relaxed),
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
    group_metrics(&mut out, node, groups);
    etcd_metrics(&mut out, node, &status);
    out
}

/// etcd's main metrics, with etcd's names, types, labels, buckets and meanings, so that etcd's
/// published dashboards and alert rules work on ballot unchanged. (The `_total` gauges are
/// gauges in etcd too: committed and applied log indexes.)
fn etcd_metrics(out: &mut String, node: &NodeHandle, status: &crate::node::NodeStatus) {
    let mut metric = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        "gauge",
        status.leader.is_some() as u64,
    );
    metric(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        "gauge",
        (status.role == Some(Role::Leader)) as u64,
    );
    metric(
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        "counter",
        status.leader_changes,
    );
    metric(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        "gauge",
        status.commit_index,
    );
    metric(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        "gauge",
        status.applied_index,
    );
    metric(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        "gauge",
        status.proposals_pending,
    );
    metric(
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        "counter",
        status.proposals_failed,
    );
    let store = node.store();
    if let Ok(space) = store.space() {
        metric(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            space.file_bytes,
        );
        metric(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            space.live_bytes,
        );
    }
    if let Ok(keys) = store.key_count() {
        metric(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            "gauge",
            keys,
        );
    }
    histogram(
        out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &[("", &status.wal_sync.restricted_to(ETCD_DISK_BOUNDS_MICROS))],
    );
    histogram(
        out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &[(
            "",
            &node
                .backend_commit_latency()
                .restricted_to(ETCD_DISK_BOUNDS_MICROS),
        )],
    );
    let peers: Vec<(String, LatencySnapshot)> = status
        .peer_round_trips
        .iter()
        .map(|(peer, snapshot)| {
            (
                format!("To=\"{peer:x}\""),
                snapshot.restricted_to(ETCD_ROUND_TRIP_BOUNDS_MICROS),
            )
        })
        .collect();
    let peers: Vec<(&str, &LatencySnapshot)> =
        peers.iter().map(|(label, s)| (label.as_str(), s)).collect();
    histogram(
        out,
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        &peers,
    );
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
