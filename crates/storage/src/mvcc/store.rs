//! [`MvccStore`]: the state machine on redb. Owns the file `state.redb`, the applied index, the
//! batching of applies into write transactions and their durability. Never reads a clock and
//! never holds a read transaction beyond one call (an open reader pins freed pages).

use super::apply::{Applier, Position, Sweep, Tables};
use super::compaction::SWEEP_CHANGES_PER_COMMIT_MAX;
use super::error::{ApplyError, MvccError};
use super::layout::*;
use super::limits::check_range_request;
use super::types::*;
use super::view::{check_read_revision, View};
use ballot_core::LogIndex;
use bytes::Bytes;
use redb::{Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Apply commits are not fsynced (the WAL has the entries); at least every this many commits one
/// is durable, which bounds the work redone after a crash and the freed pages that non-durable
/// commits hold back from reuse (see `docs/design/storage.md`, "Space reuse").
pub const NON_DURABLE_COMMITS_MAX: u32 = 4;

/// How the store trades fsyncs for space and recovery work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MvccOptions {
    /// Every this many apply commits, one is durable (1: every commit is; see
    /// [`NON_DURABLE_COMMITS_MAX`]).
    pub non_durable_commits_max: u32,
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
}

impl Default for MvccOptions {
    fn default() -> Self {
        Self {
            non_durable_commits_max: NON_DURABLE_COMMITS_MAX,
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: LogIndex,
    /// The response for the client, or why the command was refused (nothing changed) or skipped
    /// ([`ApplyError::AlreadyApplied`]).
    pub result: Result<CommandResult, ApplyError>,
    /// The changes, in order, each with `prev_kv` when the key existed at the revision before.
    pub events: Vec<Event>,
}

impl Applied {
    pub fn was_skipped(&self) -> bool {
        matches!(self.result, Err(ApplyError::AlreadyApplied { .. }))
    }
}

/// The MVCC key-value state machine. Shareable between threads: reads run concurrently with an
/// apply (each on its own redb read transaction); applies are serialized.
pub struct MvccStore {
    db: Database,
    path: PathBuf,
    options: MvccOptions,
    /// Serializes applies and counts the non-durable commits since the last durable one.
    writer: Mutex<u32>,
    applied_index: AtomicU64,
    durable_applied_index: AtomicU64,
    current_revision: AtomicI64,
    compacted_revision: AtomicI64,
}

type ReadTables = (
    ReadOnlyTable<ChangeKey, &'static [u8]>,
    ReadOnlyTable<VersionKey, u8>,
);

impl MvccStore {
    /// Opens (or creates) the store at `path`. After a crash, redb returns to its last durable
    /// commit: a consistent state at some applied index at or below the one before the crash.
    pub fn open(path: impl AsRef<Path>) -> Result<MvccStore, MvccError> {
        Self::open_with(path, MvccOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: MvccOptions) -> Result<MvccStore, MvccError> {
        assert!(
            options.non_durable_commits_max >= 1,
            "non_durable_commits_max counts the durable commit itself"
        );
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)?;
        let txn = db.begin_write()?;
        let format_version = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(META_FORMAT_VERSION)?.map(|v| v.value());
            if stored.is_none() {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                // As in etcd, an empty store is at revision 1 and the first write makes
                // revision 2: clients treat a zero revision in a header as "not set".
                meta.insert(META_CURRENT_REVISION, INITIAL_REVISION as u64)?;
            }
            stored.unwrap_or(FORMAT_VERSION)
        };
        if format_version != FORMAT_VERSION {
            return Err(MvccError::Corrupt(format!(
                "{path:?} has format {format_version}; this build reads {FORMAT_VERSION}"
            )));
        }
        drop(Tables::open(&txn)?);
        txn.commit()?;
        let store = MvccStore {
            db,
            path,
            options,
            writer: Mutex::new(0),
            applied_index: AtomicU64::new(0),
            durable_applied_index: AtomicU64::new(0),
            current_revision: AtomicI64::new(0),
            compacted_revision: AtomicI64::new(0),
        };
        let position = store.read_position(&store.db.begin_read()?)?;
        store.publish(position, true);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last log index applied (possibly not yet durable).
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The applied index of the last durable commit: what a crash now would return to. The Raft
    /// log may be truncated only up to here.
    pub fn durable_applied_index(&self) -> LogIndex {
        self.durable_applied_index.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> Revision {
        self.current_revision.load(Ordering::Acquire)
    }

    pub fn compacted_revision(&self) -> Revision {
        self.compacted_revision.load(Ordering::Acquire)
    }

    /// redb's accounting of the file: (allocated pages, page size, stored bytes, fragmented
    /// bytes). For space measurements.
    pub fn space_stats(&self) -> Result<(u64, usize, u64, u64), MvccError> {
        let _writer = self.writer_lock();
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        let out = (
            stats.allocated_pages(),
            stats.page_size(),
            stats.stored_bytes(),
            stats.fragmented_bytes(),
        );
        txn.abort()?;
        Ok(out)
    }

    /// Size of `state.redb` on disk, in bytes.
    pub fn file_bytes(&self) -> Result<u64, MvccError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| MvccError::Storage(e.to_string()))
    }

    fn publish(&self, position: Position, durable: bool) {
        self.applied_index
            .store(position.applied_index, Ordering::Release);
        self.current_revision
            .store(position.current_revision, Ordering::Release);
        self.compacted_revision
            .store(position.compacted_revision, Ordering::Release);
        if durable {
            self.durable_applied_index
                .store(position.applied_index, Ordering::Release);
        }
    }

    fn read_position(&self, txn: &ReadTransaction) -> Result<Position, MvccError> {
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<u64, MvccError> { Ok(meta.get(name)?.map_or(0, |v| v.value())) };
        Ok(Position {
            applied_index: get(META_APPLIED_INDEX)?,
            current_revision: get(META_CURRENT_REVISION)? as Revision,
            compacted_revision: get(META_COMPACTED_REVISION)? as Revision,
            sweep: read_sweep(&meta)?,
        })
    }

    fn read_tables(&self, txn: &ReadTransaction) -> Result<ReadTables, MvccError> {
        Ok((txn.open_table(REVISIONS)?, txn.open_table(INDEX)?))
    }

    /// Applies one committed entry (see [`Self::apply_batch`]).
    pub fn apply(&self, index: LogIndex, command: &Command) -> Result<Applied, MvccError> {
        let mut applied = self.apply_batch(&[(index, command.clone())])?;
        Ok(applied.pop().expect("one result per entry"))
    }

    /// Applies committed entries in log order in one redb write transaction, the applied index
    /// written with the data. An index at or below the applied index (also earlier in the same
    /// batch) is skipped. An `Err` means the store failed (nothing of the batch is applied).
    pub fn apply_batch(&self, entries: &[(LogIndex, Command)]) -> Result<Vec<Applied>, MvccError> {
        self.write(|applier| {
            let mut results = Vec::with_capacity(entries.len());
            for (index, command) in entries {
                let applied_index = applier.position.applied_index;
                if *index <= applied_index {
                    let skipped = Err(ApplyError::AlreadyApplied {
                        index: *index,
                        applied_index,
                    });
                    results.push(Applied {
                        index: *index,
                        result: skipped,
                        events: Vec::new(),
                    });
                    continue;
                }
                let (result, events) = applier.apply(*index, command)?;
                results.push(Applied {
                    index: *index,
                    result,
                    events,
                });
            }
            Ok(results)
        })
    }

    /// Records `index` as applied for an entry that carries no command (an empty entry of a new
    /// leader, a membership change), so the applied index follows the log.
    pub fn mark_applied(&self, index: LogIndex) -> Result<(), MvccError> {
        self.write(|applier| {
            applier.position.applied_index = applier.position.applied_index.max(index);
            Ok(())
        })
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&mut Applier<'_>) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        let mut non_durable_commits = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut txn = self.db.begin_write()?;
        let durable = *non_durable_commits + 1 >= self.options.non_durable_commits_max;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let position = Position {
            applied_index: self.applied_index(),
            current_revision: self.revision(),
            compacted_revision: self.compacted_revision(),
            sweep: read_sweep(&txn.open_table(META)?)?,
        };
        let (output, position) = {
            let mut applier = Applier {
                tables: Tables::open(&txn)?,
                position,
                pending: Vec::new(),
            };
            let output = body(&mut applier)?;
            applier.sweep_step(SWEEP_CHANGES_PER_COMMIT_MAX)?;
            applier.append_pending()?;
            (output, applier.position)
        };
        write_position(&txn, &position)?;
        txn.commit()?;
        *non_durable_commits = if durable { 0 } else { *non_durable_commits + 1 };
        self.publish(position, durable);
        Ok(output)
    }

    /// Like [`Self::flush`], but only when some commit is not durable yet; says whether it
    /// synced. For a background flusher that should cost nothing while the store is idle.
    pub fn flush_if_pending(&self) -> Result<bool, MvccError> {
        if self.durable_applied_index() == self.applied_index() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Makes every applied entry durable (one fsync).
    pub fn flush(&self) -> Result<(), MvccError> {
        let mut non_durable_commits = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        *non_durable_commits = 0;
        self.durable_applied_index
            .store(self.applied_index(), Ordering::Release);
        Ok(())
    }

    // ---- reads ----

    /// etcd's Range. A bad request (empty key, compacted or future revision) is
    /// `MvccError::Request`.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range_request(request)?;
        let txn = self.db.begin_read()?;
        let position = self.read_position(&txn)?;
        let (revisions, index) = self.read_tables(&txn)?;
        let view = View {
            revisions: &revisions,
            index: &index,
            pending: &[],
        };
        Ok(view.range(
            request,
            position.current_revision,
            position.compacted_revision,
        )??)
    }

    pub fn lease(&self, id: LeaseId) -> Result<Option<Lease>, MvccError> {
        let txn = self.db.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let lease_keys = txn.open_table(LEASE_KEYS)?;
        let Some(found) = leases.get(id)? else {
            return Ok(None);
        };
        let (ttl_seconds, remaining_ttl_ms) = found.value();
        Ok(Some(Lease {
            id,
            ttl_seconds,
            remaining_ttl_ms,
            keys: attached_keys(&lease_keys, id)?,
        }))
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<Lease>, MvccError> {
        let txn = self.db.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let lease_keys = txn.open_table(LEASE_KEYS)?;
        let mut all = Vec::new();
        for entry in leases.iter()? {
            let (id, lease) = entry?;
            let (ttl_seconds, remaining_ttl_ms) = lease.value();
            let id = id.value();
            all.push(Lease {
                id,
                ttl_seconds,
                remaining_ttl_ms,
                keys: attached_keys(&lease_keys, id)?,
            });
        }
        Ok(all)
    }

    /// etcd's Maintenance.HashKV: a CRC-32C over every retained version with revision at or
    /// below `revision` (0: current), in change-log order. Returns the hash and the compacted
    /// revision it was computed under.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        let txn = self.db.begin_read()?;
        let position = self.read_position(&txn)?;
        check_read_revision(
            revision,
            position.current_revision,
            position.compacted_revision,
        )?;
        let revision = if revision == 0 {
            position.current_revision
        } else {
            revision
        };
        let (revisions, index) = self.read_tables(&txn)?;
        let view = View {
            revisions: &revisions,
            index: &index,
            pending: &[],
        };
        let sweeping = position.sweep.is_behind(position.compacted_revision);
        let mut hash = 0u32;
        for entry in revisions.range(..=(revision as u64, u32::MAX))? {
            let (at, stored) = entry?;
            let (change_revision, sub_revision) = at.value();
            let (key, record) = split_revision_record(stored.value())?;
            let tombstone = Record::is_tombstone(record);
            if sweeping
                && !view.reachable(key, at.value(), tombstone, position.compacted_revision)?
            {
                continue;
            }
            hash = crc32c::crc32c_append(hash, &change_revision.to_be_bytes());
            hash = crc32c::crc32c_append(hash, &sub_revision.to_be_bytes());
            hash = crc32c::crc32c_append(hash, &(key.len() as u32).to_be_bytes());
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, record);
        }
        Ok((hash, position.compacted_revision))
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn writer_lock(&self) -> std::sync::MutexGuard<'_, u32> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn reload_position(&self) -> Result<(), MvccError> {
        let position = self.read_position(&self.db.begin_read()?)?;
        self.publish(position, true);
        Ok(())
    }

