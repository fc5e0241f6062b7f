//! The clients: concurrent workers doing reads, writes and compare-and-swaps on a few keys, each
//! pinned to one node, recording every operation's invoke and completion. Owns how an answer
//! becomes an outcome; never decides whether the history is right (that is `verdict.rs`).
//!
//! Rules that keep the history checkable:
//!
//! - Every written value is new (one counter for the run), so a read names the one operation
//!   that wrote what it saw.
//! - A client has at most one operation in flight. An operation whose result is not known (a
//!   timeout, a broken connection, an error that does not prove it was not applied) is
//!   indeterminate: the checker lets it take effect at any later time or never, so the client
//!   that sent it must not send anything else; it is retired and the worker continues with a
//!   new client id on a new connection.
//! - A key is retired after [`KEY_OPERATIONS_MAX`] operations and a fresh key takes its slot,
//!   so that each key's sub-history, which the checker searches alone, stays short.
//! - A client dials before it sends, so a node that is down costs no indeterminate operations.
//! - With `--groups G`, key k lives in group k mod G (named in each request's `ballot-group`
//!   metadata), so each key's history is one group's, and the checker needs no notion of groups.

use super::cluster::{dial, Cluster};
use super::history::{Kind, OperationRecord, Outcome, Recorder, FINAL_READ_WORKER};
use super::proxy::NodeIndex;
use super::rng::Rng;
use ballot_proto::etcdserverpb as pb;
use ballot_server::etcd::kv::GROUP_HEADER;
use ballot_server::etcd::status::{NOT_LEADER, NO_LEADER, TOO_MANY_REQUESTS};
use bytes::Bytes;
use pb::kv_client::KvClient;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// A client gives up on an operation after this long; the operation is indeterminate.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);
/// Operations on one key before it is retired for a fresh one.
pub const KEY_OPERATIONS_MAX: u64 = 200;
/// Pause after an operation the cluster refused, before the next.
const FAILURE_PAUSE: Duration = Duration::from_millis(100);
/// Pause before a worker dials again after failing to.
const REDIAL_PAUSE: Duration = Duration::from_millis(250);
/// How long the final read may keep trying (the cluster must be back by then).
pub const FINAL_READ_DEADLINE: Duration = Duration::from_secs(30);
/// Every key of a run lives under this prefix (the cluster is fresh, so nothing else does).
const KEY_PREFIX: &str = "ballot-check/";

/// Refusals that prove a write was not proposed: the node is not the leader, knows none, or
/// its queue was full; a follower could not even connect to the leader to forward it (`tcp
/// connect error`, hyper's words: no byte of the request left the follower); or the replica
/// refused the proposal at once (a leader not ready, a transfer or a membership change in
/// progress). Any other error leaves it indeterminate.
const NOT_PROPOSED_EXACT: [&str; 4] = [
    NOT_LEADER,
    NO_LEADER,
    TOO_MANY_REQUESTS,
    "tcp connect error",
];
const NOT_PROPOSED_PREFIXES: [&str; 3] = [
    "leader has not yet committed an entry in its term",
    "leadership transfer to ",
    "a membership change is already in progress",
];

pub fn key_name(key: u64) -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}k{key}"))
}

fn key_of(name: &[u8]) -> Option<u64> {
    std::str::from_utf8(name)
        .ok()?
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix('k')?
        .parse()
        .ok()
}

/// A value as stored (decimal text); one nobody could have written stands for garbage.
fn value_of(bytes: &[u8]) -> (u64, Option<String>) {
    match std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()) {
        Some(value) => (value, None),
        None => (
            u64::MAX,
            Some(format!(
                "unparsable value {:?}, recorded as {}",
                String::from_utf8_lossy(bytes),
                u64::MAX
            )),
        ),
    }
}

#[derive(Debug, Clone, Copy)]
struct KeySlot {
    key: u64,
    operations: u64,
}

/// State the workers share.
pub struct Workload {
    recorder: Arc<Recorder>,
    /// Groups the keys are spread over (1: every key in group 0).
    groups: u32,
    serializable: bool,
    /// Time between two operations of one client (`None`: back to back).
    interval: Option<Duration>,
    slots: Mutex<Vec<KeySlot>>,
    next_key: AtomicU64,
    next_value: AtomicU64,
    /// Last value any client saw or wrote per key: what a compare-and-swap expects.
    last_values: Mutex<HashMap<u64, Option<u64>>>,
    pub stop: AtomicBool,
}

