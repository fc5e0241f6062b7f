//! Leader election: randomized timeouts (Raft §5.2), the up-to-date vote rule (§5.4.1), PreVote
//! and CheckQuorum (dissertation §9.6 and §6.2), and the leader's periodic duties.

use crate::config::Break;
use crate::message::MessageBody;
use crate::raft::Raft;
use ballot_core::{EntryPayload, LogPosition, NodeId, Role, Term};

impl Raft {
    /// Follower, pre-candidate or candidate: count down to the next campaign.
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.election_timeout_ticks && self.is_promotable() {
            self.campaign(false);
        }
    }

    /// Leader: heartbeats, CheckQuorum, and giving up a stalled leadership transfer.
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_timeout_min_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // We cannot reach a quorum, so we can commit nothing and a new leader may exist.
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
        }
        self.abort_stalled_transfer();
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let active = self
            .membership()
            .voters
            .iter()
            .filter(|&&id| id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active))
            .count();
        active >= self.membership().quorum_size()
    }

    /// Only voters campaign: learners and removed nodes never do.
    pub(crate) fn is_promotable(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    /// Starts a pre-vote round, or a real election when PreVote is off or a leader asked us to
    /// take over (then `leadership_transfer` lets our requests through followers' leases).
    pub(crate) fn campaign(&mut self, leadership_transfer: bool) {
        if self.config.pre_vote && !leadership_transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(leadership_transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        self.votes.insert(self.id, true);
        if self.membership().is_quorum(self.granted_votes().iter()) {
            self.become_candidate(false);
            return;
        }
        let last_log = self.log.last_position();
        let next_term = self.term + 1;
        for voter in self.other_voters() {
            self.send_with_term(voter, next_term, MessageBody::PreVote { last_log });
        }
    }

    pub(crate) fn become_candidate(&mut self, leadership_transfer: bool) {
        self.term += 1;
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        self.votes.insert(self.id, true);
        if self.membership().is_quorum(self.granted_votes().iter()) {
            self.become_leader();
            return;
        }
        let last_log = self.log.last_position();
        for voter in self.other_voters() {
            self.send(
                voter,
                MessageBody::RequestVote {
                    last_log,
                    leadership_transfer,
                },
            );
        }
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.membership()
            .voters
            .iter()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    fn granted_votes(&self) -> Vec<NodeId> {
        self.votes
            .iter()
            .filter(|(_, &granted)| granted)
            .map(|(&id, _)| id)
            .collect()
    }

    pub(crate) fn become_leader(&mut self) {
        debug_assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.transfer = None;
        self.heartbeat_elapsed_ticks = 0;
        self.election_elapsed_ticks = 0;
        self.reads.reset_for_new_term();
        self.progress.clear();
        self.on_membership_changed();
        for progress in self.progress.values_mut() {
            progress.recent_active = true;
        }
        self.term_start_index = self.log.last_index() + 1;
        self.timeout_now_sent_this_term = false;
        if !self.is_broken(Break::CommitOldTerm) {
            // Raft §5.4.2 / §8: a new leader commits entries of earlier terms only indirectly,
            // by committing one of its own; the no-op makes that happen at once.
            self.append_entry(EntryPayload::Noop);
        }
        self.append_due = true;
    }

    /// PreVote: would we vote for `from` in `term` if it campaigned now? Our own term does not
    /// change either way (dissertation §9.6). The lease check happened in `observe_term`.
    pub(crate) fn handle_pre_vote(&mut self, from: NodeId, term: Term, last_log: LogPosition) {
        let granted = self.is_broken(Break::NoPrevoteCheck)
            || (term > self.term
                && self.log.is_up_to_date(last_log)
                && !self.heard_from_leader_recently());
        let reply_term = if granted { term } else { self.term };
        self.send_with_term(from, reply_term, MessageBody::PreVoteResponse { granted });
    }

    /// RequestVote in our current term (Raft §5.2, §5.4.1): one vote per term, only for a log at
    /// least as up-to-date as ours. The vote is persisted before the reply leaves (`send`).
    pub(crate) fn handle_request_vote(&mut self, from: NodeId, last_log: LogPosition) {
        let can_vote =
            self.voted_for == Some(from) || (self.voted_for.is_none() && self.leader.is_none());
        let granted = can_vote && self.log.is_up_to_date(last_log);
        if granted {
            self.voted_for = Some(from);
            self.reset_election_timer();
        }
        self.send(from, MessageBody::RequestVoteResponse { granted });
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        if !self.membership().is_voter(from) {
            return;
        }
        self.votes.insert(from, granted);
        let granted_votes = self.granted_votes();
        let rejections = self.votes.len() - granted_votes.len();
        let membership = self.membership();
        if membership.is_quorum(granted_votes.iter()) {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => unreachable!("votes are only counted while campaigning"),
            }
        } else if rejections > membership.voters.len() - membership.quorum_size() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Leadership transfer: the leader told us to campaign at once (dissertation §3.10).
    pub(crate) fn handle_timeout_now(&mut self) {
        if self.is_promotable() && self.role != Role::Leader {
            self.campaign(true);
        }
    }
}
