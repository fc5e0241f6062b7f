//! The Raft replica: its state, role transitions, message dispatch and the `Replica` interface.
//!
//! The rules themselves live beside this file by topic: `election.rs` (§5.2, PreVote,
//! CheckQuorum), `replication.rs` (§5.3–5.4, pipelining, commit), `read.rs` (ReadIndex and
//! leases), `snapshot.rs` (§7), `membership.rs` (§4 of the dissertation), `transfer.rs` (§3.10).
//! Nothing here reads a clock, touches I/O or draws from a global random source.

use crate::config::{Break, Config};
use crate::log::RaftLog;
use crate::membership::MembershipLog;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::read::ReadQueue;
use crate::snapshot::IncomingSnapshot;
use ballot_core::{
    Entry, EntryPayload, HardState, LogIndex, LogPosition, Membership, MembershipChange, NodeId,
    PersistedState, ReadMode, Ready, Replica, ReplicaError, ReplicaSettings, ReplicaStart, Role,
    Snapshot, SnapshotMeta, Status, Term,
};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A leadership transfer in progress (dissertation §3.10).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    pub(crate) started_tick: u64,
    pub(crate) timeout_now_sent: bool,
}

/// One Raft node as a pure state machine. See the crate documentation for how to drive it.
#[derive(Debug)]
pub struct Raft {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) memberships: MembershipLog,
    pub(crate) rng: ChaCha8Rng,
    /// Logical clock: ticks since this incarnation started.
    pub(crate) now_ticks: u64,
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    /// Randomized in `[min, max)` on every reset.
    pub(crate) election_timeout_ticks: u32,
    /// When this node last heard from a leader of its term. Within an election timeout of it, the
    /// node has promised that leader not to help elect another (the CheckQuorum lease) and grants
    /// no pre-votes. Kept apart from `leader`, which term changes clear, because the promise must
    /// outlive them. A restarted node counts as having heard from a leader at tick 0: it may have
    /// made the promise before it crashed, and promises are not persisted.
    pub(crate) last_leader_contact_tick: Option<u64>,
    /// Votes received in the current (pre-)election.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leader only: one entry per other member.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Leader only: index of the first entry of its term (its no-op).
    pub(crate) term_start_index: LogIndex,
    pub(crate) reads: ReadQueue,
    pub(crate) transfer: Option<Transfer>,
    /// A TimeoutNow went out in this term. Its target may campaign through followers' leases at
    /// any later time (the message may be delayed), so the leader trusts no lease for the rest of
    /// the term.
    pub(crate) timeout_now_sent_this_term: bool,
    /// Hibernating (see `hibernation`): a tick does nothing.
    pub(crate) asleep: bool,
    /// Fell asleep and has not yet asked for the compaction that gives its log back: the next
    /// `Ready` asks if entries were applied since the last one (see `hibernation`).
    pub(crate) give_back_asleep: bool,
    /// Leader: consecutive ticks with nothing to do.
    pub(crate) quiet_ticks: u32,
    /// Highest term whose hard state is durable. A leader's appends may leave before its own
    /// entries are durable, but never before its term is: otherwise a restarted node could lead
    /// the same term again with different entries (found by review: a sole voter elects itself
    /// inside one tick).
    pub(crate) durable_term: Term,
    /// Latest snapshot image (taken on request or installed from the leader), sent to followers
    /// whose next entry was compacted away. Dropped once a compaction passes it: a follower
    /// installing it could not continue from the log.
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) incoming_snapshot: Option<IncomingSnapshot>,
    pub(crate) snapshot_to_install: Option<Snapshot>,
    /// A follower needs an image newer than the one held (or none is held): ask the caller.
    pub(crate) snapshot_wanted: bool,
    /// Index the caller last declared durable through `compact` (or the installed snapshot's):
    /// the compaction threshold counts from here.
    pub(crate) compaction_index: LogIndex,
    /// Applied index when a compaction was last asked for, or when the caller last offered a
    /// durable point that was no newer than `compaction_index`: asked again one threshold later.
    pub(crate) compaction_requested_at: Option<LogIndex>,
    pub(crate) outbox: Vec<Message>,
    pub(crate) outbox_after_persist: Vec<Message>,
    /// Leader: new entries wait to be sent in one batch when the next `Ready` is built.
    pub(crate) append_due: bool,
    /// Leader: the commit index advanced and followers should hear of it.
    pub(crate) commit_due: bool,
    pub(crate) last_hard_state: HardState,
    pub(crate) ready_in_flight: bool,
}

