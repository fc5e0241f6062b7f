//! Simulated clients and the history they record for the linearizability checker.
//!
//! It owns the clients' behaviour (Jepsen style): each client has at most one operation
//! outstanding; it talks directly to one node (as if co-located with it), follows `NotLeader`
//! hints, retries retryable errors after a short backoff, and rotates to a random node when there
//! is no hint. A write is decided by the first application, on any node, of the index it was
//! proposed at: the same term means it took effect (with the state machine's result), another term
//! means it definitely failed, and so does the first application of an entry of a later term at
//! a lower index (terms never go down along a log). A read is decided when its read state is served. An operation
//! outstanding for `op_timeout_ticks` becomes `Unknown` (or `Failed` if it was never proposed
//! anywhere), and a client with an `Unknown` operation is retired and replaced by a fresh client
//! id: a process with an indeterminate operation never issues another.
//!
//! It never inspects a replica beyond the `Replica` calls a real client library could make (plus
//! the simulator's record of which index got which term), and never changes a node's state
//! except by proposing and reading.

use crate::checkers::StateMachineSafety;
use crate::kv::{ApplyResult, Command, KvStore};
use crate::linearizability::{OpKind, Operation, Outcome, Value};
use crate::node::Node;
use crate::trace::Trace;
use crate::trace_event;
use ballot_core::{
    LogIndex, LogPosition, NodeId, ReadMode, ReadState, Replica, ReplicaError, Term,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Ticks a client waits between operations, at most.
const THINK_TICKS_MAX: u64 = 4;
/// Ticks a client waits before retrying after a retryable error, at most.
const BACKOFF_TICKS_MAX: u64 = 3;
/// Chance that a client starts an operation at a random node instead of the one it last used
/// (as behind a load balancer), so that every node sees requests, not only the leader.
const RANDOM_NODE_PROBABILITY: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Send (again) at this tick.
    Retry { at: u64 },
    /// Proposed; waiting for the index to be applied somewhere.
    Proposed { position: LogPosition },
    /// Read barrier started on `node`; waiting for its read state.
    Reading { node: NodeId, request_id: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Index of the operation in the history.
    op: usize,
    stage: Stage,
    /// Whether any replica accepted the proposal (if not, a timeout is a definite failure).
    proposed: bool,
}

#[derive(Debug, Clone)]
struct Client {
    id: u64,
    target: NodeId,
    /// Per key: the value this client last saw (read or wrote), if it saw one.
    last_seen: Vec<Option<Option<Value>>>,
    next_at: u64,
    pending: Option<Pending>,
}

/// Counts of what the recorded history says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub invoked: u64,
    /// Successful writes and compare-and-swaps, and reads that returned.
    pub committed: u64,
    pub failed: u64,
    pub unknown: u64,
}

pub struct Clients {
    clients: Vec<Client>,
    next_client_id: u64,
    next_request_id: u64,
    history: Vec<Operation>,
    /// Parallel to `history`: the operation was ended by the client's timeout.
    timed_out: Vec<bool>,
    rng: ChaCha8Rng,
    node_count: usize,
    keys: u64,
    op_timeout_ticks: u64,
    /// Whether idle clients start new operations.
    pub invoking: bool,
    probe_requested: bool,
    probe: Option<usize>,
    /// How trace lines name the clients' group: empty for group 0, `g3/` for group 3.
    group_prefix: String,
    /// Clients of a group other than 0 start nothing in every other window of
    /// `QUIET_WINDOW_TICKS` (shifted by the group), so the group goes quiet long enough to
    /// hibernate, and the faults of those windows reach it asleep.
    quiet_windows: Option<u64>,
}

/// Length of the alternating busy and quiet windows of a hibernating group's clients: many
/// election timeouts, so a quiet group falls asleep well inside one.
const QUIET_WINDOW_TICKS: u64 = 400;

impl Clients {
    pub fn new(
        count: usize,
        node_count: usize,
        keys: u64,
        op_timeout_ticks: u64,
        mut rng: ChaCha8Rng,
    ) -> Self {
        let clients = (0..count as u64)
            .map(|id| Client {
                id: id + 1,
                target: rng.random_range(1..=node_count as NodeId),
                last_seen: vec![None; keys as usize],
                next_at: rng.random_range(0..=THINK_TICKS_MAX),
                pending: None,
            })
            .collect();
        Self {
            clients,
            next_client_id: count as u64 + 1,
            next_request_id: 1,
            history: Vec::new(),
            timed_out: Vec::new(),
            rng,
            node_count,
            keys: keys.max(1),
            op_timeout_ticks,
            invoking: true,
            probe_requested: false,
            probe: None,
            group_prefix: String::new(),
            quiet_windows: None,
        }
    }

