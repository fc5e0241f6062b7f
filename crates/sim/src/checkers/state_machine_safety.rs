//! State Machine Safety (Raft paper figure 3, §5.4.3): if a server has applied a log entry at a
//! given index to its state machine, no other server will ever apply a different log entry for the
//! same index.
//!
//! A global registry maps each applied index to the term and payload digest first applied there.
//! It also checks the apply contract every protocol owes its caller: a node applies indexes in
//! order, without gaps (a restored snapshot moves its applied index). The registry doubles as the
//! simulator's record of what is committed: the first application of an index is reported so that
//! clients and other checkers can learn the outcome.

use super::Violation;
use ballot_core::{LogIndex, NodeId, Term};

pub const NAME: &str = "state-machine-safety";

#[derive(Debug, Default)]
pub struct StateMachineSafety {
    /// `applied[i - 1]`: term and digest of the entry applied at index `i`, if any node applied it.
    applied: Vec<Option<(Term, u64)>>,
}

/// What one application told the registry.
#[derive(Debug, PartialEq, Eq)]
pub struct ApplyCheck {
    pub violation: Option<Violation>,
    /// No node had applied this index before.
    pub first: bool,
}

impl StateMachineSafety {
    pub fn observe_apply(
        &mut self,
        now: u64,
        node: NodeId,
        previous_applied: LogIndex,
        index: LogIndex,
        term: Term,
        digest: u64,
    ) -> ApplyCheck {
        if index != previous_applied + 1 {
            let description =
                format!("n{node} applied index {index} right after index {previous_applied}");
            return ApplyCheck {
                violation: Some(Violation::new(NAME, now, description)),
                first: false,
            };
        }
        let slot = index as usize - 1;
        if self.applied.len() <= slot {
            self.applied.resize(slot + 1, None);
        }
        match self.applied[slot] {
            None => {
                self.applied[slot] = Some((term, digest));
                ApplyCheck {
                    violation: None,
                    first: true,
                }
            }
            Some(known) if known == (term, digest) => ApplyCheck {
                violation: None,
                first: false,
            },
            Some((known_term, _)) => {
                let description = format!(
                    "n{node} applied an entry of term {term} at index {index}, another node one of term {known_term}"
                );
                ApplyCheck {
                    violation: Some(Violation::new(NAME, now, description)),
                    first: false,
                }
            }
        }
    }

    /// Term of the entry applied at `index` by any node, if one was.
    pub fn applied_term(&self, index: LogIndex) -> Option<Term> {
        let slot = usize::try_from(index).ok()?.checked_sub(1)?;
        self.applied
            .get(slot)
            .copied()
            .flatten()
            .map(|(term, _)| term)
    }

    /// Term of the last entry applied by any node at or below `index`: the highest term the
    /// committed log holds up to there (terms never go down along a log).
    pub fn latest_applied_term_through(&self, index: LogIndex) -> Option<Term> {
        let end = usize::try_from(index).map_or(self.applied.len(), |i| i.min(self.applied.len()));
        self.applied[..end]
            .iter()
            .rev()
            .find_map(|slot| slot.map(|(term, _)| term))
    }

    /// Highest index any node has applied.
    pub fn highest_applied(&self) -> LogIndex {
        self.applied.len() as LogIndex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_entries_at_one_index_are_flagged() {
        let mut check = StateMachineSafety::default();
        assert_eq!(
            check.observe_apply(1, 1, 0, 1, 1, 0xa),
            ApplyCheck {
                violation: None,
                first: true
            }
        );
        assert_eq!(
            check.observe_apply(2, 2, 0, 1, 1, 0xa),
            ApplyCheck {
                violation: None,
                first: false
            }
        );
        assert_eq!(check.applied_term(1), Some(1));
        let bad = check.observe_apply(3, 3, 0, 1, 2, 0xb);
        assert!(bad.violation.is_some() && !bad.first);
        let same_term_other_payload = check.observe_apply(3, 3, 0, 1, 1, 0xb);
        assert!(same_term_other_payload.violation.is_some());
    }

    #[test]
    fn the_latest_term_through_an_index_skips_what_no_node_applied() {
        let mut check = StateMachineSafety::default();
        assert_eq!(check.latest_applied_term_through(5), None);
        check.observe_apply(1, 1, 0, 1, 1, 0xa);
        check.observe_apply(1, 1, 1, 2, 3, 0xb);
        // Index 3 comes in a snapshot on n1; n2 applies 4 after installing it.
        check.observe_apply(2, 2, 3, 4, 5, 0xc);
        assert_eq!(check.latest_applied_term_through(1), Some(1));
        assert_eq!(check.latest_applied_term_through(3), Some(3));
        assert_eq!(check.latest_applied_term_through(4), Some(5));
        assert_eq!(check.latest_applied_term_through(100), Some(5));
        assert_eq!(check.latest_applied_term_through(0), None);
    }

    #[test]
    fn gaps_and_reordering_are_flagged() {
        let mut check = StateMachineSafety::default();
        assert!(
            check.observe_apply(1, 1, 0, 2, 1, 0xa).violation.is_some(),
            "skipped index 1"
        );
        assert!(check.observe_apply(1, 1, 0, 1, 1, 0xa).violation.is_none());
        assert!(
            check.observe_apply(1, 1, 1, 1, 1, 0xa).violation.is_some(),
            "applied twice"
        );
    }
}
