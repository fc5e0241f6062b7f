//! A node's simulated disk: the durable hard state, log entries and snapshot, plus the records
//! written but not yet synced. It is the simulator's log store and snapshot store (the
//! `ballot_core::storage` traits, held to the same conformance suite as the server's WAL).
//!
//! It owns what survives a crash. It never makes an unsynced record durable except through
//! [`LogStore::sync`] or, for the torn-tail fault, a prefix of the unsynced records at
//! [`Disk::crash`]; synced data is never lost. Installing a snapshot and compacting are durable
//! at once, as the WAL's are (each syncs what was written before it).
//!
//! A sync can be made to fail ([`Disk::fail_next_sync`], the `sync-fail` fault) as `fdatasync`
//! fails on Linux with EIO: the records written since the last sync are lost (the kernel drops
//! the dirty pages and may report success to a later sync, the "fsyncgate" behaviour), while
//! writes after them land after the hole. A driver must stop there, as the server does; one
//! that syncs again and carries on (the `retry-failed-sync` break) has acknowledged records that
//! are gone. At the next start the log is read up to the hole, as a WAL's replay stops at the
//! first record it cannot read.
//!
//! A synced entry can be damaged ([`Disk::damage_entry`], the `bit-flip` fault), as a flipped
//! bit in a synced WAL record that later records follow: the real WAL's open refuses such a log
//! (`WalError::Corrupt`), and so does a node over this disk, until an operator rebuilds it. A
//! recovery that cut the log there instead, as if the damage were a torn tail (the
//! `cut-at-damage` break), comes back without entries it acknowledged. (A damaged *last*
//! record looks like a torn write and is cut by the real WAL, a trade-off storage.md states;
//! the fault does not injure one.)
//!
//! Layout: the durable log is contiguous after its floor. Appending entries replaces any stored
//! entry at the same index and everything after it (the `Ready` contract). Installing a
//! snapshot keeps the entries after it only if the log holds the snapshot's last entry with the
//! same term (Raft §7).

use ballot_core::{
    Entry, HardState, LogIndex, LogPosition, LogStore, Membership, PersistedState, Snapshot,
    SnapshotMeta, SnapshotStore,
};
use bytes::Bytes;
use std::fmt;

/// One record written but not yet synced, in the order it reaches the disk.
#[derive(Debug, Clone)]
enum Unsynced {
    Entry(Entry),
    HardState(HardState),
}

/// A write the disk refuses, changing nothing: the caller (the driver, or a replica through it)
/// broke the storage contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    /// Entries in one append that do not follow each other.
    NotContiguous {
        index: LogIndex,
        previous: LogIndex,
    },
    /// An append whose first entry would leave a gap after the log, or rewrite the floor.
    OutOfRange {
        first: LogIndex,
        lowest: LogIndex,
        highest: LogIndex,
    },
    CompactBeyondLog {
        index: LogIndex,
        last: LogIndex,
    },
    StaleSnapshot {
        offered: LogPosition,
        latest: LogPosition,
    },
    /// The sync failed (the `sync-fail` fault): what was written since the last sync is lost.
    SyncFailed {
        lost_records: usize,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::NotContiguous { index, previous } => {
                write!(f, "entries not contiguous: {previous} then {index}")
            }
            DiskError::OutOfRange {
                first,
                lowest,
                highest,
            } => write!(
                f,
                "entries starting at {first} must start in {lowest}..={highest} (after the floor, \
                 no gap)"
            ),
            DiskError::CompactBeyondLog { index, last } => {
                write!(f, "compaction to {index} is past the last entry, {last}")
            }
            DiskError::StaleSnapshot { offered, latest } => write!(
                f,
                "snapshot through {offered} is older than the one kept, through {latest}"
            ),
            DiskError::SyncFailed { lost_records } => write!(
                f,
                "fsync failed (EIO); the {lost_records} records written since the last sync are lost"
            ),
        }
    }
}

impl std::error::Error for DiskError {}

