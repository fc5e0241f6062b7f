//! Cluster membership: which nodes vote and which only learn, and the single-server changes that
//! move between memberships (dissertation §4.1, seed 003: one server at a time, so any two
//! consecutive majorities overlap).

use crate::error::ReplicaError;
use crate::NodeId;
use std::collections::BTreeSet;
use std::fmt;

/// The voters (who elect leaders and form commit quorums) and learners (who receive the log but
/// never vote or count towards a quorum, e.g. while catching up before promotion).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

/// One single-server change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a new node straight in as a voter.
    AddVoter(NodeId),
    /// Add a new node as a learner.
    AddLearner(NodeId),
    /// Turn a learner into a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
}

impl fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipChange::AddVoter(id) => write!(f, "add-voter n{id}"),
            MembershipChange::AddLearner(id) => write!(f, "add-learner n{id}"),
            MembershipChange::PromoteLearner(id) => write!(f, "promote n{id}"),
            MembershipChange::Remove(id) => write!(f, "remove n{id}"),
        }
    }
}

impl Membership {
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters and learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Votes (or acknowledgements) needed for a majority of the voters.
    pub fn quorum_size(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether `acked` contains a majority of the voters. Non-voters in `acked` do not count.
    pub fn is_quorum<'a>(&self, acked: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let count = acked
            .into_iter()
            .filter(|id| self.voters.contains(id))
            .count();
        count >= self.quorum_size()
    }

    /// The highest value a quorum of voters has reached, given each voter's value: a commit index
    /// from match indexes, a confirmed read round from acknowledged rounds. `None` without voters.
    pub fn quorum_value(&self, value_of: impl Fn(NodeId) -> u64) -> Option<u64> {
        let mut values: Vec<u64> = self.voters.iter().map(|&id| value_of(id)).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(|a, b| b.cmp(a));
        Some(values[self.quorum_size() - 1])
    }

    /// The membership after `change`, or why `change` is not valid here. Validation lives here so
    /// that every protocol rejects the same bad changes with the same words.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, ReplicaError> {
        let invalid = |reason: String| Err(ReplicaError::InvalidMembershipChange { reason });
        let mut next = self.clone();
        match change {
            MembershipChange::AddVoter(id) | MembershipChange::AddLearner(id) if id == 0 => {
                return invalid("node id 0 is reserved".into())
            }
            MembershipChange::AddVoter(id) => {
                if self.contains(id) {
                    return invalid(format!("n{id} is already a member"));
                }
                next.voters.insert(id);
            }
            MembershipChange::AddLearner(id) => {
                if self.contains(id) {
                    return invalid(format!("n{id} is already a member"));
                }
                next.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !self.contains(id) {
                    return Err(ReplicaError::UnknownNode { node: id });
                }
                if !self.is_learner(id) {
                    return invalid(format!("n{id} is not a learner"));
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !self.contains(id) {
                    return Err(ReplicaError::UnknownNode { node: id });
                }
                if self.is_voter(id) && self.voters.len() == 1 {
                    return invalid(format!("n{id} is the last voter"));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
            }
        }
        Ok(next)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<NodeId>| {
            set.iter()
                .map(|id| format!("n{id}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters[{}]", list(&self.voters))?;
        if !self.learners.is_empty() {
            write!(f, " learners[{}]", list(&self.learners))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_counts_only_voters() {
        let mut m = Membership::with_voters([1, 2, 3]);
        m.learners.insert(4);
        assert_eq!(m.quorum_size(), 2);
        assert!(!m.is_quorum(&[1, 4]));
        assert!(m.is_quorum(&[1, 3]));
    }

    #[test]
    fn quorum_value_is_the_majoritys_lowest() {
        let m = Membership::with_voters([1, 2, 3, 4, 5]);
        let matched = |id: NodeId| [0, 9, 7, 5, 3, 1][id as usize];
        assert_eq!(
            m.quorum_value(matched),
            Some(5),
            "n1, n2, n3 hold 5 or more"
        );
        assert_eq!(Membership::default().quorum_value(matched), None);
    }

    #[test]
    fn changes_are_validated() {
        let m = Membership::with_voters([1, 2, 3]);
        assert!(m.apply(MembershipChange::AddVoter(2)).is_err());
        assert!(m.apply(MembershipChange::PromoteLearner(2)).is_err());
        assert!(matches!(
            m.apply(MembershipChange::Remove(9)),
            Err(ReplicaError::UnknownNode { node: 9 })
        ));
        let with_learner = m.apply(MembershipChange::AddLearner(4)).unwrap();
        assert!(with_learner.is_learner(4));
        let promoted = with_learner
            .apply(MembershipChange::PromoteLearner(4))
            .unwrap();
        assert_eq!(promoted.voters.len(), 4);
        assert!(Membership::with_voters([1])
            .apply(MembershipChange::Remove(1))
            .is_err());
    }
}
