//! The node's shared WAL: the logs of every group a node hosts besides group 0, in one sequence
//! of segments whose records carry their group, so that one `fdatasync` makes a batch of every
//! group's writes durable (docs/design/storage.md, "The shared WAL").
//!
//! [`SharedWal`] is the single writer; [`GroupWal`] is one group's view of it and that group's
//! [`ballot_core::LogStore`]. Each group's records keep the rules of a one-replica WAL (`replay`,
//! checked before every write and again on read). Every segment's preamble repeats each group's
//! snapshot marker and hard state, so only live entries keep a segment: the oldest segments go
//! once every group has compacted past (or truncated) the entries it wrote in them. A removed
//! group's records end with a removal record; replay forgets the group there.
//!
//! Never does: skip a damaged record (a torn tail of the last segment is cut and reported, any
//! other damage refuses to open, unless it lies in the records of a group removed later), write
//! anything for an append it rejects, or retry a failed `fdatasync` (the WAL stops; reopen it).

use crate::wal::files::{self, SegmentFiles};
use crate::wal::format::{self, GroupRecord, Record, SnapshotMarker, SHARED_FORMAT_VERSION};
use crate::wal::replay::{LogState, Replay};
use crate::wal::segment::{ScanEnd, SegmentName};
use crate::wal::{
    check_header_name, compaction_marker, corrupt_invariant, install_marker, scan_segment,
    validate_append, Recovered, Sequence, TailRepair, Violation, WalError, WalOptions,
};
use ballot_core::{Entry, GroupId, HardState, LogIndex, LogPosition};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What [`SharedWal::open`] found.
#[derive(Debug)]
pub struct SharedOpened {
    pub wal: SharedWal,
    /// The log of every group with records, by group. A group not here has an empty log.
    pub groups: BTreeMap<GroupId, Recovered>,
    /// The torn tail cut off the last segment, if there was one.
    pub tail_repair: Option<TailRepair>,
}

/// The live entries a group wrote in one segment: `first..=last`.
#[derive(Debug, Clone, Copy)]
struct EntrySpan {
    segment: u64,
    first: LogIndex,
    last: LogIndex,
}

/// Which segments hold a group's live entries, oldest first: what keeps segments from going.
#[derive(Debug, Default, Clone)]
struct Spans(VecDeque<EntrySpan>);

impl Spans {
    /// An entry at `index` was written to `segment`: it replaces every entry from `index` on.
    fn entry_written(&mut self, segment: u64, index: LogIndex) {
        while let Some(back) = self.0.back_mut() {
            if back.first >= index {
                self.0.pop_back();
            } else {
                back.last = back.last.min(index - 1);
                break;
            }
        }
        match self.0.back_mut() {
            Some(back) if back.segment == segment => back.last = index,
            _ => self.0.push_back(EntrySpan {
                segment,
                first: index,
                last: index,
            }),
        }
    }

    /// The log now starts at `first_index`: entries before it are no longer live.
    fn floor_moved(&mut self, first_index: LogIndex) {
        while let Some(front) = self.0.front_mut() {
            if front.last < first_index {
                self.0.pop_front();
            } else {
                front.first = front.first.max(first_index);
                break;
            }
        }
    }

    fn oldest_segment(&self) -> Option<u64> {
        self.0.front().map(|span| span.segment)
    }
}

/// One group's log as the writer knows it.
#[derive(Debug, Clone)]
struct GroupLog {
    log: LogState,
    spans: Spans,
}

impl GroupLog {
    fn empty() -> Self {
        GroupLog {
            log: LogState::new(1),
            spans: Spans::default(),
        }
    }
}

/// The single writer of a node's shared WAL directory. See the module documentation.
#[derive(Debug)]
pub struct SharedWal {
    files: SegmentFiles,
    groups: BTreeMap<GroupId, GroupLog>,
}

/// A record waiting to be written for a group.
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Entry(&'a Entry),
    HardState(HardState),
    Marker(SnapshotMarker),
    Removed,
}

/// One group's replay: started by its first entry or marker (which say where its log begins in
/// what is kept); hard states seen before either wait.
#[derive(Default)]
struct GroupReplay {
    replay: Option<Replay>,
    early_hard_state: Option<HardState>,
    spans: Spans,
}