    /// Names the clients' group in trace lines (group 0's lines read as they always have).
    pub fn in_group(mut self, group: ballot_core::GroupId) -> Self {
        self.group_prefix = if group == 0 {
            String::new()
        } else {
            format!("g{group}/")
        };
        // Group 0 never hibernates: its clients keep the load of runs before groups.
        self.quiet_windows = (group != 0).then_some(group as u64 * QUIET_WINDOW_TICKS / 3);
        self
    }

    /// Whether `now` falls in one of this group's quiet windows.
    fn in_quiet_window(&self, now: u64) -> bool {
        self.quiet_windows
            .is_some_and(|shift| ((now + shift) / QUIET_WINDOW_TICKS) % 2 == 1)
    }

    pub fn history(&self) -> &[Operation] {
        &self.history
    }

    pub fn into_history(self) -> Vec<Operation> {
        self.history
    }

    pub fn outstanding(&self) -> usize {
        self.clients.iter().filter(|c| c.pending.is_some()).count()
    }

    pub fn counts(&self) -> OpCounts {
        let mut counts = OpCounts {
            invoked: self.history.len() as u64,
            ..OpCounts::default()
        };
        for op in &self.history {
            match op.outcome {
                Outcome::Failed => counts.failed += 1,
                Outcome::Unknown => counts.unknown += 1,
                _ => counts.committed += 1,
            }
        }
        counts
    }

    /// Operations invoked at or after `since` that did not get a definite answer (unknown, timed
    /// out, or still outstanding): the count and the first one's id.
    pub fn undecided_since(&self, since: u64) -> (usize, Option<u64>) {
        let mut undecided = self
            .history
            .iter()
            .zip(&self.timed_out)
            .filter(|(op, timed_out)| {
                op.invoke_time >= since && (op.outcome == Outcome::Unknown || **timed_out)
            });
        let first = undecided.next().map(|(op, _)| op.id);
        (first.map_or(0, |_| 1 + undecided.count()), first)
    }

    /// Ask for one more write, issued even while `invoking` is off: the liveness probe.
    pub fn request_probe(&mut self) {
        self.probe_requested = true;
    }

    /// The probe's outcome, once it has one.
    pub fn probe_outcome(&self) -> Option<Outcome> {
        let probe = self.probe?;
        let still_pending = self
            .clients
            .iter()
            .any(|c| c.pending.is_some_and(|p| p.op == probe));
        (!still_pending).then_some(self.history[probe].outcome)
    }

    /// Let every client act: start operations, send retries, time out.
    pub fn act<R: Replica>(
        &mut self,
        now: u64,
        nodes: &mut [Node<R>],
        applied: &StateMachineSafety,
        trace: &mut Trace,
    ) {
        for slot in 0..self.clients.len() {
            match self.clients[slot].pending {
                None => self.maybe_invoke(now, slot, nodes, applied, trace),
                Some(pending) => {
                    if now >= self.history[pending.op].invoke_time + self.op_timeout_ticks {
                        self.time_out(now, slot, pending, trace);
                    } else if let Stage::Retry { at } = pending.stage {
                        if now >= at {
                            self.attempt(now, slot, nodes, applied, trace);
                        }
                    }
                }
            }
        }
    }

    /// Index `index` was applied for the first time anywhere, with an entry of `term` carrying
    /// command `op_id` (if a command) whose result was `result`.
    pub fn on_first_apply(
        &mut self,
        now: u64,
        index: LogIndex,
        term: Term,
        op_id: Option<u64>,
        result: Option<ApplyResult>,
        trace: &mut Trace,
    ) {
        for slot in 0..self.clients.len() {
            let Some(pending) = self.clients[slot].pending else {
                continue;
            };
            let Stage::Proposed { position } = pending.stage else {
                continue;
            };
            if position.index != index {
                // A committed entry of a later term at a lower index: terms never go down along
                // a log, so the entry proposed can never be committed (as a real client hears
                // "leader changed" without waiting for its own index to be filled).
                if position.index > index && position.term < term {
                    self.complete(now, slot, Outcome::Failed, trace);
                }
                continue;
            }
            let ours = position.term == term && op_id == Some(self.history[pending.op].id);
            let outcome = match (ours, result) {
                (false, _) => Outcome::Failed,
                (true, Some(ApplyResult::Written)) => Outcome::Written,
                (true, Some(ApplyResult::Cas { swapped })) => Outcome::Cas { swapped },
                (true, None) => Outcome::Unknown,
            };
            self.complete(now, slot, outcome, trace);
        }
    }

