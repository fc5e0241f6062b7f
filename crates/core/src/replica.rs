//! The replica interface: what every replicated-log protocol offers to the layers above it.
//!
//! A replica is a pure state machine. Time enters only through [`Replica::tick`], messages only
//! through [`Replica::step`], and every output leaves through [`Replica::ready`]. It never reads a
//! clock, touches a file or a socket, or draws from a global random source: the same inputs give
//! the same outputs, which is what lets one seed reproduce a simulator run exactly.

use crate::codec::DecodeError;
use crate::{
    GroupId, LogIndex, LogPosition, Membership, MembershipChange, NodeId, PersistedState, Ready,
    ReplicaError, Snapshot, SnapshotMeta, Term,
};
use bytes::{Bytes, BytesMut};
use std::fmt;

/// A protocol message as seen by the transport and the simulator: it has an addressee and a
/// readable one-line form for traces. The runtime asks it the few questions it would otherwise
/// need the protocol's nouns for.
pub trait ProtocolMessage: Clone + fmt::Debug + fmt::Display + Send + 'static {
    fn from(&self) -> NodeId;
    fn to(&self) -> NodeId;
    /// Approximate encoded size, for batching and network accounting.
    fn size_bytes(&self) -> usize;

    /// The message's part in the liveness probes a leader sends its followers, by which the
    /// runtime times peer round trips. Probes carry no id, so a round trip is timed from the
    /// latest probe to a peer to the first answer after it.
    fn probe(&self) -> Option<Probe> {
        None
    }

    /// Whether a client may be waiting on this message (an append that commits its write, a
    /// read round, a read answer). A message no client waits on (a plain liveness probe) may
    /// leave after the answers the same batch allows, so that clients are not kept waiting on
    /// sends that do not concern them.
    fn awaited_by_clients(&self) -> bool {
        true
    }
}

/// A message that crosses a real network: the protocol's own wire form. The simulator moves
/// messages as values and needs only [`ProtocolMessage`]; the server's peer transport needs this.
pub trait WireMessage: ProtocolMessage {
    /// Appends the message's wire form to `out`. The form is the protocol's own and carries its
    /// own version; [`WireMessage::decode`] reads it back.
    fn encode(&self, out: &mut BytesMut);

    /// Reads one message in the form [`WireMessage::encode`] writes, refusing anything else
    /// (another version, a truncated or malformed body) with an error that names the problem.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>
    where
        Self: Sized;
}

/// See [`ProtocolMessage::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A liveness probe from a leader (Raft's heartbeat).
    Sent,
    /// A follower's answer to one.
    Answer,
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

/// What a runtime tells any engine it builds, in the runtime's units (ticks): the settings an
/// operator gives with etcd's flags. Each engine maps them onto its own mechanisms (a Raft
/// heartbeat and election timeout, a ZAB leader's pings and a follower's sync limit, a
/// Multi-Paxos leader's lease); everything else about an engine is its factory's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// Ticks between a leader's liveness probes (etcd's `--heartbeat-interval`).
    pub probe_interval_ticks: u32,
    /// A follower that hears no leader for a number of ticks drawn from `[min, max)` starts to
    /// replace it (etcd's `--election-timeout` is the minimum; the maximum is twice it).
    pub leader_timeout_min_ticks: u32,
    pub leader_timeout_max_ticks: u32,
    /// Entries applied after which the log is compacted (etcd's `--snapshot-count`).
    pub compaction_threshold_entries: u64,
    /// The largest command a replica accepts, in bytes.
    pub command_bytes_max: usize,
    /// A quiet replica may sleep ([`Replica::is_asleep`]); the runtime then runs node liveness
    /// and tells replicas of a peer it declared down ([`Replica::peer_down`]).
    pub hibernate: bool,
}

/// What a replica is built from, each time its node starts: a server process opening its data
/// directory, a simulated node coming back. There is no bootstrap configuration here: a node's
/// disk holds its starting membership from the moment it is created
/// ([`PersistedState::bootstrap`]), so every start, the first one included, is from durable
/// state alone. The engine's own settings (timeouts, thresholds) are the factory's business.
#[derive(Debug, Clone)]
pub struct ReplicaStart {
    pub node_id: NodeId,
    /// The group this replica belongs to (0 on a node that hosts only the one group): what
    /// lets a factory build each group's replica of its own engine.
    pub group: GroupId,
    /// The durable state to start from.
    pub persisted: PersistedState,
    /// Seed for the replica's own random source, different for every incarnation.
    pub rng_seed: u64,
    /// 0 for the first start of a node, then counting restarts and re-adds (the simulator's
    /// count; a server process counts nothing across its lifetimes and says 0).
    pub incarnation: u64,
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

    /// Ask the leader to append `command`: append it here if this replica leads, else pass it
    /// to the leader it knows. Nothing answers a forward: the outcome shows only in the log
    /// (callers that need one record something in the command and watch for it to apply).
    fn propose_or_forward(&mut self, command: Bytes) -> Result<(), ReplicaError>;

    /// This replica's role now; cheaper than [`Replica::status`], which copies the membership.
    fn role(&self) -> Role {
        self.status().role
    }

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

    /// The replica sleeps: a tick does nothing until a message or a request wakes it, so the
    /// runtime may stop ticking it (hibernation, with [`ReplicaSettings::hibernate`]).
    fn is_asleep(&self) -> bool {
        false
    }

    /// The runtime's node liveness heard nothing from `node` for a leader timeout. A sleeping
    /// replica that relies on `node` (a follower of a leader there) wakes and acts as if the
    /// leader had timed out.
    fn peer_down(&mut self, _node: NodeId) {}

    /// Stand for leader now rather than at the next election timeout. A node starting a new
    /// group calls it on the one replica chosen to lead first, so the group is ready in a round
    /// trip instead of an election timeout. A replica that cannot lead (not a voter), already
    /// leads, or whose group has seen any era but the first ignores it: waking an established
    /// group this way would only disturb its leader.
    fn campaign(&mut self);

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

    /// The safety properties this engine promises, as fresh checkers for one group (see
    /// [`crate::safety`]). A simulator runs them on every group beside its own checks.
    fn safety_checkers() -> Vec<Box<dyn crate::SafetyChecker>>
    where
        Self: Sized,
    {
        Vec::new()
    }
}