impl GroupReplay {
    fn started(&mut self, first_index: LogIndex) -> &mut Replay {
        let early_hard_state = &mut self.early_hard_state;
        self.replay.get_or_insert_with(|| {
            let mut replay = Replay::new(first_index);
            if let Some(hard_state) = early_hard_state.take() {
                replay
                    .hard_state(hard_state)
                    .expect("a fresh replay takes any hard state");
            }
            replay
        })
    }

    /// Replays one of the group's records from `segment`. The group's log may have lost entries
    /// with the segments deleted before the oldest kept one, entries that a marker written after
    /// them covers (the marker a preamble repeats may be older than the deletion). So an entry
    /// past the end starts the log again there, and a marker past the end empties it; whether
    /// markers did cover everything lost, the check for a complete log says at the end (a
    /// segment lost anywhere else is a gap in the segment numbers, refused before this).
    fn record(&mut self, segment: u64, record: GroupRecord) -> Result<(), Violation> {
        match record {
            GroupRecord::Entry(entry) => {
                let index = entry.index;
                let replay = self.started(index);
                if index > replay.state.last_index() + 1 {
                    replay.restart_at(index);
                }
                replay.entry(entry)?;
                self.spans.entry_written(segment, index);
            }
            GroupRecord::SnapshotMarker(mut marker) => {
                let replay = self.started(marker.position.index + 1);
                if marker.position.index > replay.state.last_index() {
                    marker.keep_later_entries = false;
                }
                replay.marker(marker)?;
                let first_index = replay.state.first_index();
                self.spans.floor_moved(first_index);
            }
            GroupRecord::HardState(hard_state) => match &mut self.replay {
                Some(replay) => replay.hard_state(hard_state)?,
                None => {
                    if let Some(previous) = self.early_hard_state {
                        if hard_state.term < previous.term {
                            return Err(Violation::HardStateTermDecreased {
                                term: hard_state.term,
                                previous_term: previous.term,
                            });
                        }
                    }
                    self.early_hard_state = Some(hard_state);
                }
            },
            GroupRecord::Removed => unreachable!("removal is handled by the caller"),
        }
        Ok(())
    }

    /// A group that never wrote an entry or a marker starts at index 1.
    fn finish(mut self) -> (Replay, Spans) {
        self.started(1);
        (self.replay.expect("started"), self.spans)
    }
}

