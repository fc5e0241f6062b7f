//! Log Matching (Raft paper figure 3, §5.3): if two logs contain an entry with the same index and
//! term, then the logs are identical in all entries up through that index.
//!
//! Incremental form: a registry maps each position `(index, term)` to the digest of the payload
//! first written there and the term of the entry before it. By induction on the index, "same
//! payload and same previous term at every position ever written" implies the property. A node
//! later writing the same position with another payload or another previous term is a
//! violation. Checked when a node writes an entry, with the previous term taken from the node's
//! log after the write.

use ballot_core::{Entry, Finding, LogPosition, LogView, NodeId, SafetyChecker, Term};
use std::collections::HashMap;

pub const NAME: &str = "log-matching";

#[derive(Debug, Default)]
pub struct LogMatching {
    registry: HashMap<LogPosition, (u64, Option<Term>)>,
}

impl SafetyChecker for LogMatching {
    fn entry_written(&mut self, node: NodeId, entry: &Entry, log: &dyn LogView) -> Option<Finding> {
        // `None` when the node no longer knows the entry before (it is behind its snapshot).
        let previous_term = if entry.index <= 1 {
            Some(0)
        } else {
            log.term_at(entry.index - 1)
        };
        let position = entry.position();
        let digest = entry.payload.digest();
        let (known_digest, known_previous) = self
            .registry
            .entry(position)
            .or_insert((digest, previous_term));
        if *known_digest != digest {
            return Some(Finding::new(
                NAME,
                format!("n{node} holds a different entry at {position} than another node"),
            ));
        }
        match (*known_previous, previous_term) {
            (Some(known), Some(previous)) if known != previous => Some(Finding::new(
                NAME,
                format!("n{node} holds {position} after an entry of term {previous}, another node after term {known}"),
            )),
            (None, Some(_)) => {
                *known_previous = previous_term;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::testing::{command, FnLog};

    #[test]
    fn same_position_with_other_payload_or_history_is_flagged() {
        let mut check = LogMatching::default();
        let a = command(5, 2, b"a");
        let b = command(5, 2, b"b");
        let after_term = |term| FnLog::new(move |_| Some(term), 1);
        let forgotten = FnLog::new(|_| None, 5);
        assert!(check.entry_written(1, &a, &after_term(1)).is_none());
        assert!(
            check.entry_written(2, &a, &after_term(1)).is_none(),
            "identical copy is fine"
        );
        assert!(
            check.entry_written(3, &a, &forgotten).is_none(),
            "unknown previous is skipped"
        );
        assert!(
            check
                .entry_written(2, &command(5, 3, b"b"), &after_term(1))
                .is_none(),
            "another term is another entry"
        );
        assert!(
            check.entry_written(3, &b, &after_term(1)).is_some(),
            "different payload"
        );
        assert!(
            check.entry_written(3, &a, &after_term(2)).is_some(),
            "different previous term"
        );
    }
}