impl Raft {
    /// A replica built from what it persisted: for a brand-new node, its starting membership
    /// alone (`PersistedState::bootstrap`).
    /// A replica as a runtime starts one: its settings mapped onto Raft's
    /// ([`Config::from_settings`]), from the durable state `start` holds. The server's factory.
    pub fn start(settings: &ReplicaSettings, start: ReplicaStart) -> Result<Raft, String> {
        let config = Config::from_settings(start.node_id, start.rng_seed, settings);
        Raft::new(config, start.persisted)
    }

    pub fn new(config: Config, persisted: PersistedState) -> Result<Raft, String> {
        config.validate()?;
        let PersistedState {
            hard_state,
            compacted,
            entries,
        } = persisted;
        let persisted_hard_state = hard_state;
        let (compacted, base_membership) = match compacted {
            Some(meta) => (meta.last_included, meta.membership),
            None => (LogPosition::default(), Membership::default()),
        };
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index > compacted.index)
            .collect();
        if let Some(first) = entries.first() {
            if first.index != compacted.index + 1 {
                return Err(format!(
                    "persisted log starts at index {} but the compaction point is {}",
                    first.index, compacted.index
                ));
            }
        }
        // Entries are written before the hard state, so a crash between the two can leave log
        // entries of a term newer than the persisted one. The newer term is adopted without a
        // vote: a vote in it would have been persisted before anyone heard of it.
        let mut hard_state = hard_state;
        let last_term = entries.last().map(|e| e.term).unwrap_or(compacted.term);
        if hard_state.term < last_term {
            hard_state.term = last_term;
            hard_state.voted_for = None;
        }
        let log = RaftLog::restore(compacted, entries, hard_state.commit_index);
        let mut raft = Raft {
            id: config.id,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            role: Role::Follower,
            leader: None,
            log,
            memberships: MembershipLog::new(base_membership),
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            now_ticks: 0,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            last_leader_contact_tick: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            reads: ReadQueue::default(),
            transfer: None,
            timeout_now_sent_this_term: false,
            asleep: false,
            give_back_asleep: false,
            quiet_ticks: 0,
            durable_term: persisted_hard_state.term,
            snapshot: None,
            incoming_snapshot: None,
            snapshot_to_install: None,
            snapshot_wanted: false,
            compaction_index: compacted.index,
            compaction_requested_at: None,
            outbox: Vec::new(),
            outbox_after_persist: Vec::new(),
            append_due: false,
            commit_due: false,
            last_hard_state: persisted_hard_state,
            ready_in_flight: false,
            config,
        };
        raft.track_membership_entries(raft.log.first_index());
        // Read requests to the leader are numbered from a random start: an answer meant for an
        // earlier run of this node (delayed in the network) must never release a read of this
        // one at its older index.
        // (Derived from the seed, not drawn from the replica's random stream, so its timers
        // stay what they were.)
        raft.reads.next_forward_request =
            ChaCha8Rng::seed_from_u64(!raft.config.rng_seed).random::<u64>() >> 1;
        // (The persist-vote break forgets votes, so it also forgets this promise.)
        if raft.term > 0 && raft.config.check_quorum && !raft.is_broken(Break::PersistVote) {
            raft.last_leader_contact_tick = Some(0);
        }
        raft.reset_election_timer();
        Ok(raft)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's role now (cheaper than `status()`, which copies the membership).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Asks the leader to append `command`: appends it here if this node leads, else sends it to
    /// the leader it knows. The outcome shows in the log only; nothing answers a forward.
    pub fn propose_or_forward(&mut self, command: Bytes) -> Result<(), ReplicaError> {
        if self.role == Role::Leader {
            return self.propose(command).map(|_| ());
        }
        if command.len() > self.config.command_bytes_max {
            return Err(ReplicaError::CommandTooLarge {
                bytes: command.len(),
                max: self.config.command_bytes_max,
            });
        }
        match self.leader {
            Some(leader) if leader != self.id => {
                if let Err(command) = self.join_last_forward(leader, command) {
                    self.send(
                        leader,
                        MessageBody::ForwardProposals {
                            commands: vec![command],
                        },
                    );
                }
                Ok(())
            }
            _ => Err(ReplicaError::NotLeader { leader_hint: None }),
        }
    }

