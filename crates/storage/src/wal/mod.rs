//! The write-ahead log: the replicated log's entries, the hard state and snapshot markers of one
//! replica, in segmented, checksummed, append-only files, with group commit.
//!
//! The format, the crash cases and the invariants are in `docs/design/storage.md`, "Write-ahead
//! log"; [`format`] mirrors the byte layout, `replay` the invariants (checked before every write
//! and again on every read), `segment` the files, [`GroupCommit`] many waiters per `fdatasync`.
//!
//! [`Wal`] is the single writer: [`Wal::append`] writes a batch (the `Ready` contract: entries,
//! then hard state; an entry at a stored index replaces it and every later one) and returns its
//! [`Sequence`]; [`Wal::sync`] makes everything appended durable with one `fdatasync`.
//!
//! Never does: skip a damaged record (a torn tail of the last segment is cut and reported, any
//! other damage refuses to open), write anything for an append it rejects, retry a failed
//! `fdatasync` (the WAL stops; reopen it), or take the data directory lock (the caller holds it).

mod error;
mod files;
mod format;
mod group_commit;
mod replay;
mod segment;
mod shared;

pub use error::{Defect, Violation, WalError};
pub use format::RecordKind;
pub use group_commit::{GroupCommit, GroupCommitStats, BATCH_HISTOGRAM_BUCKETS};
pub use shared::{GroupWal, SharedOpened, SharedWal};

use ballot_core::{Entry, HardState, LogIndex, LogPosition, Term};
use files::SegmentFiles;
use format::{GroupRecord, Record, SnapshotMarker};
use replay::{LogState, Replay};
use segment::{io_error, ScanEnd, SegmentName};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default size a segment is preallocated to and rolled over at.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 1024;
/// Default bound on one record, header included.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// `record_bytes_max` must leave room for every fixed-size record.
pub const RECORD_BYTES_MAX_MIN: usize = 64;
/// The length field is a u32; we stay well below it.
pub const RECORD_BYTES_MAX_LIMIT: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is preallocated to this size; a record that does not fit in what is left
    /// opens the next segment.
    pub segment_size_bytes: u64,
    /// Largest record (header included) that may be written, and that is accepted when reading.
    /// Open a log with at least the bound it was written with.
    pub record_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        if self.segment_size_bytes < SEGMENT_SIZE_BYTES_MIN {
            return Err(WalError::InvalidOption {
                name: "segment_size_bytes",
                value: self.segment_size_bytes,
                reason: "below the minimum of 1024 bytes",
            });
        }
        if !(RECORD_BYTES_MAX_MIN..=RECORD_BYTES_MAX_LIMIT).contains(&self.record_bytes_max) {
            return Err(WalError::InvalidOption {
                name: "record_bytes_max",
                value: self.record_bytes_max as u64,
                reason: "must be between 64 bytes and 1 GiB",
            });
        }
        Ok(())
    }
}

/// Position of an append in the order of appends. An append is durable once a sync has returned
/// a sequence at least as large as the one its append returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sequence(pub u64);

/// What [`Wal::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// The latest hard state written (the default if none ever was).
    pub hard_state: HardState,
    /// Index of the first live entry: one past the latest snapshot marker, 1 without one.
    pub first_index: LogIndex,
    /// The live entries, `first_index` onwards, contiguous, after every replacement.
    pub entries: Vec<Entry>,
    /// The latest snapshot marker: the snapshot store must hold a snapshot at least this new.
    pub snapshot: Option<LogPosition>,
    /// The torn tail cut off the last segment, if there was one.
    pub tail_repair: Option<TailRepair>,
}

impl Recovered {
    pub fn last_index(&self) -> LogIndex {
        self.first_index + self.entries.len() as u64 - 1
    }
}

/// A torn tail cut off the last segment: everything from `offset` on was written after the last
/// successful `fdatasync`, so nothing acknowledged was in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub file: PathBuf,
    pub offset: u64,
    /// Bytes from `offset` to the last non-zero byte of the file.
    pub bytes_discarded: u64,
    pub reason: Defect,
}

/// One record of a segment, as listed by [`dump_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    pub offset: u64,
    pub bytes: u64,
    pub kind: RecordKind,
    /// The entry's index, for entry records.
    pub index: Option<LogIndex>,
}

/// A record waiting to be written by [`Wal::write_records`].
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Entry(&'a Entry),
    HardState(HardState),
    Marker(SnapshotMarker),
}

