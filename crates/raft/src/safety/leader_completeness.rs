//! Leader Completeness (Raft paper figure 3, §5.4, proof in §5.4.3): if a log entry is committed
//! in a given term, that entry will be present in the logs of the leaders for all higher terms.
//!
//! An entry counts as committed once any node applied it. The term it was committed in is not
//! observable, but it is at most the applying node's term at that moment (the node learned the
//! commit from a leader of that term or earlier), so each committed index is recorded with that
//! bound and only leaders of a strictly higher term are held to it: no false alarms from stale
//! leaders. Entries a leader has compacted into its snapshot (below its first log index) are
//! skipped. Checked when a node becomes leader (whole committed log from its first log index) and
//! when entries are first committed (against every current leader).

use ballot_core::{Entry, Finding, LogIndex, LogView, NodeId, Role, SafetyChecker, Status, Term};

pub const NAME: &str = "leader-completeness";

#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    /// `committed[i - 1]`: (entry term, upper bound of the term it was committed in).
    committed: Vec<Option<(Term, Term)>>,
}

impl LeaderCompleteness {
    /// Whether leader `node` of `leader_term` holds committed entry `index`.
    fn check_entry(
        &self,
        node: NodeId,
        leader_term: Term,
        index: LogIndex,
        log: &dyn LogView,
    ) -> Option<Finding> {
        let (term, bound) = self
            .committed
            .get(usize::try_from(index).ok()?.checked_sub(1)?)
            .copied()
            .flatten()?;
        if bound >= leader_term {
            return None;
        }
        let description = match log.term_at(index) {
            Some(held) if held == term => return None,
            None if index < log.first_log_index() => return None,
            Some(held) => format!(
                "leader n{node} of term {leader_term} holds term {held} at index {index}, where an entry of term {term} was committed by term {bound}"
            ),
            None => format!(
                "leader n{node} of term {leader_term} lacks committed entry {index}@t{term} (committed by term {bound})"
            ),
        };
        Some(Finding::new(NAME, description))
    }
}

impl SafetyChecker for LeaderCompleteness {
    fn entry_committed(&mut self, _node: NodeId, node_term: Term, entry: &Entry) {
        let slot = entry.index as usize - 1;
        if self.committed.len() <= slot {
            self.committed.resize(slot + 1, None);
        }
        self.committed[slot].get_or_insert((entry.term, node_term));
    }

    fn leading_after_commits(
        &mut self,
        leader: NodeId,
        term: Term,
        committed: &[LogIndex],
        log: &dyn LogView,
    ) -> Option<Finding> {
        committed
            .iter()
            .find_map(|&index| self.check_entry(leader, term, index, log))
    }

    /// A node just became leader: every committed entry it must hold, it holds.
    fn role_changed(&mut self, status: &Status, log: &dyn LogView) -> Option<Finding> {
        if status.role != Role::Leader {
            return None;
        }
        let start = status.first_log_index.max(1);
        (start..=self.committed.len() as LogIndex)
            .find_map(|index| self.check_entry(status.id, status.term, index, log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::testing::{command, status, FnLog};

    #[test]
    fn a_later_leader_missing_a_committed_entry_is_flagged() {
        let mut check = LeaderCompleteness::default();
        check.entry_committed(1, 1, &command(1, 1, b"a"));
        check.entry_committed(2, 2, &command(2, 1, b"b"));
        let leader = |node, term, first_log_index| Status {
            first_log_index,
            ..status(node, Role::Leader, term)
        };
        let full = FnLog::new(|index| (index <= 2).then_some(1), 1);
        assert!(check.role_changed(&leader(2, 3, 1), &full).is_none());
        let short = FnLog::new(|index| (index <= 1).then_some(1), 1);
        assert!(
            check.role_changed(&leader(3, 3, 1), &short).is_some(),
            "index 2 missing"
        );
        assert!(
            check.role_changed(&leader(3, 2, 1), &short).is_none(),
            "term 2 is not after the commit bound"
        );
        let overwritten = FnLog::new(|index| Some(if index == 2 { 3 } else { 1 }), 1);
        assert!(check
            .leading_after_commits(3, 4, &[2], &overwritten)
            .is_some());
        let compacted = FnLog::new(|index| (index == 2).then_some(1), 2);
        assert!(
            check.role_changed(&leader(3, 4, 2), &compacted).is_none(),
            "index 1 is in its snapshot"
        );
        assert!(
            check
                .role_changed(&status(3, Role::Follower, 9), &short)
                .is_none(),
            "only leaders are held to it"
        );
    }
}
