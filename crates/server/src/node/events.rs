//! Operator log lines for what the replica did between two batches of the replica loop: elections
//! started, won and lost, leader changes, stepping down, membership changes. The replica itself
//! logs nothing (it is sans-IO); this compares what it showed before and after a batch.
//!
//! A transition that starts and ends inside one batch (a pre-vote that fails at once, say) is
//! not seen: these lines are for operators, not for proving anything (the simulator does that).

use ballot_core::{Membership, NodeId, Role, Status, Term};

/// What the last batch left the replica as.
pub(crate) struct Transitions {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
    membership: Membership,
}

impl Transitions {
    pub(crate) fn new(status: &Status) -> Self {
        Self {
            role: status.role,
            term: status.term,
            leader: status.leader,
            membership: status.membership.clone(),
        }
    }

    /// Logs what changed since the last call, and remembers `status`.
    pub(crate) fn observe(&mut self, status: &Status) {
        let campaigning = |role| matches!(role, Role::PreCandidate | Role::Candidate);
        if status.role != self.role {
            match status.role {
                Role::PreCandidate => tracing::debug!(
                    term = status.term,
                    "no leader heard within the election timeout: asking for pre-votes"
                ),
                Role::Candidate => tracing::info!(
                    term = status.term,
                    "starting an election (pre-votes granted)"
                ),
                Role::Leader => tracing::info!(
                    term = status.term,
                    voters = status.membership.voters.len(),
                    "won the election: this member leads"
                ),
                Role::Follower if self.role == Role::Leader => tracing::warn!(
                    term = status.term,
                    previous_term = self.term,
                    leader = status.leader.map(hex),
                    "stepped down as leader"
                ),
                Role::Follower if campaigning(self.role) => tracing::info!(
                    term = status.term,
                    leader = status.leader.map(hex),
                    "lost the election"
                ),
                Role::Follower => {}
            }
        }
        if status.leader != self.leader {
            match (self.leader, status.leader) {
                (_, Some(leader)) => tracing::info!(
                    term = status.term,
                    leader = hex(leader),
                    previous = self.leader.map(hex),
                    "leader changed"
                ),
                (Some(previous), None) => tracing::warn!(
                    term = status.term,
                    previous = hex(previous),
                    "no leader: the last one is unreachable or was deposed"
                ),
                (None, None) => {}
            }
        }
        if status.membership != self.membership {
            tracing::info!(
                voters = ?ids(&status.membership.voters),
                learners = ?ids(&status.membership.learners),
                previous_voters = ?ids(&self.membership.voters),
                previous_learners = ?ids(&self.membership.learners),
                "membership changed"
            );
        }
        self.role = status.role;
        self.term = status.term;
        self.leader = status.leader;
        if status.membership != self.membership {
            self.membership = status.membership.clone();
        }
    }
}

/// Member ids as etcd prints them.
fn hex(id: NodeId) -> String {
    format!("{id:x}")
}

fn ids<'a>(set: impl IntoIterator<Item = &'a NodeId>) -> Vec<String> {
    set.into_iter().map(|&id| hex(id)).collect()
}