#[derive(Debug, Clone, Default)]
pub struct Disk {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Where the durable log starts after: its last compaction or installed snapshot.
    floor: Option<LogPosition>,
    entries: Vec<Entry>,
    unsynced: Vec<Unsynced>,
    /// The last index written, synced or not: where the next append may start after.
    written_last_index: LogIndex,
    /// The next sync fails (the `sync-fail` fault).
    sync_fails: bool,
    /// A durable entry whose record reads back damaged (the `bit-flip` fault); later records
    /// follow it. Permanent: only a wipe clears it.
    damaged_entry: Option<LogIndex>,
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
            && self.unsynced.is_empty()
            && self.floor.is_none()
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

    /// The next sync fails, losing what was written since the last one. A crash clears it (a
    /// reboot clears a transient fault), and so does [`Disk::repair`].
    pub fn fail_next_sync(&mut self) {
        self.sync_fails = true;
    }

    /// Damages the durable record of entry `index`, which later durable entries follow (a bit
    /// flipped in synced data).
    pub fn damage_entry(&mut self, index: LogIndex) {
        assert!(
            index > self.floor_index() && index < self.last_index() && self.unsynced.is_empty(),
            "only a synced entry that later synced entries follow is damaged"
        );
        self.damaged_entry = Some(index);
    }

    /// The entry whose record is damaged, if any: a replay stops there and refuses the log.
    pub fn damaged_entry(&self) -> Option<LogIndex> {
        self.damaged_entry
    }

    /// Cuts the log at the damaged record, as a replay that took the damage for a torn tail
    /// would: that entry and every later one are gone. The `cut-at-damage` break.
    pub fn cut_at_damage(&mut self) {
        if let Some(index) = self.damaged_entry.take() {
            self.entries.retain(|entry| entry.index < index);
            self.written_last_index = self.last_index();
        }
    }

    /// The disk works again (the heal).
    pub fn repair(&mut self) {
        self.sync_fails = false;
    }

    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Power loss. Without `torn_items`, every unsynced record is lost. With `Some(k)`, the first
    /// `k` of them (entries and hard states, in the order written) survive.
    pub fn crash(&mut self, torn_items: Option<usize>) {
        let unsynced = std::mem::take(&mut self.unsynced);
        if let Some(keep) = torn_items {
            for record in unsynced.into_iter().take(keep) {
                self.make_durable(record);
            }
        }
        self.sync_fails = false;
        // What a replay reads: the log up to a hole a failed sync left (entries written after
        // it are there, but a replay cannot get past the hole to them).
        let readable = self
            .entries
            .iter()
            .zip(self.floor_index() + 1..)
            .take_while(|(entry, expected)| entry.index == *expected)
            .count();
        self.entries.truncate(readable);
        self.written_last_index = self.last_index();
    }

    /// Number of records a torn write could keep.
    pub fn unsynced_items(&self) -> usize {
        self.unsynced.len()
    }

    /// What a log store over this disk recovers when it opens: the durable log only.
    pub fn recovered_log(&self) -> ballot_core::RecoveredLog {
        ballot_core::RecoveredLog {
            hard_state: self.hard_state,
            floor: self.floor,
            entries: self.entries.clone(),
        }
    }

    /// What a replica restarts from: the durable state only, entries strictly after the snapshot
    /// (whose metadata is the compaction point; it is never behind the log's floor).
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

    /// Where the durable log starts after (0 when it was never compacted).
    pub fn floor_index(&self) -> LogIndex {
        self.floor.map_or(0, |floor| floor.index)
    }

    /// The last durable entry's index (or the floor's).
    pub fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.floor_index(), |e| e.index)
    }

    fn make_durable(&mut self, record: Unsynced) {
        match record {
            Unsynced::Entry(entry) => {
                let keep = self
                    .entries
                    .iter()
                    .take_while(|e| e.index < entry.index)
                    .count();
                self.entries.truncate(keep);
                self.entries.push(entry);
            }
            Unsynced::HardState(hard_state) => self.hard_state = hard_state,
        }
    }
}