/// What a group-commit syncer needs to run one `fdatasync` without holding the WAL.
#[derive(Debug)]
pub(crate) struct SyncTicket {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub upto: Sequence,
    pub entries_upto: u64,
}

/// The single writer of a WAL directory. See the module documentation.
#[derive(Debug)]
pub struct Wal {
    files: SegmentFiles,
    log: LogState,
    /// Entries appended since open, for group-commit statistics.
    entries_appended: u64,
}

impl Wal {
    /// Opens (creating it if needed) the WAL in `dir` (`<data-dir>/wal`), replays it, cuts a torn
    /// tail off the last segment, and returns the writer positioned after the last valid record.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let mut replay = None;
        let replayed = files::replay_dir(&dir, options, |path, name, bytes, is_oldest| {
            let replay = replay.get_or_insert_with(|| Replay::new(name.first_index.max(1)));
            replay_segment(replay, path, name, bytes, is_oldest, options)
        })?;
        let (Some(replayed), Some(replay)) = (replayed, replay) else {
            return Self::create(dir, options);
        };
        if let Err((first_missing, last_missing)) = replay.state.check_complete() {
            return Err(WalError::MissingEntries {
                dir,
                first_missing,
                last_missing,
            });
        }
        let files = SegmentFiles::reopen(dir, options, &replayed, format::PREAMBLE_BYTES_MAX)?;
        let log = replay.state.clone();
        let recovered = Recovered {
            hard_state: log.hard_state().unwrap_or_default(),
            first_index: log.first_index(),
            entries: replay.into_entries(),
            snapshot: log.marker().map(|marker| marker.position),
            tail_repair: replayed.tail_repair,
        };
        let wal = Wal {
            files,
            log,
            entries_appended: 0,
        };
        Ok((wal, recovered))
    }

    /// A new, empty WAL: segment 1, first index 1.
    fn create(dir: PathBuf, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        let name = SegmentName {
            number: 1,
            first_index: 1,
        };
        let log = LogState::new(1);
        let files = SegmentFiles::create(dir, options, name, &preamble(&log, name))?;
        let recovered = Recovered {
            first_index: 1,
            ..Recovered::default()
        };
        let wal = Wal {
            files,
            log,
            entries_appended: 0,
        };
        Ok((wal, recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    pub fn options(&self) -> WalOptions {
        self.files.options
    }

    /// First live index: one past the latest snapshot marker.
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// Last live index (`first_index() - 1` when the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// Term of a live entry, or of the snapshot marker's entry.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    pub fn hard_state(&self) -> HardState {
        self.log.hard_state().unwrap_or_default()
    }

    /// The latest snapshot marker written.
    pub fn snapshot(&self) -> Option<LogPosition> {
        self.log.marker().map(|marker| marker.position)
    }

    /// The sequence of the last append.
    pub fn appended_sequence(&self) -> Sequence {
        self.files.appended()
    }

    /// Every append up to this sequence is durable.
    pub fn synced_sequence(&self) -> Sequence {
        self.files.synced()
    }

    /// Paths of the kept segments, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.files.segment_paths()
    }

    /// Writes `entries` and then `hard_state` (the `Ready` order). An entry at an index already
    /// stored replaces it and every later entry. Nothing is durable until [`Wal::sync`] returns a
    /// sequence at least as large as the one returned here. A batch that breaks a limit or an
    /// invariant is refused whole and changes nothing. An empty batch writes nothing and returns
    /// the last sequence.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<Sequence, WalError> {
        self.check_running()?;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(self.files.appended());
        }
        self.validate_append(entries, hard_state.as_ref())?;
        let records = entries
            .iter()
            .map(Outgoing::Entry)
            .chain(hard_state.map(Outgoing::HardState));
        self.write_records(records)?;
        self.entries_appended += entries.len() as u64;
        Ok(self.files.appended())
    }

    /// Makes every append so far durable with one `fdatasync` of the last segment (earlier
    /// segments were synced when the next one was opened). Returns the durable sequence.
    pub fn sync(&mut self) -> Result<Sequence, WalError> {
        self.files.sync()
    }

    /// Prefix compaction, after a snapshot through `index` (or later) has been saved: writes and
    /// syncs a snapshot marker, then deletes every segment whose live entries are all at or below
    /// `index` (never the last one, never the one holding `index + 1`). Returns how many segments
    /// were deleted. A no-op for an index at or below the current marker.
    pub fn compact_to(&mut self, index: LogIndex) -> Result<usize, WalError> {
        self.check_running()?;
        let Some(marker) = compaction_marker(&self.log, index)? else {
            return Ok(0);
        };
        self.write_records([Outgoing::Marker(marker)].into_iter())?;
        self.sync()?;
        let deletable = compactable_segments(&self.files.segments, index);
        self.delete_oldest_segments(deletable)
    }

    /// After saving a snapshot received from a leader (Raft §7): if the log holds the snapshot's
    /// last entry (same index and term), this is [`Wal::compact_to`]; otherwise the whole log is
    /// discarded and the next entry must be `position.index + 1`. Durable when it returns.
    /// Returns how many segments were deleted. A no-op for a snapshot not newer than the marker.
    pub fn install_snapshot(&mut self, position: LogPosition) -> Result<usize, WalError> {
        self.check_running()?;
        let marker = match install_marker(&self.log, position)? {
            None => return Ok(0),
            Some(marker) if marker.keep_later_entries => return self.compact_to(position.index),
            Some(marker) => marker,
        };
        self.write_records([Outgoing::Marker(marker)].into_iter())?;
        // The new segment's preamble repeats the marker, so every older segment can go.
        self.open_next_segment()?;
        self.delete_oldest_segments(self.files.segments.len() - 1)
    }

    fn validate_append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WalError> {
        validate_append(
            &self.log,
            self.files.options.record_bytes_max,
            0,
            entries,
            hard_state,
        )
    }

    /// Encodes and writes records, one `write` per segment touched, opening new segments as
    /// needed, and applies each to the log state. Counts as one append. Stops the WAL on failure.
    fn write_records<'a>(
        &mut self,
        records: impl Iterator<Item = Outgoing<'a>>,
    ) -> Result<(), WalError> {
        self.files.write_batch(
            &mut self.log,
            records,
            |record| match record {
                Outgoing::Entry(entry) => format::entry_record_bytes(entry),
                Outgoing::HardState(_) => format::HARD_STATE_RECORD_BYTES,
                Outgoing::Marker(_) => format::SNAPSHOT_MARKER_RECORD_BYTES,
            },
            |log, _, record, buffer| encode_and_apply(log, record, buffer),
            |log, number| {
                let name = SegmentName {
                    number,
                    first_index: log.last_index() + 1,
                };
                (name, preamble(log, name))
            },
        )
    }

    /// Syncs and cuts the active segment, then creates the next one, starting at the next
    /// index, with a preamble that repeats the hard state and marker in force.
    fn open_next_segment(&mut self) -> Result<(), WalError> {
        let name = SegmentName {
            number: self.files.active.name.number + 1,
            first_index: self.log.last_index() + 1,
        };
        self.files.roll_over(name, &preamble(&self.log, name))
    }

    fn delete_oldest_segments(&mut self, count: usize) -> Result<usize, WalError> {
        self.files.delete_oldest(count)
    }

    fn check_running(&self) -> Result<(), WalError> {
        self.files.check_running()
    }

    /// For group commit: what to `fdatasync` to make every append so far durable, or `None` if
    /// everything already is.
    pub(crate) fn sync_ticket(&self) -> Result<Option<SyncTicket>, WalError> {
        self.check_running()?;
        if self.files.synced() == self.files.appended() {
            return Ok(None);
        }
        Ok(Some(SyncTicket {
            file: Arc::clone(&self.files.active.file),
            path: self.files.active.path.clone(),
            upto: self.files.appended(),
            entries_upto: self.entries_appended,
        }))
    }

    /// Records the outcome of a sync of everything up to `upto`. A failure stops the WAL.
    pub(crate) fn sync_finished(
        &mut self,
        upto: Sequence,
        path: &Path,
        result: io::Result<()>,
    ) -> Result<(), WalError> {
        self.files.sync_finished(upto, path, result)
    }

    pub(crate) fn entries_appended(&self) -> u64 {
        self.entries_appended
    }
}

