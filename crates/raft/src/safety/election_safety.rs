//! Election Safety (Raft paper figure 3, §5.2): at most one leader can be elected in a given term.
//!
//! Remembers, over the whole run, which node was seen as leader in each term (from its status
//! whenever its role or term changes). A second node seen as leader in a term already claimed is
//! a violation.

use ballot_core::{Finding, LogView, NodeId, Role, SafetyChecker, Status, Term};
use std::collections::HashMap;

pub const NAME: &str = "election-safety";

#[derive(Debug, Default)]
pub struct ElectionSafety {
    leader_of_term: HashMap<Term, NodeId>,
}

impl SafetyChecker for ElectionSafety {
    fn role_changed(&mut self, status: &Status, _log: &dyn LogView) -> Option<Finding> {
        if status.role != Role::Leader {
            return None;
        }
        let (node, term) = (status.id, status.term);
        let leader = *self.leader_of_term.entry(term).or_insert(node);
        (leader != node).then(|| {
            Finding::new(
                NAME,
                format!("n{node} and n{leader} were both leader in term {term}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::testing::{status, NoLog};

    #[test]
    fn two_leaders_in_one_term_are_flagged() {
        let mut check = ElectionSafety::default();
        let mut observe = |node, role, term| check.role_changed(&status(node, role, term), &NoLog);
        assert!(observe(1, Role::Leader, 2).is_none());
        assert!(
            observe(1, Role::Leader, 2).is_none(),
            "the same leader again is fine"
        );
        assert!(observe(2, Role::Candidate, 2).is_none());
        assert!(
            observe(2, Role::Leader, 3).is_none(),
            "a new term may have a new leader"
        );
        let finding = observe(3, Role::Leader, 2).expect("two leaders in term 2");
        assert_eq!(finding.checker, NAME);
        assert!(finding.description.contains("term 2"));
    }
}