    pub fn on_read_served(
        &mut self,
        now: u64,
        node: NodeId,
        read: ReadState,
        kv: &KvStore,
        trace: &mut Trace,
    ) {
        let Some(slot) = self.reading(node, read.request_id) else {
            return;
        };
        let key = self.history[self.clients[slot].pending.expect("reading").op].key;
        self.complete(now, slot, Outcome::Read { value: kv.get(key) }, trace);
    }

    pub fn on_read_dropped(&mut self, now: u64, node: NodeId, request_id: u64) {
        if let Some(slot) = self.reading(node, request_id) {
            self.retry_elsewhere(now, slot, None);
        }
    }

    /// `node` went down: reads waiting there are retried (a read has no effect, so retrying is
    /// safe); proposed writes keep waiting for their index to be decided.
    pub fn on_node_down(&mut self, now: u64, node: NodeId) {
        for slot in 0..self.clients.len() {
            if let Some(Pending {
                stage: Stage::Reading { node: at, .. },
                ..
            }) = self.clients[slot].pending
            {
                if at == node {
                    self.retry_elsewhere(now, slot, None);
                }
            }
        }
    }

    fn reading(&self, node: NodeId, request_id: u64) -> Option<usize> {
        self.clients.iter().position(|c| {
            matches!(c.pending, Some(Pending { stage: Stage::Reading { node: n, request_id: r }, .. }) if n == node && r == request_id)
        })
    }

    fn maybe_invoke<R: Replica>(
        &mut self,
        now: u64,
        slot: usize,
        nodes: &mut [Node<R>],
        applied: &StateMachineSafety,
        trace: &mut Trace,
    ) {
        let is_probe = self.probe_requested && self.probe.is_none() && slot == 0;
        let may_start = self.invoking && !self.in_quiet_window(now);
        if !(is_probe || (may_start && now >= self.clients[slot].next_at)) {
            return;
        }
        let id = self.history.len() as u64 + 1;
        if self.rng.random_bool(RANDOM_NODE_PROBABILITY) {
            self.clients[slot].target = self.rng.random_range(1..=self.node_count as NodeId);
        }
        let key = if is_probe {
            0
        } else {
            self.rng.random_range(0..self.keys)
        };
        let client = &self.clients[slot];
        let kind = match self.rng.random_range(0..100) {
            _ if is_probe => OpKind::Write { value: id },
            0..40 => OpKind::Read,
            40..75 => OpKind::Write { value: id },
            _ => OpKind::Cas {
                expected: client.last_seen[key as usize].flatten(),
                new: id,
            },
        };
        trace_event!(
            trace,
            now,
            "client {}c{} invokes op {id}: {kind:?} on key {key}",
            self.group_prefix,
            client.id
        );
        self.history.push(Operation {
            id,
            client: client.id,
            key,
            kind,
            invoke_time: now,
            complete_time: None,
            outcome: Outcome::Unknown,
        });
        self.timed_out.push(false);
        if is_probe {
            self.probe = Some(self.history.len() - 1);
        }
        self.clients[slot].pending = Some(Pending {
            op: self.history.len() - 1,
            stage: Stage::Retry { at: now },
            proposed: false,
        });
        self.attempt(now, slot, nodes, applied, trace);
    }