    /// Adds `command` to the forward to `leader` that the outbox ends with, if there is one in
    /// this term with room for it (`entries_per_message_max`, `bytes_per_message_max`): the
    /// proposals a batch of client requests makes on a follower travel as one message, not one
    /// each. Gives the command back otherwise.
    fn join_last_forward(&mut self, leader: NodeId, command: Bytes) -> Result<(), Bytes> {
        let term = self.term;
        let (entries_max, bytes_max) = (
            self.config.entries_per_message_max,
            self.config.bytes_per_message_max,
        );
        let Some(Message {
            to,
            term: message_term,
            body: MessageBody::ForwardProposals { commands },
            ..
        }) = self.outbox.last_mut()
        else {
            return Err(command);
        };
        let bytes: usize = commands.iter().map(Bytes::len).sum();
        if *to != leader
            || *message_term != term
            || commands.len() >= entries_max
            || bytes + command.len() > bytes_max
        {
            return Err(command);
        }
        commands.push(command);
        Ok(())
    }

    pub(crate) fn is_broken(&self, which: Break) -> bool {
        self.config.broken == Some(which)
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = self.rng.random_range(
            self.config.election_timeout_min_ticks..self.config.election_timeout_max_ticks,
        );
    }

    /// Whether a leader we heard from recently still holds our promise not to elect another
    /// (CheckQuorum, dissertation §4.2.3 and §9.6).
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum && self.heard_from_leader_recently()
    }

    /// Whether a leader was alive within the minimum election timeout (we are it, or we heard
    /// from it). PreVote refuses candidates then (dissertation §9.6), with or without CheckQuorum.
    pub(crate) fn heard_from_leader_recently(&self) -> bool {
        let window = self.config.election_timeout_min_ticks as u64;
        self.role == Role::Leader
            || self
                .last_leader_contact_tick
                .is_some_and(|tick| self.now_ticks < tick + window)
    }

    /// Whether the leader committed an entry of its own term, so its commit index is current.
    pub(crate) fn current_term_committed(&self) -> bool {
        self.role == Role::Leader
            && self.log.commit_index >= self.term_start_index
            && self.log.term_at(self.log.commit_index) == Some(self.term)
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.term, "terms never go back");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        if self.role == Role::Leader {
            self.reads.drop_all();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.append_due = false;
        self.commit_due = false;
        self.reset_election_timer();
    }

    /// Queues a message. Messages that replicate the leader's log may leave before the leader's
    /// own write is durable; everything else waits for the persistence of the current batch
    /// (a vote, a term, an acknowledged entry must be on disk before anyone hears of it).
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        let replicates_the_leader = self.role == Role::Leader
            && self.durable_term == self.term
            && matches!(
                message.body,
                MessageBody::AppendEntries { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::InstallSnapshot { .. }
                    | MessageBody::TimeoutNow
            );
        // Client traffic says nothing about this node's own state, durable or not.
        let client_traffic = matches!(
            message.body,
            MessageBody::ForwardProposals { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::ReadIndexResponse { .. }
        );
        let immediate = replicates_the_leader || client_traffic;
        if immediate {
            self.outbox.push(message);
        } else {
            self.outbox_after_persist.push(message);
        }
    }

    fn hard_state(&self) -> HardState {
        let voted_for = if self.is_broken(Break::PersistVote) {
            None
        } else {
            self.voted_for
        };
        HardState {
            term: self.term,
            voted_for,
            commit_index: self.log.commit_index,
        }
    }

    /// Sends what was deferred to batch it: new entries, commit notices, read rounds.
    fn flush(&mut self) {
        if self.role != Role::Leader {
            self.flush_reads();
            return;
        }
        if std::mem::take(&mut self.append_due) {
            self.broadcast_append();
        }
        if self.read_round_may_go() {
            self.broadcast_heartbeat();
        }
        if std::mem::take(&mut self.commit_due) {
            self.broadcast_commit();
        }
        self.flush_reads();
    }

    fn compaction_due(&self) -> bool {
        if self.give_back_asleep && self.log.applied_index > self.compaction_index {
            return true;
        }
        let threshold = self.config.snapshot_threshold_entries;
        let asked_long_ago = self
            .compaction_requested_at
            .is_none_or(|asked| self.log.applied_index.saturating_sub(asked) >= threshold);
        asked_long_ago && self.log.applied_index.saturating_sub(self.compaction_index) >= threshold
    }

    /// Rejects proposals this node cannot take, naming why.
    pub(crate) fn check_can_propose(&self) -> Result<(), ReplicaError> {
        if self.role != Role::Leader {
            if !self.membership().contains(self.id) && !self.membership().voters.is_empty() {
                return Err(ReplicaError::Removed);
            }
            return Err(ReplicaError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if let Some(transfer) = self.transfer {
            return Err(ReplicaError::TransferInProgress {
                target: transfer.target,
            });
        }
        let uncommitted = (self.log.last_index() - self.log.commit_index) as usize;
        if uncommitted >= self.config.uncommitted_entries_max {
            return Err(ReplicaError::Busy {
                what: "uncommitted entry queue",
                limit: self.config.uncommitted_entries_max,
            });
        }
        Ok(())
    }

    /// Leader: appends an entry of its term and schedules replication.
    pub(crate) fn append_entry(&mut self, payload: EntryPayload) -> LogPosition {
        debug_assert_eq!(self.role, Role::Leader);
        let position = LogPosition::new(self.log.last_index() + 1, self.term);
        let is_membership = matches!(payload, EntryPayload::Membership(..));
        self.log.append(Entry {
            index: position.index,
            term: position.term,
            payload,
        });
        if is_membership {
            self.track_membership_entries(position.index);
        }
        self.append_due = true;
        position
    }

    fn dispatch(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::PreVote { last_log } => self.handle_pre_vote(from, message.term, last_log),
            MessageBody::PreVoteResponse { granted } => {
                // A grant carries the term we would campaign in; a refusal the voter's own term,
                // which is ours (a higher one made us a follower in `observe_term`).
                let for_this_round = if granted { self.term + 1 } else { self.term };
                if self.role == Role::PreCandidate && message.term == for_this_round {
                    self.handle_vote_response(from, granted);
                }
            }
            MessageBody::RequestVote { last_log, .. } => self.handle_request_vote(from, last_log),
            MessageBody::RequestVoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.handle_vote_response(from, granted);
                }
            }
            MessageBody::AppendEntries {
                prev_log,
                entries,
                leader_commit,
            } => self.handle_append(from, prev_log, entries, leader_commit),
            MessageBody::AppendEntriesResponse(result) => self.handle_append_response(from, result),
            MessageBody::Heartbeat {
                leader_commit,
                read_round,
            } => self.handle_heartbeat(from, leader_commit, read_round),
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(from, read_round)
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => self.handle_install_snapshot(from, meta, offset, data, done),
            MessageBody::InstallSnapshotResponse {
                last_included,
                received_bytes,
                done,
            } => self.handle_install_snapshot_response(from, last_included, received_bytes, done),
            MessageBody::TimeoutNow => self.handle_timeout_now(),
            MessageBody::Sleep { leader_commit } => self.handle_sleep(from, leader_commit),
            MessageBody::ForwardProposals { commands } => {
                for command in commands {
                    // Refusals are silent: the follower's caller learns by timeout, as with a
                    // lost message.
                    let _ = self.propose(command);
                }
            }
            MessageBody::ReadIndex { request, lease } => {
                self.handle_read_index(from, request, lease)
            }
            MessageBody::ReadIndexResponse { request, index } => {
                self.handle_read_index_response(request, index)
            }
        }
    }

    /// Raft §5.1: a higher term makes us a follower in it, a lower term marks a stale sender.
    /// Returns whether the message should be handled further.
    fn observe_term(&mut self, message: &Message) -> bool {
        use MessageBody::*;
        if message.term > self.term {
            match &message.body {
                PreVote { .. } | RequestVote { .. } => {
                    let transfer = matches!(
                        message.body,
                        RequestVote {
                            leadership_transfer: true,
                            ..
                        }
                    );
                    let unchecked_pre_vote = matches!(message.body, PreVote { .. })
                        && self.is_broken(Break::NoPrevoteCheck);
                    if self.in_leader_lease() && !transfer && !unchecked_pre_vote {
                        return false; // we have a live leader: do not even raise our term
                    }
                    if matches!(message.body, PreVote { .. }) {
                        return true; // pre-votes never change our term
                    }
                    self.become_follower(message.term, None);
                }
                PreVoteResponse { granted: true } => return true, // for our prospective term
                AppendEntries { .. } | Heartbeat { .. } | InstallSnapshot { .. } | TimeoutNow => {
                    self.become_follower(message.term, Some(message.from))
                }
                _ => self.become_follower(message.term, None),
            }
            return true;
        }
        if message.term < self.term {
            match &message.body {
                // A stale leader (or one whose term we out-ran while partitioned) learns our term
                // from the answer and steps down; otherwise it could keep a node with a higher
                // term out of the cluster forever under CheckQuorum.
                AppendEntries { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.send(message.from, HeartbeatResponse { read_round: 0 })
                }
                PreVote { .. } => self.send(message.from, PreVoteResponse { granted: false }),
                _ => {}
            }
            return false;
        }
        true
    }

    /// Checks the invariants that must hold between any two steps. Cheap enough to run always
    /// in debug builds; each names the property it protects.
    pub(crate) fn check_invariants(&self) {
        let log = &self.log;
        assert!(
            log.applied_index <= log.commit_index,
            "applied beyond the commit index"
        );
        assert!(
            log.commit_index <= log.last_index(),
            "commit index beyond the end of the log"
        );
        assert!(
            log.compacted().index <= log.applied_index,
            "compacted entries that were never applied"
        );
        assert!(
            self.log.last_position().term <= self.term,
            "log holds an entry from a future term"
        );
        assert!(
            !self.asleep || matches!(self.role, Role::Leader | Role::Follower),
            "only a leader and its followers sleep"
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id), "a leader follows itself");
            for (id, progress) in &self.progress {
                assert!(
                    progress.match_index <= log.last_index(),
                    "n{id} matched beyond the leader's log (Leader Append-Only)"
                );
            }
        } else {
            assert!(self.progress.is_empty(), "only a leader tracks progress");
        }
    }
}

