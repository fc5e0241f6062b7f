//! [`MvccStore`]: the state machine. Owns the state directory (append-only segment files), the
//! in-memory state rebuilt from it at open, the batching of applies into writes, their
//! durability, and segment GC. Never reads a clock.
//!
//! Concurrency: one writer at a time (the `writer` mutex); readers share the state lock and read
//! records from the files after releasing it. A write appends its records and makes the state
//! that refers to them visible in one step, under the state lock, so a reader never sees a
//! version whose record is not in the file.

use super::apply::{Applier, Batch};
use super::compaction::SWEEP_CHANGES_PER_WRITE_MAX;
use super::error::{ApplyError, MvccError};
use super::gc::{self, Collecting, GcPolicy};
use super::index::{Position, State, Version};
use super::limits::check_range_request;
use super::recovery::{self, restore_dirs, TailRepair};
use super::segments::{self, SegmentId};
use super::snapshot::{self, encode_version_record, SnapshotReader};
use super::types::*;
use super::view::{self, check_read_revision, value_of, Files};
use ballot_core::LogIndex;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Writes are not synced (the WAL has the entries); at least every this many writes one is,
/// which bounds the work redone after a crash.
pub const NON_DURABLE_COMMITS_MAX: u32 = 4;

/// How the store trades syncs, segment sizes and GC work for space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MvccOptions {
    /// Every this many writes, one is synced (1: every write is; see [`NON_DURABLE_COMMITS_MAX`]).
    pub non_durable_commits_max: u32,
    /// The head segment is sealed once it holds an eighth of the live data, but at least this
    /// many bytes...
    pub segment_bytes_min: u64,
    /// ...and at most this many.
    pub segment_bytes_max: u64,
    /// Segment GC runs while the garbage in sealed segments is above this percentage of the live
    /// bytes.
    pub garbage_percent_max: u32,
    /// Below this many bytes of garbage, GC never runs.
    pub garbage_bytes_min: u64,
    /// Changes of the log the compaction sweep visits per write.
    pub sweep_changes_per_write: usize,
}

impl Default for MvccOptions {
    fn default() -> Self {
        Self {
            non_durable_commits_max: NON_DURABLE_COMMITS_MAX,
            segment_bytes_min: 256 << 10,
            segment_bytes_max: 64 << 20,
            garbage_percent_max: 25,
            garbage_bytes_min: 256 << 10,
            sweep_changes_per_write: SWEEP_CHANGES_PER_WRITE_MAX,
        }
    }
}

/// Of every segment GC step: at least this many bytes of the victim...
const GC_STEP_BYTES_MIN: u64 = 256 * 1024;
/// ...and this many times what the write itself added, so GC outpaces the garbage writes make.
const GC_STEP_WRITE_FACTOR: u64 = 4;

/// The outcome of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: LogIndex,
    /// The response for the client, or why the command was refused (nothing changed) or skipped
    /// ([`ApplyError::AlreadyApplied`]).
    pub result: Result<CommandResult, ApplyError>,
    /// The changes, in order, each with `prev_kv` when the key existed at the revision before
    /// (unless the batch was applied without previous values).
    pub events: Vec<Event>,
}

impl Applied {
    pub fn was_skipped(&self) -> bool {
        matches!(self.result, Err(ApplyError::AlreadyApplied { .. }))
    }
}

/// What the state directory holds, for space measurements and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceStats {
    /// Bytes of every segment file.
    pub file_bytes: u64,
    /// Bytes of the records the state refers to.
    pub live_bytes: u64,
    pub segments: usize,
    /// Segments GC emptied, waiting for the next flush to delete them.
    pub retired_segments: usize,
}

struct Writer {
    head: SegmentId,
    head_file: Arc<File>,
    head_len: u64,
    /// How much of the head a completed sync made durable.
    synced_len: u64,
    non_durable_commits: u32,
    collecting: Option<Collecting>,
    /// Set by a failed write or sync: the state may not match the files, so nothing more is
    /// written or read until the store is reopened (fail-stop).
    failure: Option<String>,
    /// Bumped by a restore, which replaces every segment.
    generation: u64,
    /// The last write's buffer, empty, for the next: a fresh one grew by doubling every batch
    /// into memory the allocator had just returned, and the page faults and zeroing were an
    /// eighth of the apply path's time under 256-client puts.
    spare_buffer: Vec<u8>,
}

