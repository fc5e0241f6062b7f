//! The in-memory state: every retained version of every key with its metadata and where its
//! record is (etcd's `keyIndex`, which etcd too keeps in memory and rebuilds at open), the change
//! log from the compacted revision on (for watches and the compaction sweep), the leases, and the
//! accounting of the segments (live bytes, and which keys have records in each, for segment GC).
//! Values stay on disk; everything needed to apply a put without reading the disk is here.

use super::chunked::Chunked;
use super::layout::{ChangeKey, PutMeta};
use super::segments::{Location, SegmentId};
use super::types::{KeyRange, LeaseId, Revision};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::Arc;

/// One retained version of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub at: ChangeKey,
    /// `None` for a tombstone.
    pub put: Option<PutMeta>,
    pub location: Location,
}

impl Version {
    pub fn is_put(&self) -> bool {
        self.put.is_some()
    }
}

/// One change in the change log: the version `at` of `key`.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub at: ChangeKey,
    pub key: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct LeaseEntry {
    pub ttl_seconds: i64,
    pub remaining_ttl_ms: i64,
    /// The keys whose current version names this lease.
    pub keys: BTreeSet<Bytes>,
    /// The log index of the lease's last change, and where that change's record is.
    pub change_index: u64,
    pub location: Location,
}

/// The store's position in the log and in its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    pub applied_index: u64,
    pub current_revision: Revision,
    pub compacted_revision: Revision,
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub(crate) type HashedMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// What owns a record, hashed: a key, or a lease (hashed apart from every key).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    // FNV-1a, 64 bits: collisions only make segment GC keep a tombstone longer.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub(crate) fn lease_hash(id: LeaseId) -> u64 {
    key_hash(&id.to_le_bytes()).rotate_left(31) ^ 0x9e37_79b9_7f4a_7c15
}

/// One segment file and what of it is still part of the state.
#[derive(Debug)]
pub(crate) struct SegmentInfo {
    pub file: Arc<File>,
    /// Bytes of records in the file.
    pub bytes: u64,
    /// Bytes of the records the state refers to (versions in the index, each lease's latest
    /// record, the latest commit record). The rest is garbage for segment GC.
    pub live_bytes: u64,
    /// For every key (and lease) with a record here, by hash, the oldest such record's position
    /// (revision and sub-revision, or the lease change's log index). A dead tombstone may be
    /// dropped only when no other segment holds an older record of its key, or that record
    /// would come back at the next open.
    pub oldest: HashedMap<ChangeKey>,
    /// GC has copied every record it keeps elsewhere; the file goes at the next flush, once the
    /// copies are durable.
    pub retired: bool,
}

impl SegmentInfo {
    pub fn new(file: File, bytes: u64) -> Self {
        SegmentInfo {
            file: Arc::new(file),
            bytes,
            live_bytes: 0,
            oldest: HashedMap::default(),
            retired: false,
        }
    }

    pub fn note_owner(&mut self, owner: u64, at: ChangeKey) {
        self.oldest
            .entry(owner)
            .and_modify(|oldest| *oldest = (*oldest).min(at))
            .or_insert(at);
    }

    pub fn garbage_bytes(&self) -> u64 {
        self.bytes - self.live_bytes
    }
}

/// The whole in-memory state. Shared behind a lock by the store; written only by the applier,
/// the sweep and segment GC, which hold the store's writer.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Every retained version of every key, oldest first; never an empty list.
    pub keys: BTreeMap<Bytes, Vec<Version>>,
    /// Keys whose newest version is a put: the keys that exist now (etcd's keys gauge).
    pub live_keys: u64,
    /// The change log in revision order, from the sweep's position on: every change not yet
    /// visited by the sweep, and those at exactly the compacted revision (events from there).
    pub changes: Chunked<Change>,
    /// Changes before this position in `changes` have been visited by the sweep for the current
    /// compacted revision.
    pub sweep_cursor: usize,
    pub leases: BTreeMap<LeaseId, LeaseEntry>,
    pub position: Position,
    pub segments: BTreeMap<SegmentId, SegmentInfo>,
    /// The latest commit record: the only one still live.
    pub commit_location: Option<Location>,
    /// Every segment's file, for reads that run after the state lock is released (a segment GC
    /// deletes stays readable through an open file). Rebuilt when the segments change.
    pub files: Arc<HashMap<SegmentId, Arc<File>>>,
    /// A compaction at revision 0 was applied since this process opened the store. etcd starts
    /// with no compaction at all (compacted revision -1): its first compaction at 0 succeeds and
    /// changes nothing, and later ones at 0 are refused. Our compacted revision 0 means "none",
    /// so this remembers the one at 0; in memory only (the on-disk format has no place for it),
    /// so after a restart one more compaction at 0 succeeds.
    pub compacted_at_zero: bool,
}

