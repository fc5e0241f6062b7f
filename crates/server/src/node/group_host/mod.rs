//! One replicated group on this node: its replica (whatever its engine), WAL, snapshot store,
//! state machine, and everything waiting on them (proposals, reads, watches, leases). The node
//! loop ([`super::node_loop`]) owns the thread, the inputs and the peer sockets, and hands each
//! host what is its group's; after each batch every `Ready` is handled in the order of the
//! contract in `ballot_core::ready`. A storage failure stops the node (fail-stop): continuing
//! after a failed fsync could acknowledge what is not durable.
//!
//! Group 0 is the cluster's own: it also holds the member registry and the group catalog, and
//! publishes this member. Every other group is a plain replicated key-value store so far, in
//! `groups/<id>/` of the data directory.
//!
//! This module handles the group's inputs and ticks and is the host the `Ready` driver
//! (`ballot_core::driver`, the simulator's too) works through. Its children own the rest:
//! [`recovery`] (opening the group's storage), [`apply`] (committed entries and their waiters),
//! [`snapshots`] (images and compaction), [`metrics`] (counters and the published status).

mod apply;
pub(crate) mod log;
mod metrics;
mod recovery;
mod snapshots;

use super::catalog::{CatalogError, GroupCatalog, GroupCommand, GroupRecord};
use super::envelope::{decode_snapshot, encode_snapshot, LogCommand, SnapshotParts};
use super::events::Transitions;
use super::inbox::InputSender;
use super::latency::{LatencyHistogram, FSYNC_BOUNDS_MICROS, ROUND_TRIP_BOUNDS_MICROS};
use super::members::{MemberCommand, MemberInfo, MemberRegistry};
use super::{Input, NodeError, NodeStatus};
use crate::config::ServerConfig;
use crate::transport::Transport;
use ballot_core::driver::{self, ReadyHost};
use ballot_core::{
    Entry, EntryPayload, GroupId, LogIndex, LogPosition, Membership, NodeId, PersistedState, Probe,
    ProtocolMessage, ReadMode, ReadState, Replica, ReplicaError, ReplicaSettings, ReplicaStart,
    Role, Snapshot, SnapshotMeta, Term, WireMessage,
};
use ballot_storage::identity::Identity;
use ballot_storage::lessor::{LeaseTtl, Lessor, LessorConfig};
use ballot_storage::mvcc::types::{Command, CommandResult};
use ballot_storage::mvcc::types::{Lease, LeaseId};
use ballot_storage::mvcc::{MvccOptions, MvccStore};
use ballot_storage::snapshot_store::{SnapshotError, SnapshotStore};
use ballot_storage::wal::WalError;
use ballot_storage::watch::{
    StreamId, WatchHub, WatchLimits, WatchResponse, RESPONSE_OVERHEAD_BYTES,
};
use log::HostLog;
use metrics::Counters;
pub(crate) use metrics::NodeCounts;
pub(crate) use recovery::{group_dir, NodeParts};
pub(crate) use snapshots::SharedSnapshots;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Apply commits between two durable ones when the background flusher falls behind.
const SERVER_NON_DURABLE_COMMITS_MAX: u32 = 64;
/// Ticks between sweeps of forwarded commands nobody waits for any more.
const FORWARD_SWEEP_TICKS: u64 = 100;
/// Ticks between syncs of WAL records written without one (hard states that only move the
/// commit index): bounds how long an unsynced record can sit ahead of a later torn write,
/// which recovery would take for corruption rather than a torn tail.
const WAL_LAZY_SYNC_TICKS: u64 = 10;
/// How long a read waits for a new leader's first commit in its term (a round trip, unless the
/// leader lost its quorum) before it is refused.
const READ_WAIT_FOR_TERM_COMMIT_TICKS: u64 = 100;
/// Entries a replica falling asleep must have applied since its last compaction for it to be
/// compacted then, giving its log's memory back: fewer are not worth a marker write and a
/// thread (measured: compacting each of 200 groups after 100 puts cost more resident memory, in
/// the threads' allocator arenas, than the entries gave back; benchmarks.md).
const GIVE_BACK_ENTRIES_MIN: u64 = 1024;
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

