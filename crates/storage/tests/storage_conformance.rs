//! The storage conformance suite (`ballot_core::conformance`) run against the server's storage:
//! the WAL as the log store, the `snap/` directory as the snapshot store. The simulator runs the
//! same suite against its in-memory disk.

use ballot_core::conformance::{self, LogStoreHarness, SnapshotStoreHarness};
use ballot_core::RecoveredLog;
use ballot_storage::snapshot_store::SnapshotStore;
use ballot_storage::wal::{Wal, WalOptions};
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
fn the_snapshot_directory_keeps_every_rule_of_a_snapshot_store() {
    conformance::snapshot_store(|| SnapHarness {
        dir: TempDir::new().unwrap(),
    });
}
