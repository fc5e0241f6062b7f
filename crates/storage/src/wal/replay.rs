//! The log's shape as the WAL sees it (indexes, terms, snapshot floor, hard state) and the rules
//! every record must follow. The writer checks a record with these functions before writing it, and
//! replay checks it again with the same functions when reading it back (docs/design/storage.md,
//! "Replay"): one definition of a valid log, used on both sides of the disk.
//!
//! Owns no I/O and no entry payloads; [`Replay`] adds the entries themselves for recovery.

use crate::wal::format::{SegmentHeader, SnapshotMarker, FORMAT_VERSION};
use crate::wal::Violation;
use ballot_core::{Entry, HardState, LogIndex, LogPosition, Term};
use std::collections::VecDeque;

/// Indexes and terms of the live log, run-length encoded by term (terms change rarely, so this
/// stays small however long the log).
#[derive(Debug, Clone)]
pub struct LogState {
    /// The latest snapshot marker's position: entries up to its index are covered by a snapshot.
    /// `0@t0` before any marker.
    floor: LogPosition,
    /// First live index. The writer always has `start == floor.index + 1`; replay may start later
    /// while the oldest segments it read were compacted away (see `check_complete`).
    start: LogIndex,
    /// Last live index; `start - 1` when the log is empty.
    last: LogIndex,
    /// `(first index, term)` of each run of equal terms covering `start..=last`, ascending.
    runs: Vec<(LogIndex, Term)>,
    hard_state: Option<HardState>,
    marker: Option<SnapshotMarker>,
}

impl LogState {
    /// An empty log whose next entry is `first_index`.
    pub fn new(first_index: LogIndex) -> Self {
        assert!(first_index >= 1, "log indexes start at 1");
        Self {
            floor: LogPosition::default(),
            start: first_index,
            last: first_index - 1,
            runs: Vec::new(),
            hard_state: None,
            marker: None,
        }
    }

    pub fn first_index(&self) -> LogIndex {
        self.start
    }

    pub fn last_index(&self) -> LogIndex {
        self.last
    }

    pub fn floor(&self) -> LogPosition {
        self.floor
    }

    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    pub fn marker(&self) -> Option<SnapshotMarker> {
        self.marker
    }

