//! Raft (Ongaro & Ousterhout 2014; Ongaro's dissertation 2014) as a pure state machine.
//!
//! This crate holds only the algorithm: no sockets, files, threads, clocks or global randomness.
//! Time enters as [`Replica::tick`](ballot_core::Replica::tick), messages as
//! [`Replica::step`](ballot_core::Replica::step), and everything that must happen in the outside
//! world leaves as a [`Ready`](ballot_core::Ready) batch. The server and the simulator drive the
//! same code, which is why one simulator seed reproduces a run exactly.
//!
//! What is here:
//!
//! - elections with randomized timeouts, the up-to-date vote rule, votes persisted before the
//!   reply, **PreVote** and **CheckQuorum** (a returning partitioned node cannot depose a healthy
//!   leader, and a leader cut off from its quorum steps down);
//! - AppendEntries with the consistency check and the conflict-term back-off hint; followers
//!   truncate conflicting suffixes, leaders never rewrite their own log;
//! - commitment only by counting replicas of the leader's own term, helped by a no-op at the
//!   start of each term; the commit index travels on appends and heartbeats;
//! - **pipelined** replication: per follower a probe / replicate / snapshot state, a window of
//!   in-flight appends, and entry and byte limits per message; proposals between two `Ready`s
//!   go out as one batch;
//! - **linearizable reads** by ReadIndex (one heartbeat round confirms a batch of reads) or by
//!   leader lease (bounded by the election timeout minus a clock-drift bound);
//! - **snapshots**: the caller is asked for one at a threshold; the log behind it is compacted;
//!   lagging followers receive it in chunks;
//! - **single-server membership changes** with **learners**, and **leadership transfer**.
//!
//! # Driving a replica
//!
//! ```
//! use ballot_core::{Membership, PersistedState, Replica, Role};
//! use ballot_raft::{Config, Raft};
//!
//! // A one-node cluster elects itself after one election timeout.
//! // Its storage holds the membership it starts from before anything else (see
//! // `PersistedState::bootstrap`); every later start reads it from there.
//! let storage = PersistedState::bootstrap(Membership::with_voters([1]));
//! let mut raft = Raft::new(Config::new(1), storage).unwrap();
//! for _ in 0..30 {
//!     raft.tick();
//! }
//! assert_eq!(raft.status().role, Role::Leader);
//! let position = raft.propose(bytes::Bytes::from_static(b"x=1")).unwrap();
//!
//! // Handle Ready batches per the contract in `ballot_core::ready` until the proposal commits.
//! let mut applied = Vec::new();
//! while raft.has_ready() {
//!     let ready = raft.ready();
//!     // 1. send ready.messages; 2. persist ready.entries and ready.hard_state; 3. send
//!     // ready.messages_after_persist; 4. apply ready.committed_entries ...
//!     applied.extend(ready.committed_entries);
//!     raft.advance();
//! }
//! assert!(applied.iter().any(|entry| entry.position() == position));
//! ```

pub mod codec;
mod config;
mod election;
mod hibernation;
mod log;
mod membership;
mod message;
mod progress;
mod raft;
mod read;
mod replication;
pub mod safety;
mod snapshot;
mod transfer;

pub use config::{Break, Config, TICK_MILLIS_DEFAULT};
pub use message::{AppendResult, Message, MessageBody};
pub use raft::Raft;
