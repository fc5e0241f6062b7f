//! A node's simulated disk: the durable hard state, snapshot and log entries, plus the one write
//! that has been issued but not yet synced.
//!
//! It owns what survives a crash. It never makes an unsynced write durable except through
//! [`Disk::sync`] or, for the torn-tail fault, a prefix of the snapshot-then-entries sequence at
//! [`Disk::crash`]; a hard state is never half-written and synced data is never lost.
//!
//! Layout: the durable log is contiguous. Writing entries replaces any stored entry at the same
//! index and everything after it (the `Ready` contract). Installing a snapshot keeps the entries
//! after it only if the log holds the snapshot's last entry with the same term (Raft §7).

use ballot_core::{
    Entry, HardState, LogIndex, LogPosition, Membership, PersistedState, Snapshot, SnapshotMeta,
};
use bytes::Bytes;

/// A write issued from one `Ready`, in the order it reaches the disk.
#[derive(Debug, Clone, Default)]
pub struct PendingWrite {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

#[derive(Debug, Clone, Default)]
pub struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    unsynced: Option<PendingWrite>,
}

impl Disk {
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Nothing was ever written: a disk that has not been bootstrapped.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.entries.is_empty()
            && self.unsynced.is_none()
            && self.hard_state == HardState::default()
    }

    /// Durably records the membership a new node starts from, as an image of the empty state
    /// machine at index 0 (`PersistedState::bootstrap`).
    pub fn bootstrap(&mut self, membership: Membership, empty_state_machine: Bytes) {
        self.snapshot = Some(Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::default(),
                membership,
            },
            data: empty_state_machine,
        });
    }

    pub fn has_unsynced(&self) -> bool {
        self.unsynced.is_some()
    }

    /// Issue a write. Fails (changing nothing) if a write is already unsynced or the entries would
    /// leave a gap in the log: both are broken contracts of the replica or the caller.
    pub fn write(&mut self, write: PendingWrite) -> Result<(), String> {
        if self.unsynced.is_some() {
            return Err("a write was issued before the previous one was synced".into());
        }
        if let Some(first) = write.entries.first() {
            if let Some(pair) = write
                .entries
                .windows(2)
                .find(|w| w[1].index != w[0].index + 1)
            {
                return Err(format!(
                    "entries not contiguous: {} then {}",
                    pair[0].index, pair[1].index
                ));
            }
            let (floor, next) = match &write.snapshot {
                Some(snapshot) => {
                    let index = snapshot.meta.last_included.index;
                    (index, index + 1)
                }
                None => (self.snapshot_index(), self.last_index() + 1),
            };
            if first.index <= floor || first.index > next {
                return Err(format!(
                    "entries starting at {} must start in {}..={} (after the snapshot, no gap)",
                    first.index,
                    floor + 1,
                    next
                ));
            }
        }
        self.unsynced = Some(write);
        Ok(())
    }

    /// The unsynced write becomes durable.
    pub fn sync(&mut self) {
        if let Some(write) = self.unsynced.take() {
            if let Some(snapshot) = write.snapshot {
                self.install_snapshot(snapshot);
            }
            self.append(write.entries);
            if let Some(hard_state) = write.hard_state {
                self.hard_state = hard_state;
            }
        }
    }

    /// Power loss. Without `torn_items`, the unsynced write is lost. With `Some(k)`, the first `k`
    /// items of the sequence (snapshot if any, then entries) survive; the hard state never does.
    pub fn crash(&mut self, torn_items: Option<usize>) {
        let Some(write) = self.unsynced.take() else {
            return;
        };
        let Some(mut keep) = torn_items else { return };
        let mut entries = write.entries;
        if let Some(snapshot) = write.snapshot {
            if keep == 0 {
                return;
            }
            self.install_snapshot(snapshot);
            keep -= 1;
        }
        entries.truncate(keep);
        self.append(entries);
    }

    /// Number of items a torn write could keep (snapshot counts as one, each entry as one).
    pub fn unsynced_items(&self) -> usize {
        self.unsynced
            .as_ref()
            .map_or(0, |w| usize::from(w.snapshot.is_some()) + w.entries.len())
    }

    /// Store a snapshot the node took of its own state machine at an applied (so durable) index.
    pub fn store_local_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
    }

    /// Drop durable entries below `first_kept` (the replica compacted its log).
    pub fn compact_before(&mut self, first_kept: LogIndex) {
        let drop = self
            .entries
            .iter()
            .take_while(|e| e.index < first_kept)
            .count();
        self.entries.drain(..drop);
    }

    /// What a replica restarts from: the durable state only, entries strictly after the snapshot.
    pub fn to_persisted_state(&self) -> PersistedState {
        let after = self.snapshot_index();
        PersistedState {
            hard_state: self.hard_state,
            compacted: self.snapshot.as_ref().map(|s| s.meta.clone()),
            entries: self
                .entries
                .iter()
                .filter(|e| e.index > after)
                .cloned()
                .collect(),
        }
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot
            .as_ref()
            .map_or(0, |s| s.meta.last_included.index)
    }

    pub fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last_included;
        let keeps_log = self
            .entries
            .iter()
            .any(|e| e.index == last.index && e.term == last.term);
        if keeps_log {
            self.entries.retain(|e| e.index > last.index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot);
    }

    fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let keep = self
            .entries
            .iter()
            .take_while(|e| e.index < first.index)
            .count();
        self.entries.truncate(keep);
        self.entries.extend(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_core::EntryPayload;

    fn entry(index: LogIndex, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Noop,
        }
    }

    fn entries(range: std::ops::RangeInclusive<LogIndex>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn positions(disk: &Disk) -> Vec<(LogIndex, u64)> {
        disk.to_persisted_state()
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn write_synced(disk: &mut Disk, write: PendingWrite) {
        disk.write(write).unwrap();
        disk.sync();
    }

    #[test]
    fn entries_replace_the_suffix_from_their_first_index() {
        let mut disk = Disk::default();
        write_synced(
            &mut disk,
            PendingWrite {
                entries: entries(1..=5, 1),
                ..Default::default()
            },
        );
        write_synced(
            &mut disk,
            PendingWrite {
                entries: entries(3..=4, 2),
                ..Default::default()
            },
        );
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        let gap = disk.write(PendingWrite {
            entries: entries(7..=7, 2),
            ..Default::default()
        });
        assert!(gap.is_err(), "a gap is a broken contract");
    }

    #[test]
    fn unsynced_writes_are_lost_on_crash() {
        let mut disk = Disk::default();
        write_synced(
            &mut disk,
            PendingWrite {
                entries: entries(1..=2, 1),
                ..Default::default()
            },
        );
        let hard_state = HardState {
            term: 3,
            voted_for: Some(2),
            commit_index: 2,
        };
        disk.write(PendingWrite {
            entries: entries(3..=6, 3),
            hard_state: Some(hard_state),
            snapshot: None,
        })
        .unwrap();
        disk.crash(None);
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1)]);
        assert_eq!(disk.hard_state(), HardState::default());
    }

    #[test]
    fn torn_tail_keeps_a_prefix_of_entries_never_the_hard_state() {
        let mut disk = Disk::default();
        write_synced(
            &mut disk,
            PendingWrite {
                entries: entries(1..=4, 1),
                ..Default::default()
            },
        );
        let hard_state = HardState {
            term: 2,
            voted_for: None,
            commit_index: 0,
        };
        disk.write(PendingWrite {
            entries: entries(3..=6, 2),
            hard_state: Some(hard_state),
            snapshot: None,
        })
        .unwrap();
        disk.crash(Some(2));
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(disk.hard_state().term, 0);
        // A torn write that kept nothing truncates nothing either.
        disk.write(PendingWrite {
            entries: entries(2..=2, 3),
            ..Default::default()
        })
        .unwrap();
        disk.crash(Some(0));
        assert_eq!(positions(&disk).len(), 4);
    }

    #[test]
    fn snapshot_keeps_matching_log_suffix_and_restart_state_starts_after_it() {
        let mut disk = Disk::default();
        write_synced(
            &mut disk,
            PendingWrite {
                entries: entries(1..=6, 1),
                ..Default::default()
            },
        );
        let snapshot = |index, term| Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::new(index, term),
                membership: Default::default(),
            },
            data: Default::default(),
        };
        write_synced(
            &mut disk,
            PendingWrite {
                snapshot: Some(snapshot(4, 1)),
                ..Default::default()
            },
        );
        assert_eq!(positions(&disk), vec![(5, 1), (6, 1)]);
        write_synced(
            &mut disk,
            PendingWrite {
                snapshot: Some(snapshot(8, 2)),
                entries: entries(9..=9, 2),
                hard_state: None,
            },
        );
        assert_eq!(positions(&disk), vec![(9, 2)]);
        assert_eq!(disk.snapshot_index(), 8);
        disk.store_local_snapshot(snapshot(9, 2));
        assert!(disk.to_persisted_state().entries.is_empty());
    }
}
