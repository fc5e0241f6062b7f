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

/// Everything a replica is rebuilt from after a restart. A brand-new node has all of it empty
/// and takes its membership from its configuration.
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
