//! What the loop counts (answers, fsync and round-trip latencies, leader changes) and publishes
//! in `NodeStatus` after every batch, for `/metrics` and the status calls.

use super::*;

pub(super) struct Counters {
    pub(super) last_leader: Option<NodeId>,
    pub(super) leader_changes: u64,
    pub(super) proposals_committed: u64,
    pub(super) proposals_failed: u64,
    pub(super) compaction_index: LogIndex,
    pub(super) snapshot_images_built: u64,
    pub(super) snapshot_images_installed: u64,
    /// What the node loop counts for the whole node, published with group 0's status.
    pub(super) node: NodeCounts,
    pub(super) wal_sync: LatencyHistogram,
    /// When the last liveness probe to each peer left; taken out by the peer's next answer.
    pub(super) probes_unanswered: HashMap<NodeId, Instant>,
    pub(super) peer_round_trips: BTreeMap<NodeId, LatencyHistogram>,
}

/// What the node loop counts across its groups.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeCounts {
    /// Peer messages of a group this node does not host, dropped.
    pub(crate) unknown_group_messages: u64,
    pub(crate) groups_hosted: u64,
    pub(crate) groups_asleep: u64,
    pub(crate) peers_declared_down: u64,
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
            node: NodeCounts::default(),
            wal_sync: LatencyHistogram::new(FSYNC_BOUNDS_MICROS),
            probes_unanswered: HashMap::new(),
            peer_round_trips: BTreeMap::new(),
        }
    }
}

impl Counters {
    pub(super) fn observe_wal_sync(&mut self, took: std::time::Duration) {
        self.wal_sync.observe(took.as_micros() as u64);
    }

    pub(super) fn count_answer<T>(&mut self, answer: &Result<T, NodeError>) {
        match answer {
            Ok(_) => self.proposals_committed += 1,
            Err(_) => self.proposals_failed += 1,
        }
    }

    /// Liveness probes carry no id, so a round trip is timed from the latest probe to a peer to
    /// the first answer after it. A late answer to an earlier probe makes one sample short; a
    /// lost answer makes none.
    pub(super) fn on_sent(&mut self, message: &impl ProtocolMessage) {
        if message.probe() == Some(Probe::Sent) {
            self.probes_unanswered.insert(message.to(), Instant::now());
        }
    }

    pub(super) fn on_received(&mut self, message: &impl ProtocolMessage) {
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

impl<R> GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    pub(super) fn publish_status(&mut self) {
        let status = self.replica.status();
        self.transitions.observe(&status);
        if status.leader.is_some() && status.leader != self.counters.last_leader {
            self.counters.leader_changes += 1;
        }
        if status.leader.is_some() && self.counters.last_leader.is_none() {
            self.leader_found.notify_waiters();
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
                + self.group_proposals.len()
                + self.membership_changes.len()) as u64,
            compaction_index: counters.compaction_index,
            snapshot_images_built: counters.snapshot_images_built,
            snapshot_images_installed: counters.snapshot_images_installed,
            unknown_group_messages: counters.node.unknown_group_messages,
            groups_hosted: counters.node.groups_hosted,
            groups_asleep: counters.node.groups_asleep,
            peers_declared_down: counters.node.peers_declared_down,
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
            catalog: self.catalog.view(),
        };
        debug_assert!(status.role != Role::Leader || status.leader == Some(status.id));
    }
}
