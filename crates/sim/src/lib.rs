//! Deterministic simulator for any ballot replica (see `ballot_core::Replica`).
//!
//! # What it does
//!
//! [`run`] builds a cluster of `nodes` replicas (ids `1..=n`, all voters) with a factory you pass,
//! and drives it in virtual time: one tick delivers every message due, ticks every running
//! replica, lets the simulated clients and the nemesis act, and handles every replica's `Ready`
//! exactly as `ballot_core::ready` prescribes (messages at once; writes unsynced until an fsync
//! latency has passed; then the messages that wait for durability, applies, reads, `advance`).
//! Every random choice comes from one seeded generator, so a seed reproduces a run, trace and all.
//!
//! ```ignore
//! let config = SimConfig { nodes: 5, seed: 42, faults: "all".parse()?, trace: true, ..SimConfig::default() };
//! let report = ballot_sim::run(&config, |start: ReplicaStart| {
//!     let mut raft = Config::new(start.node_id);
//!     raft.rng_seed = start.rng_seed;
//!     Raft::new(raft, start.persisted) // Err = refuses its durable state: a `restart` violation
//! });
//! assert!(report.passed(), "{:#?}", report.violations);
//! ```
//!
//! With `groups` above 1, that many replicated groups run on the same nodes and network: a crash
//! or a partition hits every group on a node, and each group has its own clients and checkers.
//!
//! # Phases
//!
//! 1. **Chaos** (`steps` ticks): clients issue reads, writes and compare-and-swaps on a few keys
//!    while the nemesis injects the enabled faults (see [`faults`] for the fault model: latency,
//!    reordering, loss, duplication, five kinds of partition, crashes with lost or torn unsynced
//!    writes, failed fsyncs, membership changes, leadership transfers, groups created and
//!    removed).
//! 2. **Heal**: every fault is undone, crashed nodes restart, an interrupted membership change is
//!    completed. Within `heal_ticks` a leader followed by a quorum must exist and every operation
//!    invoked after the heal must get a definite outcome.
//! 3. **Leader stability** (when a partition fault is enabled): a follower is isolated and
//!    brought back; the healthy leader must keep its term (PreVote, dissertation §9.6).
//! 4. **Probe**: a final write must commit. Then outstanding operations drain.
//!
//! # Checks
//!
//! After every step, incrementally, per group: the engine's own safety checkers, which its crate
//! hands over (`Replica::safety_checkers`; Raft's are Election Safety, Log Matching and Leader
//! Completeness) and the simulator feeds without naming them, then its own ([`checkers`]): State
//! Machine Safety and the `Ready` contract itself. At the end: liveness and linearizability of the recorded client history ([`linearizability`]). A run
//! stops at the first safety violation and reports it with the trace up to that point.
//! [`run_many`] runs a range of seeds on all cores.

pub mod checkers;
pub mod client;
pub mod disk;
pub mod faults;
pub mod group;
pub mod kv;
pub mod linearizability;
mod liveness;
mod nemesis;
pub mod network;
pub mod node;
pub mod simulation;
pub mod trace;

#[cfg(test)]
mod testing;

pub use ballot_core::ReplicaStart;
pub use checkers::Violation;
pub use faults::{FaultKind, FaultSet};
pub use node::DriverBreak;
pub use simulation::{run, run_many, SimConfig, SimReport};
