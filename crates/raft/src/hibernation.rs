//! Hibernation: a group with nothing to do stops ticking (TiKV's hibernate regions, CockroachDB's
//! quiescence), so a node hosting a thousand quiet groups does not spend a core on their
//! heartbeats.
//!
//! A leader whose followers have all matched its whole log, whose every entry is committed and
//! that has no read, transfer or snapshot under way counts quiet ticks; after an election
//! timeout of them it sends each follower `Sleep` (with the commit index) and falls asleep.
//! A follower that holds exactly that log, committed, falls asleep too; one that does not stays
//! awake, and its election timeout (a pre-vote reaching the leader) brings the group back.
//! Asleep, a replica does nothing on a tick: the runtime stops ticking it at all.
//!
//! It wakes on anything asked of it (a proposal, a read, a transfer, a membership change) and on
//! any message, except a heartbeat answer at the leader (dropped unread) or its leader's
//! heartbeat at a follower (these change nothing, and a late one would wake the group it just
//! put to sleep, forever). A dead
//! leader of a sleeping group is noticed by the runtime's node liveness, which calls
//! `peer_down`: the followers it led wake with the promise to it (the CheckQuorum lease) given
//! up, and elect.
//!
//! Asleep, a replica gives back its log: falling asleep asks the runtime for a compaction (a
//! `Ready` with `compaction_wanted`), and a compaction while asleep keeps no trailing entries,
//! since every follower held the whole log when the group fell asleep. The runtime compacts up
//! to what its state machine has made durable (and may offer more later, `Replica::compact`).
//!
//! Lease reads stay correct: a leader forgets its lease, and the rounds of heartbeats still
//! unanswered, when it falls asleep (its clock stops, so it could not tell when a lease runs
//! out), so the first read after it wakes confirms with a new round. Its followers keep their promise not to
//! elect another leader for longer than usual (their clocks stop too), which only makes the
//! lease it may win later safer; node liveness ends that promise no earlier than an election
//! timeout after the last frame from the leader's node, later than any lease that node
//! acquired.

use crate::message::MessageBody;
use crate::raft::Raft;
use ballot_core::{LogIndex, NodeId, Role};

impl Raft {
    /// Leader, once per tick: counts quiet ticks and falls asleep after an election timeout of
    /// them.
    pub(crate) fn tick_hibernation(&mut self) {
        if !self.config.hibernate || self.role != Role::Leader {
            return;
        }
        if !self.is_quiet() {
            self.quiet_ticks = 0;
            return;
        }
        self.quiet_ticks += 1;
        if self.quiet_ticks < self.config.election_timeout_min_ticks {
            return;
        }
        let leader_commit = self.log.commit_index;
        let followers: Vec<NodeId> = self.progress.keys().copied().collect();
        for follower in followers {
            self.send(follower, MessageBody::Sleep { leader_commit });
        }
        if !self.is_broken(crate::config::Break::SleepingLease) {
            self.reads.forget_lease();
        }
        self.fall_asleep();
    }

    /// Nothing to replicate, commit, read, transfer or install.
    fn is_quiet(&self) -> bool {
        let last = self.log.last_index();
        self.log.commit_index == last
            && self.progress.values().all(|p| p.match_index == last)
            && self.reads.is_quiet()
            && self.transfer.is_none()
            && self.incoming_snapshot.is_none()
            && self.snapshot_to_install.is_none()
            && !self.append_due
            && !self.commit_due
    }

    /// Follower: the leader went to sleep. Sleep too if this log is exactly the leader's,
    /// committed.
    pub(crate) fn handle_sleep(&mut self, from: NodeId, leader_commit: LogIndex) {
        self.accept_leader(from);
        self.log.commit_to(leader_commit);
        if self.config.hibernate
            && self.log.last_index() == leader_commit
            && self.log.commit_index == leader_commit
            && self.reads.is_quiet()
        {
            self.fall_asleep();
        }
    }

    fn fall_asleep(&mut self) {
        assert!(
            matches!(self.role, Role::Leader | Role::Follower),
            "only a leader and its followers sleep"
        );
        self.asleep = true;
        self.quiet_ticks = 0;
        self.give_back_asleep = true;
    }

    /// A message reached this sleeping replica: wakes it unless it changes nothing. Returns
    /// whether to handle the message at all: a sleeping leader drops heartbeat answers, so a
    /// round it sent before it slept confirms no lease after it wakes.
    pub(crate) fn woken_by(&mut self, body: &MessageBody, from: NodeId) -> bool {
        match body {
            MessageBody::HeartbeatResponse { .. } if self.role == Role::Leader => false,
            MessageBody::Heartbeat { .. } | MessageBody::Sleep { .. }
                if self.leader == Some(from) =>
            {
                true
            }
            _ => {
                self.wake();
                true
            }
        }
    }

    /// Back to ticking, with a full election timeout (or heartbeat interval) ahead, as if a
    /// leader had just been heard from: a sleep is no reason to campaign.
    pub(crate) fn wake(&mut self) {
        if !self.asleep {
            return;
        }
        self.asleep = false;
        self.quiet_ticks = 0;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        // CheckQuorum asks for a quorum heard from within an election timeout: count the
        // followers as heard from now, and judge them a timeout from now.
        for progress in self.progress.values_mut() {
            progress.recent_active = true;
        }
    }

    /// Node liveness: nothing was heard from `node` for an election timeout. A sleeping
    /// follower whose leader it is wakes, drops its promise to it, and stands for election
    /// when the random part of its timeout has passed: the silence that declared the leader
    /// down already was the fixed part (the randomness still keeps the followers from all
    /// standing at once).
    pub(crate) fn handle_peer_down(&mut self, node: NodeId) {
        if !self.asleep || self.role != Role::Follower || self.leader != Some(node) {
            return;
        }
        self.wake();
        self.leader = None;
        self.last_leader_contact_tick = None;
        self.reset_election_timer();
        self.election_elapsed_ticks = self.config.election_timeout_min_ticks;
    }
}
