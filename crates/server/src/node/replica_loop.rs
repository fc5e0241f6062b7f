//! The replica loop: the one thread that owns the replica (whatever its engine), the WAL, the snapshot store and the
//! state machine's write side. Inputs are handled in batches; after each batch every `Ready` is
//! handled in the order of the contract in `ballot_core::ready`. A storage failure stops the node
//! (fail-stop): continuing after a failed fsync could acknowledge what is not durable.

use super::envelope::{decode_snapshot, encode_snapshot, LogCommand};
use super::events::Transitions;
use super::inbox::{Inbox, InputSender, Queued};
use super::latency::{LatencyHistogram, FSYNC_BOUNDS_MICROS, ROUND_TRIP_BOUNDS_MICROS};
use super::members::{MemberCommand, MemberInfo, MemberRegistry};
use super::{Input, NodeError, NodeStatus};
use crate::config::ServerConfig;
use crate::transport::Transport;
use ballot_core::{
    EntryPayload, LogIndex, LogPosition, Membership, NodeId, PersistedState, Probe,
    ProtocolMessage, Ready, Replica, ReplicaSettings, ReplicaStart, Role, Snapshot, SnapshotMeta,
    Term, WireMessage,
};
use ballot_storage::dir_lock::DirLock;
use ballot_storage::identity::Identity;
use ballot_storage::lessor::{LeaseTtl, Lessor, LessorConfig};
use ballot_storage::mvcc::types::{Command, CommandResult};
use ballot_storage::mvcc::types::{Lease, LeaseId};
use ballot_storage::mvcc::{MvccOptions, MvccStore};
use ballot_storage::snapshot_store::SnapshotStore;
use ballot_storage::wal::{Wal, WalOptions};
use ballot_storage::watch::{
    StreamId, WatchHub, WatchLimits, WatchResponse, RESPONSE_OVERHEAD_BYTES,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Inputs handled before the replica's outputs are processed; bounds the latency one batch adds.
const INPUTS_PER_BATCH_MAX: usize = 1024;
/// Apply commits between two durable ones when the background flusher falls behind.
const SERVER_NON_DURABLE_COMMITS_MAX: u32 = 64;
/// Ticks between sweeps of forwarded commands nobody waits for any more.
const FORWARD_SWEEP_TICKS: u64 = 100;
/// Ticks between syncs of WAL records written without one (hard states that only move the
/// commit index): bounds how long an unsynced record can sit ahead of a later torn write,
/// which recovery would take for corruption rather than a torn tail.
const WAL_LAZY_SYNC_TICKS: u64 = 10;
/// Records kept in `snap/`: compaction markers (no data) and images installed from a leader.
const SNAPSHOTS_RETAINED: usize = 3;
/// Responses buffered per client watch stream between the loop and the gRPC task.
const WATCH_STREAM_RESPONSES_MAX: usize = 256;
/// A WAL sync this slow is logged (etcd warns at the same point).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);
/// Applying one batch of committed entries this slowly is logged (etcd's threshold for an
/// expensive request).
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;
/// Keep-alive answers (granted TTL, reply) waiting for one checkpoint entry, with its term.
type KeepAliveWaiters = (Term, Vec<(i64, Reply<i64>)>);

pub(crate) struct ReplicaLoop<R: Replica> {
    replica: R,
    wal: Wal,
    /// Shared with the thread that saves a compaction marker while the loop goes on.
    snapshots: Arc<SnapshotStore>,
    /// An image for a follower is being encoded off the loop; no second one starts meanwhile.
    image_in_progress: bool,
    /// A compaction marker is being saved off the loop; no second compaction starts meanwhile.
    compaction_in_progress: bool,
    /// The loop's own input queue, for the snapshot threads to report back on.
    loopback: InputSender,
    store: Arc<MvccStore>,
    transport: Arc<Transport>,
    /// The input queue and the inbound peer connections.
    inbox: Inbox,
    /// Peer messages read in this batch, waiting to be stepped.
    peer_messages: Vec<R::Message>,
    status: Arc<Mutex<NodeStatus>>,
    /// Proposals by the log position they were given; answered when that index is applied.
    proposals: BTreeMap<LogIndex, (Term, Reply<CommandResult>)>,
    /// Commands this node forwarded to the leader, by request id; answered when applied here.
    forwarded: HashMap<u64, Reply<CommandResult>>,
    /// Request ids start from the clock at open, so an entry forwarded by an earlier run of this
    /// node (still in the log) never matches a request of this one.
    next_forward_id: u64,
    ticks: u64,
    member_proposals: BTreeMap<LogIndex, (Term, Reply<()>)>,
    registry: MemberRegistry,
    /// What this node publishes about itself.
    own_info: MemberInfo,
    /// The cluster id this member's identity derived, if it was one of the cluster's first
    /// members (a joining member's flags derive another): what it records as leader.
    founding_cluster_id: Option<u64>,
    /// The cluster id to report until the registry has one.
    identity_cluster_id: u64,
    ticks_until_publish_check: u32,
    membership_changes: BTreeMap<LogIndex, (Term, Reply<LogPosition>)>,
    reads_unconfirmed: HashMap<u64, Reply<()>>,
    reads_confirmed: Vec<(LogIndex, Reply<()>)>,
    next_read_id: u64,
    watch_hub: WatchHub,
    watch_streams: HashMap<StreamId, mpsc::Sender<WatchResponse>>,
    lessor: Lessor,
    /// Keep-alives granted by the lessor whose checkpoint is not proposed yet.
    keepalives_unproposed: Vec<(LeaseId, i64, Reply<i64>)>,
    /// Keep-alives answered when the checkpoint at this index is applied.
    keepalives_proposed: BTreeMap<LogIndex, KeepAliveWaiters>,
    started: Instant,
    counters: Counters,
    /// What the replica was after the last batch, for the operator log lines.
    transitions: Transitions,
    _lock: DirLock,
}

struct Counters {
    last_leader: Option<NodeId>,
    leader_changes: u64,
    proposals_committed: u64,
    proposals_failed: u64,
    compaction_index: LogIndex,
    snapshot_images_built: u64,
    snapshot_images_installed: u64,
    wal_sync: LatencyHistogram,
    /// When the last liveness probe to each peer left; taken out by the peer's next answer.
    probes_unanswered: HashMap<NodeId, Instant>,
    peer_round_trips: BTreeMap<NodeId, LatencyHistogram>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            last_leader: None,
            leader_changes: 0,
            proposals_committed: 0,
            proposals_failed: 0,
            compaction_index: 0,
            snapshot_images_built: 0,
            snapshot_images_installed: 0,
            wal_sync: LatencyHistogram::new(FSYNC_BOUNDS_MICROS),
            probes_unanswered: HashMap::new(),
            peer_round_trips: BTreeMap::new(),
        }
    }
}

