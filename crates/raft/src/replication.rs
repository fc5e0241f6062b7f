//! Log replication (Raft §5.3) and commitment (§5.4.2): AppendEntries with the consistency check
//! and the fast back-off hint, pipelining within a per-follower window, and counting replicas of
//! entries of the leader's own term only.

use crate::config::Break;
use crate::message::{AppendResult, MessageBody};
use crate::progress::ReplicationState;
use crate::raft::Raft;
use ballot_core::{Entry, LogIndex, LogPosition, NodeId, Role};

/// Heartbeat answers without progress before a replicating follower is probed again.
const STALLED_HEARTBEATS_MAX: u8 = 2;

impl Raft {
    pub(crate) fn broadcast_append(&mut self) {
        let followers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in followers {
            self.send_append(id);
        }
    }

    /// Sends what `to` is missing, as far as its state and window allow: one probe, a pipeline
    /// of batches, or the next snapshot chunk.
    pub(crate) fn send_append(&mut self, to: NodeId) {
        loop {
            let Some(progress) = self.progress.get(&to) else {
                return;
            };
            if !progress.can_send(self.config.inflight_messages_max) {
                return;
            }
            if let ReplicationState::Snapshot { .. } = progress.state {
                self.send_snapshot_chunk(to);
                return;
            }
            let next_index = progress.next_index;
            let probing = progress.state == ReplicationState::Probe;
            let prev_index = next_index - 1;
            let Some(prev_term) = self.log.term_at(prev_index) else {
                // What `to` needs next was compacted away: it catches up by snapshot.
                self.start_snapshot(to);
                return;
            };
            let entries = if next_index <= self.log.last_index() {
                self.log.slice(
                    next_index,
                    self.config.entries_per_message_max,
                    self.config.bytes_per_message_max,
                )
            } else {
                Vec::new()
            };
            if entries.is_empty() && !probing {
                return;
            }
            let last_index = prev_index + entries.len() as u64;
            let leader_commit = self.log.commit_index;
            let progress = self.progress.get_mut(&to).expect("checked above");
            progress.sent_append(last_index);
            progress.commit_sent = progress.commit_sent.max(leader_commit.min(last_index));
            let prev_log = LogPosition::new(prev_index, prev_term);
            self.send(
                to,
                MessageBody::AppendEntries {
                    prev_log,
                    entries,
                    leader_commit,
                },
            );
            if probing {
                return;
            }
        }
    }

