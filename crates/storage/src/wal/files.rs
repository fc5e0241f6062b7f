//! The segment files one writer appends to: opening them for replay, the active segment (zeroed
//! ahead, written at its offset), rolling over to the next one, deleting the oldest. Shared by the
//! one-replica [`super::Wal`] and the node's [`super::SharedWal`]; what a record means, what a
//! preamble holds and when a segment may go are theirs.

use crate::dir_lock::create_dir_durably;
use crate::wal::segment::{self, io_error, ScanEnd, SegmentName};
use crate::wal::{Defect, Sequence, TailRepair, Violation, WalError, WalOptions};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How far ahead of the write offset the active segment is kept written with zeros. A
/// preallocated (`fallocate`) range is "unwritten" on ext4 and XFS: the first write to each
/// block converts it, and every `fdatasync` that wrote into such blocks must also write the inode
/// (one more synchronous device write, about twice the time and CPU of a sync on this machine's
/// disk, docs/benchmarks.md). Writing zeros ahead, a MiB at a time, moves that conversion off
/// all but one sync per MiB. Zeros are what replay already reads past the end of a segment.
const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub(crate) name: SegmentName,
    pub(crate) path: PathBuf,
    /// Shared with a group-commit syncer, which runs `fdatasync` without holding the WAL.
    pub(crate) file: Arc<File>,
    pub(crate) write_offset: u64,
    /// Bytes from the start that have been written (records or zeros): appends below this point
    /// land in initialised blocks. At least `write_offset`.
    zeroed_to: u64,
    /// Bytes of the preamble the segment began with (an upper bound for a reopened one): a
    /// segment holding no more takes any record, however large, rather than open yet another.
    preamble_bytes: u64,
}

impl ActiveSegment {
    fn new(name: SegmentName, path: PathBuf, file: File, write_offset: u64, preamble: u64) -> Self {
        ActiveSegment {
            name,
            path,
            file: Arc::new(file),
            write_offset,
            zeroed_to: write_offset,
            preamble_bytes: preamble,
        }
    }

    /// Writes zeros from the end of what `bytes` more will fill to `ZERO_AHEAD_BYTES` beyond it,
    /// when what is left falls under half of that, never past `limit` (the preallocated size: a
    /// write beyond it would grow the file, which costs an inode write too).
    fn zero_ahead(&mut self, bytes: u64, limit: u64) -> Result<(), WalError> {
        let end = self.write_offset + bytes;
        if end + ZERO_AHEAD_BYTES / 2 <= self.zeroed_to {
            return Ok(());
        }
        let from = self.zeroed_to.max(end);
        let to = (end + ZERO_AHEAD_BYTES).next_multiple_of(4096).min(limit);
        // From one static buffer: a fresh zeroed allocation per MiB cost faults and zeroing.
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut offset = from;
        while offset < to {
            let length = (to - offset).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..length], offset)
                .map_err(io_error("write zeros ahead in", &self.path))?;
            offset += length as u64;
        }
        self.zeroed_to = to.max(end);
        Ok(())
    }
}

/// Every kept segment of one directory, oldest first, the last being the active one, and the
/// writer's progress: appends, syncs, and whether a failure stopped it.
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) segments: Vec<SegmentName>,
    pub(crate) active: ActiveSegment,
    appended: Sequence,
    synced: Sequence,
    /// Records encoded and not yet written: empty between batches unless `defer_writes`.
    buffer: Vec<u8>,
    /// Batches stay in `buffer` until the next sync (or a roll-over) writes them: a shared
    /// WAL's batch of many groups costs one `write`, not one per group.
    pub(crate) defer_writes: bool,
    /// Why the WAL stopped accepting writes, after a failed write or sync.
    stopped: Option<String>,
}

/// What [`replay_dir`] found: the segment names and where the last one's records end.
pub(crate) struct Replayed {
    pub(crate) names: Vec<SegmentName>,
    pub(crate) active_end: u64,
    pub(crate) tail_repair: Option<TailRepair>,
}

