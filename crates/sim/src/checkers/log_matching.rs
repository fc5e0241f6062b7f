//! Log Matching (Raft paper figure 3, §5.3): if two logs contain an entry with the same index and
//! term, then the logs are identical in all entries up through that index.
//!
//! Incremental form: a global registry maps each position `(index, term)` to the digest of the
//! payload first written there and the term of the entry before it. By induction on the index,
//! "same payload and same previous term at every position ever written" implies the property. A
//! node later writing the same position with another payload or another previous term is a
//! violation. Checked when a node writes entries (from `Ready::entries`), with the previous term
//! taken from the node's log after the write.

use super::Violation;
use ballot_core::{LogPosition, NodeId, Term};
use std::collections::HashMap;

pub const NAME: &str = "log-matching";

#[derive(Debug, Default)]
pub struct LogMatching {
    registry: HashMap<LogPosition, (u64, Option<Term>)>,
}

impl LogMatching {
    /// `previous_term` is the term the node holds at `position.index - 1` (0 for index 1), or
    /// `None` if the node no longer knows it.
    pub fn observe_written(
        &mut self,
        now: u64,
        node: NodeId,
        position: LogPosition,
        digest: u64,
        previous_term: Option<Term>,
    ) -> Option<Violation> {
        let (known_digest, known_previous) = self
            .registry
            .entry(position)
            .or_insert((digest, previous_term));
        if *known_digest != digest {
            return Some(Violation::new(
                NAME,
                now,
                format!("n{node} holds a different entry at {position} than another node"),
            ));
        }
        match (*known_previous, previous_term) {
            (Some(known), Some(previous)) if known != previous => Some(Violation::new(
                NAME,
                now,
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

    #[test]
    fn same_position_with_other_payload_or_history_is_flagged() {
        let mut check = LogMatching::default();
        let at = LogPosition::new(5, 2);
        assert!(check.observe_written(1, 1, at, 0xaa, Some(1)).is_none());
        assert!(
            check.observe_written(2, 2, at, 0xaa, Some(1)).is_none(),
            "identical copy is fine"
        );
        assert!(
            check.observe_written(2, 3, at, 0xaa, None).is_none(),
            "unknown previous is skipped"
        );
        assert!(
            check
                .observe_written(3, 2, LogPosition::new(5, 3), 0xbb, Some(1))
                .is_none(),
            "another term is another entry"
        );
        assert!(
            check.observe_written(4, 3, at, 0xbb, Some(1)).is_some(),
            "different payload"
        );
        assert!(
            check.observe_written(5, 3, at, 0xaa, Some(2)).is_some(),
            "different previous term"
        );
    }
}
