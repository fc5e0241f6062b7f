//! Linearizable reads without writing to the log (dissertation §6.4).
//!
//! ReadIndex: the leader notes its commit index, proves it is still leader by a round of
//! heartbeats acknowledged by a quorum, and releases the read at that index. Reads that arrive
//! between two `Ready`s share one round. Lease: every confirmed round also starts a lease; while it
//! lasts (election timeout minus the clock-drift bound, measured from when the round was sent) no
//! other leader can have been elected, because the acknowledging quorum ignores votes for that
//! long (CheckQuorum), so reads are released at once. Both wait until the leader has committed an
//! entry of its own term, since before that its commit index may be behind.
//!
//! Followers serve linearizable reads too (§6.4): a follower gathers its clients' reads between
//! two `Ready`s into one `ReadIndex` request to the leader, which confirms an index exactly as for
//! its own reads and answers with it; the follower releases the batch at that index (the runtime
//! serves each read once it has applied that far). A batch the leader refuses, or whose answer
//! does not come within an election timeout (lost, or the leader is gone), is dropped: a read has
//! no effect, so the client just retries.
//!
//! One read round is outstanding at a time, as in etcd: reads that arrive while one is in flight
//! wait for the next, which goes out when it is confirmed (or a tick later, if its answers were
//! lost). A round must be sent after the read arrived, so a read waits at most two round trips,
//! and under load the rounds (two messages per follower) are shared by many more reads.

use crate::config::Break;
use crate::message::MessageBody;
use crate::raft::Raft;
use ballot_core::{LogIndex, NodeId, ReadMode, ReadState, ReplicaError, Role};
use std::collections::{BTreeMap, VecDeque};

/// Whose read the leader confirms: one of its own clients', or a follower's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Local { request_id: u64 },
    Follower { from: NodeId, request: u64 },
}

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    reader: Reader,
    index: LogIndex,
    round: u64,
}

/// A follower's batch of reads sent to the leader.
#[derive(Debug)]
struct ForwardedReads {
    request_ids: Vec<u64>,
    sent_tick: u64,
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
    /// On a follower: its clients' reads not yet sent to the leader, for ReadIndex and Lease.
    unsent: [Vec<u64>; 2],
    /// On a follower: batches sent to the leader and not yet answered, by request.
    forwarded: BTreeMap<u64, ForwardedReads>,
    pub(crate) next_forward_request: u64,
    /// On the leader: answers owed to followers, `(follower, request, index)`.
    answers: Vec<(NodeId, u64, Option<LogIndex>)>,
}

impl ReadQueue {
    pub(crate) fn has_output(&self) -> bool {
        !self.released.is_empty()
            || !self.dropped.is_empty()
            || !self.answers.is_empty()
            || self.unsent.iter().any(|reads| !reads.is_empty())
    }

    /// No read waits for anything, on either side.
    pub(crate) fn is_quiet(&self) -> bool {
        self.pending.is_empty()
            && !self.round_due
            && self.forwarded.is_empty()
            && !self.has_output()
    }

    /// A sleeping leader's lease ends: its clock stops, so it could not tell when it runs out.
    /// Rounds still unanswered are forgotten too: answered after the sleep, they would start a
    /// lease at a tick from before it.
    pub(crate) fn forget_lease(&mut self) {
        self.lease_start_tick = None;
        self.round_sent_ticks.clear();
    }

    /// Reads of this node's clients waiting to be sent or answered.
    fn forwarded_count(&self) -> usize {
        self.unsent.iter().map(Vec::len).sum::<usize>()
            + self
                .forwarded
                .values()
                .map(|batch| batch.request_ids.len())
                .sum::<usize>()
    }