    /// Checks every invariant of `docs/design/storage.md` over the whole store; panics with the
    /// broken one. For tests (it reads everything).
    pub fn invariants(&self) {
        super::invariants::check(self).expect("the state store is readable");
    }

    pub(crate) fn events_in(
        &self,
        range: &KeyRange,
        start_revision: Revision,
        end_revision: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Result<Vec<Event>, HistoryError>, MvccError> {
        let txn = self.db.begin_read()?;
        let position = self.read_position(&txn)?;
        if start_revision < position.compacted_revision {
            return Ok(Err(HistoryError::Compacted {
                compact_revision: position.compacted_revision,
            }));
        }
        if end_revision > position.current_revision {
            return Ok(Err(HistoryError::FutureRevision {
                current_revision: position.current_revision,
            }));
        }
        let mut events = Vec::new();
        if start_revision > end_revision {
            return Ok(Ok(events));
        }
        let (revisions, index) = self.read_tables(&txn)?;
        let view = View {
            revisions: &revisions,
            index: &index,
            pending: &[],
        };
        let sweeping = position.sweep.is_behind(position.compacted_revision);
        let limit = if limit == 0 { usize::MAX } else { limit };
        // Events of one revision are gathered apart, so the limit cuts between revisions.
        let mut pending: Vec<Event> = Vec::new();
        let mut pending_revision = 0u64;
        let first = (start_revision.max(0) as u64, 0u32);
        let mut open = true;
        for entry in revisions.range(first..=(end_revision as u64, u32::MAX))? {
            let (at, stored) = entry?;
            let (revision, _) = at.value();
            let (key, record) = split_revision_record(stored.value())?;
            if revision != pending_revision {
                open = take_revision(&mut events, &mut pending, limit);
                if !open {
                    break;
                }
                pending_revision = revision;
            }
            if !range.contains(key) {
                continue;
            }
            // Changes at exactly the compacted revision that a later change there superseded
            // are unreachable (the sweep deletes them).
            let tombstone = Record::is_tombstone(record);
            if sweeping
                && !view.reachable(key, at.value(), tombstone, position.compacted_revision)?
            {
                continue;
            }
            let event = match Record::decode_kv(record, key, revision as Revision, true)? {
                Some(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: None,
                },
                None => {
                    let kv = KeyValue {
                        key: Bytes::copy_from_slice(key),
                        mod_revision: revision as Revision,
                        ..Default::default()
                    };
                    Event {
                        kind: EventKind::Delete,
                        kv,
                        prev_kv: None,
                    }
                }
            };
            pending.push(event);
        }
        if open {
            take_revision(&mut events, &mut pending, limit);
        }
        if with_prev_kv {
            // A change at the compacted revision has no previous version: compaction deletes
            // (or the sweep will delete) every version below it of the same key.
            let compacted = position.compacted_revision;
            for event in events.iter_mut().filter(|e| e.kv.mod_revision > compacted) {
                event.prev_kv = view.at_revision(&event.kv.key, event.kv.mod_revision - 1)?;
            }
        }
        Ok(Ok(events))
    }
}

/// Moves one revision's events into `events` if they fit under `limit` (or, when `events` is
/// still empty, as many as fit). False when the limit is reached.
fn take_revision(events: &mut Vec<Event>, pending: &mut Vec<Event>, limit: usize) -> bool {
    if events.len() + pending.len() <= limit {
        events.append(pending);
        return events.len() < limit;
    }
    if events.is_empty() {
        events.extend(pending.drain(..limit));
    }
    pending.clear();
    false
}

fn write_position(txn: &redb::WriteTransaction, position: &Position) -> Result<(), MvccError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_APPLIED_INDEX, position.applied_index)?;
    meta.insert(META_CURRENT_REVISION, position.current_revision as u64)?;
    meta.insert(META_COMPACTED_REVISION, position.compacted_revision as u64)?;
    let sweep = &position.sweep;
    meta.insert(META_SWEEP_DONE_REVISION, sweep.done_revision as u64)?;
    meta.insert(META_SWEEP_RESUME_REVISION, sweep.resume.0)?;
    meta.insert(META_SWEEP_RESUME_SUB_REVISION, u64::from(sweep.resume.1))?;
    Ok(())
}

