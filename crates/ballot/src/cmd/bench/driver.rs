//! When operations are sent: connections, the clients' loops (closed or open loop), when the
//! run stops, and the preload of the key space. What an operation sends is [`super::ops`].
//!
//! Every client takes operation numbers from one shared counter, so `--total N` sends exactly N
//! operations and `--sequential-keys` writes each key once per pass, whatever the number of
//! clients. The hot path of a client touches one histogram of its own and three shared
//! atomic counters.

use super::args::{Plan, Stop};
use super::grpc::Connection;
use super::keys::SplitMix64;
use super::ops;
use super::ops::{Operations, Session};
use super::stats::{error_kind, timeout_kind, ClientStats, Live, Outcome};
use ballot_proto::etcdserverpb::{RangeRequest, RangeResponse};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// A closed-loop client that got an error waits this long before its next request, so an
/// unreachable server does not turn the bench into a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Opens `plan.conns` connections for the clients ([`Connection`]), connection i to endpoint i
/// modulo their number.
pub async fn connect(plan: &Plan) -> Result<Vec<Connection>, String> {
    let mut connections = Vec::with_capacity(plan.conns);
    for index in 0..plan.conns {
        let url = &plan.endpoints[index % plan.endpoints.len()];
        let connection = match tokio::time::timeout(plan.dial_timeout, Connection::dial(url)).await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(format!("cannot connect to {url}: {error}")),
            Err(_) => return Err(no_answer(url, plan)),
        };
        connections.push(connection);
    }
    Ok(connections)
}

/// Opens `plan.conns` tonic channels for the watchers (streams, which [`Connection`] does not
/// speak), channel i to endpoint i modulo their number.
pub async fn connect_channels(plan: &Plan) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(plan.conns);
    for index in 0..plan.conns {
        let url = &plan.endpoints[index % plan.endpoints.len()];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("invalid endpoint {url:?}: {e}"))?
            .connect_timeout(plan.dial_timeout)
            .tcp_nodelay(true);
        let channel = match tokio::time::timeout(plan.dial_timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(format!("cannot connect to {url}: {}", innermost(&error)))
            }
            Err(_) => return Err(no_answer(url, plan)),
        };
        channels.push(channel);
    }
    Ok(channels)
}

fn no_answer(url: &str, plan: &Plan) -> String {
    format!(
        "cannot connect to {url}: no answer within --dial-timeout {:?}",
        plan.dial_timeout
    )
}