    /// Term of a live entry, or of the snapshot floor.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.floor.index && index > 0 {
            return Some(self.floor.term);
        }
        if index < self.start || index > self.last {
            return None;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= index);
        Some(self.runs[run - 1].1)
    }

    pub fn check_segment_header(
        &self,
        header: &SegmentHeader,
        is_oldest: bool,
    ) -> Result<(), Violation> {
        if header.format_version != FORMAT_VERSION {
            return Err(Violation::UnsupportedVersion {
                found: header.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if !is_oldest && header.first_index != self.last + 1 {
            return Err(Violation::SegmentStartMismatch {
                first_index: header.first_index,
                last_index: self.last,
            });
        }
        Ok(())
    }

    pub fn check_entry(&self, index: LogIndex, term: Term) -> Result<(), Violation> {
        if index == 0 {
            return Err(Violation::IndexZero);
        }
        if index > self.last + 1 {
            return Err(Violation::IndexGap {
                index,
                last_index: self.last,
            });
        }
        if self.floor.index > 0 && index <= self.floor.index {
            return Err(Violation::BelowSnapshot {
                index,
                snapshot_index: self.floor.index,
            });
        }
        match self.term_at(index - 1) {
            Some(previous_term) if term < previous_term => Err(Violation::TermDecreased {
                index,
                term,
                previous_term,
            }),
            _ => Ok(()),
        }
    }

    /// The entry becomes the last: any entry at or after its index is discarded.
    pub fn apply_entry(&mut self, index: LogIndex, term: Term) {
        if index < self.start {
            // Only in replay: the entries before `start` were in compacted segments.
            self.runs.clear();
            self.start = index;
        } else {
            let kept = self.runs.partition_point(|&(first, _)| first < index);
            self.runs.truncate(kept);
        }
        if self.runs.last().map(|&(_, run_term)| run_term) != Some(term) {
            self.runs.push((index, term));
        }
        self.last = index;
    }

    /// Only in the replay of a shared WAL's oldest segment: the log goes on at `index` after
    /// entries lost with deleted segments (a later marker must cover them, `check_complete`
    /// says whether one did). The floor, marker and hard state stay.
    pub fn restart_at(&mut self, index: LogIndex) {
        assert!(index > self.last + 1, "a restart skips entries");
        self.runs.clear();
        self.start = index;
        self.last = index - 1;
    }

    pub fn check_hard_state(&self, hard_state: &HardState) -> Result<(), Violation> {
        match self.hard_state {
            Some(previous) if hard_state.term < previous.term => {
                Err(Violation::HardStateTermDecreased {
                    term: hard_state.term,
                    previous_term: previous.term,
                })
            }
            _ => Ok(()),
        }
    }

    pub fn apply_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = Some(hard_state);
    }

    pub fn check_marker(&self, marker: &SnapshotMarker) -> Result<(), Violation> {
        let LogPosition { index, term } = marker.position;
        if index < self.floor.index {
            return Err(Violation::MarkerBackwards {
                index,
                previous_index: self.floor.index,
            });
        }
        if marker.keep_later_entries {
            if index > self.last {
                return Err(Violation::MarkerBeyondLog {
                    index,
                    last_index: self.last,
                });
            }
            if let Some(log_term) = self.term_at(index) {
                if log_term != term {
                    return Err(Violation::MarkerTermMismatch {
                        index,
                        marker_term: term,
                        log_term,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn apply_marker(&mut self, marker: SnapshotMarker) {
        let index = marker.position.index;
        if !marker.keep_later_entries {
            self.runs.clear();
            self.start = index + 1;
            self.last = index;
        } else if index >= self.start {
            let first_kept = index + 1;
            let dropped = self.runs.partition_point(|&(first, _)| first <= first_kept);
            // The run containing `first_kept` (if any) now starts there.
            let containing = dropped.saturating_sub(1);
            self.runs.drain(..containing);
            if first_kept > self.last {
                self.runs.clear();
            } else if let Some(run) = self.runs.first_mut() {
                run.0 = first_kept;
            }
            self.start = first_kept;
        }
        self.floor = marker.position;
        self.marker = Some(marker);
    }

    /// After replay: the live entries must start right after the snapshot floor. Returns the
    /// missing range otherwise.
    pub fn check_complete(&self) -> Result<(), (LogIndex, LogIndex)> {
        if self.start == self.floor.index + 1 {
            Ok(())
        } else {
            Err((self.floor.index + 1, self.start - 1))
        }
    }
}

/// Replay of the records of every segment, oldest first: the [`LogState`] plus the live entries.
pub struct Replay {
    pub state: LogState,
    /// `entries[k].index == state.first_index() + k`.
    entries: VecDeque<Entry>,
}

impl Replay {
    pub fn new(first_index: LogIndex) -> Self {
        Self {
            state: LogState::new(first_index),
            entries: VecDeque::new(),
        }
    }

    pub fn entry(&mut self, entry: Entry) -> Result<(), Violation> {
        self.state.check_entry(entry.index, entry.term)?;
        if entry.index < self.state.first_index() {
            self.entries.clear();
        } else {
            let kept = (entry.index - self.state.first_index()) as usize;
            self.entries.truncate(kept);
        }
        self.state.apply_entry(entry.index, entry.term);
        self.entries.push_back(entry);
        Ok(())
    }

    /// See [`LogState::restart_at`].
    pub fn restart_at(&mut self, index: LogIndex) {
        self.state.restart_at(index);
        self.entries.clear();
    }

    pub fn hard_state(&mut self, hard_state: HardState) -> Result<(), Violation> {
        self.state.check_hard_state(&hard_state)?;
        self.state.apply_hard_state(hard_state);
        Ok(())
    }

    pub fn marker(&mut self, marker: SnapshotMarker) -> Result<(), Violation> {
        self.state.check_marker(&marker)?;
        let start_before = self.state.first_index();
        self.state.apply_marker(marker);
        let dropped = self.state.first_index().saturating_sub(start_before) as usize;
        if !marker.keep_later_entries {
            self.entries.clear();
        } else {
            self.entries.drain(..dropped.min(self.entries.len()));
        }
        Ok(())
    }

    pub fn into_entries(self) -> Vec<Entry> {
        let entries: Vec<Entry> = self.entries.into();
        debug_assert!(entries
            .iter()
            .zip(self.state.first_index()..)
            .all(|(entry, index)| entry.index == index));
        entries
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

    fn positions(replay: Replay) -> Vec<(LogIndex, Term)> {
        replay
            .into_entries()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn marker(index: LogIndex, term: Term, keep: bool) -> SnapshotMarker {
        SnapshotMarker {
            position: LogPosition::new(index, term),
            keep_later_entries: keep,
        }
    }

    #[test]
    fn a_later_entry_at_a_stored_index_replaces_it_and_everything_after() {
        let mut replay = Replay::new(1);
        for (index, term) in [(1, 1), (2, 1), (3, 1), (4, 2), (2, 3), (3, 3)] {
            replay.entry(entry(index, term)).unwrap();
        }
        assert_eq!(replay.state.term_at(2), Some(3));
        assert_eq!(replay.state.term_at(4), None, "4 was discarded");
        assert_eq!(positions(replay), vec![(1, 1), (2, 3), (3, 3)]);
    }

    #[test]
    fn gaps_and_falling_terms_are_refused() {
        let mut replay = Replay::new(1);
        replay.entry(entry(1, 2)).unwrap();
        assert_eq!(
            replay.entry(entry(3, 2)),
            Err(Violation::IndexGap {
                index: 3,
                last_index: 1
            })
        );
        assert_eq!(
            replay.entry(entry(2, 1)),
            Err(Violation::TermDecreased {
                index: 2,
                term: 1,
                previous_term: 2
            })
        );
        assert_eq!(replay.entry(entry(0, 2)), Err(Violation::IndexZero));
    }

    #[test]
    fn a_keeping_marker_drops_the_prefix_and_guards_it() {
        let mut replay = Replay::new(1);
        for index in 1..=5 {
            replay.entry(entry(index, 1 + index / 3)).unwrap();
        }
        assert_eq!(
            replay.marker(marker(3, 1, true)),
            Err(Violation::MarkerTermMismatch {
                index: 3,
                marker_term: 1,
                log_term: 2
            })
        );
        replay.marker(marker(3, 2, true)).unwrap();
        assert_eq!(replay.state.first_index(), 4);
        assert_eq!(replay.state.term_at(3), Some(2), "the floor's term");
        assert_eq!(
            replay.entry(entry(3, 2)),
            Err(Violation::BelowSnapshot {
                index: 3,
                snapshot_index: 3
            })
        );
        assert_eq!(
            replay.marker(marker(2, 1, true)),
            Err(Violation::MarkerBackwards {
                index: 2,
                previous_index: 3
            })
        );
        assert_eq!(replay.state.check_complete(), Ok(()));
        assert_eq!(positions(replay), vec![(4, 2), (5, 2)]);
    }

    #[test]
    fn a_discarding_marker_empties_the_log() {
        let mut replay = Replay::new(1);
        replay.entry(entry(1, 1)).unwrap();
        replay.marker(marker(10, 4, false)).unwrap();
        assert_eq!(replay.state.first_index(), 11);
        assert_eq!(replay.state.last_index(), 10);
        replay.entry(entry(11, 4)).unwrap();
        assert_eq!(positions(replay), vec![(11, 4)]);
    }

    #[test]
    fn replay_from_a_compacted_segment_needs_a_marker_to_be_complete() {
        // The oldest kept segment starts at 101; a replacement reaches below it.
        let mut replay = Replay::new(101);
        replay.entry(entry(101, 1)).unwrap();
        replay.entry(entry(50, 2)).unwrap();
        assert_eq!(replay.state.check_complete(), Err((1, 49)));
        replay.marker(marker(49, 1, true)).unwrap();
        assert_eq!(replay.state.check_complete(), Ok(()));
        assert_eq!(positions(replay), vec![(50, 2)]);
    }

    #[test]
    fn hard_state_terms_never_fall() {
        let mut replay = Replay::new(1);
        let at = |term| HardState {
            term,
            voted_for: Some(1),
            commit_index: 0,
        };
        replay.hard_state(at(3)).unwrap();
        assert_eq!(
            replay.hard_state(at(2)),
            Err(Violation::HardStateTermDecreased {
                term: 2,
                previous_term: 3
            })
        );
        assert_eq!(replay.state.hard_state(), Some(at(3)));
    }
}