pub(crate) struct GroupHost<R: Replica> {
    group: GroupId,
    replica: R,
    /// Group 0's own WAL, or this group's view of the node's shared one.
    log: HostLog,
    /// Shared with the thread that saves a compaction marker while the loop goes on.
    snapshots: SharedSnapshots,
    /// An image for a follower is being encoded off the loop; no second one starts meanwhile.
    image_in_progress: bool,
    /// A compaction marker is being saved off the loop; no second compaction starts meanwhile.
    compaction_in_progress: bool,
    /// The loop's own input queue, for the snapshot threads to report back on.
    loopback: InputSender,
    store: Arc<MvccStore>,
    transport: Arc<Transport>,
    status: Arc<Mutex<NodeStatus>>,
    /// Woken when the replica learns of a leader after knowing none.
    leader_found: Arc<tokio::sync::Notify>,
    /// Proposals by the log position they were given; answered when that index is applied.
    proposals: BTreeMap<LogIndex, (Term, Reply<CommandResult>)>,
    /// Commands this node forwarded to the leader, by request id; answered when applied here.
    forwarded: HashMap<u64, Reply<CommandResult>>,
    /// Request ids start from the clock at open, so an entry forwarded by an earlier run of this
    /// node (still in the log) never matches a request of this one.
    next_forward_id: u64,
    ticks: u64,
    member_proposals: BTreeMap<LogIndex, (Term, Reply<()>)>,
    /// Group 0's only: who the members are (empty and never changed in other groups).
    registry: MemberRegistry,
    /// Group 0's only: which other groups exist (empty and never changed in other groups).
    catalog: GroupCatalog,
    group_proposals: BTreeMap<LogIndex, (Term, Reply<GroupRecord>)>,
    /// A catalog command was applied since the node loop last asked.
    catalog_changed: bool,
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
    /// Reads that reached a leader before it committed an entry of its term (it cannot know the
    /// commit index yet), with the tick they came: asked again after every batch, as etcd's
    /// read index waits for that first commit instead of refusing.
    reads_until_term_commit: Vec<(u64, ReadMode, Reply<()>)>,
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
}

