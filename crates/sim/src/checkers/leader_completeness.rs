//! Leader Completeness (Raft paper figure 3, §5.4, proof in §5.4.3): if a log entry is committed
//! in a given term, that entry will be present in the logs of the leaders for all higher terms.
//!
//! An entry counts as committed once any node applied it. The term it was committed in is not
//! observable, but it is at most the applying node's term at that moment (the node learned the
//! commit from a leader of that term or earlier), so each committed index is recorded with that
//! bound and only leaders of a strictly higher term are held to it: no false alarms from stale
//! leaders. Entries a leader has compacted into its snapshot (below its first log index) are
//! skipped. Checked when a node becomes leader (whole committed log from its first log index) and
//! when an entry is first committed (against every current leader).

use super::Violation;
use ballot_core::{LogIndex, NodeId, Term};

pub const NAME: &str = "leader-completeness";

#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// `committed[i - 1]`: (entry term, upper bound of the term it was committed in).
    committed: Vec<Option<(Term, Term)>>,
}

impl LeaderCompleteness {
    pub fn record_commit(&mut self, index: LogIndex, term: Term, commit_term_bound: Term) {
        let slot = index as usize - 1;
        if self.committed.len() <= slot {
            self.committed.resize(slot + 1, None);
        }
        self.committed[slot].get_or_insert((term, commit_term_bound));
    }

    /// A node just became leader of `leader_term`: every committed entry it must hold, it holds.
    pub fn check_new_leader(
        &self,
        now: u64,
        node: NodeId,
        leader_term: Term,
        first_log_index: LogIndex,
        entry_term: impl Fn(LogIndex) -> Option<Term>,
    ) -> Option<Violation> {
        let start = first_log_index.max(1);
        (start..=self.committed.len() as LogIndex).find_map(|index| {
            self.check_entry(
                now,
                node,
                leader_term,
                index,
                || first_log_index,
                &entry_term,
            )
        })
    }

    /// Whether leader `node` of `leader_term` holds committed entry `index`.
    pub fn check_entry(
        &self,
        now: u64,
        node: NodeId,
        leader_term: Term,
        index: LogIndex,
        first_log_index: impl FnOnce() -> LogIndex,
        entry_term: impl Fn(LogIndex) -> Option<Term>,
    ) -> Option<Violation> {
        let (term, bound) = self
            .committed
            .get(usize::try_from(index).ok()?.checked_sub(1)?)
            .copied()
            .flatten()?;
        if bound >= leader_term {
            return None;
        }
        let description = match entry_term(index) {
            Some(held) if held == term => return None,
            None if index < first_log_index() => return None,
            Some(held) => format!(
                "leader n{node} of term {leader_term} holds term {held} at index {index}, where an entry of term {term} was committed by term {bound}"
            ),
            None => format!(
                "leader n{node} of term {leader_term} lacks committed entry {index}@t{term} (committed by term {bound})"
            ),
        };
        Some(Violation::new(NAME, now, description))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_leader_missing_a_committed_entry_is_flagged() {
        let mut check = LeaderCompleteness::default();
        check.record_commit(1, 1, 1);
        check.record_commit(2, 1, 2);
        let full = |index: LogIndex| (index <= 2).then_some(1);
        assert!(check.check_new_leader(10, 2, 3, 1, full).is_none());
        let short = |index: LogIndex| (index <= 1).then_some(1);
        assert!(
            check.check_new_leader(11, 3, 3, 1, short).is_some(),
            "index 2 missing"
        );
        assert!(
            check.check_new_leader(11, 3, 2, 1, short).is_none(),
            "term 2 is not after the commit bound"
        );
        let overwritten = |index: LogIndex| Some(if index == 2 { 3 } else { 1 });
        assert!(check.check_entry(12, 3, 4, 2, || 1, overwritten).is_some());
        let compacted = |index: LogIndex| (index == 2).then_some(1);
        assert!(
            check.check_new_leader(13, 3, 4, 2, compacted).is_none(),
            "index 1 is in its snapshot"
        );
    }
}