impl SharedWal {
    /// Opens (creating it if needed) the shared WAL in `dir` (`<data-dir>/groups/wal`), replays
    /// it, cuts a torn tail off the last segment, and returns the writer positioned after the
    /// last valid record with every group's recovered log.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<SharedOpened, WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let mut groups: BTreeMap<GroupId, GroupReplay> = BTreeMap::new();
        // The first broken record of each group: an error unless the group's removal follows.
        let mut broken: BTreeMap<GroupId, WalError> = BTreeMap::new();
        let replayed = files::replay_dir(&dir, options, |path, name, bytes, _| {
            replay_segment(&mut groups, &mut broken, path, name, bytes, options)
        })?;
        let Some(replayed) = replayed else {
            return Self::create(dir, options);
        };
        if let Some((_, error)) = broken.pop_first() {
            return Err(error);
        }
        let mut logs = BTreeMap::new();
        let mut recovered = BTreeMap::new();
        for (group, replay) in groups {
            let (replay, spans) = replay.finish();
            if let Err((first_missing, last_missing)) = replay.state.check_complete() {
                return Err(WalError::MissingGroupEntries {
                    dir,
                    group,
                    first_missing,
                    last_missing,
                });
            }
            let log = replay.state.clone();
            recovered.insert(
                group,
                Recovered {
                    hard_state: log.hard_state().unwrap_or_default(),
                    first_index: log.first_index(),
                    entries: replay.into_entries(),
                    snapshot: log.marker().map(|marker| marker.position),
                    tail_repair: None,
                },
            );
            logs.insert(group, GroupLog { log, spans });
        }
        let mut files = SegmentFiles::reopen(dir, options, &replayed, 0)?;
        files.defer_writes = true;
        Ok(SharedOpened {
            wal: SharedWal {
                files,
                groups: logs,
            },
            groups: recovered,
            tail_repair: replayed.tail_repair,
        })
    }

    fn create(dir: PathBuf, options: WalOptions) -> Result<SharedOpened, WalError> {
        let name = SegmentName {
            number: 1,
            first_index: 0,
        };
        let groups = BTreeMap::new();
        let mut files = SegmentFiles::create(dir, options, name, &preamble(&groups, name))?;
        files.defer_writes = true;
        Ok(SharedOpened {
            wal: SharedWal { files, groups },
            groups: BTreeMap::new(),
            tail_repair: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// Paths of the kept segments, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.files.segment_paths()
    }

    /// Groups with records in the kept segments.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// The groups whose live entries keep the oldest segment, once more than `segments_kept_max`
    /// segments are kept: compacting them (their state machines are durable on their own) lets
    /// that segment, and the ones after it that only they keep, be deleted. Empty while the WAL
    /// is within the bound.
    pub fn groups_keeping_old_segments(&self, segments_kept_max: usize) -> Vec<GroupId> {
        if self.files.segments.len() <= segments_kept_max {
            return Vec::new();
        }
        let oldest = self.files.segments[0].number;
        self.groups
            .iter()
            .filter(|(_, group)| group.spans.oldest_segment() == Some(oldest))
            .map(|(&id, _)| id)
            .collect()
    }

    /// The sequence of the last append.
    pub fn appended_sequence(&self) -> Sequence {
        self.files.appended()
    }

    /// Every append up to this sequence is durable.
    pub fn synced_sequence(&self) -> Sequence {
        self.files.synced()
    }

    /// Writes `group`'s `entries` and then `hard_state`, as [`super::Wal::append`] does for one
    /// replica: nothing is durable until [`SharedWal::sync`]; a batch that breaks a limit or an
    /// invariant is refused whole and changes nothing.
    pub fn append(
        &mut self,
        group: GroupId,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<Sequence, WalError> {
        self.check_running()?;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(self.files.appended());
        }
        validate_append(
            self.log(group),
            self.files.options.record_bytes_max,
            format::GROUP_RECORD_EXTRA_BYTES,
            entries,
            hard_state.as_ref(),
        )?;
        let records = entries
            .iter()
            .map(Outgoing::Entry)
            .chain(hard_state.map(Outgoing::HardState));
        self.write_records(group, records)?;
        Ok(self.files.appended())
    }

    /// Makes every group's appends so far durable: one `write` of what the appends since the last
    /// sync encoded, one `fdatasync`.
    pub fn sync(&mut self) -> Result<Sequence, WalError> {
        self.files.sync()
    }

    /// `group`'s state machine is durable through `index`: writes and syncs a snapshot marker,
    /// then deletes the oldest segments no group needs any more. A no-op at or below the floor.
    pub fn compact_to(&mut self, group: GroupId, index: LogIndex) -> Result<usize, WalError> {
        self.check_running()?;
        let marker = compaction_marker(self.log(group), index)?;
        self.write_marker(group, marker)
    }

    /// After `group` saved a snapshot received from a leader (Raft §7): [`SharedWal::compact_to`]
    /// if its log holds the snapshot's last entry, else its whole log is discarded and its next
    /// entry must be `position.index + 1`. Durable when it returns.
    pub fn install_snapshot(
        &mut self,
        group: GroupId,
        position: LogPosition,
    ) -> Result<usize, WalError> {
        self.check_running()?;
        let marker = install_marker(self.log(group), position)?;
        self.write_marker(group, marker)
    }

    /// `group`'s log as the writer knows it (empty for a group without records).
    fn log(&self, group: GroupId) -> &LogState {
        static EMPTY: std::sync::LazyLock<LogState> = std::sync::LazyLock::new(|| LogState::new(1));
        self.groups.get(&group).map_or(&EMPTY, |state| &state.log)
    }

    /// Writes and syncs `marker` (if any) for `group`, then lets go of the segments nobody
    /// needs. Returns how many went.
    fn write_marker(
        &mut self,
        group: GroupId,
        marker: Option<SnapshotMarker>,
    ) -> Result<usize, WalError> {
        let Some(marker) = marker else {
            return Ok(0);
        };
        self.write_records(group, [Outgoing::Marker(marker)].into_iter())?;
        self.sync()?;
        self.delete_unneeded_segments()
    }

    /// Forgets `group` (removed from this node): a removal record, after which replay knows
    /// nothing of it, and its entries no longer keep segments. Durable with the next sync; a
    /// group the WAL does not know writes nothing.
    pub fn remove_group(&mut self, group: GroupId) -> Result<(), WalError> {
        self.check_running()?;
        if !self.groups.contains_key(&group) {
            return Ok(());
        }
        self.write_records(group, [Outgoing::Removed].into_iter())?;
        self.delete_unneeded_segments()?;
        Ok(())
    }

    /// Writes a group's records, opening new segments as needed (and then letting go of those
    /// nobody needs), and applies each to the group's log. Counts as one append. Stops the WAL
    /// on failure.
    fn write_records<'a>(
        &mut self,
        group: GroupId,
        records: impl Iterator<Item = Outgoing<'a>>,
    ) -> Result<(), WalError> {
        let segment_before = self.files.active.name.number;
        self.files.write_batch(
            &mut self.groups,
            records,
            |record| {
                format::GROUP_RECORD_EXTRA_BYTES
                    + match record {
                        Outgoing::Entry(entry) => format::entry_record_bytes(entry),
                        Outgoing::HardState(_) => format::HARD_STATE_RECORD_BYTES,
                        Outgoing::Marker(_) => format::SNAPSHOT_MARKER_RECORD_BYTES,
                        Outgoing::Removed => format::RECORD_HEADER_BYTES,
                    }
            },
            |groups, segment, record, buffer| {
                encode_and_apply(groups, segment, group, record, buffer)
            },
            |groups, number| {
                let name = SegmentName {
                    number,
                    first_index: 0,
                };
                (name, preamble(groups, name))
            },
        )?;
        if self.files.active.name.number != segment_before {
            self.delete_unneeded_segments()?;
        }
        Ok(())
    }

    /// Deletes the oldest segments that hold no group's live entries (their markers and hard
    /// states are repeated in every later preamble). Returns how many went.
    fn delete_unneeded_segments(&mut self) -> Result<usize, WalError> {
        let active = self.files.active.name.number;
        let oldest_needed = self
            .groups
            .values()
            .filter_map(|group| group.spans.oldest_segment())
            .min()
            .unwrap_or(active)
            .min(active);
        let count = self
            .files
            .segments
            .iter()
            .take_while(|name| name.number < oldest_needed)
            .count();
        self.files.delete_oldest(count)
    }

    fn check_running(&self) -> Result<(), WalError> {
        self.files.check_running()
    }
}