impl<R> GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    pub(crate) fn store(&self) -> Arc<MvccStore> {
        self.store.clone()
    }

    /// Every other member's id, as the registry knows them.
    pub(crate) fn peer_ids(&self) -> Vec<NodeId> {
        self.registry
            .all()
            .map(|member| member.id)
            .filter(|&id| id != self.own_info.id)
            .collect()
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

    pub(crate) fn catalog(&self) -> &GroupCatalog {
        &self.catalog
    }

    /// Whether a catalog command was applied since the last call.
    pub(crate) fn take_catalog_changed(&mut self) -> bool {
        std::mem::take(&mut self.catalog_changed)
    }

    /// What the node loop counts, published in group 0's status.
    pub(crate) fn set_node_counts(&mut self, counts: NodeCounts) {
        self.counters.node = counts;
    }

    /// A sleeping group whose entries keep an old segment of the shared WAL compacts as far as
    /// its state machine is durable (a no-op while the store's flusher has not caught up: the
    /// node loop asks again at its next sweep). Returns whether a compaction started.
    pub(crate) fn compact_asleep(&mut self) -> Result<bool, String> {
        if !self.replica.is_asleep() || self.compaction_in_progress {
            return Ok(false);
        }
        self.compact()?;
        Ok(self.compaction_in_progress)
    }

    /// The group hibernates: no tick until something wakes it.
    pub(crate) fn is_asleep(&self) -> bool {
        self.replica.is_asleep()
    }

    /// Node liveness declared `peer` down.
    pub(crate) fn peer_down(&mut self, peer: NodeId) {
        self.replica.peer_down(peer);
    }

    /// Stands for leader at once (see `Replica::campaign`).
    pub(crate) fn campaign(&mut self) {
        self.replica.campaign();
    }

    /// A peer message for this group.
    pub(crate) fn step(&mut self, message: R::Message) {
        self.counters.on_received(&message);
        self.replica.step(message);
    }

    /// The first half of the replica's next `Ready` ([`driver::begin`]), if it has one: the
    /// node loop begins every group's batch before it completes any, so that one sync of the
    /// shared WAL covers them all.
    pub(crate) fn begin_ready(&mut self) -> Result<Option<driver::InFlight<R::Message>>, String> {
        if !self.replica.has_ready() {
            return Ok(None);
        }
        let ready = self.replica.ready();
        driver::begin(self, ready)
            .map(Some)
            .map_err(|error| error.to_string())
    }

    /// The second half of a batch [`GroupHost::begin_ready`] began.
    pub(crate) fn complete_ready(
        &mut self,
        batch: driver::InFlight<R::Message>,
    ) -> Result<(), String> {
        driver::complete(self, batch).map_err(|error| error.to_string())
    }

    /// What follows the `Ready`s of a batch: the lessor following leadership, watch responses,
    /// the published status.
    pub(crate) fn after_readies(&mut self) {
        self.retry_reads_until_term_commit();
        self.follow_leadership();
        self.pump_watches();
        self.publish_status();
    }

    /// Makes what the group holds durable before the node exits or the group is dropped.
    pub(crate) fn shut_down(&mut self) {
        if let Err(error) = ballot_core::LogStore::sync(&mut self.log) {
            tracing::error!(group = self.group, %error, "final WAL sync failed at shutdown");
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(
                group = self.group,
                %error,
                "final state machine flush failed at shutdown"
            );
        }
    }

    /// One input addressed to this group.
    pub(crate) fn handle_input(&mut self, input: Input) {
        match input {
            Input::Tick
            | Input::PeerConnection(_)
            | Input::Stop
            | Input::ToGroup { .. }
            | Input::CatalogFollowed { .. } => {
                unreachable!("the node loop handles its own inputs and unwraps a group's")
            }
            Input::CreateGroup {
                requested,
                replicas,
                reply,
            } => {
                let proposed = self.group_command(requested, replicas).and_then(|command| {
                    self.replica
                        .propose(LogCommand::Group(command).encode())
                        .map_err(NodeError::from)
                });
                match proposed {
                    Ok(position) => {
                        self.group_proposals
                            .insert(position.index, (position.term, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Input::RemoveGroup { id, reply } => {
                let proposed = if self.group != 0 {
                    Err(NodeError::Catalog(CatalogError::NotTheCatalog))
                } else if self.catalog.get(id).is_none() {
                    Err(NodeError::Catalog(CatalogError::UnknownGroup(id)))
                } else {
                    self.replica
                        .propose(LogCommand::Group(GroupCommand::Remove(id)).encode())
                        .map_err(NodeError::from)
                };
                match proposed {
                    Ok(position) => {
                        self.group_proposals
                            .insert(position.index, (position.term, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Input::Propose { command, reply } if self.replica.role() == Role::Leader => {
                let proposed = self.replica.propose(LogCommand::Kv(command).encode());
                wait_for_position(&mut self.proposals, proposed, reply);
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
                let proposed = self.replica.propose(LogCommand::Member(command).encode());
                wait_for_position(&mut self.member_proposals, proposed, reply);
            }
            Input::Read { mode, reply } => {
                let id = self.next_read_id;
                self.next_read_id += 1;
                match self.replica.read(id, mode) {
                    Ok(()) => {
                        self.reads_unconfirmed.insert(id, reply);
                    }
                    Err(ReplicaError::LeaderNotReady) => {
                        self.reads_until_term_commit.push((self.ticks, mode, reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Input::ChangeMembership { change, reply } => {
                let proposed = self.replica.propose_membership_change(change);
                wait_for_position(&mut self.membership_changes, proposed, reply);
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
        }
    }

    /// The catalog command for `group create`: checked against what this node knows (the
    /// command is checked again, the same way everywhere, when it is applied), its replicas
    /// placed on the voters that host the fewest groups.
    fn group_command(
        &self,
        requested: Option<GroupId>,
        replicas: usize,
    ) -> Result<GroupCommand, NodeError> {
        if self.group != 0 {
            return Err(NodeError::Catalog(CatalogError::NotTheCatalog));
        }
        let voters: Vec<NodeId> = self
            .replica
            .status()
            .membership
            .voters
            .iter()
            .copied()
            .collect();
        if replicas == 0 || replicas > voters.len() {
            return Err(NodeError::Catalog(CatalogError::ReplicaCount {
                asked: replicas,
                voters: voters.len(),
            }));
        }
        if let Some(id) = requested {
            if id == 0 {
                return Err(NodeError::Catalog(CatalogError::GroupZero));
            }
            if self.catalog.get(id).is_some() {
                return Err(NodeError::Catalog(CatalogError::IdUsed(id)));
            }
        }
        Ok(GroupCommand::Create {
            requested,
            replicas: self.catalog.place(&voters, replicas),
        })
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
    pub(crate) fn tick(&mut self) -> bool {
        self.replica.tick();
        self.ticks += 1;
        if self.ticks.is_multiple_of(WAL_LAZY_SYNC_TICKS) {
            if let Err(error) = self.sync_wal() {
                tracing::error!(%error, "storage failure: stopping this node");
                return false;
            }
        }
        if self.ticks.is_multiple_of(FORWARD_SWEEP_TICKS) {
            // Forwards whose client gave up (its deadline passed): the entry was lost, or will
            // be applied with nobody left to answer.
            self.forwarded.retain(|_, reply| !reply.is_closed());
        }
        if self.group == 0 {
            self.publish_self_if_needed();
        }
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

    /// Every `Ready` the replica has, through the one driver (`ballot_core::driver`), each
    /// batch synced in place.
    /// Asks again for the reads that waited for the leader's first commit in its term; those
    /// still waiting after [`READ_WAIT_FOR_TERM_COMMIT_TICKS`] get the refusal.
    fn retry_reads_until_term_commit(&mut self) {
        if self.reads_until_term_commit.is_empty() {
            return;
        }
        for (queued, mode, reply) in std::mem::take(&mut self.reads_until_term_commit) {
            let id = self.next_read_id;
            self.next_read_id += 1;
            match self.replica.read(id, mode) {
                Ok(()) => {
                    self.reads_unconfirmed.insert(id, reply);
                }
                Err(ReplicaError::LeaderNotReady)
                    if self.ticks - queued < READ_WAIT_FOR_TERM_COMMIT_TICKS =>
                {
                    self.reads_until_term_commit.push((queued, mode, reply));
                }
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            }
        }
    }

    /// Syncs what was appended, if anything is not durable yet (another group's completion may
    /// have synced the shared WAL for this batch already).
    fn sync_wal(&mut self) -> Result<(), WalError> {
        if self.log.is_synced() {
            return Ok(());
        }
        let started = Instant::now();
        ballot_core::LogStore::sync(&mut self.log)?;
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
}

/// Files `reply` under the position a proposal was given, to be answered when that index is
/// applied; a refused proposal is answered at once.
fn wait_for_position<T>(
    waiting: &mut BTreeMap<LogIndex, (Term, Reply<T>)>,
    proposed: Result<LogPosition, ballot_core::ReplicaError>,
    reply: Reply<T>,
) {
    match proposed {
        Ok(position) => {
            waiting.insert(position.index, (position.term, reply));
        }
        Err(error) => {
            let _ = reply.send(Err(error.into()));
        }
    }
}

/// The indexes in `waiting` at or below `last`: what an apply through `last` has decided.
fn indexes_through<V>(waiting: &BTreeMap<LogIndex, V>, last: LogIndex) -> Vec<LogIndex> {
    waiting.range(..=last).map(|(&index, _)| index).collect()
}

/// A storage failure while a batch was handled: the node stops (fail-stop).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageFailure {
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    #[error("snapshot store: {0}")]
    Snapshots(#[from] SnapshotError),
    #[error("state machine: {0}")]
    StateMachine(String),
}

/// The loop as the driver's host: its replica, WAL, `snap/` and state machine.
impl<R> ReadyHost for GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    type Replica = R;
    type Log = HostLog;
    type Snapshots = SharedSnapshots;
    type Error = StorageFailure;

    fn replica(&mut self) -> &mut R {
        &mut self.replica
    }

    fn log(&mut self) -> &mut HostLog {
        &mut self.log
    }

    fn snapshots(&mut self) -> &mut SharedSnapshots {
        &mut self.snapshots
    }

    fn send(&mut self, message: R::Message) {
        self.counters.on_sent(&message);
        if message.probe().is_some() && !message.awaited_by_clients() {
            self.transport.hold(self.group, &message);
        } else {
            self.transport.send_to_group(self.group, &message);
        }
    }

    fn sync_log(&mut self) -> Result<(), StorageFailure> {
        Ok(self.sync_wal()?)
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), StorageFailure> {
        self.restore_image(snapshot)
            .map_err(StorageFailure::StateMachine)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<(), StorageFailure> {
        self.apply_committed(entries)
            .map_err(StorageFailure::StateMachine)
    }

    fn reads(&mut self, confirmed: &[ReadState], dropped: &[u64]) {
        self.answer_reads(confirmed, dropped);
    }

    fn compaction_wanted(&mut self) -> Result<(), StorageFailure> {
        // A replica falling asleep asks too, to give its log back; a few entries are not worth
        // a marker write (the node loop compacts a sleeping group whose entries keep an old
        // segment of the shared WAL whatever their number: `compact_asleep`).
        let since = self
            .store
            .applied_index()
            .saturating_sub(self.counters.compaction_index);
        if self.replica.is_asleep() && since < GIVE_BACK_ENTRIES_MIN {
            return Ok(());
        }
        self.compact().map_err(StorageFailure::StateMachine)
    }

    fn snapshot_wanted(&mut self) -> Result<(), StorageFailure> {
        self.build_image().map_err(StorageFailure::StateMachine)
    }
}