/// Creates `dir` if needed and hands every segment's bytes, oldest first, to `replay_segment`
/// (with whether it is the oldest kept one), checking what holds for any segment sequence:
/// numbers without gaps, every segment but the last cut to its last record, and damage only as
/// a torn tail of the last segment (reported, to be cut by [`SegmentFiles::reopen`]). Returns
/// `None` for a directory without segments.
pub(crate) fn replay_dir(
    dir: &Path,
    options: WalOptions,
    mut replay_segment: impl FnMut(&Path, SegmentName, &[u8], bool) -> Result<ScanEnd, WalError>,
) -> Result<Option<Replayed>, WalError> {
    create_dir_durably(dir).map_err(io_error("create directory", dir))?;
    let names = segment::list_segments(dir)?;
    if names.is_empty() {
        return Ok(None);
    }
    let mut tail_repair = None;
    let mut active_end = 0;
    for (position, name) in names.iter().enumerate() {
        let path = dir.join(name.file_name());
        if position > 0 && name.number != names[position - 1].number + 1 {
            return Err(WalError::Corrupt {
                file: path,
                offset: 0,
                defect: Defect::Invariant(Violation::SegmentNumberGap {
                    previous: names[position - 1].number,
                    found: name.number,
                }),
            });
        }
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let is_last = position == names.len() - 1;
        match replay_segment(&path, *name, &bytes, position == 0)? {
            ScanEnd::Clean { end } if is_last => active_end = end,
            ScanEnd::Clean { end } if end == bytes.len() as u64 => {}
            ScanEnd::Clean { end } => {
                // Segments before the last were cut to their last record when the next one
                // was opened.
                return Err(WalError::Corrupt {
                    file: path,
                    offset: end,
                    defect: Defect::ZerosBeforeEnd,
                });
            }
            ScanEnd::Defect { offset, defect } => {
                let after = offset + 1;
                let torn_tail = is_last
                    && offset > 0
                    && segment::valid_record_after(&bytes, after, options.record_bytes_max)
                        .is_none();
                if !torn_tail {
                    return Err(WalError::Corrupt {
                        file: path,
                        offset,
                        defect,
                    });
                }
                tail_repair = Some(TailRepair {
                    bytes_discarded: segment::nonzero_bytes_after(&bytes, offset),
                    file: path,
                    offset,
                    reason: defect,
                });
                active_end = offset;
            }
        }
    }
    Ok(Some(Replayed {
        names,
        active_end,
        tail_repair,
    }))
}

impl SegmentFiles {
    /// A directory's first segment, holding `preamble`.
    pub(crate) fn create(
        dir: PathBuf,
        options: WalOptions,
        name: SegmentName,
        preamble: &[u8],
    ) -> Result<Self, WalError> {
        let (file, path) =
            segment::create_segment(&dir, name, preamble, options.segment_size_bytes)?;
        let preamble_bytes = preamble.len() as u64;
        Ok(Self::new(
            dir,
            options,
            vec![name],
            ActiveSegment::new(name, path, file, preamble_bytes, preamble_bytes),
        ))
    }

    fn new(
        dir: PathBuf,
        options: WalOptions,
        segments: Vec<SegmentName>,
        active: ActiveSegment,
    ) -> Self {
        SegmentFiles {
            dir,
            options,
            segments,
            active,
            appended: Sequence(0),
            synced: Sequence(0),
            buffer: Vec::new(),
            defer_writes: false,
            stopped: None,
        }
    }