/// The MVCC key-value state machine. Shareable between threads: reads run concurrently with an
/// apply; applies are serialized.
pub struct MvccStore {
    dir: PathBuf,
    options: MvccOptions,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    applied_index: AtomicU64,
    durable_applied_index: AtomicU64,
    current_revision: AtomicI64,
    compacted_revision: AtomicI64,
    broken: AtomicBool,
    tail_repair: Option<TailRepair>,
}

impl MvccStore {
    /// Opens (or creates) the store in the directory `path`. After a crash it is at the last
    /// batch that reached the disk whole: a consistent state at some applied index at or below
    /// the one before the crash, and never below the last flush.
    pub fn open(path: impl AsRef<Path>) -> Result<MvccStore, MvccError> {
        Self::open_with(path, MvccOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, options: MvccOptions) -> Result<MvccStore, MvccError> {
        assert!(
            options.non_durable_commits_max >= 1,
            "non_durable_commits_max counts the durable commit itself"
        );
        assert!(options.segment_bytes_min <= options.segment_bytes_max);
        assert!(
            options.sweep_changes_per_write >= 1,
            "the sweep makes progress"
        );
        let dir = path.as_ref().to_path_buf();
        if dir.is_file() {
            return Err(MvccError::Corrupt(format!(
                "{} is a file; the state is a directory of segments (format 3). A redb file \
                 (format 1 or 2) is not read by this build: rebuild the member from its peers",
                dir.display()
            )));
        }
        let recovered = recovery::recover(&dir)?;
        let state = recovered.state;
        let head_file = state.segments[&recovered.head].file.clone();
        let position = state.position;
        let store = MvccStore {
            dir,
            options,
            state: RwLock::new(state),
            writer: Mutex::new(Writer {
                head: recovered.head,
                head_file,
                head_len: recovered.head_len,
                synced_len: recovered.head_len,
                non_durable_commits: 0,
                collecting: None,
                spare_buffer: Vec::new(),
                failure: None,
                generation: 0,
            }),
            applied_index: AtomicU64::new(0),
            durable_applied_index: AtomicU64::new(0),
            current_revision: AtomicI64::new(0),
            compacted_revision: AtomicI64::new(0),
            broken: AtomicBool::new(false),
            tail_repair: recovered.tail_repair,
        };
        store.publish(position);
        store
            .durable_applied_index
            .store(position.applied_index, Ordering::Release);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The damaged tail cut off at open, if there was one (for the operator's log).
    pub fn tail_repair(&self) -> Option<&TailRepair> {
        self.tail_repair.as_ref()
    }

    /// The last log index applied (possibly not yet durable).
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The applied index of the last synced write: what a crash now would return to at worst.
    /// The Raft log may be truncated only up to here.
    pub fn durable_applied_index(&self) -> LogIndex {
        self.durable_applied_index.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> Revision {
        self.current_revision.load(Ordering::Acquire)
    }

    pub fn compacted_revision(&self) -> Revision {
        self.compacted_revision.load(Ordering::Acquire)
    }

    /// Sizes of the state directory.
    pub fn space(&self) -> Result<SpaceStats, MvccError> {
        let state = self.read_state()?;
        Ok(SpaceStats {
            file_bytes: state.file_bytes(),
            live_bytes: state.live_bytes(),
            segments: state.segments.len(),
            retired_segments: state.segments.values().filter(|s| s.retired).count(),
        })
    }

    /// Keys that exist now (their newest version is a put).
    pub fn key_count(&self) -> Result<u64, MvccError> {
        Ok(self.read_state()?.live_keys)
    }

    /// Bytes of the state directory's segment files.
    pub fn file_bytes(&self) -> Result<u64, MvccError> {
        Ok(self.space()?.file_bytes)
    }

    /// The applied index goes last: whoever sees an index applied also sees its revisions.
    fn publish(&self, position: Position) {
        self.current_revision
            .store(position.current_revision, Ordering::Release);
        self.compacted_revision
            .store(position.compacted_revision, Ordering::Release);
        self.applied_index
            .store(position.applied_index, Ordering::Release);
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, MvccError> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &writer.failure {
            Some(failure) => Err(MvccError::Storage(format!(
                "the state store stopped after a failure and must be reopened: {failure}"
            ))),
            None => Ok(writer),
        }
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, State>, MvccError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(MvccError::Storage(
                "the state store stopped after a failure and must be reopened".into(),
            ));
        }
        Ok(self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self, writer: &mut Writer, error: &MvccError) {
        writer.failure = Some(error.to_string());
        self.broken.store(true, Ordering::Release);
    }

    /// Applies one committed entry (see [`Self::apply_batch`]).
    pub fn apply(&self, index: LogIndex, command: &Command) -> Result<Applied, MvccError> {
        let mut applied = self.apply_batch(&[(index, command.clone())])?;
        Ok(applied.pop().expect("one result per entry"))
    }

    /// Applies committed entries in log order in one write, the applied index written with the
    /// data. An index at or below the applied index (also earlier in the same batch) is skipped.
    /// An `Err` means the store failed: nothing of the batch is on disk, and the store refuses
    /// everything until reopened.
    pub fn apply_batch(&self, entries: &[(LogIndex, Command)]) -> Result<Vec<Applied>, MvccError> {
        self.apply_batch_with(entries, true)
    }

    /// Like [`Self::apply_batch`]; with `events_with_prev_kv` false, events carry no `prev_kv`,
    /// which saves reading each changed key's previous record (for when no watcher asked for it).
    pub fn apply_batch_with(
        &self,
        entries: &[(LogIndex, Command)],
        events_with_prev_kv: bool,
    ) -> Result<Vec<Applied>, MvccError> {
        self.write(events_with_prev_kv, |applier| {
            let mut results = Vec::with_capacity(entries.len());
            for (index, command) in entries {
                let applied_index = applier.state.position.applied_index;
                if *index <= applied_index {
                    results.push(Applied {
                        index: *index,
                        result: Err(ApplyError::AlreadyApplied {
                            index: *index,
                            applied_index,
                        }),
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
        self.write(false, |applier| {
            let position = &mut applier.state.position;
            position.applied_index = position.applied_index.max(index);
            Ok(())
        })
    }

    fn write<T>(
        &self,
        events_with_prev_kv: bool,
        body: impl FnOnce(&mut Applier<'_>) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        let mut writer = self.lock_writer()?;
        let mut state = self.write_state();
        let spare_buffer = std::mem::take(&mut writer.spare_buffer);
        let mut batch = Batch::with_buffer(writer.head, writer.head_len, spare_buffer);
        let outcome = (|| {
            let mut applier = Applier {
                state: &mut state,
                batch: &mut batch,
                events_with_prev_kv,
            };
            let output = body(&mut applier)?;
            applier
                .state
                .sweep_step(self.options.sweep_changes_per_write);
            self.gc_step(&mut writer, applier.state, applier.batch)?;
            applier.commit(writer.synced_len);
            Ok(output)
        })();
        let output = match outcome {
            Ok(output) => output,
            Err(error) => {
                drop(state);
                self.fail(&mut writer, &error);
                return Err(error);
            }
        };
        if let Err(error) = writer
            .head_file
            .write_all_at(&batch.buffer, writer.head_len)
        {
            let error = segments::io_error(
                "cannot write to",
                &segments::segment_path(&self.dir, writer.head),
                error,
            );
            drop(state);
            self.fail(&mut writer, &error);
            return Err(error);
        }
        writer.head_len = batch.end();
        writer.spare_buffer = batch.into_spare_buffer();
        state
            .segments
            .get_mut(&writer.head)
            .expect("the head segment exists")
            .bytes = writer.head_len;
        let position = state.position;
        let live_bytes = state.live_bytes();
        drop(state);
        self.publish(position);
        writer.non_durable_commits += 1;
        let seal_at = (live_bytes / 8).clamp(
            self.options.segment_bytes_min,
            self.options.segment_bytes_max,
        );
        let result = if writer.head_len >= seal_at {
            self.seal(&mut writer)
        } else if writer.non_durable_commits >= self.options.non_durable_commits_max {
            self.sync_locked(&mut writer)
        } else {
            Ok(())
        };
        if let Err(error) = result {
            self.fail(&mut writer, &error);
            return Err(error);
        }
        Ok(output)
    }

    fn gc_step(
        &self,
        writer: &mut Writer,
        state: &mut State,
        batch: &mut Batch,
    ) -> Result<(), MvccError> {
        if writer.collecting.is_none() {
            let policy = GcPolicy {
                garbage_ratio_max: f64::from(self.options.garbage_percent_max) / 100.0,
                garbage_bytes_min: self.options.garbage_bytes_min,
            };
            writer.collecting = policy
                .choose(state, writer.head)
                .map(|victim| Collecting { victim, offset: 0 });
        }
        if let Some(collecting) = writer.collecting {
            let budget = GC_STEP_BYTES_MIN.max(GC_STEP_WRITE_FACTOR * batch.buffer.len() as u64);
            writer.collecting = gc::step(state, batch, collecting, budget)?;
        }
        Ok(())
    }

    /// Syncs the head (so everything written is durable) and deletes the segments GC retired.
    fn sync_locked(&self, writer: &mut Writer) -> Result<(), MvccError> {
        writer.head_file.sync_data().map_err(|e| {
            segments::io_error(
                "cannot sync",
                &segments::segment_path(&self.dir, writer.head),
                e,
            )
        })?;
        writer.non_durable_commits = 0;
        writer.synced_len = writer.head_len;
        self.durable_applied_index
            .fetch_max(self.applied_index(), Ordering::AcqRel);
        let mut state = self.write_state();
        gc::delete_retired(&self.dir, &mut state)?;
        state.refresh_files();
        Ok(())
    }

    /// Ends the head segment (synced, so a sealed segment is complete on disk) and starts the
    /// next one.
    fn seal(&self, writer: &mut Writer) -> Result<(), MvccError> {
        self.sync_locked(writer)?;
        let next = writer.head + 1;
        let (file, length) = segments::create(&self.dir, next)?;
        let mut state = self.write_state();
        state
            .segments
            .insert(next, super::index::SegmentInfo::new(file, length));
        state.refresh_files();
        writer.head = next;
        writer.head_file = state.segments[&next].file.clone();
        writer.head_len = length;
        writer.synced_len = length;
        Ok(())
    }

    /// Like [`Self::flush`], but only when something is not durable yet or there is compaction
    /// or GC work left (which it then does a step of); says whether it did anything. For a
    /// background flusher that should cost nothing while the store is idle.
    pub fn flush_if_pending(&self) -> Result<bool, MvccError> {
        let maintenance = {
            let writer = self.lock_writer()?;
            let state = self.read_state()?;
            let policy = GcPolicy {
                garbage_ratio_max: f64::from(self.options.garbage_percent_max) / 100.0,
                garbage_bytes_min: self.options.garbage_bytes_min,
            };
            state.sweep_behind()
                || writer.collecting.is_some()
                || policy.choose(&state, writer.head).is_some()
        };
        if maintenance {
            self.write(false, |_| Ok(()))?;
        }
        let retired = self.read_state()?.segments.values().any(|s| s.retired);
        if !maintenance && !retired && self.durable_applied_index() == self.applied_index() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Makes every applied entry durable (one sync of the head segment, which does not hold up
    /// writes), then deletes the segments GC emptied before it.
    pub fn flush(&self) -> Result<(), MvccError> {
        let (file, applied, generation, retired, head, head_len) = {
            let writer = self.lock_writer()?;
            let state = self.read_state()?;
            let retired: Vec<SegmentId> = state
                .segments
                .iter()
                .filter(|(_, s)| s.retired)
                .map(|(&id, _)| id)
                .collect();
            (
                writer.head_file.clone(),
                self.applied_index(),
                writer.generation,
                retired,
                writer.head,
                writer.head_len,
            )
        };
        if let Err(error) = file.sync_data() {
            let error =
                MvccError::Storage(format!("cannot sync the state's head segment: {error}"));
            let mut writer = self
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.fail(&mut writer, &error);
            return Err(error);
        }
        self.durable_applied_index
            .fetch_max(applied, Ordering::AcqRel);
        let mut writer = self.lock_writer()?;
        if writer.generation != generation {
            return Ok(());
        }
        if writer.head == head {
            writer.synced_len = writer.synced_len.max(head_len);
        }
        if retired.is_empty() {
            return Ok(());
        }
        let mut state = self.write_state();
        for id in retired {
            let path = segments::segment_path(&self.dir, id);
            std::fs::remove_file(&path)
                .map_err(|e| segments::io_error("cannot delete", &path, e))?;
            state.segments.remove(&id);
        }
        state.refresh_files();
        drop(state);
        drop(writer);
        segments::sync_dir(&self.dir)
    }

    // ---- reads ----

    /// etcd's Range. A bad request (empty key, compacted or future revision) is
    /// `MvccError::Request`.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range_request(request)?;
        let (located, current, files) = {
            let state = self.read_state()?;
            let position = state.position;
            check_read_revision(
                request.revision,
                position.current_revision,
                position.compacted_revision,
            )?;
            let at = (request.revision > 0).then_some(request.revision);
            (
                state.locate(&request.range, at),
                position.current_revision,
                state.files.clone(),
            )
        };
        view::range(request, &located, current, &Files(files))
    }

    pub fn lease(&self, id: LeaseId) -> Result<Option<Lease>, MvccError> {
        let state = self.read_state()?;
        Ok(state.leases.get(&id).map(|entry| Lease {
            id,
            ttl_seconds: entry.ttl_seconds,
            remaining_ttl_ms: entry.remaining_ttl_ms,
            keys: entry.keys.iter().cloned().collect(),
        }))
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<Lease>, MvccError> {
        let state = self.read_state()?;
        Ok(state
            .leases
            .iter()
            .map(|(&id, entry)| Lease {
                id,
                ttl_seconds: entry.ttl_seconds,
                remaining_ttl_ms: entry.remaining_ttl_ms,
                keys: entry.keys.iter().cloned().collect(),
            })
            .collect())
    }

    /// etcd's Maintenance.HashKV: a CRC-32C over every retained version with revision at or
    /// below `revision` (0: current), in revision order, each as
    /// `revision u64 | sub u32 | key_len u32 | key | version record` (the snapshot's encoding).
    /// Returns the hash and the compacted revision it was computed under. Replicas that applied
    /// the same log agree, however they batched it.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision), MvccError> {
        let (versions, compacted, files) = {
            let _writer = self.lock_writer()?;
            let mut state = self.write_state();
            state.finish_sweep();
            let position = state.position;
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
            let mut versions: Vec<(Bytes, Version)> = state
                .keys
                .iter()
                .flat_map(|(key, versions)| {
                    versions
                        .iter()
                        .take_while(|v| v.at.0 <= revision as u64)
                        .map(move |v| (key.clone(), *v))
                })
                .collect();
            versions.sort_unstable_by_key(|(_, v)| v.at);
            (versions, position.compacted_revision, state.files.clone())
        };
        let files = Files(files);
        let mut hash = 0u32;
        let mut record = Vec::new();
        for (key, version) in versions {
            record.clear();
            match version.put {
                Some(meta) => {
                    let value = value_of(&files, &key, &version)?;
                    encode_version_record(Some((&meta, &value)), &mut record);
                }
                None => encode_version_record(None, &mut record),
            }
            hash = snapshot::hash_version(hash, &key, version.at, &record);
        }
        Ok((hash, compacted))
    }

    /// Fixes the state a snapshot will hold (which records, at one applied index) without
    /// reading the values: the caller may encode it on another thread while the store keeps
    /// applying. Costs a pass over the index (the sweep is finished first, so everything in it
    /// is reachable).
    pub fn begin_snapshot(&self) -> Result<SnapshotReader, MvccError> {
        let _writer = self.lock_writer()?;
        let mut state = self.write_state();
        state.finish_sweep();
        let versions = state
            .keys
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(move |v| (key.clone(), *v)))
            .collect();
        let leases = state
            .leases
            .iter()
            .map(|(&id, l)| (id, l.ttl_seconds, l.remaining_ttl_ms))
            .collect();
        Ok(SnapshotReader {
            position: state.position,
            versions,
            leases,
            files: Files(state.files.clone()),
        })
    }

    /// Replaces the whole state with `snapshot`, atomically: the input is checked completely
    /// first (a bad one changes nothing), the new state directory is written and synced beside
    /// the old one, and the two are swapped.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), MvccError> {
        let parsed = snapshot::parse(snapshot)?;
        let mut writer = self.lock_writer()?;
        let mut state = self.write_state();
        let (new, _) = restore_dirs(&self.dir);
        if new.exists() {
            std::fs::remove_dir_all(&new)
                .map_err(|e| segments::io_error("cannot delete", &new, e))?;
        }
        // Numbered above every current segment, so no path names two different files.
        let first = writer.head + 1;
        let outcome =
            snapshot::write_state_dir(&new, &parsed, first, self.options.segment_bytes_max)
                .and_then(|()| snapshot::swap_in(&self.dir, &new))
                .and_then(|()| recovery::recover(&self.dir));
        let recovered = match outcome {
            Ok(recovered) => recovered,
            Err(error) => {
                drop(state);
                self.fail(&mut writer, &error);
                return Err(error);
            }
        };
        *state = recovered.state;
        writer.head = recovered.head;
        writer.head_file = state.segments[&recovered.head].file.clone();
        writer.head_len = recovered.head_len;
        writer.synced_len = recovered.head_len;
        writer.non_durable_commits = 0;
        writer.collecting = None;
        writer.generation += 1;
        let position = state.position;
        drop(state);
        self.publish(position);
        self.durable_applied_index
            .store(position.applied_index, Ordering::Release);
        Ok(())
    }

    /// Checks every invariant of `docs/design/storage.md` over the whole store, reading every
    /// record; panics with the broken one. For tests.
    pub fn invariants(&self) {
        let _writer = self.lock_writer().expect("the store is usable");
        let state = self.read_state().expect("the store is usable");
        super::invariants::check(&state, &self.dir);
    }

    pub(crate) fn events_in(
        &self,
        range: &KeyRange,
        start_revision: Revision,
        end_revision: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Result<Vec<Event>, HistoryError>, MvccError> {
        // (change, its version, the key's version before it if asked), found under the lock.
        type Found = (Bytes, Version, Option<Version>);
        let (found, files) = {
            let state = self.read_state()?;
            let position = state.position;
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
            let mut found: Vec<Found> = Vec::new();
            if start_revision > end_revision {
                return Ok(Ok(Vec::new()));
            }
            let limit = if limit == 0 { usize::MAX } else { limit };
            let compacted = position.compacted_revision as u64;
            let mut pending: Vec<Found> = Vec::new();
            let first = state.change_position((start_revision.max(0) as u64, 0));
            for change in state.changes.iter_from(first) {
                if change.at.0 > end_revision as u64 {
                    break;
                }
                if pending
                    .first()
                    .is_some_and(|(_, v, _)| v.at.0 != change.at.0)
                    && !take_revision(&mut found, &mut pending, limit)
                {
                    break;
                }
                if !range.contains(&change.key) {
                    continue;
                }
                let Some(version) = state
                    .keys
                    .get(&change.key)
                    .and_then(|versions| versions.iter().find(|v| v.at == change.at))
                    .copied()
                else {
                    continue; // swept: superseded at exactly the compacted revision
                };
                // At exactly the compacted revision etcd keeps each key's newest change only if
                // it is a put: a tombstone there ends its generation, which compaction drops, so
                // a replay from the compacted revision does not see that delete. (Our index
                // keeps the tombstone; only this read skips it.)
                if change.at.0 == compacted
                    && (!version.is_put() || !state.reachable(&change.key, change.at, false))
                {
                    continue;
                }
                // A change at the compacted revision has no previous version: compaction deletes
                // (or the sweep will delete) every version below it of the same key. A put that
                // creates the key has none either, as in etcd (even when a transaction deleted
                // the key and put it back).
                let creates = version
                    .put
                    .is_some_and(|put| put.create_revision == change.at.0 as Revision);
                let previous = (with_prev_kv && change.at.0 > compacted && !creates)
                    .then(|| {
                        state
                            .put_at(&change.key, change.at.0 as Revision - 1)
                            .copied()
                    })
                    .flatten();
                pending.push((change.key.clone(), version, previous));
            }
            if !pending.is_empty() {
                take_revision(&mut found, &mut pending, limit);
            }
            (found, state.files.clone())
        };
        let files = Files(files);
        let mut events = Vec::with_capacity(found.len());
        for (key, version, previous) in found {
            let prev_kv = previous
                .map(|previous| view::load(&files, &key, &previous, true))
                .transpose()?;
            let event = if version.is_put() {
                Event {
                    kind: EventKind::Put,
                    kv: view::load(&files, &key, &version, true)?,
                    prev_kv,
                }
            } else {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: version.at.0 as Revision,
                        ..Default::default()
                    },
                    prev_kv,
                }
            };
            events.push(event);
        }
        Ok(Ok(events))
    }

    /// The files of every segment (for tests that damage them).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        match self.read_state() {
            Ok(state) => state
                .segments
                .keys()
                .map(|&id| segments::segment_path(&self.dir, id))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for MvccStore {
    fn drop(&mut self) {
        // Best effort: what is not synced is replayed from the WAL at the next open.
        let _ = self.flush();
    }
}

/// Moves one revision's events into `found` if they fit under `limit` (or, when `found` is still
/// empty, as many as fit). False when the limit is reached.
fn take_revision<T>(found: &mut Vec<T>, pending: &mut Vec<T>, limit: usize) -> bool {
    if found.len() + pending.len() <= limit {
        found.append(pending);
        return found.len() < limit;
    }
    if found.is_empty() {
        found.extend(pending.drain(..limit));
    }
    pending.clear();
    false
}

impl History for MvccStore {
    fn current_revision(&self) -> Revision {
        self.revision()
    }

    fn compacted_revision(&self) -> Revision {
        MvccStore::compacted_revision(self)
    }

    fn compaction_floor(&self) -> Revision {
        match MvccStore::compacted_revision(self) {
            0 if self.read_state().is_ok_and(|state| state.compacted_at_zero) => 0,
            0 => -1,
            compacted => compacted,
        }
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

/// The MVCC store is the server's state machine: the trait's rules are this store's own
/// (`apply_batch` skips what it has applied, `restore` checks an image whole before it changes
/// anything). The server shares the store with its readers behind an `Arc` and calls the
/// inherent methods, which take `&self`; the trait is how the conformance suite holds the store
/// to the rules the simulator's map keeps too.
impl ballot_core::StateMachine for MvccStore {
    type Command = Command;
    type Outcome = Applied;
    type Error = MvccError;

    fn apply(
        &mut self,
        commands: &[(LogIndex, Command)],
    ) -> Result<Vec<Option<Applied>>, MvccError> {
        Ok(MvccStore::apply_batch(self, commands)?
            .into_iter()
            .map(|applied| (!applied.was_skipped()).then_some(applied))
            .collect())
    }

    fn mark_applied(&mut self, index: LogIndex) -> Result<(), MvccError> {
        MvccStore::mark_applied(self, index)
    }

    fn applied_index(&self) -> LogIndex {
        MvccStore::applied_index(self)
    }

    fn image(&self) -> Result<bytes::Bytes, MvccError> {
        self.begin_snapshot()?.into_bytes()
    }

    fn restore(&mut self, image: &[u8]) -> Result<(), MvccError> {
        MvccStore::restore(self, image)
    }
}