impl Replica for Raft {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self) {
        if self.asleep {
            return;
        }
        self.now_ticks += 1;
        self.expire_forwarded_reads();
        if self.role == Role::Leader {
            self.tick_leader();
            self.tick_hibernation();
        } else {
            self.tick_election();
        }
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            return;
        }
        if self.asleep && !self.woken_by(&message.body, message.from) {
            return;
        }
        if self.observe_term(&message) {
            self.dispatch(message);
        }
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    fn propose_or_forward(&mut self, command: Bytes) -> Result<(), ReplicaError> {
        self.wake();
        Raft::propose_or_forward(self, command)
    }

    fn role(&self) -> Role {
        self.role
    }

    fn propose(&mut self, command: Bytes) -> Result<LogPosition, ReplicaError> {
        self.wake();
        self.check_can_propose()?;
        if command.len() > self.config.command_bytes_max {
            return Err(ReplicaError::CommandTooLarge {
                bytes: command.len(),
                max: self.config.command_bytes_max,
            });
        }
        Ok(self.append_entry(EntryPayload::Command(command)))
    }

    fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogPosition, ReplicaError> {
        self.wake();
        self.propose_membership(change)
    }

    fn read(&mut self, request_id: u64, mode: ReadMode) -> Result<(), ReplicaError> {
        self.wake();
        self.start_read(request_id, mode)
    }

    fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ReplicaError> {
        self.wake();
        self.start_transfer(target)
    }

    fn is_asleep(&self) -> bool {
        self.asleep
    }

    fn peer_down(&mut self, node: NodeId) {
        self.handle_peer_down(node);
    }

    /// Straight to a real election, without a pre-vote round: in a group that never had a term,
    /// no leader exists for the pre-vote to protect.
    fn campaign(&mut self) {
        if self.term == 0 && self.role != Role::Leader && self.is_promotable() {
            self.become_candidate(false);
        }
    }

    fn has_ready(&self) -> bool {
        if self.ready_in_flight {
            return false;
        }
        !self.outbox.is_empty()
            || !self.outbox_after_persist.is_empty()
            || self.snapshot_to_install.is_some()
            || self.log.has_unstable()
            || self.hard_state() != self.last_hard_state
            || self.log.has_committed_to_apply()
            || self.reads.has_output()
            || (self.role == Role::Leader
                && (self.append_due || self.commit_due || self.read_round_may_go()))
            || self.compaction_due()
            || self.snapshot_wanted
    }

    fn ready(&mut self) -> Ready<Message> {
        assert!(
            !self.ready_in_flight,
            "ready() called again before advance()"
        );
        self.flush();
        let hard_state = self.hard_state();
        let ready = Ready {
            messages: std::mem::take(&mut self.outbox),
            snapshot: self.snapshot_to_install.take(),
            entries: self.log.take_unstable(),
            hard_state: (hard_state != self.last_hard_state).then_some(hard_state),
            hard_state_needs_sync: hard_state.term != self.last_hard_state.term
                || hard_state.voted_for != self.last_hard_state.voted_for,
            messages_after_persist: std::mem::take(&mut self.outbox_after_persist),
            committed_entries: self.log.take_committed(),
            read_states: self.reads.take_released(),
            dropped_reads: self.reads.take_dropped(),
            compaction_wanted: self.compaction_due(),
            snapshot_wanted: std::mem::take(&mut self.snapshot_wanted),
            // A leader counts its own entries towards a commit only once persisted (advance),
            // so what it hands out as committed is durable on a quorum without this batch.
            apply_early: self.role == Role::Leader,
        };
        if ready.compaction_wanted {
            self.compaction_requested_at = Some(self.log.applied_index);
            self.give_back_asleep = false;
        }
        self.last_hard_state = hard_state;
        self.ready_in_flight = true;
        ready
    }

    fn advance(&mut self) {
        assert!(self.ready_in_flight, "advance() without a ready in flight");
        self.ready_in_flight = false;
        self.log.persisted();
        self.durable_term = self.last_hard_state.term;
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    fn compact(&mut self, durable_index: LogIndex) -> Result<Option<SnapshotMeta>, ReplicaError> {
        self.compact_to_durable(durable_index)
    }

    fn snapshot_taken(&mut self, snapshot: Snapshot) -> Result<SnapshotMeta, ReplicaError> {
        self.keep_image(snapshot)
    }

    fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.commit_index,
            applied_index: self.log.applied_index,
            last_log: self.log.last_position(),
            first_log_index: self.log.first_index(),
            membership: self.membership().clone(),
        }
    }

    fn entry_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    fn safety_checkers() -> Vec<Box<dyn ballot_core::SafetyChecker>> {
        crate::safety::checkers()
    }
}
