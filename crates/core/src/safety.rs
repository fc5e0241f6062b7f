//! The safety properties an engine promises, as checkers that travel with the engine: each
//! engine's crate hands its own ([`crate::Replica::safety_checkers`]; Raft's are Election
//! Safety, Log Matching and Leader Completeness), and a driver that watches replicas (the
//! simulator) feeds every checker what it observes, one set per group, naming none of them. What
//! every engine owes alike (applying one log in order, linearizable clients) the simulator
//! checks itself.
//!
//! A checker only observes: it never touches a replica and never draws randomness, and it looks
//! at what just changed (an entry written, an entry committed, a role or era changed), never at
//! whole logs per step.

use crate::{Entry, LogIndex, NodeId, Replica, Status, Term};

/// What a checker may read of one replica's log.
pub trait LogView {
    /// The term of the entry at `index` if the replica still knows it: an entry in its log, or
    /// the last entry its snapshot covers.
    fn term_at(&self, index: LogIndex) -> Option<Term>;

    /// The first index still in the replica's log (everything before is in its snapshot).
    fn first_log_index(&self) -> LogIndex;
}

impl<R: Replica> LogView for R {
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.entry_term(index)
    }

    fn first_log_index(&self) -> LogIndex {
        self.status().first_log_index
    }
}

/// A broken property as its checker saw it; the driver adds when, and in which group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub checker: &'static str,
    pub description: String,
}

impl Finding {
    pub fn new(checker: &'static str, description: impl Into<String>) -> Self {
        Self {
            checker,
            description: description.into(),
        }
    }
}

/// One safety property of an engine, checked incrementally from what a driver observes. Every
/// hook has a default that sees nothing wrong, so a checker implements only the events its
/// property is about.
pub trait SafetyChecker {
    /// `node` wrote `entry` to its log (one of a `Ready`'s entries, in order); `log` is the
    /// node's log after the write.
    fn entry_written(
        &mut self,
        _node: NodeId,
        _entry: &Entry,
        _log: &dyn LogView,
    ) -> Option<Finding> {
        None
    }

    /// `entry` was applied for the first time on any node, by `node` while it was in
    /// `node_term`: it is committed, in a term no later than `node_term` (the node learned the
    /// commit from a leader of that term or an earlier one).
    fn entry_committed(&mut self, _node: NodeId, _node_term: Term, _entry: &Entry) {}

    /// `leader` leads `term` now, and `committed` are the indexes first committed since the
    /// last call (in the order they were).
    fn leading_after_commits(
        &mut self,
        _leader: NodeId,
        _term: Term,
        _committed: &[LogIndex],
        _log: &dyn LogView,
    ) -> Option<Finding> {
        None
    }

    /// A replica's role or term changed; `status` is what it reports now.
    fn role_changed(&mut self, _status: &Status, _log: &dyn LogView) -> Option<Finding> {
        None
    }
}
