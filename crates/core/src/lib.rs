//! Types shared by every replicated-log protocol in ballot, and the replica interface they all
//! implement.
//!
//! Raft today and Multi-Paxos, ZAB and PBFT later all turn client proposals into one ordered log of
//! committed commands (a replicated state machine, seed 002). The storage layer, the server and the
//! simulator depend on [`Replica`] and the types here, never on a protocol by name.
//!
//! This crate does no I/O and has no clock and no randomness. The one behaviour it owns is the
//! order in which a replica's outputs are handled ([`driver`]), over the storage traits in
//! [`storage`], because the server and the simulator must follow it alike.

pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod driver;
pub mod entry;
pub mod error;
pub mod membership;
pub mod ready;
pub mod replica;
pub mod safety;
pub mod state;
pub mod storage;

pub use entry::{Entry, EntryPayload, LogPosition};
pub use error::ReplicaError;
pub use membership::{Membership, MembershipChange};
pub use ready::{ReadState, Ready};
pub use replica::{
    Probe, ProtocolMessage, ReadMode, Replica, ReplicaSettings, ReplicaStart, Role, Status,
    WireMessage,
};
pub use safety::{Finding, LogView, SafetyChecker};
pub use state::{HardState, PersistedState, Snapshot, SnapshotMeta};
pub use storage::{LogStore, RecoveredLog, SnapshotStore, StateMachine};

/// Identifies a replicated group. A node hosts a replica of many groups; group 0 is the one every
/// cluster has (the default keyspace, and the catalog of the others).
pub type GroupId = u32;

/// Identifies a node of a cluster. Never zero: zero is reserved so that wire formats can use it
/// for "none".
pub type NodeId = u64;

/// Position of an entry in the replicated log. The first entry has index 1; index 0 is the empty
/// log's sentinel.
pub type LogIndex = u64;

/// Leadership era that created an entry. Raft calls it a term; other protocols map their own
/// era (Paxos ballot round, ZAB epoch, PBFT view) onto this number in their log entries.
pub type Term = u64;
