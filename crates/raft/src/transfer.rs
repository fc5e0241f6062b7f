//! Leadership transfer (dissertation §3.10): the leader stops taking proposals, brings the target
//! up to date, then tells it to campaign at once. Given up after an election timeout.

use crate::message::MessageBody;
use crate::raft::{Raft, Transfer};
use ballot_core::{NodeId, ReplicaError, Role};

impl Raft {
    pub(crate) fn start_transfer(&mut self, target: NodeId) -> Result<(), ReplicaError> {
        if self.role != Role::Leader {
            return Err(ReplicaError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.membership().contains(target) {
            return Err(ReplicaError::UnknownNode { node: target });
        }
        if !self.membership().is_voter(target) {
            return Err(ReplicaError::NotAVoter { node: target });
        }
        if let Some(transfer) = self.transfer {
            if transfer.target == target {
                return Ok(());
            }
            return Err(ReplicaError::TransferInProgress {
                target: transfer.target,
            });
        }
        self.transfer = Some(Transfer {
            target,
            started_tick: self.now_ticks,
            timeout_now_sent: false,
        });
        self.send_timeout_now_if_caught_up(target);
        if self.transfer.is_some_and(|t| !t.timeout_now_sent) {
            self.send_append(target);
        }
        Ok(())
    }

    /// Called whenever `target` acknowledges entries.
    pub(crate) fn send_timeout_now_if_caught_up(&mut self, from: NodeId) {
        let Some(transfer) = self.transfer else {
            return;
        };
        if transfer.target != from || transfer.timeout_now_sent {
            return;
        }
        let caught_up = self
            .progress
            .get(&from)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(from, MessageBody::TimeoutNow);
            self.timeout_now_sent_this_term = true;
            self.transfer = Some(Transfer {
                timeout_now_sent: true,
                ..transfer
            });
        }
    }

    pub(crate) fn abort_stalled_transfer(&mut self) {
        if let Some(transfer) = self.transfer {
            let elapsed = self.now_ticks - transfer.started_tick;
            if elapsed >= self.config.election_timeout_min_ticks as u64 {
                self.transfer = None;
            }
        }
    }
}
