//! Membership as Raft sees it: the configuration in force is the latest one in the log, committed
//! or not (dissertation §4.1), so a truncated log must also roll the membership back.
//!
//! Owns the history of membership changes after the compaction point and the rules for proposing
//! one: one change at a time, and only after the leader committed an entry of its own term (the
//! fix to the single-server change bug described by Ongaro in the raft-dev list, 2015).

use crate::raft::Raft;
use ballot_core::{
    EntryPayload, LogIndex, LogPosition, Membership, MembershipChange, ReplicaError, Role,
};

#[derive(Debug, Clone)]
pub(crate) struct MembershipLog {
    /// In force at the compaction point (or the bootstrap membership).
    base: Membership,
    /// `(index of the change entry, membership after it)`, ascending.
    changes: Vec<(LogIndex, Membership)>,
}

impl MembershipLog {
    pub(crate) fn new(base: Membership) -> Self {
        Self {
            base,
            changes: Vec::new(),
        }
    }

    pub(crate) fn current(&self) -> &Membership {
        self.changes
            .last()
            .map(|(_, membership)| membership)
            .unwrap_or(&self.base)
    }

    /// Membership in force once the log up to `index` is applied.
    pub(crate) fn at(&self, index: LogIndex) -> &Membership {
        self.changes
            .iter()
            .rev()
            .find(|(change_index, _)| *change_index <= index)
            .map(|(_, membership)| membership)
            .unwrap_or(&self.base)
    }

    pub(crate) fn latest_change_index(&self) -> LogIndex {
        self.changes.last().map(|(index, _)| *index).unwrap_or(0)
    }

    pub(crate) fn push(&mut self, index: LogIndex, membership: Membership) {
        debug_assert!(
            index > self.latest_change_index(),
            "membership changes are ordered by index"
        );
        self.changes.push((index, membership));
    }

    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        self.changes
            .retain(|(change_index, _)| *change_index < index);
    }

    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        let base = self.at(index).clone();
        self.changes
            .retain(|(change_index, _)| *change_index > index);
        self.base = base;
    }

    pub(crate) fn reset(&mut self, base: Membership) {
        self.base = base;
        self.changes.clear();
    }
}

impl Raft {
    pub(crate) fn membership(&self) -> &Membership {
        self.memberships.current()
    }

    /// Records membership entries found in the log from `from` on (after an append).
    pub(crate) fn track_membership_entries(&mut self, from: LogIndex) {
        let last = self.log.last_index();
        let mut changed = false;
        for index in from.max(self.log.first_index())..=last {
            let Some(entry) = self.log.entry(index) else {
                continue;
            };
            if let EntryPayload::Membership(_, membership) = &entry.payload {
                // The entry carries the whole membership: a node that joined with no idea of
                // the members learns them here, whatever it believed before.
                self.memberships.push(index, membership.clone());
                changed = true;
            }
        }
        if changed {
            self.on_membership_changed();
        }
    }

    pub(crate) fn on_membership_changed(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members: Vec<_> = self
            .membership()
            .members()
            .filter(|&id| id != self.id)
            .collect();
        let next_index = self.log.last_index() + 1;
        for id in &members {
            self.progress
                .entry(*id)
                .or_insert_with(|| crate::progress::Progress::new(next_index));
        }
        self.progress.retain(|id, _| members.contains(id));
    }

    pub(crate) fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogPosition, ReplicaError> {
        self.check_can_propose()?;
        if !self.current_term_committed() {
            return Err(ReplicaError::LeaderNotReady);
        }
        if self.memberships.latest_change_index() > self.log.commit_index {
            return Err(ReplicaError::MembershipChangePending);
        }
        // Validate the change itself first: promoting a voter or an unknown id is a different
        // mistake from promoting a learner that is still behind, and the caller needs to know which.
        let next = self.membership().apply(change)?;
        if let MembershipChange::PromoteLearner(id) = change {
            self.check_learner_caught_up(id)?;
        }
        let position = self.append_entry(EntryPayload::Membership(change, next));
        Ok(position)
    }

    /// A learner is promoted only once it is within one append batch of the leader, so that
    /// adding it does not stall commits while it catches up (dissertation §4.2.1).
    fn check_learner_caught_up(&self, id: ballot_core::NodeId) -> Result<(), ReplicaError> {
        let Some(progress) = self.progress.get(&id) else {
            return Err(ReplicaError::UnknownNode { node: id });
        };
        let behind_entries = self.log.last_index().saturating_sub(progress.match_index);
        // A learner that has never acknowledged an append (not started, or unreachable) is not
        // caught up however short the log is: its match index is a guess, not a fact.
        let never_acknowledged = progress.match_index == 0;
        if never_acknowledged || behind_entries > self.config.entries_per_message_max as u64 {
            return Err(ReplicaError::LearnerBehind {
                node: id,
                behind_entries,
            });
        }
        Ok(())
    }

    /// After the entry that removed this leader commits, it steps down (dissertation §4.2.2).
    pub(crate) fn step_down_if_removed(&mut self) {
        if self.role == Role::Leader
            && !self.membership().is_voter(self.id)
            && self.memberships.latest_change_index() <= self.log.commit_index
        {
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_rolls_membership_back() {
        let mut log = MembershipLog::new(Membership::with_voters([1, 2, 3]));
        log.push(5, Membership::with_voters([1, 2, 3, 4]));
        log.push(9, Membership::with_voters([1, 2, 4]));
        assert_eq!(log.at(7).voters.len(), 4);
        log.truncate_from(9);
        assert_eq!(log.current().voters.len(), 4);
        log.compact_to(6);
        assert_eq!(log.latest_change_index(), 0);
        assert_eq!(log.current().voters.len(), 4);
    }
}