impl Workload {
    pub fn new(
        recorder: Arc<Recorder>,
        keys: usize,
        groups: u32,
        serializable: bool,
        interval: Option<Duration>,
    ) -> Workload {
        let slots = (0..keys as u64)
            .map(|key| KeySlot { key, operations: 0 })
            .collect();
        assert!(groups >= 1, "a run has at least group 0");
        Workload {
            recorder,
            groups,
            serializable,
            interval,
            slots: Mutex::new(slots),
            next_key: AtomicU64::new(keys as u64),
            next_value: AtomicU64::new(1),
            last_values: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// The group key `key` lives in.
    pub fn group_of(&self, key: u64) -> u32 {
        (key % self.groups as u64) as u32
    }

    /// Every key handed out so far.
    pub fn keys_used(&self) -> BTreeSet<u64> {
        (0..self.next_key.load(Ordering::Relaxed)).collect()
    }

    fn take_key(&self, rng: &mut Rng) -> u64 {
        let mut slots = self.slots.lock().expect("slots lock");
        let slot = rng.index(slots.len());
        if slots[slot].operations >= KEY_OPERATIONS_MAX {
            slots[slot] = KeySlot {
                key: self.next_key.fetch_add(1, Ordering::Relaxed),
                operations: 0,
            };
        }
        slots[slot].operations += 1;
        slots[slot].key
    }

    fn choose(&self, rng: &mut Rng) -> (u64, Kind) {
        let key = self.take_key(rng);
        let roll = rng.below(10);
        let kind = if roll < 4 {
            Kind::Read
        } else if roll < 7 {
            Kind::Write {
                value: self.next_value.fetch_add(1, Ordering::Relaxed),
            }
        } else {
            let expected = self
                .last_values
                .lock()
                .expect("last values lock")
                .get(&key)
                .copied()
                .flatten();
            Kind::Cas {
                expected,
                new: self.next_value.fetch_add(1, Ordering::Relaxed),
            }
        };
        (key, kind)
    }

    fn saw(&self, key: u64, value: Option<u64>) {
        self.last_values
            .lock()
            .expect("last values lock")
            .insert(key, value);
    }
}

/// One worker: runs until `workload.stop`, one operation at a time, against `node` only.
pub async fn worker(
    workload: Arc<Workload>,
    cluster: Arc<Cluster>,
    worker: usize,
    node: NodeIndex,
    mut rng: Rng,
) {
    let recorder = workload.recorder.clone();
    let url = cluster.client_urls[node].clone();
    let node_name = cluster.name(node).to_string();
    let mut client: Option<(u64, KvClient<Channel>)> = None;
    let mut next_at = tokio::time::Instant::now();
    while !workload.stop.load(Ordering::Relaxed) {
        if let Some(interval) = workload.interval {
            // Keep to the rate without bursting to catch up after a slow operation.
            let now = tokio::time::Instant::now();
            next_at = if next_at + interval < now {
                now
            } else {
                next_at + interval
            };
            tokio::time::sleep_until(next_at).await;
        }
        let Some((client_id, kv)) = client.as_mut() else {
            match dial(&url).await {
                Ok(channel) => client = Some((recorder.new_client_id(), KvClient::new(channel))),
                Err(_) => tokio::time::sleep(REDIAL_PAUSE).await,
            }
            continue;
        };
        let (key, kind) = workload.choose(&mut rng);
        let id = recorder.new_operation_id();
        let invoke_ns = recorder.now_ns();
        let answer = tokio::time::timeout(
            OPERATION_TIMEOUT,
            perform(kv, workload.group_of(key), key, kind, workload.serializable),
        )
        .await;
        let end_ns = recorder.now_ns();
        let broken = matches!(&answer, Ok(Err(status)) if is_transport_failure(status));
        let (outcome, error) = match answer {
            Ok(Ok((outcome, note))) => (outcome, note),
            Ok(Err(status)) => (outcome_of_error(kind, &status), Some(describe(&status))),
            Err(_) => (
                Outcome::Unknown,
                Some(format!("no answer within {OPERATION_TIMEOUT:?}")),
            ),
        };
        match outcome {
            Outcome::Read { value } => workload.saw(key, value),
            Outcome::Written | Outcome::Swapped => workload.saw(
                key,
                match kind {
                    Kind::Write { value } => Some(value),
                    Kind::Cas { new, .. } => Some(new),
                    Kind::Read => None,
                },
            ),
            _ => {}
        }
        let (complete_ns, abandoned_ns) = match outcome {
            Outcome::Unknown => (None, Some(end_ns)),
            _ => (Some(end_ns), None),
        };
        recorder.operation(OperationRecord {
            id,
            worker,
            client: *client_id,
            node: node_name.clone(),
            key,
            kind,
            invoke_ns,
            complete_ns,
            abandoned_ns,
            outcome,
            error,
        });
        if outcome == Outcome::Unknown || broken {
            client = None; // retired: a new client id on a new connection
        } else if outcome == Outcome::Failed {
            // A node without a leader refuses at once; do not spin on it.
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
    }
}

/// `message` addressed to `group` (no metadata for group 0, as an etcd client sends it).
fn in_group<T>(group: u32, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if group != 0 {
        request
            .metadata_mut()
            .insert(GROUP_HEADER, tonic::metadata::MetadataValue::from(group));
    }
    request
}

async fn perform(
    kv: &mut KvClient<Channel>,
    group: u32,
    key: u64,
    kind: Kind,
    serializable: bool,
) -> Result<(Outcome, Option<String>), tonic::Status> {
    match kind {
        Kind::Read => {
            let response = kv
                .range(in_group(
                    group,
                    pb::RangeRequest {
                        key: key_name(key),
                        serializable,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            Ok(match response.kvs.first() {
                None => (Outcome::Read { value: None }, None),
                Some(found) => {
                    let (value, note) = value_of(&found.value);
                    (Outcome::Read { value: Some(value) }, note)
                }
            })
        }
        Kind::Write { value } => {
            kv.put(in_group(
                group,
                pb::PutRequest {
                    key: key_name(key),
                    value: Bytes::from(value.to_string()),
                    ..Default::default()
                },
            ))
            .await?;
            Ok((Outcome::Written, None))
        }
        Kind::Cas { expected, new } => {
            let response = kv
                .txn(in_group(group, cas_request(key, expected, new)))
                .await?
                .into_inner();
            let outcome = if response.succeeded {
                Outcome::Swapped
            } else {
                Outcome::NotSwapped
            };
            Ok((outcome, None))
        }
    }
}

/// `if value(key) == expected then put(key, new)`; an absent key is "version 0" (etcd compares
/// a missing key as the zero key-value, whose value compare is always false).
fn cas_request(key: u64, expected: Option<u64>, new: u64) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (target, union) = match expected {
        Some(value) => (
            CompareTarget::Value,
            TargetUnion::Value(Bytes::from(value.to_string())),
        ),
        None => (CompareTarget::Version, TargetUnion::Version(0)),
    };
    pb::TxnRequest {
        compare: vec![pb::Compare {
            key: key_name(key),
            result: CompareResult::Equal as i32,
            target: target as i32,
            target_union: Some(union),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key_name(key),
                value: Bytes::from(new.to_string()),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

/// A failed read changes nothing; a failed write is definitely not applied only when the
/// server refused it before proposing it.
pub fn outcome_of_error(kind: Kind, status: &tonic::Status) -> Outcome {
    if kind == Kind::Read || was_not_proposed(status) {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

fn was_not_proposed(status: &tonic::Status) -> bool {
    if is_transport_failure(status) {
        return false;
    }
    let message = status.message();
    status.code() == Code::InvalidArgument
        || NOT_PROPOSED_EXACT.contains(&message)
        || NOT_PROPOSED_PREFIXES
            .iter()
            .any(|prefix| message.starts_with(prefix))
}

/// A status tonic made from a broken connection rather than one the server sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

fn describe(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}

/// After the heal: one linearizable read of every key (one range over the prefix per group),
/// each from the first node that answers, retried until [`FINAL_READ_DEADLINE`]. Recorded as
/// one read per key with its range's interval. Returns the nodes that answered (one per
/// group), or why some group's read was served by none.
pub async fn final_read(
    workload: &Workload,
    cluster: &Cluster,
) -> Result<(Vec<String>, BTreeMap<u64, Option<u64>>), String> {
    let deadline = tokio::time::Instant::now() + FINAL_READ_DEADLINE;
    let mut nodes = Vec::new();
    let mut values = BTreeMap::new();
    for group in 0..workload.groups {
        let (node, read) = final_read_of_group(workload, cluster, group, deadline)
            .await
            .map_err(|error| match workload.groups {
                1 => error,
                _ => format!("group {group}: {error}"),
            })?;
        nodes.push(node);
        values.extend(read);
    }
    Ok((nodes, values))
}

async fn final_read_of_group(
    workload: &Workload,
    cluster: &Cluster,
    group: u32,
    deadline: tokio::time::Instant,
) -> Result<(String, BTreeMap<u64, Option<u64>>), String> {
    let recorder = &workload.recorder;
    let mut errors = Vec::new();
    for attempt in 0.. {
        let node = attempt % cluster.len();
        if tokio::time::Instant::now() > deadline {
            errors.dedup();
            return Err(format!(
                "no node served a linearizable read within {FINAL_READ_DEADLINE:?} after the heal: {}",
                errors.join("; ")
            ));
        }
        let channel = match dial(&cluster.client_urls[node]).await {
            Ok(channel) => channel,
            Err(error) => {
                errors.push(format!("{}: {error}", cluster.name(node)));
                tokio::time::sleep(REDIAL_PAUSE).await;
                continue;
            }
        };
        let request = pb::RangeRequest {
            key: Bytes::from(KEY_PREFIX),
            range_end: ballot_storage::mvcc::types::prefix_end(KEY_PREFIX.as_bytes()),
            ..Default::default()
        };
        let invoke_ns = recorder.now_ns();
        let answer = tokio::time::timeout(
            OPERATION_TIMEOUT,
            KvClient::new(channel).range(in_group(group, request)),
        )
        .await;
        let complete_ns = recorder.now_ns();
        let response = match answer {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                errors.push(format!("{}: {}", cluster.name(node), describe(&status)));
                tokio::time::sleep(REDIAL_PAUSE).await;
                continue;
            }
            Err(_) => {
                errors.push(format!("{}: no answer", cluster.name(node)));
                continue;
            }
        };
        let mut values: BTreeMap<u64, Option<u64>> = workload
            .keys_used()
            .into_iter()
            .filter(|&key| workload.group_of(key) == group)
            .map(|k| (k, None))
            .collect();
        let mut notes: HashMap<u64, String> = HashMap::new();
        for found in &response.kvs {
            if let Some(key) = key_of(&found.key) {
                if workload.group_of(key) != group {
                    // Each group's keyspace is its own: a write went to the wrong group.
                    recorder.incident(
                        cluster.name(node),
                        &format!(
                            "k{key} (group {}'s) was found in group {group}'s keyspace",
                            workload.group_of(key)
                        ),
                    );
                    continue;
                }
                let (value, note) = value_of(&found.value);
                values.insert(key, Some(value));
                if let Some(note) = note {
                    notes.insert(key, note);
                }
            }
        }
        let client = recorder.new_client_id();
        for (&key, &value) in &values {
            recorder.operation(OperationRecord {
                id: recorder.new_operation_id(),
                worker: FINAL_READ_WORKER,
                client,
                node: cluster.name(node).to_string(),
                key,
                kind: Kind::Read,
                invoke_ns,
                complete_ns: Some(complete_ns),
                abandoned_ns: None,
                outcome: Outcome::Read { value },
                error: notes.remove(&key),
            });
        }
        return Ok((cluster.name(node).to_string(), values));
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        assert_eq!(key_of(&key_name(42)), Some(42));
        assert_eq!(key_of(b"other/k1"), None);
        assert_eq!(value_of(b"17"), (17, None));
        assert_eq!(value_of(b"x").0, u64::MAX);
    }

    #[test]
    fn only_refusals_before_proposing_make_a_write_fail() {
        let write = Kind::Write { value: 1 };
        let not_leader = tonic::Status::failed_precondition(NOT_LEADER);
        let transfer = tonic::Status::unavailable("leadership transfer to n3 in progress");
        let timeout = tonic::Status::unavailable("etcdserver: request timed out");
        let changed = tonic::Status::unavailable("etcdserver: leader changed");
        assert_eq!(outcome_of_error(write, &not_leader), Outcome::Failed);
        assert_eq!(outcome_of_error(write, &transfer), Outcome::Failed);
        let forward_refused = tonic::Status::unavailable("tcp connect error");
        assert_eq!(outcome_of_error(write, &forward_refused), Outcome::Failed);
        assert_eq!(outcome_of_error(write, &timeout), Outcome::Unknown);
        assert_eq!(outcome_of_error(write, &changed), Outcome::Unknown);
        assert_eq!(outcome_of_error(Kind::Read, &timeout), Outcome::Failed);
    }

    #[test]
    fn keys_are_retired_after_their_operations() {
        let recorder = Arc::new(Recorder::new(super::super::history::Clock::start()));
        let workload = Workload::new(recorder, 1, 1, false, None);
        let mut rng = Rng::new(1);
        let keys: Vec<u64> = (0..2 * KEY_OPERATIONS_MAX + 1)
            .map(|_| workload.take_key(&mut rng))
            .collect();
        assert_eq!(keys[0], 0);
        assert_eq!(keys[KEY_OPERATIONS_MAX as usize], 1);
        assert_eq!(keys[2 * KEY_OPERATIONS_MAX as usize], 2);
        assert_eq!(workload.keys_used(), [0, 1, 2].into_iter().collect());
    }
}
