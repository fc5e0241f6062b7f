//! Invariant checkers, one file per property, each citing the paper section it checks.
//!
//! Every checker is incremental: it keeps a small registry and looks only at what changed in the
//! current step (a written entry, an applied entry, a role change), never at whole logs per step.
//! Checkers never touch a replica's state and never draw randomness; they only report
//! [`Violation`]s.

pub mod election_safety;
pub mod leader_completeness;
pub mod leader_stability;
pub mod liveness;
pub mod log_matching;
pub mod state_machine_safety;

use ballot_core::{EntryPayload, MembershipChange};
use std::fmt;

pub use election_safety::ElectionSafety;
pub use leader_completeness::LeaderCompleteness;
pub use log_matching::LogMatching;
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

/// A 64-bit FNV-1a digest of an entry's payload: equal payloads give equal digests; different
/// payloads collide with negligible probability for the sizes a run produces.
pub fn payload_digest(payload: &EntryPayload) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    match payload {
        EntryPayload::Noop => feed(&[0]),
        EntryPayload::Command(data) => {
            feed(&[1]);
            feed(data);
        }
        EntryPayload::Membership(change, membership) => {
            let (tag, id) = match change {
                MembershipChange::AddVoter(id) => (2, id),
                MembershipChange::AddLearner(id) => (3, id),
                MembershipChange::PromoteLearner(id) => (4, id),
                MembershipChange::Remove(id) => (5, id),
            };
            feed(&[tag]);
            feed(&id.to_le_bytes());
            for set in [&membership.voters, &membership.learners] {
                feed(&(set.len() as u64).to_le_bytes());
                for member in set {
                    feed(&member.to_le_bytes());
                }
            }
        }
    }
    hash
}
