//! Election Safety (Raft paper figure 3, §5.2): at most one leader can be elected in a given term.
//!
//! Remembers, over the whole run, which node was seen as leader in each term (from `status()`
//! after every step). A second node seen as leader in a term already claimed is a violation.

use super::Violation;
use ballot_core::{NodeId, Role, Term};
use std::collections::HashMap;

pub const NAME: &str = "election-safety";

#[derive(Debug, Default)]
pub struct ElectionSafety {
    leader_of_term: HashMap<Term, NodeId>,
}

impl ElectionSafety {
    pub fn observe(&mut self, now: u64, node: NodeId, role: Role, term: Term) -> Option<Violation> {
        if role != Role::Leader {
            return None;
        }
        let leader = *self.leader_of_term.entry(term).or_insert(node);
        (leader != node).then(|| {
            Violation::new(
                NAME,
                now,
                format!("n{node} and n{leader} were both leader in term {term}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_are_flagged() {
        let mut check = ElectionSafety::default();
        assert!(check.observe(1, 1, Role::Leader, 2).is_none());
        assert!(
            check.observe(2, 1, Role::Leader, 2).is_none(),
            "the same leader again is fine"
        );
        assert!(check.observe(3, 2, Role::Candidate, 2).is_none());
        assert!(
            check.observe(4, 2, Role::Leader, 3).is_none(),
            "a new term may have a new leader"
        );
        let violation = check
            .observe(5, 3, Role::Leader, 2)
            .expect("two leaders in term 2");
        assert_eq!(violation.checker, NAME);
        assert!(violation.description.contains("term 2"));
    }
}