/// Adds `record` to `buffer` and applies it to `log`; returns its size in bytes.
fn encode_and_apply(log: &mut LogState, record: Outgoing<'_>, buffer: &mut Vec<u8>) -> usize {
    match record {
        Outgoing::Entry(entry) => {
            log.apply_entry(entry.index, entry.term);
            format::encode_entry(entry, buffer)
        }
        Outgoing::HardState(hard_state) => {
            log.apply_hard_state(hard_state);
            format::encode_hard_state(&hard_state, buffer)
        }
        Outgoing::Marker(marker) => {
            log.apply_marker(marker);
            format::encode_snapshot_marker(&marker, buffer)
        }
    }
}

/// The marker a compaction of `log` through `index` writes; `None` at or below its floor, an
/// error past its end.
fn compaction_marker(log: &LogState, index: LogIndex) -> Result<Option<SnapshotMarker>, WalError> {
    if index <= log.floor().index {
        return Ok(None);
    }
    if index > log.last_index() {
        return Err(WalError::CompactBeyondLog {
            index,
            last_index: log.last_index(),
        });
    }
    let term = log.term_at(index).expect("a live index has a term");
    let marker = SnapshotMarker {
        position: LogPosition::new(index, term),
        keep_later_entries: true,
    };
    log.check_marker(&marker)
        .map_err(|violation| WalError::InvalidAppend { violation })?;
    Ok(Some(marker))
}