/// Adds `group`'s `record` to `buffer`, going to `segment`, and applies it to the group's log;
/// returns its size in bytes.
fn encode_and_apply(
    groups: &mut BTreeMap<GroupId, GroupLog>,
    segment: u64,
    group: GroupId,
    record: Outgoing<'_>,
    buffer: &mut Vec<u8>,
) -> usize {
    if let Outgoing::Removed = record {
        groups.remove(&group);
        return format::encode_group_record(group, &GroupRecord::Removed, buffer);
    }
    let state = groups.entry(group).or_insert_with(GroupLog::empty);
    match record {
        Outgoing::Entry(entry) => {
            state.log.apply_entry(entry.index, entry.term);
            state.spans.entry_written(segment, entry.index);
            format::encode_group_record(group, &GroupRecord::Entry(entry.clone()), buffer)
        }
        Outgoing::HardState(hard_state) => {
            state.log.apply_hard_state(hard_state);
            format::encode_group_record(group, &GroupRecord::HardState(hard_state), buffer)
        }
        Outgoing::Marker(marker) => {
            state.log.apply_marker(marker);
            state.spans.floor_moved(state.log.first_index());
            format::encode_group_record(group, &GroupRecord::SnapshotMarker(marker), buffer)
        }
        Outgoing::Removed => unreachable!("handled above"),
    }
}

