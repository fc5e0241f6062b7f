//! The in-memory Raft log: entries after the last compaction point, the commit index, and which
//! entries have been handed to storage and made durable.
//!
//! Owns the Log Matching bookkeeping (term lookups, conflict detection, suffix truncation). Never
//! truncates a committed entry: that would break State Machine Safety, so it is an assertion.

use ballot_core::{Entry, LogIndex, LogPosition, Term};

#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// Last entry folded into a snapshot and dropped from `entries` (index 0 term 0 if none).
    compacted: LogPosition,
    /// `entries[k].index == compacted.index + 1 + k`.
    entries: Vec<Entry>,
    pub(crate) commit_index: LogIndex,
    /// Highest index handed out to be applied.
    pub(crate) applied_index: LogIndex,
    /// Entries up to here are durable in storage (as far as this replica knows).
    pub(crate) stable_index: LogIndex,
    /// First index not yet handed to storage in a `Ready`.
    pub(crate) unstable_from: LogIndex,
    /// Last index of the entries handed out in the `Ready` now being persisted, if any.
    pub(crate) persisting_to: Option<LogIndex>,
}

impl RaftLog {
    /// A log restored from storage: everything given is already durable.
    pub(crate) fn restore(
        compacted: LogPosition,
        entries: Vec<Entry>,
        commit_index: LogIndex,
    ) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                compacted.index + 1 + offset as u64,
                "restored log entries must be contiguous after the snapshot"
            );
        }
        let last_index = compacted.index + entries.len() as u64;
        let commit_index = commit_index.clamp(compacted.index, last_index);
        Self {
            compacted,
            entries,
            commit_index,
            applied_index: compacted.index,
            stable_index: last_index,
            unstable_from: last_index + 1,
            persisting_to: None,
        }
    }

    pub(crate) fn compacted(&self) -> LogPosition {
        self.compacted
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.compacted.index + 1
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.compacted.index + self.entries.len() as u64
    }

    pub(crate) fn last_position(&self) -> LogPosition {
        self.entries
            .last()
            .map(Entry::position)
            .unwrap_or(self.compacted)
    }

    /// Term of the entry at `index`; `None` if it is compacted away (and not the compaction
    /// point) or beyond the end of the log.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.compacted.index {
            return Some(self.compacted.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.compacted.index {
            return None;
        }
        self.entries
            .get((index - self.compacted.index - 1) as usize)
    }

    pub(crate) fn matches(&self, position: LogPosition) -> bool {
        self.term_at(position.index) == Some(position.term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
    /// higher, or equal with an index at least as high.
    pub(crate) fn is_up_to_date(&self, candidate_last: LogPosition) -> bool {
        let ours = self.last_position();
        (candidate_last.term, candidate_last.index) >= (ours.term, ours.index)
    }

    /// Entries in `[from, ..]` up to `entries_max` entries and about `bytes_max` bytes (always at
    /// least one entry if any exist, so a huge entry still makes progress).
    pub(crate) fn slice(&self, from: LogIndex, entries_max: usize, bytes_max: usize) -> Vec<Entry> {
        debug_assert!(from > self.compacted.index, "slice of compacted entries");
        let start = (from - self.compacted.index - 1) as usize;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries.iter().skip(start).take(entries_max) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Leader append at the end of its own log.
    pub(crate) fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "appends must extend the log by one"
        );
        assert!(
            entry.term >= self.last_position().term,
            "terms in a log never decrease"
        );
        self.entries.push(entry);
    }

    /// Follower append after a successful consistency check at `prev`: skips entries already
    /// present, truncates from the first conflicting one (Raft §5.3), appends the rest.
    /// Returns the index from which the log was truncated, if it was.
    pub(crate) fn append_after(
        &mut self,
        prev: LogPosition,
        entries: Vec<Entry>,
    ) -> Option<LogIndex> {
        debug_assert!(self.matches(prev) || prev.index < self.compacted.index);
        let mut truncated = None;
        for entry in entries {
            if entry.index <= self.compacted.index {
                continue; // covered by our snapshot, hence committed and identical
            }
            match self.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    self.truncate_from(entry.index);
                    truncated = Some(entry.index);
                    self.entries.push(entry);
                }
                None => {
                    assert_eq!(
                        entry.index,
                        self.last_index() + 1,
                        "appended entries leave no gap"
                    );
                    self.entries.push(entry);
                }
            }
        }
        truncated
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.commit_index,
            "truncating committed entry {index} (commit index {}) would break State Machine Safety",
            self.commit_index
        );
        self.entries
            .truncate((index - self.compacted.index - 1) as usize);
        self.unstable_from = self.unstable_from.min(index);
        self.stable_index = self.stable_index.min(index - 1);
        if let Some(to) = self.persisting_to {
            self.persisting_to = Some(to.min(index - 1));
        }
    }

    /// The conflict hint a follower returns when the entry at `prev_index` is missing or has
    /// another term: the term found there and the first index of that term in our log.
    pub(crate) fn conflict_hint(&self, prev_index: LogIndex) -> (Option<Term>, LogIndex) {
        match self.term_at(prev_index) {
            None => (None, self.last_index().min(prev_index) + 1),
            Some(term) => {
                let mut first = prev_index;
                while first > self.first_index() && self.term_at(first - 1) == Some(term) {
                    first -= 1;
                }
                (Some(term), first)
            }
        }
    }

    /// Last index of an entry with `term` in our log, for the leader's side of the fast back-off.
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.term == term)
            .map(|entry| entry.index)
    }

    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.commit_index {
            self.commit_index = index;
            true
        } else {
            false
        }
    }

    /// Entries that are not yet handed to storage.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let start = self.unstable_from.max(self.first_index());
        let out = self.entries[(start - self.compacted.index - 1) as usize..].to_vec();
        self.unstable_from = last + 1;
        self.persisting_to = Some(last);
        out
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Committed entries not yet handed out for applying.
    pub(crate) fn take_committed(&mut self) -> Vec<Entry> {
        if self.commit_index <= self.applied_index {
            return Vec::new();
        }
        let from = self.applied_index + 1;
        let out: Vec<Entry> = (from..=self.commit_index)
            .map(|index| {
                self.entry(index)
                    .expect("committed entries are in the log")
                    .clone()
            })
            .collect();
        self.applied_index = self.commit_index;
        out
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.commit_index > self.applied_index
    }

    /// The storage write handed out in the last `Ready` is durable.
    pub(crate) fn persisted(&mut self) {
        if let Some(to) = self.persisting_to.take() {
            self.stable_index = self.stable_index.max(to);
        }
    }

    /// Drops entries up to `index` (which must be in the log) after a local snapshot.
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.compacted.index {
            return;
        }
        assert!(
            index <= self.applied_index,
            "only applied entries may be compacted"
        );
        let term = self.term_at(index).expect("compaction point is in the log");
        self.entries
            .drain(..(index - self.compacted.index) as usize);
        if self.entries.capacity() > 4 * self.entries.len() + 64 {
            // Give the memory back (a sleeping group's log is compacted whole).
            self.entries.shrink_to_fit();
        }
        self.compacted = LogPosition::new(index, term);
    }

    /// Installs a snapshot received from the leader: the whole log is replaced by it. (The caller
    /// first checks that our log does not already contain the snapshot's last entry; if it did,
    /// discarding the suffix could drop entries this node acknowledged.)
    pub(crate) fn install_snapshot(&mut self, last_included: LogPosition) {
        assert!(
            last_included.index > self.commit_index,
            "a snapshot never rolls back commits"
        );
        self.entries.clear();
        self.compacted = last_included;
        self.commit_index = last_included.index;
        self.applied_index = last_included.index;
        self.unstable_from = last_included.index + 1;
        self.stable_index = last_included.index;
        self.persisting_to = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_core::EntryPayload;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect();
        RaftLog::restore(LogPosition::default(), entries, 0)
    }

    #[test]
    fn up_to_date_compares_last_term_then_index() {
        let log = log_with_terms(&[1, 1, 2]);
        assert!(log.is_up_to_date(LogPosition::new(1, 3)));
        assert!(log.is_up_to_date(LogPosition::new(3, 2)));
        assert!(!log.is_up_to_date(LogPosition::new(2, 2)));
        assert!(!log.is_up_to_date(LogPosition::new(9, 1)));
    }

    #[test]
    fn append_after_truncates_only_from_first_conflict() {
        let mut log = log_with_terms(&[1, 1, 1, 1]);
        let truncated = log.append_after(LogPosition::new(1, 1), vec![entry(2, 1), entry(3, 2)]);
        assert_eq!(truncated, Some(3));
        assert_eq!(log.last_position(), LogPosition::new(3, 2));
        assert_eq!(log.unstable_from, 3);
    }

    #[test]
    fn stale_append_does_not_truncate_longer_log() {
        let mut log = log_with_terms(&[1, 1, 1, 1]);
        assert_eq!(
            log.append_after(LogPosition::new(1, 1), vec![entry(2, 1)]),
            None
        );
        assert_eq!(
            log.last_index(),
            4,
            "a delayed shorter append must not cut matching entries"
        );
    }

    #[test]
    #[should_panic(expected = "State Machine Safety")]
    fn truncating_a_committed_entry_panics() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.commit_to(3);
        log.append_after(LogPosition::new(1, 1), vec![entry(2, 2)]);
    }

    #[test]
    fn conflict_hint_names_first_index_of_conflicting_term() {
        let log = log_with_terms(&[1, 2, 2, 2]);
        assert_eq!(log.conflict_hint(4), (Some(2), 2));
        assert_eq!(log.conflict_hint(9), (None, 5));
    }

    #[test]
    fn compaction_keeps_terms_lookup_at_boundary() {
        let mut log = log_with_terms(&[1, 2, 3]);
        log.commit_to(3);
        log.take_committed();
        log.compact_to(2);
        assert_eq!(log.term_at(2), Some(2));
        assert_eq!(log.term_at(1), None);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.slice(3, 10, 1 << 20).len(), 1);
    }

    #[test]
    fn slice_respects_byte_limit_but_returns_at_least_one() {
        let log = log_with_terms(&[1, 1, 1]);
        assert_eq!(log.slice(1, 10, 1).len(), 1);
        assert_eq!(log.slice(1, 2, 1 << 20).len(), 2);
    }
}
