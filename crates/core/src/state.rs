//! What a replica persists and restarts from: hard state, where its log was compacted, and the
//! log.

use crate::{Entry, LogIndex, LogPosition, Membership, NodeId, Term};
use bytes::Bytes;

/// The protocol state that must be durable before certain messages leave (a vote before the
/// reply that grants it, a term before any message in that term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// Persisted as a hint only: losing it is safe, it is re-learned from the leader.
    pub commit_index: LogIndex,
}

/// What a snapshot covers: every entry up to and including `last_included`, and the membership
/// in force at that point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    pub last_included: LogPosition,
    pub membership: Membership,
}

/// A state machine image plus its metadata. `data` is opaque to the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// Everything a replica is built from, at its first start and after every restart: a replica
/// takes nothing from its configuration that it must remember, membership included. A brand-new
/// member's driver makes [`PersistedState::bootstrap`] durable before it first builds the
/// replica, so a member that crashes at any moment (the whole cluster at once included) comes
/// back from its storage alone.
#[derive(Debug, Clone, Default)]
pub struct PersistedState {
    pub hard_state: HardState,
    /// The last compaction point the caller persisted (from [`crate::Replica::compact`] or an
    /// installed snapshot): its state machine is durable at least this far. `None`: the log was
    /// never compacted. A restarted replica holds no snapshot image; it asks for one when a
    /// follower needs it.
    pub compacted: Option<SnapshotMeta>,
    /// Entries after the compaction point (or from index 1), contiguous.
    pub entries: Vec<Entry>,
}

impl PersistedState {
    /// What a brand-new member's storage holds before its replica first starts: the membership it
    /// starts from, recorded as the compaction point at index 0 (which covers no entry). For a
    /// member of a new cluster that is every initial voter; for one joining a running cluster it
    /// is empty (or what the operator added it as), and the leader's log or snapshot tells it the
    /// rest. Membership changes in the log, compaction points and installed snapshots carry the
    /// membership on from there.
    pub fn bootstrap(membership: Membership) -> Self {
        Self {
            compacted: Some(SnapshotMeta {
                last_included: LogPosition::default(),
                membership,
            }),
            ..Self::default()
        }
    }

    /// The membership in force before the first entry held: the compaction point's, or none for
    /// storage that was never bootstrapped.
    pub fn base_membership(&self) -> Membership {
        self.compacted
            .as_ref()
            .map(|meta| meta.membership.clone())
            .unwrap_or_default()
    }
}
