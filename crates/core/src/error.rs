//! Errors of the protocol layer, one enum for every replicated-log protocol.
//!
//! Callers act differently on three groups, so each variant says which it is in
//! ([`ReplicaError::is_retryable`], [`ReplicaError::leader_hint`]): redirect to the leader, retry
//! here later, or give up because the request itself is wrong.

use crate::NodeId;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplicaError {
    /// Redirect: only the leader accepts this request.
    #[error("not the leader (leader is {})", leader_hint.map(|id| format!("n{id}")).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader_hint: Option<NodeId> },
    /// Retry soon: the leader has not yet committed an entry of its own term, so it does not know
    /// the commit index yet.
    #[error("leader has not yet committed an entry in its term")]
    LeaderNotReady,
    /// Retry soon: a leadership transfer is in progress and proposals are paused.
    #[error("leadership transfer to n{target} in progress")]
    TransferInProgress { target: NodeId },
    /// Retry after the pending change commits: one membership change at a time.
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    /// Retry later (backpressure): a bounded queue is full.
    #[error("{what} is full ({limit} max)")]
    Busy { what: &'static str, limit: usize },
    /// Bad input: the command is larger than the protocol accepts.
    #[error("command of {bytes} bytes exceeds the limit of {max} bytes")]
    CommandTooLarge { bytes: usize, max: usize },
    /// Bad input: the change makes no sense for the current membership.
    #[error("invalid membership change: {reason}")]
    InvalidMembershipChange { reason: String },
    /// Retry later: the learner must catch up before it may vote.
    #[error("learner n{node} is {behind_entries} entries behind the leader")]
    LearnerBehind { node: NodeId, behind_entries: u64 },
    /// Bad input: the node is a learner, so it cannot lead or vote.
    #[error("n{node} is not a voter")]
    NotAVoter { node: NodeId },
    /// Bad input: a snapshot handed to the replica does not fit its log.
    #[error("invalid snapshot: {reason}")]
    InvalidSnapshot { reason: String },
    /// Bad input: the node is not a member.
    #[error("n{node} is not a member of the cluster")]
    UnknownNode { node: NodeId },
    /// Stopped: this node has been removed from the cluster and serves nothing.
    #[error("this node has been removed from the cluster")]
    Removed,
}

impl ReplicaError {
    /// Whether the same request may succeed if sent again later (here or to the leader).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicaError::NotLeader { .. }
                | ReplicaError::LeaderNotReady
                | ReplicaError::TransferInProgress { .. }
                | ReplicaError::MembershipChangePending
                | ReplicaError::Busy { .. }
                | ReplicaError::LearnerBehind { .. }
        )
    }

    /// The node to redirect to, when this error is a redirect with a known leader.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self {
            ReplicaError::NotLeader { leader_hint } => *leader_hint,
            _ => None,
        }
    }
}