impl State {
    /// Keys whose newest version is a put, counted (what `live_keys` must equal).
    pub fn count_live_keys(&self) -> u64 {
        self.keys
            .values()
            .filter(|versions| versions.last().is_some_and(Version::is_put))
            .count() as u64
    }

    /// The key's newest version at or below `at`.
    pub fn newest(&self, key: &[u8], at: ChangeKey) -> Option<&Version> {
        let versions = self.keys.get(key)?;
        let after = versions.partition_point(|version| version.at <= at);
        after.checked_sub(1).map(|i| &versions[i])
    }

    /// The key's newest version at or below `revision` if it is a put: the key as of `revision`.
    pub fn put_at(&self, key: &[u8], revision: Revision) -> Option<&Version> {
        if revision <= 0 {
            return None;
        }
        self.newest(key, (revision as u64, u32::MAX))
            .filter(|version| version.is_put())
    }

    /// The key's current version, if it exists now: its newest (every put's first lookup, so
    /// no search of the versions, only the last one touched).
    pub fn current(&self, key: &[u8]) -> Option<&Version> {
        self.keys
            .get(key)?
            .last()
            .filter(|version| version.is_put())
    }

    /// Every key in `range` that exists at `revision` (`None`: now), in key order, with that
    /// version.
    pub fn locate(&self, range: &KeyRange, revision: Option<Revision>) -> Vec<(Bytes, Version)> {
        let mut found = Vec::new();
        let at = revision.map_or((u64::MAX, u32::MAX), |r| (r as u64, u32::MAX));
        let Some(bounds) = key_bounds(range) else {
            return found;
        };
        for (key, versions) in self.keys.range::<[u8], _>(bounds) {
            let after = versions.partition_point(|version| version.at <= at);
            if let Some(version) = after.checked_sub(1).map(|i| versions[i]) {
                if version.is_put() {
                    found.push((key.clone(), version));
                }
            }
        }
        found
    }

    /// Whether the version `at` of `key` is what compaction at the compacted revision leaves:
    /// above it, always; at or below it, only the key's newest version there, and not if that is
    /// a tombstone below it. Versions the sweep has not yet deleted may fail this.
    pub fn reachable(&self, key: &[u8], at: ChangeKey, tombstone: bool) -> bool {
        let compacted = self.position.compacted_revision as u64;
        if at.0 > compacted {
            return true;
        }
        if tombstone && at.0 < compacted {
            return false;
        }
        self.newest(key, (compacted, u32::MAX))
            .is_some_and(|newest| newest.at == at)
    }

    /// The first position in the change log at or after `at`.
    pub fn change_position(&self, at: ChangeKey) -> usize {
        self.changes.partition_point(|change| change.at < at)
    }

    /// The sweep has changes left to visit for the compacted revision.
    pub fn sweep_behind(&self) -> bool {
        self.changes
            .get(self.sweep_cursor)
            .is_some_and(|change| change.at.0 <= self.position.compacted_revision as u64)
    }

    /// Bytes the state refers to, over every segment.
    pub fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live_bytes).sum()
    }

    /// Bytes of records in every segment.
    pub fn file_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// A record at `location` stopped being part of the state.
    pub fn forget(&mut self, location: Location) {
        let segment = self
            .segments
            .get_mut(&location.segment)
            .expect("a live record's segment exists");
        segment.live_bytes = segment
            .live_bytes
            .checked_sub(u64::from(location.len))
            .expect("a segment's live bytes cover its live records");
    }

    /// A record at `location` became part of the state.
    pub fn remember(&mut self, location: Location) {
        let segment = self
            .segments
            .get_mut(&location.segment)
            .expect("a record's segment exists");
        segment.live_bytes += u64::from(location.len);
    }

    /// Whether a segment other than `except` may hold a record of `owner` older than `at`.
    pub fn older_record_elsewhere(&self, owner: u64, at: ChangeKey, except: SegmentId) -> bool {
        self.segments.iter().any(|(&id, segment)| {
            id != except
                && segment
                    .oldest
                    .get(&owner)
                    .is_some_and(|oldest| *oldest < at)
        })
    }

    /// Rebuilds [`State::files`] after segments were added or removed.
    pub fn refresh_files(&mut self) {
        self.files = Arc::new(
            self.segments
                .iter()
                .map(|(&id, segment)| (id, segment.file.clone()))
                .collect(),
        );
    }
}

/// A range of keys as `BTreeMap::range` takes it.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Bounds of a key range over keys, or `None` when the range is empty (`key >= range_end`).
pub(crate) fn key_bounds(range: &KeyRange) -> Option<KeyBounds<'_>> {
    let start = Bound::Included(&range.key[..]);
    if range.range_end.is_empty() {
        return Some((start, Bound::Included(&range.key[..])));
    }
    if &range.range_end[..] == b"\0" {
        return Some((start, Bound::Unbounded));
    }
    (range.key < range.range_end).then_some((start, Bound::Excluded(&range.range_end[..])))
}
