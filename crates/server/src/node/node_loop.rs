//! The node loop: the one thread that owns every group this node hosts ([`GroupHost`]s), the
//! input queue and the inbound peer sockets. Inputs and peer messages are handled in batches
//! and routed to their groups; after each batch every group that got something handles its
//! `Ready`s. Group 0 is always here; the others are started and stopped as group 0's catalog
//! says (on open, and whenever a catalog command is applied or a snapshot installs one).
//!
//! Every group begins its batch (sends, writes, applies what a leader may) before any
//! completes one, so that the first completion's `fdatasync` of the shared WAL (where every
//! group but 0 keeps its log, `group_host::log`) covers them all.
//!
//! No group has a thread or a timer of its own: one ticker ticks them all, except those that
//! hibernate (see `ballot_raft`'s hibernation), which are not ticked at all until an input, a
//! message or node liveness ([`super::liveness`]) wakes them.

use super::catalog::GroupRecord;
use super::group_host::log::{shared_wal_dir, SharedLog};
use super::group_host::{group_dir, GroupHost, NodeCounts, NodeParts};
use super::inbox::{Inbox, InputSender, Queued};
use super::liveness::NodeLiveness;
use super::{GroupCell, GroupCells, Input, NodeError, NodeStatus};
use crate::config::ServerConfig;
use crate::transport::Transport;
use ballot_core::{
    GroupId, Membership, NodeId, Replica, ReplicaSettings, ReplicaStart, WireMessage,
};
use ballot_storage::dir_lock::DirLock;
use ballot_storage::identity::Identity;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Inputs handled before the groups' outputs are processed; bounds the latency one batch adds.
const INPUTS_PER_BATCH_MAX: usize = 1024;
/// Ticks between looks at which groups keep the shared WAL's oldest segment.
const OLD_SEGMENT_SWEEP_TICKS: u64 = 100;
/// Segments of the shared WAL kept before the sleeping groups that keep the oldest one are
/// compacted (busy groups compact on their own, every `--snapshot-count` entries).
const SHARED_WAL_SEGMENTS_KEPT: usize = 2;
/// Sleeping groups compacted per look: each compaction saves its marker on a thread of its own,
/// so a WAL whose oldest segment a thousand quiet groups share is freed over a few seconds
/// rather than by a thousand threads at once.
const OLD_SEGMENT_COMPACTIONS_PER_SWEEP: usize = 32;

/// The engine's constructor, called once per group this node starts.
pub(crate) type NewReplica<R> =
    Box<dyn Fn(&ReplicaSettings, ReplicaStart) -> Result<R, String> + Send>;

pub(crate) struct NodeLoop<R: Replica> {
    config: ServerConfig,
    identity: Identity,
    new_replica: NewReplica<R>,
    /// Group 0: the cluster's registry and catalog, and the etcd API's keyspace.
    zero: GroupHost<R>,
    /// Every other group this node hosts.
    groups: BTreeMap<GroupId, GroupHost<R>>,
    /// Their logs: opened when the first of them starts, or at open if it exists.
    shared_log: Option<SharedLog>,
    /// What client handles see of the groups (their stores and statuses), kept in step with
    /// `groups`.
    cells: GroupCells,
    transport: Arc<Transport>,
    loopback: InputSender,
    /// The input queue and the inbound peer connections.
    inbox: Inbox,
    /// Peer messages read in this batch, with their groups, waiting to be stepped.
    peer_messages: Vec<(GroupId, R::Message)>,
    /// Groups that got an input or a message in this batch.
    touched: BTreeSet<GroupId>,
    /// Groups (other than 0, which never sleeps) that are not hibernating: the ones ticked.
    awake: BTreeSet<GroupId>,
    liveness: NodeLiveness,
    ticks: u64,
    /// Peer messages of a group this node does not host, dropped.
    unknown_group_messages: u64,
    _lock: DirLock,
}