pub(crate) fn read_sweep(meta: &impl ReadableTable<&'static str, u64>) -> Result<Sweep, MvccError> {
    let get = |name| -> Result<u64, MvccError> { Ok(meta.get(name)?.map_or(0, |v| v.value())) };
    let resume_sub_revision = u32::try_from(get(META_SWEEP_RESUME_SUB_REVISION)?)
        .map_err(|_| MvccError::Corrupt("sweep sub-revision over 2^32".into()))?;
    Ok(Sweep {
        done_revision: get(META_SWEEP_DONE_REVISION)? as Revision,
        resume: (get(META_SWEEP_RESUME_REVISION)?, resume_sub_revision),
    })
}

pub(crate) fn write_position_in(
    txn: &redb::WriteTransaction,
    position: &Position,
) -> Result<(), MvccError> {
    write_position(txn, position)
}

fn attached_keys(
    lease_keys: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: LeaseId,
) -> Result<Vec<Bytes>, MvccError> {
    let mut keys = Vec::new();
    for entry in lease_keys.range((id, &b""[..])..)? {
        let (attached, _) = entry?;
        let (lease, key) = attached.value();
        if lease != id {
            break;
        }
        keys.push(Bytes::copy_from_slice(key));
    }
    Ok(keys)
}

impl History for MvccStore {
    fn current_revision(&self) -> Revision {
        self.revision()
    }

    fn compacted_revision(&self) -> Revision {
        MvccStore::compacted_revision(self)
    }

    fn events(
        &self,
        range: &KeyRange,
        start_revision: Revision,
        end_revision: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, HistoryError> {
        match self.events_in(range, start_revision, end_revision, limit, with_prev_kv) {
            Ok(result) => result,
            Err(error) => Err(HistoryError::Storage(error.to_string())),
        }
    }
}