impl Counters {
    fn observe_wal_sync(&mut self, took: std::time::Duration) {
        self.wal_sync.observe(took.as_micros() as u64);
    }

    fn count_answer<T>(&mut self, answer: &Result<T, NodeError>) {
        match answer {
            Ok(_) => self.proposals_committed += 1,
            Err(_) => self.proposals_failed += 1,
        }
    }

    /// Liveness probes carry no id, so a round trip is timed from the latest probe to a peer to
    /// the first answer after it. A late answer to an earlier probe makes one sample short; a
    /// lost answer makes none.
    fn on_sent(&mut self, message: &impl ProtocolMessage) {
        if message.probe() == Some(Probe::Sent) {
            self.probes_unanswered.insert(message.to(), Instant::now());
        }
    }

    fn on_received(&mut self, message: &impl ProtocolMessage) {
        if message.probe() != Some(Probe::Answer) {
            return;
        }
        if let Some(sent) = self.probes_unanswered.remove(&message.from()) {
            self.peer_round_trips
                .entry(message.from())
                .or_insert_with(|| LatencyHistogram::new(ROUND_TRIP_BOUNDS_MICROS))
                .observe(sent.elapsed().as_micros() as u64);
        }
    }
}

impl<R> ReplicaLoop<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// Recovers everything from the data directory (whose lock the caller holds and whose
    /// identity it has read or created) and builds the replica.
    pub(crate) fn open(
        config: &ServerConfig,
        identity: &Identity,
        lock: DirLock,
        transport: Arc<Transport>,
        status: Arc<Mutex<NodeStatus>>,
        inbox: Inbox,
        loopback: InputSender,
        new_replica: impl FnOnce(&ReplicaSettings, ReplicaStart) -> Result<R, String>,
    ) -> Result<ReplicaLoop<R>, String> {
        let data_dir = &config.data_dir;
        let snapshots = SnapshotStore::open(data_dir.join("snap"), SNAPSHOTS_RETAINED)
            .map_err(|e| e.to_string())?;
        // A background thread makes writes durable every 100 ms (`spawn_store_flusher`); the
        // count is a backstop for bursts, bounding what a restart replays from the WAL.
        let store = Arc::new(
            MvccStore::open_with(
                data_dir.join("state"),
                MvccOptions {
                    non_durable_commits_max: SERVER_NON_DURABLE_COMMITS_MAX,
                    ..MvccOptions::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let snapshot = snapshots.latest().map_err(|e| e.to_string())?;
        let initial_members = identity.initial_members.iter().map(|member| MemberInfo {
            id: member.id,
            name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            client_urls: Vec::new(),
        });
        let mut registry = MemberRegistry::open(data_dir.join("members"), initial_members)?;
        let own_info = MemberInfo {
            id: identity.member_id,
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        let (wal, recovered) = open_wal(data_dir, snapshot.as_ref(), &store, &mut registry)?;
        let watch_hub = WatchHub::new(WatchLimits::default(), store.revision());
        // Until the log is first compacted or a snapshot installed, the replica starts from the
        // membership the identity file recorded when the directory was created.
        let compacted = match snapshot {
            Some(snapshot) => Some(snapshot.meta),
            None => PersistedState::bootstrap(identity.bootstrap.clone()).compacted,
        };
        let mut persisted = PersistedState {
            hard_state: recovered.hard_state,
            compacted,
            entries: recovered.entries,
        };
        let mut wal = wal;
        if config.force_new_cluster {
            super::force_new_cluster::rewrite(
                data_dir,
                &mut persisted,
                &mut wal,
                identity.member_id,
            )?;
        }
        let replica = new_replica(
            &config.replica_settings(),
            ReplicaStart {
                node_id: identity.member_id,
                persisted,
                // Outside the simulator a different seed per start is what we want; nothing
                // replays it.
                rng_seed: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(identity.member_id, |elapsed| {
                        elapsed.as_nanos() as u64 ^ identity.member_id
                    }),
                incarnation: 0,
            },
        )
        .map_err(|e| format!("cannot restore the replica: {e}"))?;
        let transitions = Transitions::new(&replica.status());
        Ok(ReplicaLoop {
            replica,
            wal,
            snapshots: Arc::new(snapshots),
            image_in_progress: false,
            compaction_in_progress: false,
            loopback,
            store,
            transport,
            inbox,
            peer_messages: Vec::new(),
            status,
            proposals: BTreeMap::new(),
            forwarded: HashMap::new(),
            next_forward_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64),
            ticks: 0,
            member_proposals: BTreeMap::new(),
            registry,
            own_info,
            founding_cluster_id: (!identity.bootstrap.voters.is_empty())
                .then_some(identity.cluster_id),
            identity_cluster_id: identity.cluster_id,
            ticks_until_publish_check: 0,
            membership_changes: BTreeMap::new(),
            reads_unconfirmed: HashMap::new(),
            reads_confirmed: Vec::new(),
            next_read_id: 1,
            watch_hub,
            watch_streams: HashMap::new(),
            lessor: Lessor::new(LessorConfig::default()),
            keepalives_unproposed: Vec::new(),
            keepalives_proposed: BTreeMap::new(),
            started: Instant::now(),
            counters: Counters::default(),
            transitions,
            _lock: lock,
        })
    }

    pub(crate) fn store(&self) -> Arc<MvccStore> {
        self.store.clone()
    }

    /// Every other member's first peer URL, as the registry knows it (members added after the
    /// initial cluster are only there).
    pub(crate) fn peer_urls(&self) -> Vec<(NodeId, String)> {
        self.registry
            .all()
            .filter(|member| member.id != self.own_info.id)
            .filter_map(|member| member.peer_urls.first().map(|url| (member.id, url.clone())))
            .collect()
    }

    pub(crate) fn run(mut self) {
        let mut running = true;
        while running {
            let mut handled = 0;
            while handled < INPUTS_PER_BATCH_MAX {
                match self.inbox.next_input() {
                    Queued::Input(input) => {
                        handled += 1;
                        if !self.handle_input(input) {
                            running = false;
                            break;
                        }
                    }
                    Queued::Empty => break,
                    Queued::Closed => {
                        running = false;
                        break;
                    }
                }
            }
            handled += self
                .inbox
                .read_peers(&self.transport, &mut self.peer_messages);
            for message in self.peer_messages.drain(..) {
                self.counters.on_received(&message);
                self.replica.step(message);
            }
            if handled == 0 {
                self.inbox.wait();
                continue;
            }
            if let Err(error) = self.handle_readies() {
                tracing::error!(%error, "storage failure: stopping this node");
                break;
            }
            self.follow_leadership();
            self.pump_watches();
            self.publish_status();
        }
        if let Err(error) = self.wal.sync() {
            tracing::error!(%error, "final WAL sync failed at shutdown");
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "final state machine flush failed at shutdown");
        }
    }

    /// Returns false on `Stop`.
    fn handle_input(&mut self, input: Input) -> bool {
        match input {
            Input::Tick => return self.tick(),
            Input::PeerConnection(connection) => self.inbox.add(connection),
            Input::Propose { command, reply } if self.replica.role() == Role::Leader => {
                match self.replica.propose(LogCommand::Kv(command).encode()) {
                    Ok(position) => {
                        self.proposals
                            .insert(position.index, (position.term, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            // A follower hands the command to the leader through the replica (as etcd does
            // through Raft), not over the leader's client API: one message among the peer traffic instead of a second
            // gRPC call. It answers when it applies the entry; a forward lost with a leader
            // change leaves the client to its deadline (the outcome is unknown, as etcd says).
            Input::Propose { command, reply } => {
                let request = self.next_forward_id;
                self.next_forward_id += 1;
                let entry = LogCommand::Forwarded {
                    origin: self.own_info.id,
                    request,
                    command,
                };
                match self.replica.propose_or_forward(entry.encode()) {
                    Ok(()) => {
                        self.forwarded.insert(request, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::ProposeMember { command, reply } => {
                match self.replica.propose(LogCommand::Member(command).encode()) {
                    Ok(position) => {
                        self.member_proposals
                            .insert(position.index, (position.term, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::Read { mode, reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                match self.replica.read(id, mode) {
                    Ok(()) => {
                        self.reads_unconfirmed.insert(id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::ChangeMembership { change, reply } => {
                match self.replica.propose_membership_change(change) {
                    Ok(position) => {
                        self.membership_changes
                            .insert(position.index, (position.term, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::TransferLeadership { target, reply } => {
                let _ = reply.send(
                    self.replica
                        .transfer_leadership(target)
                        .map_err(NodeError::from),
                );
            }
            Input::WatchOpen { reply } => {
                let answer = self
                    .watch_hub
                    .open_stream()
                    .map_err(NodeError::Watch)
                    .map(|stream| {
                        let (sender, receiver) = mpsc::channel(WATCH_STREAM_RESPONSES_MAX);
                        self.watch_streams.insert(stream, sender);
                        (stream, receiver)
                    });
                let _ = reply.send(answer);
            }
            Input::WatchCreate {
                stream,
                create,
                reply,
            } => {
                let answer = self.watch_hub.create_watch(stream, create, &*self.store);
                let _ = reply.send(answer.map_err(NodeError::Watch));
            }
            Input::WatchCancel {
                stream,
                watch_id,
                reply,
            } => {
                let _ = reply.send(
                    self.watch_hub
                        .cancel(stream, watch_id)
                        .map_err(NodeError::Watch),
                );
            }
            Input::WatchProgress { stream } => {
                let _ = self.watch_hub.request_progress(stream);
            }
            Input::WatchClose { stream } => {
                let _ = self.watch_hub.close_stream(stream);
                self.watch_streams.remove(&stream);
            }
            Input::LeaseKeepAlive { id, reply } => {
                let now = self.now_ms();
                match self.lessor.keep_alive(id, now) {
                    Ok(ttl) => self.keepalives_unproposed.push((id, ttl, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(self.lessor_error(error)));
                    }
                }
            }
            Input::LeaseTimeToLive { id, reply } => {
                let _ = reply.send(self.lease_time_to_live(id));
            }
            Input::SnapshotEncoded { applied, result } => self.image_encoded(applied, result),
            Input::CompactionSaved { index, result } => self.compaction_saved(index, result),
            Input::Stop => return false,
        }
        true
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lessor_error(&self, error: ballot_storage::lessor::LessorError) -> NodeError {
        match NodeError::from(error) {
            NodeError::NotLeader { .. } => NodeError::NotLeader {
                leader: self.replica.status().leader,
            },
            other => other,
        }
    }

    fn lease_time_to_live(&self, id: LeaseId) -> Result<(Lease, i64), NodeError> {
        let remaining_ms = self
            .lessor
            .remaining_ttl_ms(id, self.now_ms())
            .map_err(|e| self.lessor_error(e))?;
        let lease = self
            .store
            .lease(id)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let lease = lease.ok_or(NodeError::Lease(
            ballot_storage::lessor::LessorError::LeaseNotFound { id },
        ))?;
        Ok((lease, remaining_ms.div_ceil(1000) as i64))
    }

    /// One tick of logical time for the replica, and of wall time for the lessor and watches.
    /// Returns false when the WAL failed (the node stops).
    fn tick(&mut self) -> bool {
        self.replica.tick();
        self.ticks += 1;
        if self.ticks.is_multiple_of(WAL_LAZY_SYNC_TICKS) {
            if let Err(error) = self.sync_lazy_records() {
                tracing::error!(%error, "storage failure: stopping this node");
                return false;
            }
        }
        if self.ticks.is_multiple_of(FORWARD_SWEEP_TICKS) {
            // Forwards whose client gave up (its deadline passed): the entry was lost, or will
            // be applied with nobody left to answer.
            self.forwarded.retain(|_, reply| !reply.is_closed());
        }
        self.publish_self_if_needed();
        let now = self.now_ms();
        self.watch_hub.progress(now);
        if !self.lessor.is_leader() {
            return true;
        }
        for command in self.lessor.tick(now) {
            let checkpointed: Vec<LeaseId> = match &command {
                Command::LeaseCheckpoint { checkpoints } => {
                    checkpoints.iter().map(|(id, _)| *id).collect()
                }
                _ => Vec::new(),
            };
            let Ok(position) = self.replica.propose(LogCommand::Kv(command).encode()) else {
                continue;
            };
            if checkpointed.is_empty() {
                continue;
            }
            let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.keepalives_unproposed)
                .into_iter()
                .partition(|(id, _, _)| checkpointed.contains(id));
            self.keepalives_unproposed = waiting;
            let replies = due
                .into_iter()
                .map(|(_, ttl, reply)| (ttl, reply))
                .collect();
            self.keepalives_proposed
                .insert(position.index, (position.term, replies));
        }
        true
    }

    /// Ticks between checks that the registry describes this node as it is configured: often
    /// until it does (followers cannot forward to a leader whose client URL is unknown), then
    /// once a second.
    const PUBLISH_RETRY_TICKS: u32 = 10;
    const PUBLISH_CHECK_TICKS: u32 = 100;

    /// Like etcd's member publication: once a second, if the replicated registry does not say
    /// what this node's name and client URLs are, propose (or forward to the leader) that it does.
    fn publish_self_if_needed(&mut self) {
        if self.ticks_until_publish_check > 0 {
            self.ticks_until_publish_check -= 1;
            return;
        }
        // Peer URLs are the cluster's to change (`member add`, `member update`), not this
        // member's flags: once the registry knows some, they stay, as etcd publishes only a
        // member's name and client URLs.
        if let Some(known) = self.registry.get(self.own_info.id) {
            if !known.peer_urls.is_empty() && known.peer_urls != self.own_info.peer_urls {
                self.own_info.peer_urls = known.peer_urls.clone();
            }
        }
        self.record_cluster_id_if_needed();
        if self.registry.get(self.own_info.id) == Some(&self.own_info) {
            self.ticks_until_publish_check = Self::PUBLISH_CHECK_TICKS;
            return;
        }
        self.ticks_until_publish_check = Self::PUBLISH_RETRY_TICKS;
        let command = LogCommand::Member(MemberCommand::Publish(self.own_info.clone()));
        if let Err(error) = self.replica.propose_or_forward(command.encode()) {
            tracing::debug!(%error, "member publication postponed");
        }
    }

    /// A leader of the cluster's original members records the cluster id in the registry once,
    /// so that members joining later report the same one (their own flags derive another).
    fn record_cluster_id_if_needed(&mut self) {
        let Some(cluster_id) = self.founding_cluster_id else {
            return;
        };
        if self.registry.cluster_id().is_some() || self.replica.role() != Role::Leader {
            return;
        }
        let command = LogCommand::Member(MemberCommand::ClusterId(cluster_id));
        if let Err(error) = self.replica.propose(command.encode()) {
            tracing::debug!(%error, "recording the cluster id postponed");
        }
    }

    /// The lessor keeps lease clocks only while this node leads.
    fn follow_leadership(&mut self) {
        let leading = self.replica.status().role == Role::Leader;
        if leading && !self.lessor.is_leader() {
            match self.store.leases() {
                Ok(leases) => self
                    .lessor
                    .become_leader(self.now_ms(), leases.iter().map(LeaseTtl::from)),
                Err(error) => tracing::error!(%error, "cannot read leases; lease expiry paused"),
            }
        } else if !leading && self.lessor.is_leader() {
            self.lessor.step_down();
            let leader = self.replica.status().leader;
            for (_, _, reply) in self.keepalives_unproposed.drain(..) {
                let _ = reply.send(Err(NodeError::NotLeader { leader }));
            }
        }
    }

    /// Moves watch responses to the client streams that have room for them.
    fn pump_watches(&mut self) {
        let mut streams = self.watch_hub.take_woken();
        for &stream in self.watch_streams.keys() {
            if self.watch_hub.has_pending(stream).unwrap_or(false) && !streams.contains(&stream) {
                streams.push(stream);
            }
        }
        for stream in streams {
            let Some(sender) = self.watch_streams.get(&stream) else {
                continue;
            };
            // A poll yields at most one response per RESPONSE_OVERHEAD_BYTES of budget (or one
            // oversized one), so a budget sized to the free slots never loses a response.
            for _ in 0..WATCH_STREAM_RESPONSES_MAX {
                let room = sender.capacity();
                if room == 0 || !self.watch_hub.has_pending(stream).unwrap_or(false) {
                    break;
                }
                let Ok(responses) =
                    self.watch_hub
                        .poll(stream, &*self.store, room * RESPONSE_OVERHEAD_BYTES)
                else {
                    break;
                };
                if responses.is_empty() {
                    break;
                }
                for response in responses {
                    match sender.try_send(response) {
                        Ok(()) => {}
                        // The client went away; its stream is closed with the connection.
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            tracing::debug!(%stream, "watch client disconnected");
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::error!(%stream, "watch response dropped: stream channel full")
                        }
                    }
                }
            }
        }
    }

    fn handle_readies(&mut self) -> Result<(), String> {
        while self.replica.has_ready() {
            let ready = self.replica.ready();
            self.handle_ready(ready)?;
        }
        Ok(())
    }

    /// The contract of `ballot_core::ready`, step by step.
    fn handle_ready(&mut self, ready: Ready<R::Message>) -> Result<(), String> {
        // A leader applies and answers before the fsync of this batch's new entries: what it
        // applies is committed, so already durable on a quorum (itself included: its own
        // acknowledgement counts only once synced), and does not depend on this batch. Its
        // clients then get their answers while the disk syncs, instead of after the next
        // batch's fsync. A follower syncs first, because its acknowledgement to the leader,
        // which waits for the sync, is what the leader's clients are waiting for.
        let apply_before_sync =
            self.replica.role() == Role::Leader && ready.may_apply_before_persist();
        // When no client waits on any message (plain liveness probes: a commit notice, or the
        // periodic one, with no read round riding on it) and there are no new entries, answer
        // first. Each loopback send runs the receiver's TCP stack and wakes it on this
        // thread (tens of microseconds apiece here). Appends to a follower catching up, read
        // rounds and read-index answers keep their place ahead of the apply.
        let answer_before_sending = apply_before_sync
            && ready.entries.is_empty()
            && ready
                .messages
                .iter()
                .all(|message| !message.awaited_by_clients());
        if answer_before_sending {
            self.apply_and_answer_reads(&ready)?;
        }
        for message in &ready.messages {
            self.counters.on_sent(message);
            self.transport.send(message);
        }
        if let Some(snapshot) = &ready.snapshot {
            self.install_snapshot(snapshot)?;
        }
        if !ready.entries.is_empty() || ready.hard_state.is_some() {
            self.wal
                .append(&ready.entries, ready.hard_state)
                .map_err(|e| e.to_string())?;
        }
        if apply_before_sync && !answer_before_sending {
            self.apply_and_answer_reads(&ready)?;
        }
        if ready.must_persist() {
            self.sync_wal()?;
        }
        for message in &ready.messages_after_persist {
            self.counters.on_sent(message);
            self.transport.send(message);
        }
        if !apply_before_sync {
            self.apply_and_answer_reads(&ready)?;
        }
        self.replica.advance();
        if ready.compaction_wanted {
            self.compact()?;
        }
        if ready.snapshot_wanted {
            self.build_image()?;
        }
        Ok(())
    }

    /// Steps 4 and 5 of the contract: apply the committed entries, then serve the reads whose
    /// read index they reach.
    fn apply_and_answer_reads(&mut self, ready: &Ready<R::Message>) -> Result<(), String> {
        self.apply(&ready.committed_entries)?;
        for read in &ready.read_states {
            if let Some(reply) = self.reads_unconfirmed.remove(&read.request_id) {
                self.reads_confirmed.push((read.index, reply));
            }
        }
        for request_id in &ready.dropped_reads {
            if let Some(reply) = self.reads_unconfirmed.remove(request_id) {
                let _ = reply.send(Err(NodeError::LeaderChanged));
            }
        }
        self.release_reads();
        Ok(())
    }

    /// Syncs what was appended without a sync, if anything.
    fn sync_lazy_records(&mut self) -> Result<(), String> {
        if self.wal.synced_sequence() == self.wal.appended_sequence() {
            return Ok(());
        }
        self.sync_wal()
    }

    fn sync_wal(&mut self) -> Result<(), String> {
        let started = Instant::now();
        self.wal.sync().map_err(|e| e.to_string())?;
        let took = started.elapsed();
        self.counters.observe_wal_sync(took);
        if took >= SLOW_FSYNC {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                expected_ms = SLOW_FSYNC.as_millis() as u64,
                "slow fdatasync of the WAL: the disk is too slow for this load, or shared"
            );
        }
        Ok(())
    }

    /// Applies committed entries in one store transaction and answers their proposers.
    fn apply(&mut self, entries: &[ballot_core::Entry]) -> Result<(), String> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut commands = Vec::new();
        let mut terms = Vec::new();
        // For each command, the request id if this node forwarded it.
        let mut own_requests = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Command(data) => match LogCommand::decode(data) {
                    Ok(LogCommand::Kv(command)) => {
                        commands.push((entry.index, command));
                        terms.push(entry.term);
                        own_requests.push(None);
                    }
                    Ok(LogCommand::Forwarded {
                        origin,
                        request,
                        command,
                    }) => {
                        commands.push((entry.index, command));
                        terms.push(entry.term);
                        own_requests.push((origin == self.own_info.id).then_some(request));
                    }
                    Ok(LogCommand::Member(command)) => {
                        self.registry.apply(entry.index, &command)?;
                        self.follow_member_addresses(&command);
                        self.answer_member_proposal(entry.index, entry.term);
                    }
                    // Only this server's own encoder writes commands, so this is a bug or a
                    // corrupt entry that passed the WAL's checksum: apply nothing, say so loudly.
                    Err(error) => {
                        tracing::error!(index = entry.index, %error, "undecodable command skipped")
                    }
                },
                EntryPayload::Membership(..) => {
                    self.answer_membership_change(entry.index, entry.term)
                }
                EntryPayload::Noop => {}
            }
        }
        let apply_started = Instant::now();
        let applied = self
            .store
            .apply_batch_with(&commands, self.watch_hub.wants_prev_kv())
            .map_err(|e| e.to_string())?;
        let took = apply_started.elapsed();
        if took >= SLOW_APPLY {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                expected_ms = SLOW_APPLY.as_millis() as u64,
                commands = commands.len(),
                first_index = entries[0].index,
                "applying committed entries took too long (a large range delete or transaction, \
                 or a slow disk)"
            );
        }
        let now = self.now_ms();
        for ((outcome, (index, command)), &term) in applied.iter().zip(&commands).zip(&terms) {
            if let Some(first) = outcome.events.first() {
                self.watch_hub
                    .on_apply(first.kv.mod_revision, &outcome.events);
            }
            match (command, &outcome.result) {
                (_, Ok(CommandResult::LeaseGrant { id, ttl_seconds })) => {
                    self.lessor.on_granted(*id, *ttl_seconds, now)
                }
                (Command::LeaseRevoke { id }, Ok(_)) => self.lessor.on_revoked(*id),
                (Command::Compact { revision }, Ok(_)) => tracing::info!(
                    revision,
                    index,
                    "compacted the keyspace: versions before the revision are gone"
                ),
                (Command::LeaseCheckpoint { .. }, _) => self.answer_keepalives(*index, term),
                _ => {}
            }
        }
        for ((outcome, term), own_request) in applied.into_iter().zip(terms).zip(own_requests) {
            if let Some(reply) = own_request.and_then(|request| self.forwarded.remove(&request)) {
                let answer = outcome.result.map_err(NodeError::Apply);
                self.counters.count_answer(&answer);
                let _ = reply.send(answer);
                continue;
            }
            let Some((proposed_term, reply)) = self.proposals.remove(&outcome.index) else {
                continue;
            };
            let answer = if proposed_term != term {
                Err(NodeError::LeaderChanged)
            } else {
                outcome.result.map_err(NodeError::Apply)
            };
            self.counters.count_answer(&answer);
            let _ = reply.send(answer);
        }
        if self.store.applied_index() < last.index {
            self.store
                .mark_applied(last.index)
                .map_err(|e| e.to_string())?;
        }
        let lost_members: Vec<LogIndex> = self
            .member_proposals
            .range(..=last.index)
            .map(|(&i, _)| i)
            .collect();
        for index in lost_members {
            self.answer_member_proposal(index, 0);
        }
        let lost_keepalives: Vec<LogIndex> = self
            .keepalives_proposed
            .range(..=last.index)
            .map(|(&i, _)| i)
            .collect();
        for index in lost_keepalives {
            self.answer_keepalives(index, 0);
        }
        // Proposals whose index now holds something else (a no-op or a membership change of a
        // later leader) were lost.
        let lost: Vec<LogIndex> = self
            .proposals
            .range(..=last.index)
            .map(|(&index, _)| index)
            .collect();
        for index in lost {
            if let Some((_, reply)) = self.proposals.remove(&index) {
                self.counters.proposals_failed += 1;
                let _ = reply.send(Err(NodeError::LeaderChanged));
            }
        }
        Ok(())
    }

    /// Peers added or moved with `member add` / `member update` become reachable at once.
    fn follow_member_addresses(&self, command: &MemberCommand) {
        match command {
            MemberCommand::Publish(info) if info.id != self.own_info.id => {
                match info
                    .peer_urls
                    .first()
                    .map(|url| crate::config::parse_url(url))
                {
                    Some(Ok(address)) => self.transport.set_peer(info.id, address),
                    Some(Err(error)) => {
                        tracing::warn!(%error, member = info.id, "unusable peer URL")
                    }
                    None => {}
                }
            }
            MemberCommand::Forget(id) => self.transport.remove_peer(*id),
            MemberCommand::Publish(_) | MemberCommand::ClusterId(_) => {}
        }
    }

    fn answer_member_proposal(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, reply)) = self.member_proposals.remove(&index) {
            // The caller answers with the member list it reads from the status: publish the
            // change first, or the answer would describe the members before it.
            self.publish_status();
            let answer = if proposed_term == term {
                Ok(())
            } else {
                Err(NodeError::LeaderChanged)
            };
            let _ = reply.send(answer);
        }
    }

    fn answer_keepalives(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, replies)) = self.keepalives_proposed.remove(&index) {
            for (ttl, reply) in replies {
                let answer = if proposed_term == term {
                    Ok(ttl)
                } else {
                    Err(NodeError::LeaderChanged)
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn answer_membership_change(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, reply)) = self.membership_changes.remove(&index) {
            self.publish_status();
            let answer = if proposed_term == term {
                Ok(LogPosition::new(index, term))
            } else {
                Err(NodeError::LeaderChanged)
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers the confirmed reads whose read index the store has reached.
    fn release_reads(&mut self) {
        let applied = self.store.applied_index();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_confirmed = waiting;
        for (_, reply) in due {
            let _ = reply.send(Ok(()));
        }
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        match self.snapshots.save(snapshot) {
            // An older snapshot than one we keep: the state machine is already past it.
            Err(ballot_storage::snapshot_store::SnapshotError::Stale { .. }) => {
                tracing::warn!(
                    index = snapshot.meta.last_included.index,
                    "ignored a stale snapshot"
                );
            }
            other => {
                other.map_err(|e| e.to_string())?;
            }
        }
        let (registry_part, mvcc_part) =
            decode_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        self.store.restore(mvcc_part).map_err(|e| e.to_string())?;
        self.registry
            .restore(registry_part, snapshot.meta.last_included.index)?;
        self.wal
            .install_snapshot(snapshot.meta.last_included)
            .map_err(|e| e.to_string())?;
        self.watch_hub.restore(self.store.revision());
        self.counters.snapshot_images_installed += 1;
        self.counters.compaction_index = snapshot.meta.last_included.index;
        tracing::info!(
            index = snapshot.meta.last_included.index,
            term = snapshot.meta.last_included.term,
            bytes = snapshot.data.len(),
            revision = self.store.revision(),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// The log has grown past the threshold: compact it up to what the store has made durable on
    /// its own (its flusher runs every 100 ms), with no image of the state machine at all. The
    /// registry is always durable (rewritten on every change). A marker with the compaction
    /// point's metadata is saved to `snap/` off the loop; only then may the WAL drop entries
    /// ([`Input::CompactionSaved`]).
    fn compact(&mut self) -> Result<(), String> {
        if self.compaction_in_progress {
            return Ok(());
        }
        // After a restart the store can be durable past what the replica has applied again
        // (the WAL's commit index lags): compact no further than the replica has reached.
        let durable = self
            .store
            .durable_applied_index()
            .min(self.replica.status().applied_index);
        let meta = match self.replica.compact(durable) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, durable, "compaction refused");
                return Ok(());
            }
        };
        let snapshots = self.snapshots.clone();
        self.compaction_in_progress = true;
        self.off_the_loop("compaction-save", move || {
            let index = meta.last_included.index;
            let marker = Snapshot {
                meta,
                data: bytes::Bytes::new(),
            };
            let result = snapshots
                .save(&marker)
                .map(|_| ())
                .map_err(|e| e.to_string());
            Input::CompactionSaved { index, result }
        })
    }

    /// Runs `work` on a thread of its own and hands what it returns to this loop's queue.
    fn off_the_loop(
        &self,
        name: &str,
        work: impl FnOnce() -> Input + Send + 'static,
    ) -> Result<(), String> {
        let loopback = self.loopback.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = loopback.blocking_send(work());
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The compaction marker for `index` is durable: the WAL may drop what the replica dropped
    /// (the store was durable through `index` before the marker was written).
    fn compaction_saved(&mut self, index: LogIndex, result: Result<(), String>) {
        self.compaction_in_progress = false;
        if let Err(error) = result {
            tracing::warn!(%error, index, "compaction marker not saved; the WAL keeps its entries");
            return;
        }
        let compact_to = self
            .replica
            .status()
            .first_log_index
            .saturating_sub(1)
            .min(index);
        match self.wal.compact_to(compact_to) {
            Ok(_) => {
                self.counters.compaction_index = index;
                tracing::info!(
                    index,
                    first_kept = compact_to + 1,
                    "compacted the log (the state machine is durable through the index)"
                );
            }
            Err(error) => tracing::error!(%error, "WAL compaction failed"),
        }
    }

    /// A follower needs entries the log no longer holds: encode an image of the state machine
    /// at its applied index, on a thread (a large history takes seconds, longer than an
    /// election timeout), and hand it to the replica ([`Input::SnapshotEncoded`]). The image
    /// lives in memory only: nothing on this node depends on it being durable.
    fn build_image(&mut self) -> Result<(), String> {
        if self.image_in_progress {
            return Ok(());
        }
        if self.store.applied_index() > self.replica.status().applied_index {
            // Replaying after a restart: the replica would refuse an image past its applied
            // index, and it asks again at its next attempt to replicate.
            return Ok(());
        }
        let reader = self.store.begin_snapshot().map_err(|e| e.to_string())?;
        let applied = reader.applied_index();
        // The registry is changed only by this loop, so it is at `applied` too.
        let registry = self.registry.snapshot();
        self.image_in_progress = true;
        self.off_the_loop("snapshot-encode", move || {
            let result = reader
                .into_bytes()
                .map(|mvcc| encode_snapshot(&registry, &mvcc))
                .map_err(|e| e.to_string());
            Input::SnapshotEncoded { applied, result }
        })
    }

    /// The image is built: the replica keeps it and starts sending it to the followers that
    /// were waiting.
    fn image_encoded(&mut self, applied: LogIndex, result: Result<bytes::Bytes, String>) {
        self.image_in_progress = false;
        let data = match result {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, applied, "snapshot image failed");
                return;
            }
        };
        let image = Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::new(applied, 0),
                membership: Membership::default(),
            },
            data,
        };
        match self.replica.snapshot_taken(image) {
            // The replica fills in the term; left at zero, it kept an image at least as new.
            Ok(meta) if meta.last_included.term > 0 => {
                self.counters.snapshot_images_built += 1;
                tracing::info!(
                    index = meta.last_included.index,
                    "built a snapshot image for a follower"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, applied, "snapshot image not taken"),
        }
    }

    fn publish_status(&mut self) {
        let status = self.replica.status();
        self.transitions.observe(&status);
        if status.leader.is_some() && status.leader != self.counters.last_leader {
            self.counters.leader_changes += 1;
        }
        self.counters.last_leader = status.leader;
        let counters = &self.counters;
        let mut shared = self.status.lock().expect("status lock");
        *shared = NodeStatus {
            id: status.id,
            cluster_id: self
                .registry
                .cluster_id()
                .unwrap_or(self.identity_cluster_id),
            role: Some(status.role),
            term: status.term,
            leader: status.leader,
            commit_index: status.commit_index,
            applied_index: self.store.applied_index(),
            voters: status.membership.voters.iter().copied().collect(),
            learners: status.membership.learners.iter().copied().collect(),
            leader_changes: counters.leader_changes,
            proposals_committed: counters.proposals_committed,
            proposals_failed: counters.proposals_failed,
            proposals_pending: (self.proposals.len()
                + self.forwarded.len()
                + self.member_proposals.len()
                + self.membership_changes.len()) as u64,
            compaction_index: counters.compaction_index,
            snapshot_images_built: counters.snapshot_images_built,
            snapshot_images_installed: counters.snapshot_images_installed,
            wal_sync: counters.wal_sync.snapshot(),
            peer_round_trips: counters
                .peer_round_trips
                .iter()
                .map(|(&peer, histogram)| (peer, histogram.snapshot()))
                .collect(),
            members: status
                .membership
                .members()
                .map(|id| {
                    self.registry.get(id).cloned().unwrap_or(MemberInfo {
                        id,
                        ..MemberInfo::default()
                    })
                })
                .collect(),
        };
        debug_assert!(status.role != Role::Leader || status.leader == Some(status.id));
    }
}

/// Opens the WAL and reconciles it with the latest record in `snap/` and the state machine: a
/// state machine behind an installed image is restored from it, one behind a compaction marker
/// is refused (the entries it lacks are gone), and a WAL whose snapshot marker is older learns
/// of the record (dropping entries it covers, or all entries if they conflict).
fn open_wal(
    data_dir: &Path,
    snapshot: Option<&Snapshot>,
    store: &MvccStore,
    registry: &mut MemberRegistry,
) -> Result<(Wal, ballot_storage::wal::Recovered), String> {
    let wal_dir = data_dir.join("wal");
    let (mut wal, recovered) =
        Wal::open(&wal_dir, WalOptions::default()).map_err(|e| e.to_string())?;
    if let Some(repair) = &recovered.tail_repair {
        tracing::warn!(
            ?repair,
            "cut a damaged tail off the WAL (written after the last fsync, or rotted since)"
        );
    }
    let Some(snapshot) = snapshot else {
        return Ok((wal, recovered));
    };
    let position = snapshot.meta.last_included;
    if snapshot.data.is_empty() {
        // A compaction marker: the store was durable through it on its own before the WAL
        // dropped anything, so a store behind it lost writes it had made durable.
        if store.applied_index() < position.index {
            return Err(format!(
                "the state machine in {} has applied up to index {}, but the log was compacted \
                 at index {} (snap/ says so): entries in between are gone; the state directory \
                 was replaced or rolled back. Restore the data directory from a backup, or \
                 remove this member and add it back empty",
                data_dir.join("state").display(),
                store.applied_index(),
                position.index
            ));
        }
    } else {
        let (registry_part, mvcc_part) =
            decode_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        if store.applied_index() < position.index {
            store.restore(mvcc_part).map_err(|e| e.to_string())?;
        }
        registry.restore_if_behind(registry_part, position.index)?;
    }
    if recovered
        .snapshot
        .is_none_or(|marker| marker.index < position.index)
    {
        wal.install_snapshot(position).map_err(|e| e.to_string())?;
        drop(wal);
        return Wal::open(&wal_dir, WalOptions::default()).map_err(|e| e.to_string());
    }
    Ok((wal, recovered))
}