impl<R> NodeLoop<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// Opens group 0 from the data directory (whose lock the caller holds), then every group
    /// its catalog says this node hosts.
    // Each argument is one part `Node::start` built for this loop alone; a struct to carry
    // them would have no other use.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        config: ServerConfig,
        identity: Identity,
        lock: DirLock,
        transport: Arc<Transport>,
        status: Arc<Mutex<NodeStatus>>,
        leader_found: Arc<tokio::sync::Notify>,
        cells: GroupCells,
        inbox: Inbox,
        loopback: InputSender,
        new_replica: NewReplica<R>,
    ) -> Result<Self, String> {
        let zero = GroupHost::open(
            &config,
            &identity,
            0,
            identity.bootstrap.clone(),
            NodeParts {
                transport: transport.clone(),
                status,
                leader_found,
                loopback: loopback.clone(),
            },
            None,
            &*new_replica,
        )?;
        let shared_log = if shared_wal_dir(&config.data_dir).is_dir() {
            Some(SharedLog::open(
                &config.data_dir,
                config.shared_wal_segment_bytes,
            )?)
        } else {
            None
        };
        let liveness_config = config.clone();
        let mut opened = NodeLoop {
            config,
            identity,
            new_replica,
            zero,
            groups: BTreeMap::new(),
            shared_log,
            cells,
            transport,
            loopback,
            inbox,
            peer_messages: Vec::new(),
            touched: BTreeSet::new(),
            awake: BTreeSet::new(),
            liveness: NodeLiveness::new(&liveness_config),
            ticks: 0,
            unknown_group_messages: 0,
            _lock: lock,
        };
        opened.follow_catalog()?;
        Ok(opened)
    }

    pub(crate) fn zero(&self) -> &GroupHost<R> {
        &self.zero
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
            for (group, message) in self.peer_messages.drain(..) {
                if group == 0 {
                    self.zero.step(message);
                    continue;
                }
                match self.groups.get_mut(&group) {
                    Some(host) => {
                        host.step(message);
                        self.touched.insert(group);
                    }
                    // Not created here yet (this node applies the catalog after the sender),
                    // removed, or sent by a release ahead of this one. The protocol copes with
                    // the loss; the counter says it happened.
                    None => self.unknown_group_messages += 1,
                }
            }
            if handled == 0 {
                self.inbox.wait();
                continue;
            }
            if let Err(error) = self.after_batch() {
                tracing::error!(%error, "storage failure: stopping this node");
                break;
            }
            // What the completions and the tick held (answers sent after a sync, liveness).
            self.transport.send_held();
        }
        self.zero.shut_down();
        for host in self.groups.values_mut() {
            host.shut_down();
        }
    }

    /// Returns false on `Stop`, or when a group's storage failed.
    fn handle_input(&mut self, input: Input) -> bool {
        match input {
            Input::Tick => return self.tick(),
            Input::PeerConnection(connection) => self.inbox.add(connection),
            Input::Stop => return false,
            Input::CatalogFollowed { reply } => {
                let _ = reply.send(Ok(()));
            }
            Input::ToGroup { group: 0, input } => self.zero.handle_input(*input),
            Input::ToGroup { group, input } => match self.groups.get_mut(&group) {
                Some(host) => {
                    host.handle_input(*input);
                    self.touched.insert(group);
                }
                None => input.refuse(NodeError::UnknownGroup(group)),
            },
            other => self.zero.handle_input(other),
        }
        true
    }

    /// One tick for group 0 and every awake group, and for node liveness. Returns false when a
    /// group's storage failed.
    fn tick(&mut self) -> bool {
        self.ticks += 1;
        let mut healthy = self.zero.tick();
        for &group in &self.awake {
            if let Some(host) = self.groups.get_mut(&group) {
                healthy &= host.tick();
            }
        }
        self.touched.extend(self.awake.iter().copied());
        let peers = self.zero.peer_ids();
        let inbox = &self.inbox;
        let down = self.liveness.tick(
            self.ticks,
            &peers,
            |peer| inbox.last_heard(peer),
            &self.transport,
            // Every node pings while any group exists: a node's silence matters to the groups
            // of the others even when it hosts none itself.
            !self.zero.catalog().is_empty(),
        );
        if self.ticks.is_multiple_of(OLD_SEGMENT_SWEEP_TICKS) {
            healthy &= self.compact_groups_keeping_old_segments();
        }
        for peer in down {
            tracing::info!(
                peer = format!("{peer:x}"),
                "node liveness: nothing heard from a peer for an election timeout; the sleeping \
                 groups it led wake and elect"
            );
            for (&group, host) in &mut self.groups {
                host.peer_down(peer);
                self.touched.insert(group);
            }
        }
        healthy
    }

    /// Compacts the sleeping groups whose entries keep the shared WAL's oldest segment, so that
    /// a group that took a few writes and went quiet does not keep every later segment on disk.
    /// Returns false when a group's storage failed.
    fn compact_groups_keeping_old_segments(&mut self) -> bool {
        let Some(shared) = &self.shared_log else {
            return true;
        };
        let mut healthy = true;
        let mut started = 0;
        for group in shared.groups_keeping_old_segments(SHARED_WAL_SEGMENTS_KEPT) {
            if started == OLD_SEGMENT_COMPACTIONS_PER_SWEEP {
                break;
            }
            if let Some(host) = self.groups.get_mut(&group) {
                match host.compact_asleep() {
                    Ok(true) => started += 1,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::error!(group, %error, "compaction of a sleeping group failed");
                        healthy = false;
                    }
                }
            }
        }
        healthy
    }

    /// Every group that got something in this batch handles its `Ready`s; then the groups this
    /// node hosts follow the catalog, if it changed.
    fn after_batch(&mut self) -> Result<(), String> {
        let touched = std::mem::take(&mut self.touched);
        loop {
            let mut in_flight = Vec::new();
            if let Some(batch) = self.zero.begin_ready()? {
                in_flight.push((0, batch));
            }
            for &group in &touched {
                if let Some(host) = self.groups.get_mut(&group) {
                    if let Some(batch) = host
                        .begin_ready()
                        .map_err(|error| format!("group {group}: {error}"))?
                    {
                        in_flight.push((group, batch));
                    }
                }
            }
            if in_flight.is_empty() {
                break;
            }
            // Probes held while the groups began go out before the sync, one write per peer.
            self.transport.send_held();
            for (group, batch) in in_flight {
                let host = match group {
                    0 => &mut self.zero,
                    _ => self.groups.get_mut(&group).expect("began its batch above"),
                };
                host.complete_ready(batch)
                    .map_err(|error| format!("group {group}: {error}"))?;
            }
        }
        self.zero.after_readies();
        for group in touched {
            if let Some(host) = self.groups.get_mut(&group) {
                host.after_readies();
                if host.is_asleep() {
                    self.awake.remove(&group);
                } else {
                    self.awake.insert(group);
                }
            }
        }
        self.zero.set_node_counts(NodeCounts {
            unknown_group_messages: self.unknown_group_messages,
            groups_hosted: self.groups.len() as u64 + 1,
            groups_asleep: (self.groups.len() - self.awake.len()) as u64,
            peers_declared_down: self.liveness.declared_total,
        });
        if self.zero.take_catalog_changed() {
            self.follow_catalog()?;
        }
        Ok(())
    }

    /// Starts the groups the catalog says this node hosts and is not running, stops those it
    /// runs that the catalog no longer names (deleting their storage), and deletes directories
    /// of groups removed while this node was down.
    fn follow_catalog(&mut self) -> Result<(), String> {
        let me = self.identity.member_id;
        let wanted: BTreeMap<GroupId, GroupRecord> = self
            .zero
            .catalog()
            .hosted_by(me)
            .map(|record| (record.id, record.clone()))
            .collect();
        let gone: Vec<GroupId> = self
            .groups
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for group in gone {
            if let Some(mut host) = self.groups.remove(&group) {
                host.shut_down();
            }
            self.awake.remove(&group);
            self.cells.write().expect("group cells lock").remove(&group);
            if let Some(shared) = &mut self.shared_log {
                shared
                    .remove_group(group)
                    .map_err(|error| format!("group {group}: {error}"))?;
            }
            self.remove_storage(group);
            tracing::info!(group, "stopped a removed group and deleted its storage");
        }
        for (group, record) in wanted {
            if self.groups.contains_key(&group) {
                continue;
            }
            self.start_group(&record)?;
        }
        self.remove_leftovers();
        // Groups removed while this node was down: the shared WAL forgets them too.
        if let Some(shared) = &mut self.shared_log {
            for group in shared.groups() {
                if !self.groups.contains_key(&group) {
                    shared
                        .remove_group(group)
                        .map_err(|error| format!("group {group}: {error}"))?;
                }
            }
        }
        Ok(())
    }

    fn start_group(&mut self, record: &GroupRecord) -> Result<(), String> {
        let status = Arc::new(Mutex::new(NodeStatus {
            id: self.identity.member_id,
            ..NodeStatus::default()
        }));
        let leader_found = Arc::new(tokio::sync::Notify::new());
        if self.shared_log.is_none() {
            self.shared_log = Some(SharedLog::open(
                &self.config.data_dir,
                self.config.shared_wal_segment_bytes,
            )?);
        }
        let shared_log = self.shared_log.as_mut().expect("opened above");
        let log = shared_log
            .take_group(record.id, &group_dir(&self.config.data_dir, record.id))
            .map_err(|error| format!("group {}: {error}", record.id))?;
        let host = GroupHost::open(
            &self.config,
            &self.identity,
            record.id,
            Membership::with_voters(record.replicas.iter().copied()),
            NodeParts {
                transport: self.transport.clone(),
                status: status.clone(),
                leader_found: leader_found.clone(),
                loopback: self.loopback.clone(),
            },
            Some(log),
            &*self.new_replica,
        )
        .map_err(|error| format!("group {}: {error}", record.id))?;
        self.cells.write().expect("group cells lock").insert(
            record.id,
            GroupCell {
                store: host.store(),
                status,
                leader_found,
            },
        );
        tracing::debug!(group = record.id, replicas = ?record.replicas, "started a group");
        let mut host = host;
        // One replica, chosen by the id so that first leaders spread over the nodes, stands at
        // once; the group is ready in a round trip instead of an election timeout.
        let first_leader = record.replicas[record.id as usize % record.replicas.len()];
        if first_leader == self.identity.member_id {
            host.campaign();
        }
        self.groups.insert(record.id, host);
        self.touched.insert(record.id);
        self.awake.insert(record.id);
        Ok(())
    }

    fn remove_storage(&self, group: GroupId) {
        let dir = group_dir(&self.config.data_dir, group);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(group, dir = %dir.display(), %error, "cannot delete a removed group's storage");
            }
        }
    }

    /// Directories under `groups/` of groups this node no longer hosts: removed (or moved away)
    /// while it was down. Ids are never reused, so nothing will want them again.
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("groups")) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(group) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<GroupId>().ok())
            else {
                continue;
            };
            if group != 0 && !self.groups.contains_key(&group) {
                tracing::info!(
                    group,
                    "deleting the storage of a group this node no longer hosts"
                );
                self.remove_storage(group);
            }
        }
    }

    /// The node's peers as group 0's registry knows them.
    pub(crate) fn peer_urls(&self) -> Vec<(NodeId, String)> {
        self.zero.peer_urls()
    }
}
