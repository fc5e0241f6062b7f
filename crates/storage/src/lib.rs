//! ballot's durable state, below the protocols' `Ready` batches and above the disk.
//!
//! - [`wal`]: the replicated log and hard state, as an append-only, checksummed, segmented
//!   write-ahead log with group commit (many appends, one `fdatasync`).
//! - [`snapshot_store`]: state machine snapshots, written atomically, checksummed, kept K deep.
//! - [`dir_lock`]: one process per data directory.
//! - [`identity`]: whose data directory this is and the membership its replica started from,
//!   written once, so a restart needs none of the bootstrap flags.
//! - [`atomic_file`]: small files replaced whole, durably.
//! - [`mvcc`]: the replicated state machine: an MVCC key-value store with etcd v3 semantics
//!   (revisions, ranges, transactions, compaction) and leases, in append-only segments under an
//!   in-memory index, with the applied log index in the same record batch as the data.
//! - [`watch`]: watchers on keys, ranges and prefixes, replaying history and following new
//!   revisions, with bounded buffers so a slow watcher never blocks writers or other watchers.
//! - [`lessor`]: the leader's lease clock, which decides expiry and checkpoints remaining TTLs
//!   through the log (never a replica's own clock when applying).
//!
//! The on-disk formats, crash cases and invariants are written down in `docs/design/storage.md`.

pub mod atomic_file;
pub mod dir_lock;
pub mod identity;
pub mod lessor;
pub mod mvcc;
pub mod snapshot_store;
pub mod wal;
pub mod watch;