    fn attempt<R: Replica>(
        &mut self,
        now: u64,
        slot: usize,
        nodes: &mut [Node<R>],
        applied: &StateMachineSafety,
        trace: &mut Trace,
    ) {
        let client = &self.clients[slot];
        let mut pending = client.pending.expect("attempt needs an operation");
        let op = &self.history[pending.op];
        let target = client.target;
        let Some(replica) = nodes[target as usize - 1].replica.as_mut() else {
            self.retry_elsewhere(now, slot, None);
            return;
        };
        let error = match op.kind {
            OpKind::Read => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                let mode = if self.rng.random_bool(0.5) {
                    ReadMode::ReadIndex
                } else {
                    ReadMode::Lease
                };
                match replica.read(request_id, mode) {
                    Ok(()) => {
                        pending.stage = Stage::Reading {
                            node: target,
                            request_id,
                        };
                        self.clients[slot].pending = Some(pending);
                        return;
                    }
                    Err(error) => error,
                }
            }
            OpKind::Write { value } => {
                let command = Command::Put {
                    op_id: op.id,
                    key: op.key,
                    value,
                };
                match replica.propose(command.encode()) {
                    Ok(position) => {
                        return self.proposed(now, slot, pending, position, applied, trace)
                    }
                    Err(error) => error,
                }
            }
            OpKind::Cas { expected, new } => {
                let command = Command::Cas {
                    op_id: op.id,
                    key: op.key,
                    expected,
                    new,
                };
                match replica.propose(command.encode()) {
                    Ok(position) => {
                        return self.proposed(now, slot, pending, position, applied, trace)
                    }
                    Err(error) => error,
                }
            }
        };
        if error.is_retryable() || error == ReplicaError::Removed {
            self.retry_elsewhere(now, slot, error.leader_hint());
        } else {
            trace_event!(
                trace,
                now,
                "client {}c{} op {} refused by n{target}: {error}",
                self.group_prefix,
                client.id,
                op.id
            );
            self.complete(now, slot, Outcome::Failed, trace);
        }
    }

    fn proposed(
        &mut self,
        now: u64,
        slot: usize,
        mut pending: Pending,
        position: LogPosition,
        applied: &StateMachineSafety,
        trace: &mut Trace,
    ) {
        pending.proposed = true;
        pending.stage = Stage::Proposed { position };
        self.clients[slot].pending = Some(pending);
        trace_event!(
            trace,
            now,
            "client {}c{} op {} proposed at {position} on n{}",
            self.group_prefix,
            self.clients[slot].id,
            self.history[pending.op].id,
            self.clients[slot].target
        );
        // A stale leader can propose at an index a newer leader already committed, or after
        // an entry of a later term that one committed (so its entry can never be).
        if applied
            .applied_term(position.index)
            .is_some_and(|term| term != position.term)
            || applied
                .latest_applied_term_through(position.index)
                .is_some_and(|term| term > position.term)
        {
            self.complete(now, slot, Outcome::Failed, trace);
        }
    }

    /// Try again after a short backoff at `hint`, or at a random node when there is none.
    fn retry_elsewhere(&mut self, now: u64, slot: usize, hint: Option<NodeId>) {
        let node_count = self.node_count as NodeId;
        let target = match hint {
            Some(hint) if (1..=node_count).contains(&hint) => hint,
            _ => self.rng.random_range(1..=node_count),
        };
        let at = now + self.rng.random_range(1..=BACKOFF_TICKS_MAX);
        let client = &mut self.clients[slot];
        client.target = target;
        if let Some(pending) = client.pending.as_mut() {
            pending.stage = Stage::Retry { at };
        }
    }

    fn time_out(&mut self, now: u64, slot: usize, pending: Pending, trace: &mut Trace) {
        self.timed_out[pending.op] = true;
        if pending.proposed || self.history[pending.op].kind == OpKind::Read {
            trace_event!(
                trace,
                now,
                "client {}c{} op {} timed out: unknown; client retired",
                self.group_prefix,
                self.clients[slot].id,
                self.history[pending.op].id
            );
            self.clients[slot].pending = None;
            self.retire(now, slot);
        } else {
            self.complete(now, slot, Outcome::Failed, trace);
        }
    }

    fn retire(&mut self, now: u64, slot: usize) {
        let id = self.next_client_id;
        self.next_client_id += 1;
        let target = self.rng.random_range(1..=self.node_count as NodeId);
        let client = &mut self.clients[slot];
        client.id = id;
        client.target = target;
        client.last_seen.iter_mut().for_each(|seen| *seen = None);
        client.next_at = now + 1;
    }

    fn complete(&mut self, now: u64, slot: usize, outcome: Outcome, trace: &mut Trace) {
        let client = &mut self.clients[slot];
        let Some(pending) = client.pending.take() else {
            return;
        };
        let op = &mut self.history[pending.op];
        if outcome == Outcome::Unknown {
            trace_event!(
                trace,
                now,
                "client {}c{} op {} ends unknown; client retired",
                self.group_prefix,
                client.id,
                op.id
            );
            self.retire(now, slot);
            return;
        }
        op.complete_time = Some(now);
        op.outcome = outcome;
        let seen = match (op.kind, outcome) {
            (OpKind::Read, Outcome::Read { value }) => Some(value),
            (OpKind::Write { value }, Outcome::Written) => Some(Some(value)),
            (OpKind::Cas { new, .. }, Outcome::Cas { swapped: true }) => Some(Some(new)),
            _ => None,
        };
        if let Some(seen) = seen {
            client.last_seen[op.key as usize] = Some(seen);
        }
        trace_event!(
            trace,
            now,
            "client {}c{} op {} completes: {outcome:?}",
            self.group_prefix,
            client.id,
            op.id
        );
        client.next_at = now + self.rng.random_range(0..=THINK_TICKS_MAX);
    }
}