impl LogStore for Disk {
    type Error = DiskError;

    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), DiskError> {
        if let Some(pair) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
            return Err(DiskError::NotContiguous {
                index: pair[1].index,
                previous: pair[0].index,
            });
        }
        if let Some(first) = entries.first() {
            let (lowest, highest) = (self.floor_index() + 1, self.written_last_index + 1);
            if first.index < lowest || first.index > highest {
                return Err(DiskError::OutOfRange {
                    first: first.index,
                    lowest,
                    highest,
                });
            }
        }
        if let Some(last) = entries.last() {
            self.written_last_index = last.index;
        }
        self.unsynced
            .extend(entries.iter().cloned().map(Unsynced::Entry));
        self.unsynced.extend(hard_state.map(Unsynced::HardState));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        let unsynced = std::mem::take(&mut self.unsynced);
        if std::mem::take(&mut self.sync_fails) {
            // Later appends still go after the lost records: the file offset has moved on.
            return Err(DiskError::SyncFailed {
                lost_records: unsynced.len(),
            });
        }
        for record in unsynced {
            self.make_durable(record);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, position: LogPosition) -> Result<(), DiskError> {
        self.sync()?;
        if position.index <= self.floor_index() {
            return Ok(());
        }
        let keeps_log = self
            .entries
            .iter()
            .any(|e| e.index == position.index && e.term == position.term);
        if keeps_log {
            self.entries.retain(|e| e.index > position.index);
        } else {
            self.entries.clear();
        }
        self.floor = Some(position);
        self.written_last_index = self.last_index();
        Ok(())
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), DiskError> {
        self.sync()?;
        if index <= self.floor_index() {
            return Ok(());
        }
        let last = self.last_index();
        let Some(position) = self.entries.iter().find(|e| e.index == index) else {
            return Err(DiskError::CompactBeyondLog { index, last });
        };
        self.floor = Some(position.position());
        self.entries.retain(|e| e.index > index);
        Ok(())
    }
}

impl SnapshotStore for Disk {
    type Error = DiskError;