    /// An append with no entries at the follower's expected position: it succeeds if the
    /// follower is where we think, and draws a conflict reply otherwise.
    fn send_empty_append(&mut self, to: NodeId) {
        let Some(progress) = self.progress.get(&to) else {
            return;
        };
        let prev_index = progress.next_index - 1;
        let Some(prev_term) = self.log.term_at(prev_index) else {
            self.start_snapshot(to);
            return;
        };
        let leader_commit = self.log.commit_index;
        let prev_log = LogPosition::new(prev_index, prev_term);
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log,
                entries: Vec::new(),
                leader_commit,
            },
        );
    }

    /// Tells followers that have all entries up to the new commit index about it, without
    /// waiting for the next heartbeat.
    pub(crate) fn broadcast_commit(&mut self) {
        let commit_index = self.log.commit_index;
        let mut notices = Vec::new();
        for (&id, progress) in self.progress.iter_mut() {
            let known = commit_index.min(progress.match_index);
            if known > progress.commit_sent {
                progress.commit_sent = known;
                notices.push((id, known));
            }
        }
        for (id, leader_commit) in notices {
            self.send(
                id,
                MessageBody::Heartbeat {
                    leader_commit,
                    read_round: 0,
                },
            );
        }
    }

    /// Follower side of AppendEntries.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_log: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        self.accept_leader(from);
        let (prev_log, entries) = self.skip_committed_prefix(prev_log, entries);
        if !self.log.matches(prev_log) {
            let (conflict_term, first_index) = self.log.conflict_hint(prev_log.index);
            let result = AppendResult::Conflict {
                prev_index: prev_log.index,
                conflict_term,
                first_index,
            };
            self.send(from, MessageBody::AppendEntriesResponse(result));
            return;
        }
        let match_index = prev_log.index + entries.len() as u64;
        let old_last = self.log.last_index();
        let truncated_from = self.log.append_after(prev_log, entries);
        if let Some(index) = truncated_from {
            self.memberships.truncate_from(index);
        }
        self.track_membership_entries(truncated_from.unwrap_or(old_last + 1));
        // Only entries verified by this message are known to match the leader's log.
        self.log.commit_to(leader_commit.min(match_index));
        self.send(
            from,
            MessageBody::AppendEntriesResponse(AppendResult::Success { match_index }),
        );
    }

    /// Entries at or below our commit index are already ours (State Machine Safety), so an append
    /// that starts there is cut to start at the commit index.
    fn skip_committed_prefix(
        &self,
        prev_log: LogPosition,
        entries: Vec<Entry>,
    ) -> (LogPosition, Vec<Entry>) {
        let commit_index = self.log.commit_index;
        if prev_log.index >= commit_index {
            return (prev_log, entries);
        }
        let commit_term = self
            .log
            .term_at(commit_index)
            .expect("the commit point is in the log or snapshot");
        let entries = entries
            .into_iter()
            .filter(|e| e.index > commit_index)
            .collect();
        (LogPosition::new(commit_index, commit_term), entries)
    }

    /// A message from the leader of our term: remember it and stay a follower.
    pub(crate) fn accept_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.leader = Some(from);
        self.last_leader_contact_tick = Some(self.now_ticks);
        self.election_elapsed_ticks = 0;
    }

    /// Leader side of an AppendEntries answer.
    pub(crate) fn handle_append_response(&mut self, from: NodeId, result: AppendResult) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match result {
            AppendResult::Success { match_index } => {
                if progress.acknowledge(match_index) {
                    if progress.state == ReplicationState::Probe {
                        progress.become_replicate();
                    }
                    self.maybe_commit();
                    let Some(progress) = self.progress.get(&from) else {
                        return;
                    };
                    if self.log.commit_index.min(progress.match_index) > progress.commit_sent {
                        // Commit moved on before this follower had the entries: tell it now.
                        self.commit_due = true;
                    }
                    self.send_timeout_now_if_caught_up(from);
                } else if progress.state == ReplicationState::Probe
                    && match_index == progress.match_index
                {
                    // The probe landed where we already knew the follower matches: pipeline from there.
                    progress.become_replicate();
                }
            }
            AppendResult::Conflict {
                prev_index,
                conflict_term,
                first_index,
            } => {
                let stale = match progress.state {
                    ReplicationState::Probe => prev_index + 1 != progress.next_index,
                    ReplicationState::Replicate => prev_index <= progress.match_index,
                    ReplicationState::Snapshot { .. } => true,
                };
                if stale {
                    return;
                }
                let hinted = match conflict_term.and_then(|term| self.log.last_index_of_term(term))
                {
                    // We hold entries of the follower's term: resume right after our last one.
                    Some(last_of_term) if last_of_term < prev_index => last_of_term + 1,
                    _ => first_index,
                };
                let progress = self.progress.get_mut(&from).expect("looked up above");
                progress.next_index = hinted.clamp(
                    progress.match_index + 1,
                    prev_index.max(progress.match_index + 1),
                );
                progress.become_probe();
            }
        }
        // A follower receiving a snapshot is driven by the snapshot's own acknowledgements.
        let sending_snapshot = self
            .progress
            .get(&from)
            .is_some_and(|p| matches!(p.state, ReplicationState::Snapshot { .. }));
        if !sending_snapshot {
            self.send_append(from);
        }
    }

    /// Advances the commit index to the highest index a quorum of voters holds, if that entry is
    /// of the current term (Raft §5.4.2: never by counting replicas of older entries).
    pub(crate) fn maybe_commit(&mut self) {
        let Some(quorum_index) = self.membership().quorum_value(|id| {
            if id == self.id {
                self.log.stable_index
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        }) else {
            return;
        };
        if quorum_index <= self.log.commit_index {
            return;
        }
        let of_current_term = self.log.term_at(quorum_index) == Some(self.term);
        if of_current_term || self.is_broken(Break::CommitOldTerm) {
            self.log.commit_to(quorum_index);
            self.commit_due = true;
            self.on_commit_advanced();
        }
    }

    fn on_commit_advanced(&mut self) {
        self.step_down_if_removed();
    }

    /// Follower: the leader's heartbeat, possibly a read-round confirmation request.
    pub(crate) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        leader_commit: LogIndex,
        read_round: u64,
    ) {
        self.accept_leader(from);
        // The leader sends min(commit, what we matched), so this never commits an entry we hold
        // from another leader.
        self.log.commit_to(leader_commit);
        self.send(from, MessageBody::HeartbeatResponse { read_round });
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_round = progress.acked_round.max(read_round);
        // A lost probe or snapshot chunk is re-sent once per heartbeat round trip. A follower in
        // replicate state that answers heartbeats but acknowledged nothing since the last one has
        // probably lost an append: an append it cannot accept makes it reply with a conflict,
        // which restarts probing from its real match point. Two quiet rounds in a row are needed,
        // so a round trip merely longer than the heartbeat interval does not restart probing.
        let behind = progress.match_index < self.log.last_index();
        if progress.match_index == progress.match_at_last_heartbeat && behind {
            progress.stalled_heartbeats = progress.stalled_heartbeats.saturating_add(1);
        } else {
            progress.stalled_heartbeats = 0;
        }
        progress.match_at_last_heartbeat = progress.match_index;
        let stalled = progress.stalled_heartbeats >= STALLED_HEARTBEATS_MAX;
        let mut force = false;
        match progress.state {
            ReplicationState::Replicate if stalled => {
                progress.stalled_heartbeats = 0;
                progress.inflight.pop_front();
                force = true;
            }
            ReplicationState::Replicate => {}
            _ => progress.waiting = false,
        }
        if read_round > 0 {
            self.confirm_read_rounds();
        }
        if force {
            self.send_empty_append(from);
        } else if behind {
            self.send_append(from);
        }
    }
}