    /// After [`replay_dir`]: the last segment opened for appends at the end of its records, a
    /// torn tail cut off, and what replay read made durable.
    pub(crate) fn reopen(
        dir: PathBuf,
        options: WalOptions,
        replayed: &Replayed,
        preamble_bytes: u64,
    ) -> Result<Self, WalError> {
        let last_name = *replayed.names.last().expect("replay_dir returns segments");
        let path = dir.join(last_name.file_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        if let Some(repair) = &replayed.tail_repair {
            file.set_len(repair.offset)
                .and_then(|()| file.sync_all())
                .map_err(io_error("cut torn tail of", &path))?;
        }
        segment::preallocate(&file, &path, options.segment_size_bytes)?;
        // A writer killed before its fdatasync leaves records in the page cache that replay reads
        // as valid: make them durable before the caller treats what was recovered as such (a
        // replica acknowledges recovered entries to its leader).
        file.sync_all().map_err(io_error("sync", &path))?;
        segment::sync_dir(&dir)?;
        let active_end = replayed.active_end;
        let active = ActiveSegment::new(
            last_name,
            path,
            file,
            active_end,
            preamble_bytes.min(active_end),
        );
        Ok(Self::new(dir, options, replayed.names.clone(), active))
    }

    /// The sequence of the last append.
    pub(crate) fn appended(&self) -> Sequence {
        self.appended
    }

    /// Every append up to this sequence is durable.
    pub(crate) fn synced(&self) -> Sequence {
        self.synced
    }

    /// One more append was written.
    pub(crate) fn count_append(&mut self) {
        self.appended = Sequence(self.appended.0 + 1);
    }

    pub(crate) fn check_running(&self) -> Result<(), WalError> {
        match &self.stopped {
            None => Ok(()),
            Some(cause) => Err(WalError::Stopped {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    /// Runs a step that writes or syncs; if it fails, what is on disk is unknown (assumption 2),
    /// so the writer stops. Every step of this type that touches the files goes through here.
    fn guarded<R>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<R, WalError>,
    ) -> Result<R, WalError> {
        let result = step(self);
        if let Err(error) = &result {
            self.stopped = Some(error.to_string());
        }
        result
    }

    /// Makes every append so far durable with one `fdatasync` of the active segment (earlier
    /// segments were synced when the next one was opened). Returns the durable sequence.
    pub(crate) fn sync(&mut self) -> Result<Sequence, WalError> {
        self.check_running()?;
        if self.synced == self.appended {
            return Ok(self.synced);
        }
        self.flush()?;
        let upto = self.appended;
        self.guarded(|files| {
            files
                .active
                .file
                .sync_data()
                .map_err(io_error("fdatasync", &files.active.path))
        })?;
        self.synced = self.synced.max(upto);
        Ok(self.synced)
    }

    /// Records the outcome of a sync of everything up to `upto` run by someone else (group
    /// commit's syncer). A failure stops the writer.
    pub(crate) fn sync_finished(
        &mut self,
        upto: Sequence,
        path: &Path,
        result: std::io::Result<()>,
    ) -> Result<(), WalError> {
        self.guarded(|_| result.map_err(io_error("fdatasync", path)))?;
        self.synced = self.synced.max(upto);
        Ok(())
    }

    /// Writes a batch of records as one append, one `write` per segment touched. `encode` adds a
    /// record to the buffer, applies it to the writer's `state` (given the number of the segment
    /// it goes to) and returns its size in bytes; a record of `record_bytes` that does not fit first opens the next
    /// segment, named and begun as `next_segment` says from `state` and the next number.
    pub(crate) fn write_batch<S, T>(
        &mut self,
        state: &mut S,
        records: impl Iterator<Item = T>,
        record_bytes: impl Fn(&T) -> usize,
        mut encode: impl FnMut(&mut S, u64, T, &mut Vec<u8>) -> usize,
        next_segment: impl Fn(&S, u64) -> (SegmentName, Vec<u8>),
    ) -> Result<(), WalError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let write = || {
            for record in records {
                if self.needs_next_segment(buffer.len() as u64, record_bytes(&record) as u64) {
                    self.write_out(&mut buffer)?;
                    let (name, preamble) = next_segment(state, self.active.name.number + 1);
                    self.roll_over(name, &preamble)?;
                }
                let written = encode(state, self.active.name.number, record, &mut buffer);
                assert!(
                    written <= self.options.record_bytes_max,
                    "records are bounded before they are encoded"
                );
            }
            if self.defer_writes {
                return Ok(());
            }
            self.write_out(&mut buffer)
        };
        let result = write();
        self.buffer = buffer;
        result?;
        self.count_append();
        Ok(())
    }

    /// Whether a record of `record_bytes`, after `pending_bytes` not yet written, must go to a new
    /// segment. A segment holding only its preamble takes the record anyway (and grows), or a
    /// record larger than a segment would open segments forever.
    pub(crate) fn needs_next_segment(&self, pending_bytes: u64, record_bytes: u64) -> bool {
        let end = self.active.write_offset + pending_bytes;
        end > self.active.preamble_bytes && end + record_bytes > self.options.segment_size_bytes
    }

    /// Writes what deferred batches left in the buffer (see `defer_writes`).
    pub(crate) fn flush(&mut self) -> Result<(), WalError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.write_out(&mut buffer);
        self.buffer = buffer;
        result
    }

    /// Writes `buffer` at the active segment's end and empties it.
    pub(crate) fn write_out(&mut self, buffer: &mut Vec<u8>) -> Result<(), WalError> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.guarded(|files| {
            let active = &mut files.active;
            active.zero_ahead(buffer.len() as u64, files.options.segment_size_bytes)?;
            active
                .file
                .write_all_at(buffer, active.write_offset)
                .map_err(io_error("write", &active.path))?;
            active.write_offset += buffer.len() as u64;
            buffer.clear();
            Ok(())
        })
    }

    /// Syncs and cuts the active segment (replay requires every segment but the last to be
    /// complete and durable), then creates `next` holding `preamble`. Everything written before
    /// is durable when it returns.
    pub(crate) fn roll_over(&mut self, next: SegmentName, preamble: &[u8]) -> Result<(), WalError> {
        assert_eq!(
            next.number,
            self.active.name.number + 1,
            "segments are numbered without gaps"
        );
        self.guarded(|files| {
            let active = &files.active;
            active
                .file
                .set_len(active.write_offset)
                .and_then(|()| active.file.sync_all())
                .map_err(io_error("sync and cut", &active.path))?;
            let (file, path) = segment::create_segment(
                &files.dir,
                next,
                preamble,
                files.options.segment_size_bytes,
            )?;
            files.synced = files.appended;
            files.segments.push(next);
            let preamble_bytes = preamble.len() as u64;
            files.active = ActiveSegment::new(next, path, file, preamble_bytes, preamble_bytes);
            Ok(())
        })
    }

    /// Deletes the `count` oldest segments (never the active one) and syncs the directory.
    pub(crate) fn delete_oldest(&mut self, count: usize) -> Result<usize, WalError> {
        assert!(
            count < self.segments.len(),
            "the last segment is never deleted"
        );
        if count == 0 {
            return Ok(0);
        }
        self.guarded(|files| {
            for name in files.segments.drain(..count) {
                let path = files.dir.join(name.file_name());
                fs::remove_file(&path).map_err(io_error("delete", &path))?;
            }
            segment::sync_dir(&files.dir)?;
            Ok(count)
        })
    }

    pub(crate) fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|name| self.dir.join(name.file_name()))
            .collect()
    }
}