/// A shared segment's first records: its header, then each group's marker in force and its hard
/// state (marker first: it tells replay where the group's log starts).
fn preamble(groups: &BTreeMap<GroupId, GroupLog>, name: SegmentName) -> Vec<u8> {
    let mut bytes = Vec::new();
    format::encode_shared_segment_header(name.number, &mut bytes);
    for (&group, state) in groups {
        if let Some(marker) = state.log.marker() {
            let repeated = SnapshotMarker {
                keep_later_entries: true,
                ..marker
            };
            format::encode_group_record(group, &GroupRecord::SnapshotMarker(repeated), &mut bytes);
        }
        if let Some(hard_state) = state.log.hard_state() {
            format::encode_group_record(group, &GroupRecord::HardState(hard_state), &mut bytes);
        }
    }
    bytes
}

/// Replays one shared segment: the header checked against the name and the version, then each
/// group record handed to its group's replay. A group's broken record is kept in `broken` (and
/// the group's later records skipped) until its removal shows up, or open fails with it.
fn replay_segment(
    groups: &mut BTreeMap<GroupId, GroupReplay>,
    broken: &mut BTreeMap<GroupId, WalError>,
    path: &Path,
    name: SegmentName,
    bytes: &[u8],
    options: WalOptions,
) -> Result<ScanEnd, WalError> {
    let check_header = |header: &format::SegmentHeader| check_shared_header(header, name);
    scan_segment(path, bytes, options, check_header, |offset, record| {
        match record {
            Record::Group(group, GroupRecord::Removed) => {
                groups.remove(&group);
                broken.remove(&group);
            }
            Record::Group(group, _) if broken.contains_key(&group) => {}
            Record::Group(group, inner) => {
                let replay = groups.entry(group).or_default();
                if let Err(violation) = replay.record(name.number, inner) {
                    groups.remove(&group);
                    broken.insert(group, corrupt_invariant(path, offset, violation));
                }
            }
            Record::Entry(_) | Record::HardState(_) | Record::SnapshotMarker(_) => {
                return Err(Violation::WrongLogKind)
            }
            Record::SegmentHeader(_) => unreachable!("scan_segment handles headers"),
        }
        Ok(())
    })
}

fn check_shared_header(header: &format::SegmentHeader, name: SegmentName) -> Result<(), Violation> {
    if header.format_version != SHARED_FORMAT_VERSION {
        return Err(Violation::UnsupportedVersion {
            found: header.format_version,
            supported: SHARED_FORMAT_VERSION,
        });
    }
    check_header_name(header, name)?;
    if name.first_index != 0 {
        return Err(Violation::HeaderDisagreesWithName {
            field: "first index (0 in a shared WAL)",
            in_header: header.first_index,
            in_name: name.first_index,
        });
    }
    Ok(())
}

/// One group's log in the node's shared WAL: the group's [`ballot_core::LogStore`]. Its sync
/// makes every group's appends durable, so the node syncs once for a batch of all its groups
/// and the others find nothing left to sync.
#[derive(Debug, Clone)]
pub struct GroupWal {
    group: GroupId,
    shared: Arc<Mutex<SharedWal>>,
}

impl GroupWal {
    pub fn new(group: GroupId, shared: Arc<Mutex<SharedWal>>) -> Self {
        GroupWal { group, shared }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedWal> {
        // A panic while holding the lock leaves the WAL's memory behind its files; nothing may
        // write after that.
        self.shared
            .lock()
            .expect("the shared WAL's lock is never poisoned")
    }

    /// Whether everything appended (by any group) is durable.
    pub fn is_synced(&self) -> bool {
        let wal = self.lock();
        wal.synced_sequence() == wal.appended_sequence()
    }
}

impl ballot_core::LogStore for GroupWal {
    type Error = WalError;

    fn append(&mut self, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), WalError> {
        let group = self.group;
        self.lock().append(group, entries, hard_state).map(|_| ())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.lock().sync().map(|_| ())
    }

    fn install_snapshot(&mut self, position: LogPosition) -> Result<(), WalError> {
        let group = self.group;
        self.lock().install_snapshot(group, position).map(|_| ())
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), WalError> {
        let group = self.group;
        self.lock().compact_to(group, index).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
