//! Deterministic simulator for any ballot replica (see `ballot_core::Replica`).
//!
//! Owned by the simulator work: module list below grows as modules land.

pub mod linearizability;
