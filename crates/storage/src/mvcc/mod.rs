//! The MVCC key-value state machine: etcd v3 semantics (revisions, ranges, transactions,
//! compaction, leases) in a log-structured store of its own: an in-memory index of every
//! retained version (etcd's `keyIndex`) over append-only segment files, with the applied log
//! index in the same record batch as the data, and segment GC that reuses the space compaction
//! frees without a blocking defragment.
//!
//! It applies committed commands in log order ([`MvccStore::apply_batch`]) and answers reads
//! ([`MvccStore::range`], [`History`](types::History) for watches, [`MvccStore::hash_kv`]). It
//! never reads a clock or decides anything on its own: lease expiry and compaction arrive as
//! commands from the leader (principle 5). The on-disk layout, invariants and crash cases are in
//! `docs/design/storage.md` ("MVCC state machine", "Leases"); [`layout`] mirrors them.
//!
//! - [`types`]: the vocabulary shared with the watch hub and the server.
//! - [`store`]: [`MvccStore`], locking, batching and durability.
//! - `index`: the in-memory state. `recovery`: rebuilding it at open. `segments`: the files.
//! - `apply`, `compaction`: the write path. `view`: the read path. `gc`: reusing space.
//! - [`codec`]: the command encoding for the Raft log. [`limits`]: sizes and stateless checks.
//! - `snapshot`: whole-state snapshot and restore.

pub mod types;

mod apply;
mod chunked;
pub mod codec;
mod compaction;
pub mod error;
mod gc;
mod index;
mod invariants;
pub mod layout;
pub mod limits;
mod recovery;
mod segments;
mod snapshot;
pub mod store;
mod view;

pub use codec::CommandCodec;
pub use error::{ApplyError, CodecError, MvccError};
pub use recovery::TailRepair;
pub use snapshot::{summarize as summarize_snapshot, SnapshotReader, SnapshotSummary};
pub use store::{Applied, MvccOptions, MvccStore, SpaceStats, NON_DURABLE_COMMITS_MAX};
