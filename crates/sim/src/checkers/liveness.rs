//! Liveness after the heal (Raft paper §5.2 and §5.6: leader election makes progress once the
//! network is timely; tigerbeetle-style "chaos, then heal, then progress must resume").
//!
//! After every fault is healed and every crashed node restarted, within the liveness bound
//! (`heal_ticks`, by default 20 maximum election timeouts) a leader must exist that a quorum of
//! the voters follows, every client operation invoked after the heal must complete with a definite
//! outcome, and a final probe write must commit. This module holds the pure checks; the simulator
//! drives the phases.

use super::Violation;
use ballot_core::{Membership, NodeId, Role, Term};

pub const NAME: &str = "liveness";

/// What the checker needs to know about one running node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// The leader (and its term) that a quorum of `membership`'s voters follows, counting the leader
/// itself, if there is one.
pub fn leader_with_quorum(views: &[NodeView], membership: &Membership) -> Option<(NodeId, Term)> {
    views
        .iter()
        .filter(|v| v.role == Role::Leader)
        .find_map(|leader| {
            let followers = views.iter().filter(|v| {
                membership.is_voter(v.id)
                    && v.term == leader.term
                    && (v.id == leader.id || v.leader == Some(leader.id))
            });
            (followers.count() >= membership.quorum_size()).then_some((leader.id, leader.term))
        })
}

/// A violation if no leader with a quorum was seen within the bound.
pub fn check_leader(
    now: u64,
    found: Option<(NodeId, Term)>,
    bound_ticks: u64,
) -> Option<Violation> {
    found.is_none().then(|| {
        Violation::new(
            NAME,
            now,
            format!("no leader followed by a quorum within {bound_ticks} ticks of the heal"),
        )
    })
}

/// A violation naming how many operations invoked after the heal never got a definite outcome.
pub fn check_operations(
    now: u64,
    undecided: usize,
    first_undecided: Option<u64>,
) -> Option<Violation> {
    (undecided > 0).then(|| {
        Violation::new(
            NAME,
            now,
            format!(
                "{undecided} client operation(s) invoked after the heal got no definite outcome (first: op {})",
                first_undecided.unwrap_or_default()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: NodeId, role: Role, term: Term, leader: Option<NodeId>) -> NodeView {
        NodeView {
            id,
            role,
            term,
            leader,
        }
    }

    #[test]
    fn needs_a_quorum_of_voters_in_the_leaders_term() {
        let membership = Membership::with_voters([1, 2, 3, 4, 5]);
        let mut views = vec![
            view(1, Role::Leader, 4, Some(1)),
            view(2, Role::Follower, 4, Some(1)),
            view(3, Role::Follower, 3, Some(1)),
            view(4, Role::Candidate, 5, None),
        ];
        assert_eq!(
            leader_with_quorum(&views, &membership),
            None,
            "only 2 of 5 follow in term 4"
        );
        assert!(check_leader(9, None, 600).is_some());
        views[2].term = 4;
        assert_eq!(leader_with_quorum(&views, &membership), Some((1, 4)));
        assert!(check_operations(9, 0, None).is_none());
        assert!(check_operations(9, 2, Some(7)).is_some());
    }
}