/// The marker installing a snapshot at `position` writes (Raft §7): a compaction's if `log`
/// holds `position` itself, else one that discards the whole log; `None` at or below its floor.
fn install_marker(
    log: &LogState,
    position: LogPosition,
) -> Result<Option<SnapshotMarker>, WalError> {
    if position.index <= log.floor().index {
        return Ok(None);
    }
    if log.term_at(position.index) == Some(position.term) {
        return compaction_marker(log, position.index);
    }
    Ok(Some(SnapshotMarker {
        position,
        keep_later_entries: false,
    }))
}

/// Checks an append against `log` and the record bound (each record being `extra_bytes` larger
/// than a one-replica WAL's, for the group tag of the shared WAL) before anything is written.
fn validate_append(
    log: &LogState,
    record_bytes_max: usize,
    extra_bytes: usize,
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<(), WalError> {
    for entry in entries {
        let record_bytes = format::entry_record_bytes(entry) + extra_bytes;
        if record_bytes > record_bytes_max {
            return Err(WalError::RecordTooLarge {
                index: Some(entry.index),
                record_bytes: record_bytes as u64,
                record_bytes_max,
            });
        }
    }
    let invalid = |violation| WalError::InvalidAppend { violation };
    if let Some(first) = entries.first() {
        log.check_entry(first.index, first.term).map_err(invalid)?;
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(invalid(Violation::NotConsecutive {
                index: pair[1].index,
                previous_index: pair[0].index,
            }));
        }
        if pair[1].term < pair[0].term {
            return Err(invalid(Violation::TermDecreased {
                index: pair[1].index,
                term: pair[1].term,
                previous_term: pair[0].term,
            }));
        }
    }
    if let Some(hard_state) = hard_state {
        if hard_state.voted_for == Some(0) {
            return Err(invalid(Violation::VoteForNodeZero));
        }
        log.check_hard_state(hard_state).map_err(invalid)?;
    }
    Ok(())
}

/// A segment's first records: its header, then the hard state and the snapshot marker in force,
/// so that deleting older segments never loses the latest of either.
fn preamble(log: &LogState, name: SegmentName) -> Vec<u8> {
    let mut bytes = Vec::new();
    format::encode_segment_header(name.number, name.first_index, &mut bytes);
    if let Some(hard_state) = log.hard_state() {
        format::encode_hard_state(&hard_state, &mut bytes);
    }
    if let Some(marker) = log.marker() {
        let repeated = SnapshotMarker {
            keep_later_entries: true,
            ..marker
        };
        format::encode_snapshot_marker(&repeated, &mut bytes);
    }
    assert!(bytes.len() as u64 <= format::PREAMBLE_BYTES_MAX);
    bytes
}

/// How many of the oldest segments hold only entries at or below `index`. Segment `k`'s live
/// entries all lie below the first index of every later segment (a segment starts where the log
/// ended when it was opened), so it may go once some later segment starts at or below
/// `index + 1`. The last segment always stays.
fn compactable_segments(segments: &[SegmentName], index: LogIndex) -> usize {
    let mut lowest_later_start = LogIndex::MAX;
    let mut deletable = 0;
    for k in (0..segments.len() - 1).rev() {
        lowest_later_start = lowest_later_start.min(segments[k + 1].first_index);
        if lowest_later_start <= index + 1 {
            // Every older segment also qualifies: its later segments include this one's.
            deletable = k + 1;
            break;
        }
    }
    deletable
}

fn corrupt_invariant(path: &Path, offset: u64, violation: Violation) -> WalError {
    WalError::Corrupt {
        file: path.to_path_buf(),
        offset,
        defect: Defect::Invariant(violation),
    }
}

