//! The simulator's own checkers, one file per property: what it holds every engine to alike
//! (State Machine Safety and the apply contract, liveness after the heal, leader stability on
//! rejoin). An engine's own properties come from its crate (`Replica::safety_checkers`, see
//! `ballot_core::safety`) and run beside these, per group.
//!
//! Every checker is incremental: it keeps a small registry and looks only at what changed in the
//! current step (an applied entry, a role change), never at whole logs per step. Checkers never
//! touch a replica's state and never draw randomness; they only report [`Violation`]s.

pub mod leader_stability;
pub mod liveness;
pub mod state_machine_safety;

use std::fmt;

pub use state_machine_safety::StateMachineSafety;

/// A broken property: which checker saw it, at which virtual tick, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub time: u64,
    pub description: String,
}

impl Violation {
    pub fn new(checker: &'static str, time: u64, description: impl Into<String>) -> Self {
        Self {
            checker,
            time,
            description: description.into(),
        }
    }

    /// Whether this violation breaks safety (the run stops) rather than liveness.
    pub fn is_safety(&self) -> bool {
        !matches!(self.checker, liveness::NAME | leader_stability::NAME)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] at tick {}: {}",
            self.checker, self.time, self.description
        )
    }
}
