//! The storage conformance suite (`ballot_core::conformance`) run against the server's storage:
//! the WAL and one group of the node's shared WAL as log stores, the `snap/` directory as the
//! snapshot store, the MVCC store as the state machine. The simulator runs the same suite against its in-memory disk and map.

use ballot_core::conformance::{self, LogStoreHarness, SnapshotStoreHarness, StateMachineHarness};
use ballot_core::RecoveredLog;
use ballot_storage::mvcc::types::{Command, KeyRange, PutRequest, RangeRequest};
use ballot_storage::mvcc::MvccStore;
use ballot_storage::snapshot_store::SnapshotStore;
use ballot_storage::wal::{GroupWal, SharedWal, Wal, WalOptions};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

struct WalHarness {
    dir: TempDir,
}

impl LogStoreHarness for WalHarness {
    type Store = Wal;

    fn open(&mut self) -> (Wal, RecoveredLog) {
        // Small segments, so that compaction and snapshot installs cross segment boundaries.
        let options = WalOptions {
            segment_size_bytes: 4096,
            ..WalOptions::default()
        };
        let (wal, recovered) = Wal::open(self.dir.path(), options).expect("the WAL opens");
        (wal, recovered.into())
    }

    fn close(&mut self, wal: Wal) {
        drop(wal);
    }
}

/// One group's view of a shared WAL, with another group writing beside it on every open: its
/// records sit between the checked group's and must change nothing about it.
struct SharedWalHarness {
    dir: TempDir,
}

impl LogStoreHarness for SharedWalHarness {
    type Store = GroupWal;

    fn open(&mut self) -> (GroupWal, RecoveredLog) {
        let options = WalOptions {
            segment_size_bytes: 4096,
            ..WalOptions::default()
        };
        let mut opened = SharedWal::open(self.dir.path(), options).expect("the shared WAL opens");
        let recovered = opened.groups.remove(&7).unwrap_or_default();
        let neighbour_next = opened.groups.get(&8).map_or(1, |log| log.last_index() + 1);
        let mut wal = opened.wal;
        let neighbour = ballot_core::Entry {
            index: neighbour_next,
            term: 1,
            payload: ballot_core::EntryPayload::Command(vec![8; 100].into()),
        };
        wal.append(8, &[neighbour], None)
            .expect("the neighbour appends");
        let group = GroupWal::new(7, Arc::new(Mutex::new(wal)));
        (group, recovered.into())
    }

    fn close(&mut self, wal: GroupWal) {
        drop(wal);
    }
}

struct SnapHarness {
    dir: TempDir,
}

impl SnapshotStoreHarness for SnapHarness {
    type Store = SnapshotStore;

    fn open(&mut self) -> SnapshotStore {
        SnapshotStore::open(self.dir.path(), 2).expect("the snapshot store opens")
    }

    fn close(&mut self, store: SnapshotStore) {
        drop(store);
    }
}

#[test]
fn the_wal_keeps_every_rule_of_a_log_store() {
    conformance::log_store(|| WalHarness {
        dir: TempDir::new().unwrap(),
    });
}

#[test]
fn a_group_of_the_shared_wal_keeps_every_rule_of_a_log_store() {
    conformance::log_store(|| SharedWalHarness {
        dir: TempDir::new().unwrap(),
    });
}

#[test]
fn the_snapshot_directory_keeps_every_rule_of_a_snapshot_store() {
    conformance::snapshot_store(|| SnapHarness {
        dir: TempDir::new().unwrap(),
    });
}

struct MvccHarness {
    dir: TempDir,
    made: usize,
}

impl StateMachineHarness for MvccHarness {
    type Machine = MvccStore;

    fn fresh(&mut self) -> MvccStore {
        self.made += 1;
        MvccStore::open(self.dir.path().join(format!("state-{}", self.made)))
            .expect("the store opens")
    }

    fn put(&self, key: u64, value: u64) -> Command {
        Command::Put(PutRequest {
            key: key.to_string().into(),
            value: value.to_string().into(),
            ..PutRequest::default()
        })
    }

    fn get(&self, store: &MvccStore, key: u64) -> Option<u64> {
        let response = store
            .range(&RangeRequest {
                range: KeyRange::single(key.to_string()),
                ..RangeRequest::default()
            })
            .expect("the store reads");
        response.kvs.first().map(|kv| {
            std::str::from_utf8(&kv.value)
                .expect("the harness writes numbers")
                .parse()
                .expect("the harness writes numbers")
        })
    }
}

#[test]
fn the_mvcc_store_keeps_every_rule_of_a_state_machine() {
    conformance::state_machine(&mut MvccHarness {
        dir: TempDir::new().unwrap(),
        made: 0,
    });
}