/// The innermost cause ("Connection refused (os error 111)"): what a user can act on.
fn innermost(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

/// The state every client of one measured run shares.
pub struct Run {
    pub operations: Arc<Operations>,
    pub live: Arc<Live>,
    /// Set on Ctrl-C: every client stops after its current request.
    pub stop: AtomicBool,
    next_op: AtomicU64,
    start: Instant,
    end: Option<Instant>,
    total: Option<u64>,
    /// Seconds between two due operations (open loop); `None`: closed loop.
    interval_seconds: Option<f64>,
    command_timeout: Duration,
}

impl Run {
    pub fn new(plan: &Plan, operations: Arc<Operations>, start: Instant) -> Run {
        let (end, total) = match plan.stop {
            Stop::After(duration) => (Some(start + duration), None),
            Stop::Total(total) => (None, Some(total)),
        };
        Run {
            operations,
            live: Arc::default(),
            stop: AtomicBool::new(false),
            next_op: AtomicU64::new(0),
            start,
            end,
            total,
            interval_seconds: plan.rate.map(|rate| 1.0 / rate),
            command_timeout: plan.command_timeout,
        }
    }
}

/// Where latency of the next operation is measured from, or `None` when the run is over.
async fn next_start(run: &Run, op_number: u64) -> Option<Instant> {
    if run.stop.load(Ordering::Relaxed) || run.total.is_some_and(|total| op_number >= total) {
        return None;
    }
    let now = Instant::now();
    let Some(interval_seconds) = run.interval_seconds else {
        return match run.end {
            Some(end) if now >= end => None,
            _ => Some(now),
        };
    };
    let due = run.start + Duration::from_secs_f64(op_number as f64 * interval_seconds);
    if run.end.is_some_and(|end| due >= end) {
        return None;
    }
    if now >= due {
        // Every client was busy when this operation was due: the wait is the server's.
        return Some(due);
    }
    tokio::time::sleep_until(due.into()).await;
    // This client was idle: timer lateness is the bench's, not the server's.
    Some(Instant::now())
}

/// One client: operations until the run ends, with its own statistics.
pub async fn client(run: Arc<Run>, mut kv: Connection, index: usize) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut rng = SplitMix64::new(index as u64);
    let mut session = Session::default();
    loop {
        let op_number = run.next_op.fetch_add(1, Ordering::Relaxed);
        let Some(start) = next_start(&run, op_number).await else {
            break;
        };
        let request = run
            .operations
            .run(&mut kv, op_number, &mut rng, &mut session);
        let outcome = tokio::time::timeout(run.command_timeout, request).await;
        let latency = start.elapsed();
        let kind = match outcome {
            Ok(Ok(outcome)) => {
                stats.succeeded(latency, outcome);
                run.live.succeeded(latency);
                continue;
            }
            Ok(Err(status)) => error_kind(&status),
            Err(_) => timeout_kind(run.command_timeout),
        };
        stats.failed(kind);
        run.live.failed();
        if run.interval_seconds.is_none() {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    stats
}

/// Starts `plan.clients` clients, client i on connection i modulo their number (and with
/// `--groups N` on group 1 + i mod N), and merges their statistics when all are done.
pub async fn run_clients(plan: &Plan, run: &Arc<Run>, connections: &[Connection]) -> ClientStats {
    let tasks: Vec<_> = (0..plan.clients)
        .map(|index| {
            let mut connection = connections[index % connections.len()].clone();
            if plan.groups > 0 {
                connection = connection.in_group(1 + index as u32 % plan.groups);
            }
            tokio::spawn(client(Arc::clone(run), connection, index))
        })
        .collect();
    let mut merged = ClientStats::default();
    for task in tasks {
        let stats = task.await.expect("a bench client does not panic");
        merged.merge(&stats);
    }
    merged
}

/// Writes every key of the key space (in every group of `--groups`) unless a count (of the first
/// group's) shows they are all there already. Returns how many keys were written.
pub async fn preload(
    plan: &Plan,
    operations: &Arc<Operations>,
    connections: &[Connection],
) -> Result<u64, String> {
    let keys = &operations.keys;
    let (start, end) = keys.range();
    let count_request = RangeRequest {
        key: start,
        range_end: end,
        count_only: true,
        ..Default::default()
    };
    let groups = plan.groups.max(1) as u64;
    let in_group = |connection: &Connection, slot: u64| match plan.groups {
        0 => connection.clone(),
        _ => connection.clone().in_group(1 + slot as u32),
    };
    let present = in_group(&connections[0], 0)
        .unary::<_, RangeResponse>(ops::RANGE, &count_request)
        .await
        .map_err(|status| format!("preload: cannot count the keys: {}", error_kind(&status)))?
        .count;
    if present as u64 >= keys.size() {
        return Ok(0);
    }
    let next = Arc::new(AtomicU64::new(0));
    let writers = plan.clients.max(16).min((keys.size() * groups) as usize);
    let tasks: Vec<_> = (0..writers)
        .map(|index| {
            // One connection per group in use: a writer's puts go to whichever group comes.
            let kvs: Vec<Connection> = (0..groups)
                .map(|slot| in_group(&connections[index % connections.len()], slot))
                .collect();
            let operations = Arc::clone(operations);
            let next = Arc::clone(&next);
            let timeout = plan.command_timeout;
            tokio::spawn(async move {
                let mut kvs = kvs;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let size = operations.keys.size();
                    if index >= size * groups {
                        return Ok(());
                    }
                    let key = operations.keys.key(index % size);
                    let kv = &mut kvs[(index / size) as usize];
                    let put = operations.put(kv, key, operations.value.clone());
                    match tokio::time::timeout(timeout, put).await {
                        Ok(Ok(Outcome::Put)) => {}
                        Ok(Ok(other)) => unreachable!("a put answered {other:?}"),
                        Ok(Err(status)) => return Err(error_kind(&status)),
                        Err(_) => return Err(timeout_kind(timeout)),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("a preload writer does not panic")
            .map_err(|kind| format!("preload: a put failed: {kind}"))?;
    }
    Ok(keys.size() * groups)
}