/// Replays one segment's records into `replay`, checking each against the invariants and the
/// header against the file name. Returns how the segment ended.
fn replay_segment(
    replay: &mut Replay,
    path: &Path,
    name: SegmentName,
    bytes: &[u8],
    is_oldest: bool,
    options: WalOptions,
) -> Result<ScanEnd, WalError> {
    // The header is checked against the log as it stood before this segment.
    let before = replay.state.clone();
    let check_header = |header: &format::SegmentHeader| {
        check_header_name(header, name)?;
        before.check_segment_header(header, is_oldest)
    };
    scan_segment(
        path,
        bytes,
        options,
        check_header,
        |_, record| match record {
            Record::Entry(entry) => replay.entry(entry),
            Record::HardState(hard_state) => replay.hard_state(hard_state),
            Record::SnapshotMarker(marker) => replay.marker(marker),
            Record::Group(..) => Err(Violation::WrongLogKind),
            Record::SegmentHeader(_) => unreachable!("scan_segment handles headers"),
        },
    )
}

/// Scans one segment's bytes: a header first, checked by `header`, then every other record
/// handed to `record` with its offset. A violation either returns is corruption at that
/// offset; returns how the segment ended.
fn scan_segment(
    path: &Path,
    bytes: &[u8],
    options: WalOptions,
    header: impl FnOnce(&format::SegmentHeader) -> Result<(), Violation>,
    mut record: impl FnMut(u64, Record) -> Result<(), Violation>,
) -> Result<ScanEnd, WalError> {
    let mut header = Some(header);
    let end = segment::scan(bytes, options.record_bytes_max, |offset, _, scanned| {
        let checked = match scanned {
            Record::SegmentHeader(_) if offset != 0 => Err(Violation::SegmentHeaderNotFirst),
            Record::SegmentHeader(found) => (header.take().expect("offset 0 comes once"))(&found),
            _ if header.is_some() => Err(Violation::MissingSegmentHeader),
            other => record(offset, other),
        };
        checked.map_err(|violation| corrupt_invariant(path, offset, violation))
    })?;
    if header.is_some() && matches!(end, ScanEnd::Clean { .. }) {
        return Err(corrupt_invariant(path, 0, Violation::MissingSegmentHeader));
    }
    Ok(end)
}

fn check_header_name(header: &format::SegmentHeader, name: SegmentName) -> Result<(), Violation> {
    let disagrees = |field, in_header, in_name| Violation::HeaderDisagreesWithName {
        field,
        in_header,
        in_name,
    };
    if header.segment_number != name.number {
        return Err(disagrees(
            "segment number",
            header.segment_number,
            name.number,
        ));
    }
    if header.first_index != name.first_index {
        return Err(disagrees(
            "first index",
            header.first_index,
            name.first_index,
        ));
    }
    Ok(())
}

/// Lists the records of one segment file, for tools and tests. Fails with
/// [`WalError::Corrupt`] at the first defect (a zeroed end is not one).
pub fn dump_segment(
    path: impl AsRef<Path>,
    record_bytes_max: usize,
) -> Result<Vec<RecordInfo>, WalError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    let mut records = Vec::new();
    let end = segment::scan(&bytes, record_bytes_max, |offset, size, record| {
        records.push(RecordInfo {
            offset,
            bytes: size as u64,
            kind: record.kind(),
            index: match &record {
                Record::Entry(entry) | Record::Group(_, GroupRecord::Entry(entry)) => {
                    Some(entry.index)
                }
                _ => None,
            },
        });
        Ok(())
    })?;
    match end {
        ScanEnd::Clean { .. } => Ok(records),
        ScanEnd::Defect { offset, defect } => Err(WalError::Corrupt {
            file: path.to_path_buf(),
            offset,
            defect,
        }),
    }
}

/// The WAL is the server's log store; each rule of the trait is a method above.
impl ballot_core::LogStore for Wal {
    type Error = WalError;

    fn append(&mut self, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), WalError> {
        Wal::append(self, entries, hard_state).map(|_| ())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        Wal::sync(self).map(|_| ())
    }

    fn install_snapshot(&mut self, position: LogPosition) -> Result<(), WalError> {
        Wal::install_snapshot(self, position).map(|_| ())
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), WalError> {
        Wal::compact_to(self, index).map(|_| ())
    }
}

impl From<Recovered> for ballot_core::RecoveredLog {
    fn from(recovered: Recovered) -> Self {
        Self {
            hard_state: recovered.hard_state,
            floor: recovered.snapshot,
            entries: recovered.entries,
        }
    }
}

#[cfg(test)]
mod tests;
