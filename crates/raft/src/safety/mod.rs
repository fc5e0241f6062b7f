//! Raft's safety properties (paper figure 3) as checkers a simulator runs beside its own, one set
//! per group: what this engine promises, brought with it (see `ballot_core::safety`). State
//! Machine Safety is every engine's duty, so the simulator checks that one itself.

mod election_safety;
mod leader_completeness;
mod log_matching;

pub use election_safety::ElectionSafety;
pub use leader_completeness::LeaderCompleteness;
pub use log_matching::LogMatching;

use ballot_core::SafetyChecker;

/// Fresh checkers for one group.
pub fn checkers() -> Vec<Box<dyn SafetyChecker>> {
    vec![
        Box::<ElectionSafety>::default(),
        Box::<LogMatching>::default(),
        Box::<LeaderCompleteness>::default(),
    ]
}

#[cfg(test)]
mod testing {
    use ballot_core::{
        Entry, EntryPayload, LogIndex, LogView, Membership, NodeId, Role, Status, Term,
    };
    use bytes::Bytes;

    pub(crate) fn status(id: NodeId, role: Role, term: Term) -> Status {
        Status {
            id,
            role,
            term,
            leader: None,
            commit_index: 0,
            applied_index: 0,
            last_log: Default::default(),
            first_log_index: 1,
            membership: Membership::with_voters([1, 2, 3]),
        }
    }

    pub(crate) fn command(index: LogIndex, term: Term, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Command(Bytes::from_static(data)),
        }
    }

    /// A log that knows nothing: for checkers that do not read it.
    pub(crate) struct NoLog;

    impl LogView for NoLog {
        fn term_at(&self, _index: LogIndex) -> Option<Term> {
            None
        }

        fn first_log_index(&self) -> LogIndex {
            1
        }
    }

    /// A log described by its term lookup and its first index.
    pub(crate) struct FnLog<F> {
        term_at: F,
        first_log_index: LogIndex,
    }

    impl<F: Fn(LogIndex) -> Option<Term>> FnLog<F> {
        pub(crate) fn new(term_at: F, first_log_index: LogIndex) -> Self {
            Self {
                term_at,
                first_log_index,
            }
        }
    }

    impl<F: Fn(LogIndex) -> Option<Term>> LogView for FnLog<F> {
        fn term_at(&self, index: LogIndex) -> Option<Term> {
            (self.term_at)(index)
        }

        fn first_log_index(&self) -> LogIndex {
            self.first_log_index
        }
    }
}
