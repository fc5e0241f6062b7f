//! Leader stability on rejoin: the PreVote property (Raft dissertation §9.6, and §4.2.3 for the
//! related disruption by removed servers).
//!
//! Scripted scenario, run at the end of the heal when a partition fault is enabled: the cluster is
//! healthy with leader L in term T; one follower is isolated for 4 election timeouts, then
//! reconnected, then 4 more election timeouts pass with no fault at all. Throughout, L must stay
//! leader of term T and no node may reach a term above T. A violation means an isolated node
//! disrupted a healthy cluster when it came back. The simulator drives the scenario; this module
//! holds the per-tick check.

use super::Violation;
use ballot_core::{NodeId, Role, Term};

pub const NAME: &str = "leader-stability";

/// Election timeouts the follower stays isolated, and then that the cluster runs unharmed.
pub const ISOLATION_ELECTION_TIMEOUTS: u64 = 4;

/// Check one tick of the scenario: `leader` must still lead in `term`, and every node in `views`
/// (id, role, term) must be at `term` or below.
pub fn check_tick(
    now: u64,
    leader: NodeId,
    term: Term,
    views: impl IntoIterator<Item = (NodeId, Role, Term)>,
) -> Option<Violation> {
    for (id, role, node_term) in views {
        if node_term > term {
            return Some(Violation::new(
                NAME,
                now,
                format!("n{id} reached term {node_term} above the healthy leader n{leader}'s term {term}"),
            ));
        }
        if id == leader && role != Role::Leader {
            return Some(Violation::new(
                NAME,
                now,
                format!("healthy leader n{leader} of term {term} became {role}"),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deposed_leader_or_a_raised_term_is_flagged() {
        let healthy = [
            (1, Role::Leader, 3),
            (2, Role::Follower, 3),
            (3, Role::PreCandidate, 3),
        ];
        assert!(check_tick(1, 1, 3, healthy).is_none());
        let raised = [(1, Role::Leader, 3), (3, Role::Candidate, 4)];
        assert!(check_tick(2, 1, 3, raised).is_some());
        let deposed = [(1, Role::Follower, 3)];
        assert!(check_tick(3, 1, 3, deposed).is_some());
    }
}