    fn save(&mut self, snapshot: &Snapshot) -> Result<(), DiskError> {
        if let Some(kept) = &self.snapshot {
            if snapshot.meta.last_included < kept.meta.last_included {
                return Err(DiskError::StaleSnapshot {
                    offered: snapshot.meta.last_included,
                    latest: kept.meta.last_included,
                });
            }
        }
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn latest(&self) -> Result<Option<Snapshot>, DiskError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_core::conformance::{self, LogStoreHarness, SnapshotStoreHarness};
    use ballot_core::{EntryPayload, RecoveredLog};

    /// Opens a disk that was closed by a crash: only what was synced remains.
    #[derive(Default)]
    struct Harness {
        disk: Option<Disk>,
    }

    impl LogStoreHarness for Harness {
        type Store = Disk;

        fn open(&mut self) -> (Disk, RecoveredLog) {
            let disk = self.disk.take().unwrap_or_default();
            let recovered = disk.recovered_log();
            (disk, recovered)
        }

        fn close(&mut self, mut disk: Disk) {
            disk.crash(None);
            self.disk = Some(disk);
        }
    }

    impl SnapshotStoreHarness for Harness {
        type Store = Disk;

        fn open(&mut self) -> Disk {
            self.disk.take().unwrap_or_default()
        }

        fn close(&mut self, mut disk: Disk) {
            disk.crash(None);
            self.disk = Some(disk);
        }
    }

    #[test]
    fn the_simulated_disk_keeps_every_rule_of_a_log_store_and_a_snapshot_store() {
        conformance::log_store(Harness::default);
        conformance::snapshot_store(Harness::default);
    }

    fn entries(range: std::ops::RangeInclusive<LogIndex>, term: u64) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term,
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    fn positions(disk: &Disk) -> Vec<(LogIndex, u64)> {
        disk.entries().iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_failed_sync_loses_what_it_covered_and_a_restart_reads_up_to_the_hole() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=2, 1), None).unwrap();
        disk.sync().unwrap();
        let vote = HardState {
            term: 2,
            voted_for: Some(3),
            commit_index: 2,
        };
        disk.append(&entries(3..=4, 2), Some(vote)).unwrap();
        disk.fail_next_sync();
        assert_eq!(disk.sync(), Err(DiskError::SyncFailed { lost_records: 3 }));
        assert_eq!(disk.hard_state(), HardState::default(), "the vote is lost");
        // A driver that carries on (the retry-failed-sync break): the retry succeeds with
        // nothing to write, and later writes land after the hole.
        assert_eq!(disk.sync(), Ok(()));
        disk.append(&entries(5..=6, 2), None).unwrap();
        disk.sync().unwrap();
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1), (5, 2), (6, 2)]);
        disk.crash(None);
        assert_eq!(
            positions(&disk),
            vec![(1, 1), (2, 1)],
            "a replay stops at the hole"
        );
        disk.append(&entries(3..=3, 4), None)
            .expect("the log goes on from what a replay reads");
    }

    #[test]
    fn a_damaged_entry_survives_crashes_and_a_cut_drops_it_and_everything_after() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=5, 1), None).unwrap();
        disk.sync().unwrap();
        disk.damage_entry(3);
        disk.crash(None);
        disk.repair();
        assert_eq!(disk.damaged_entry(), Some(3), "only a wipe clears damage");
        disk.cut_at_damage();
        assert_eq!(disk.damaged_entry(), None);
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1)]);
        disk.append(&entries(3..=3, 2), None)
            .expect("the log goes on from the cut");
    }

    #[test]
    #[should_panic(expected = "later synced entries follow")]
    fn the_last_entry_is_never_damaged() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=2, 1), None).unwrap();
        disk.sync().unwrap();
        disk.damage_entry(2);
    }

    #[test]
    fn a_sync_fault_is_cleared_by_a_crash_or_a_repair() {
        let mut disk = Disk::default();
        disk.fail_next_sync();
        disk.crash(None);
        disk.append(&entries(1..=1, 1), None).unwrap();
        assert_eq!(disk.sync(), Ok(()));
        disk.fail_next_sync();
        disk.repair();
        disk.append(&entries(2..=2, 1), None).unwrap();
        assert_eq!(disk.sync(), Ok(()));
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn unsynced_writes_are_lost_on_crash() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=2, 1), None).unwrap();
        disk.sync().unwrap();
        let hard_state = HardState {
            term: 3,
            voted_for: Some(2),
            commit_index: 2,
        };
        disk.append(&entries(3..=6, 3), Some(hard_state)).unwrap();
        disk.crash(None);
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1)]);
        assert_eq!(disk.hard_state(), HardState::default());
        disk.append(&entries(3..=3, 4), None)
            .expect("after a crash the log goes on from what is durable");
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_the_records_in_the_order_written() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=4, 1), None).unwrap();
        disk.sync().unwrap();
        let hard_state = HardState {
            term: 2,
            voted_for: None,
            commit_index: 0,
        };
        disk.append(&entries(3..=6, 2), Some(hard_state)).unwrap();
        assert_eq!(disk.unsynced_items(), 5, "four entries and a hard state");
        disk.crash(Some(2));
        assert_eq!(positions(&disk), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(
            disk.hard_state().term,
            0,
            "the hard state came last and was torn off"
        );
        // A torn write that kept nothing truncates nothing either.
        disk.append(&entries(2..=2, 3), None).unwrap();
        disk.crash(Some(0));
        assert_eq!(positions(&disk).len(), 4);
        disk.append(&entries(5..=5, 3), Some(hard_state)).unwrap();
        disk.crash(Some(2));
        assert_eq!(disk.hard_state(), hard_state, "a whole write survived");
    }

    #[test]
    fn restart_state_starts_after_the_snapshot() {
        let mut disk = Disk::default();
        disk.append(&entries(1..=6, 1), None).unwrap();
        disk.sync().unwrap();
        let image = Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::new(4, 1),
                membership: Default::default(),
            },
            data: Default::default(),
        };
        SnapshotStore::save(&mut disk, &image).unwrap();
        let persisted = disk.to_persisted_state();
        assert_eq!(persisted.compacted, Some(image.meta.clone()));
        assert_eq!(
            persisted.entries.first().map(|e| e.index),
            Some(5),
            "entries the snapshot covers are not handed to the replica, even before the log \
             is compacted"
        );
    }
}
