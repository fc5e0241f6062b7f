//! The replica interface: what every replicated-log protocol offers to the layers above it.
//!
//! A replica is a pure state machine. Time enters only through [`Replica::tick`], messages only
//! through [`Replica::step`], and every output leaves through [`Replica::ready`]. It never reads a
//! clock, touches a file or a socket, or draws from a global random source: the same inputs give
//! the same outputs, which is what lets one seed reproduce a simulator run exactly.

use crate::{
    LogIndex, LogPosition, Membership, MembershipChange, NodeId, Ready, ReplicaError, Snapshot,
    SnapshotMeta, Term,
};
use bytes::Bytes;
use std::fmt;

/// A protocol message as seen by the transport and the simulator: it has an addressee and a
/// readable one-line form for traces.
pub trait ProtocolMessage: Clone + fmt::Debug + fmt::Display {
    fn from(&self) -> NodeId;
    fn to(&self) -> NodeId;
    /// Approximate encoded size, for batching and network accounting.
    fn size_bytes(&self) -> usize;
}

/// How a linearizable read is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// The leader records its commit index and confirms it is still leader with a round of
    /// heartbeats acknowledged by a quorum (dissertation §6.4).
    ReadIndex,
    /// The leader trusts that no other leader can exist while its lease (heartbeats acknowledged
    /// within an election timeout, less the configured clock-drift bound) lasts; no round trip.
    Lease,
}

/// What a node is doing in the protocol right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: the term has not been raised yet (dissertation §9.6).
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// A read-only view of a replica for metrics, traces and invariant checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    /// Highest index handed out for applying (in a `Ready`).
    pub applied_index: LogIndex,
    pub last_log: LogPosition,
    /// First index still held in the log (everything before is in the snapshot).
    pub first_log_index: LogIndex,
    pub membership: Membership,
}

/// The interface every replicated-log protocol implements. See [`crate::ready`] for the contract
/// of handling outputs.
pub trait Replica {
    type Message: ProtocolMessage;

    fn id(&self) -> NodeId;

    /// One unit of logical time has passed. Timeouts are counted in ticks.
    fn tick(&mut self);

    /// Handle one message from a peer. Messages from unknown nodes or stale terms are dropped by
    /// the protocol; malformed ones cannot exist (they are typed).
    fn step(&mut self, message: Self::Message);

    /// Ask the leader to append `command`. On success the command will be at `LogPosition` if it
    /// commits; if another entry is later applied at that index the proposal was lost.
    fn propose(&mut self, command: Bytes) -> Result<LogPosition, ReplicaError>;

    /// Ask the leader to append a single-server membership change.
    fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogPosition, ReplicaError>;

    /// Start a linearizable read barrier. When confirmed, a [`crate::ReadState`] with the same
    /// `request_id` appears in a `Ready`; if it can never be confirmed here its id appears in
    /// [`crate::Ready::dropped_reads`].
    fn read(&mut self, request_id: u64, mode: ReadMode) -> Result<(), ReplicaError>;

    /// Ask the leader to hand leadership to `target` once `target` has caught up.
    fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ReplicaError>;

    fn has_ready(&self) -> bool;

    /// Take the next batch of outputs. Call only when `has_ready()`.
    fn ready(&mut self) -> Ready<Self::Message>;

    /// The last `Ready` has been fully handled: persisted, applied, sent.
    fn advance(&mut self);

    /// The caller's state machine is durable through `durable_index` (an index it has applied):
    /// the replica may drop log entries up to it, keeping a few trailing ones. Returns the
    /// metadata of that point (term and membership, which only the replica knows for certain);
    /// the caller persists it (it is [`crate::PersistedState::compacted`] after a restart) before
    /// dropping stored entries. An index at or before the last compaction changes nothing and
    /// returns `None`.
    fn compact(&mut self, durable_index: LogIndex) -> Result<Option<SnapshotMeta>, ReplicaError>;

    /// The caller's state machine has been snapshotted at `snapshot.meta.last_included.index` (an
    /// index it has applied), as [`crate::Ready::snapshot_wanted`] asked: the replica keeps the
    /// image to send to followers that need it. It does not compact the log: the image need not
    /// be durable. The replica fills in the term and the membership at that index itself and
    /// returns the completed metadata. An image no newer than the one it holds changes nothing
    /// and comes back as given (its term left at what the caller passed).
    fn snapshot_taken(&mut self, snapshot: Snapshot) -> Result<SnapshotMeta, ReplicaError>;

    fn status(&self) -> Status;

    /// Term of the entry at `index` if this replica still knows it: an entry in its log, or the
    /// last entry covered by its snapshot. For invariant checks and debugging.
    fn entry_term(&self, index: LogIndex) -> Option<Term>;
}
