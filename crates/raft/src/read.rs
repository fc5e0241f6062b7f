//! Linearizable reads without writing to the log (dissertation §6.4).
//!
//! ReadIndex: the leader notes its commit index, proves it is still leader by a round of
//! heartbeats acknowledged by a quorum, and releases the read at that index. Reads that arrive
//! between two `Ready`s share one round. Lease: every confirmed round also starts a lease; while it
//! lasts (election timeout minus the clock-drift bound, measured from when the round was sent) no
//! other leader can have been elected, because the acknowledging quorum ignores votes for that
//! long (CheckQuorum), so reads are released at once. Both wait until the leader has committed an
//! entry of its own term, since before that its commit index may be behind.

use crate::config::Break;
use crate::message::MessageBody;
use crate::raft::Raft;
use ballot_core::{LogIndex, ReadMode, ReadState, ReplicaError, Role};
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    request_id: u64,
    index: LogIndex,
    round: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    pending: VecDeque<PendingRead>,
    released: Vec<ReadState>,
    dropped: Vec<u64>,
    /// Last heartbeat round sent in this term.
    pub(crate) round: u64,
    /// A read is waiting for a round that has not been sent yet.
    pub(crate) round_due: bool,
    confirmed_round: u64,
    /// `(round, tick it was sent)` for rounds not yet confirmed.
    round_sent_ticks: VecDeque<(u64, u64)>,
    lease_start_tick: Option<u64>,
}

impl ReadQueue {
    pub(crate) fn has_output(&self) -> bool {
        !self.released.is_empty() || !self.dropped.is_empty()
    }

    pub(crate) fn take_released(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.released)
    }

    pub(crate) fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    pub(crate) fn drop_all(&mut self) {
        self.dropped
            .extend(self.pending.drain(..).map(|read| read.request_id));
        self.round_due = false;
        self.lease_start_tick = None;
    }

    pub(crate) fn reset_for_new_term(&mut self) {
        self.drop_all();
        self.round = 0;
        self.confirmed_round = 0;
        self.round_sent_ticks.clear();
    }
}

impl Raft {
    pub(crate) fn start_read(
        &mut self,
        request_id: u64,
        mode: ReadMode,
    ) -> Result<(), ReplicaError> {
        if self.is_broken(Break::StaleRead) {
            let index = self.log.commit_index;
            self.reads.released.push(ReadState { request_id, index });
            return Ok(());
        }
        if self.role != Role::Leader {
            return Err(ReplicaError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if !self.current_term_committed() {
            return Err(ReplicaError::LeaderNotReady);
        }
        if self.reads.pending.len() >= self.config.pending_reads_max {
            return Err(ReplicaError::Busy {
                what: "read queue",
                limit: self.config.pending_reads_max,
            });
        }
        let index = self.log.commit_index;
        let sole_voter = self.membership().voters.len() == 1 && self.membership().is_voter(self.id);
        if sole_voter || (mode == ReadMode::Lease && self.lease_valid()) {
            self.reads.released.push(ReadState { request_id, index });
            return Ok(());
        }
        let round = self.reads.round + 1;
        self.reads.pending.push_back(PendingRead {
            request_id,
            index,
            round,
        });
        self.reads.round_due = true;
        Ok(())
    }

    fn lease_valid(&self) -> bool {
        let lease_ticks =
            (self.config.election_timeout_min_ticks - self.config.lease_clock_drift_ticks) as u64;
        // A transfer target campaigns through followers' leases, so after a TimeoutNow no lease
        // holds for the rest of the term, however late that message arrives.
        self.config.check_quorum
            && self.transfer.is_none()
            && !self.timeout_now_sent_this_term
            && self.current_term_committed()
            && self
                .reads
                .lease_start_tick
                .is_some_and(|start| self.now_ticks < start + lease_ticks)
    }

    /// Sends a new heartbeat round to every follower. It keeps followers from campaigning,
    /// carries the commit index, and once a quorum acknowledges it confirms reads and the lease.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        self.reads.round += 1;
        self.reads.round_due = false;
        let round = self.reads.round;
        self.reads
            .round_sent_ticks
            .push_back((round, self.now_ticks));
        let commit_index = self.log.commit_index;
        let mut beats = Vec::with_capacity(self.progress.len());
        for (&id, progress) in self.progress.iter_mut() {
            let leader_commit = commit_index.min(progress.match_index);
            progress.commit_sent = progress.commit_sent.max(leader_commit);
            beats.push((id, leader_commit));
        }
        for (id, leader_commit) in beats {
            self.send(
                id,
                MessageBody::Heartbeat {
                    leader_commit,
                    read_round: round,
                },
            );
        }
        self.confirm_read_rounds();
    }

    /// Releases reads whose round a quorum of voters has acknowledged.
    pub(crate) fn confirm_read_rounds(&mut self) {
        let Some(confirmed) = self.membership().quorum_value(|id| {
            if id == self.id {
                self.reads.round
            } else {
                self.progress.get(&id).map_or(0, |p| p.acked_round)
            }
        }) else {
            return;
        };
        let reads = &mut self.reads;
        if confirmed <= reads.confirmed_round {
            return;
        }
        reads.confirmed_round = confirmed;
        while let Some(&(round, sent_tick)) = reads.round_sent_ticks.front() {
            if round > confirmed {
                break;
            }
            if round == confirmed {
                reads.lease_start_tick = Some(sent_tick);
            }
            reads.round_sent_ticks.pop_front();
        }
        while reads
            .pending
            .front()
            .is_some_and(|read| read.round <= confirmed)
        {
            let read = reads.pending.pop_front().expect("checked non-empty");
            reads.released.push(ReadState {
                request_id: read.request_id,
                index: read.index,
            });
        }
    }
}