    pub(crate) fn take_released(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.released)
    }

    pub(crate) fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    /// Drops every read the leader was confirming: its own clients' are reported dropped, and
    /// followers are told (they would otherwise wait for their timeout).
    pub(crate) fn drop_all(&mut self) {
        for read in self.pending.drain(..) {
            match read.reader {
                Reader::Local { request_id } => self.dropped.push(request_id),
                Reader::Follower { from, request } => self.answers.push((from, request, None)),
            }
        }
        self.round_due = false;
        self.lease_start_tick = None;
    }

    /// Releases or answers a confirmed read.
    fn release(&mut self, reader: Reader, index: LogIndex) {
        match reader {
            Reader::Local { request_id } => self.released.push(ReadState { request_id, index }),
            Reader::Follower { from, request } => self.answers.push((from, request, Some(index))),
        }
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
            return self.forward_read(request_id, mode);
        }
        self.confirm_read(Reader::Local { request_id }, mode)
    }

    /// A follower queues its client's read for the next `ReadIndex` request to the leader.
    fn forward_read(&mut self, request_id: u64, mode: ReadMode) -> Result<(), ReplicaError> {
        match self.leader {
            Some(leader) if leader != self.id => {}
            _ => {
                return Err(ReplicaError::NotLeader {
                    leader_hint: self.leader,
                })
            }
        }
        if self.reads.forwarded_count() >= self.config.pending_reads_max {
            return Err(ReplicaError::Busy {
                what: "read queue",
                limit: self.config.pending_reads_max,
            });
        }
        let slot = usize::from(mode == ReadMode::Lease);
        self.reads.unsent[slot].push(request_id);
        Ok(())
    }

    /// The leader starts confirming a read: at once from its lease (or as the only voter), else
    /// with the next heartbeat round.
    fn confirm_read(&mut self, reader: Reader, mode: ReadMode) -> Result<(), ReplicaError> {
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
            self.reads.release(reader, index);
            return Ok(());
        }
        let round = self.reads.round + 1;
        self.reads.pending.push_back(PendingRead {
            reader,
            index,
            round,
        });
        self.reads.round_due = true;
        Ok(())
    }

    /// The leader got a follower's batch of reads.
    pub(crate) fn handle_read_index(&mut self, from: NodeId, request: u64, lease: bool) {
        if self.is_broken(Break::UnconfirmedFollowerRead) && self.role == Role::Leader {
            let index = self.log.commit_index;
            self.reads.answers.push((from, request, Some(index)));
            return;
        }
        let mode = if lease {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        let refused = self.role != Role::Leader
            || self
                .confirm_read(Reader::Follower { from, request }, mode)
                .is_err();
        if refused {
            self.reads.answers.push((from, request, None));
        }
    }

    /// A follower got the leader's answer for one of its batches.
    pub(crate) fn handle_read_index_response(&mut self, request: u64, index: Option<LogIndex>) {
        let Some(batch) = self.reads.forwarded.remove(&request) else {
            return; // timed out already
        };
        match index {
            Some(index) => {
                for request_id in batch.request_ids {
                    self.reads.released.push(ReadState { request_id, index });
                }
            }
            None => self.reads.dropped.extend(batch.request_ids),
        }
    }

    /// Sends what the read queue owes: followers' batches to the leader, answers to followers.
    /// Reads queued on a node that has since become leader are confirmed here instead.
    pub(crate) fn flush_reads(&mut self) {
        for (slot, mode) in [(0, ReadMode::ReadIndex), (1, ReadMode::Lease)] {
            let request_ids = std::mem::take(&mut self.reads.unsent[slot]);
            if request_ids.is_empty() {
                continue;
            }
            match self.leader {
                Some(leader) if leader != self.id && self.role != Role::Leader => {
                    let request = self.reads.next_forward_request;
                    self.reads.next_forward_request = request.wrapping_add(1);
                    self.reads.forwarded.insert(
                        request,
                        ForwardedReads {
                            request_ids,
                            sent_tick: self.now_ticks,
                        },
                    );
                    self.send(
                        leader,
                        MessageBody::ReadIndex {
                            request,
                            lease: mode == ReadMode::Lease,
                        },
                    );
                }
                _ if self.role == Role::Leader => {
                    for request_id in request_ids {
                        if self
                            .confirm_read(Reader::Local { request_id }, mode)
                            .is_err()
                        {
                            self.reads.dropped.push(request_id);
                        }
                    }
                }
                _ => self.reads.dropped.extend(request_ids),
            }
        }
        for (to, request, index) in std::mem::take(&mut self.reads.answers) {
            self.send(to, MessageBody::ReadIndexResponse { request, index });
        }
    }

    /// Drops the follower's batches the leader has not answered within an election timeout.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let patience = self.config.election_timeout_max_ticks as u64;
        let now = self.now_ticks;
        let expired: Vec<u64> = self
            .reads
            .forwarded
            .iter()
            .filter(|(_, batch)| now >= batch.sent_tick + patience)
            .map(|(&request, _)| request)
            .collect();
        for request in expired {
            let batch = self.reads.forwarded.remove(&request).expect("listed");
            self.reads.dropped.extend(batch.request_ids);
        }
    }

    /// A read round is due and may go now: the previous one is confirmed, or was sent a tick
    /// ago or more (its answers may be lost; the periodic heartbeat would send one anyway).
    pub(crate) fn read_round_may_go(&self) -> bool {
        self.reads.round_due
            && self
                .reads
                .round_sent_ticks
                .back()
                .is_none_or(|&(_, sent_tick)| self.now_ticks > sent_tick)
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
            reads.release(read.reader, read.index);
        }
    }
}
