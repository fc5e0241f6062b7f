//! Whole-state snapshots of the store, for Raft snapshots (a follower too far behind is sent one
//! and restores it). Format, big-endian (mirrors `docs/design/storage.md`):
//!
//! ```text
//! "BALLOTMV" (8) | format u32 (= 1) | applied_index u64 | current_revision u64 | compacted_revision u64
//! records, each starting with a tag byte:
//!   0x01 version: key_len u32 | key | revision u64 | sub_revision u32 | record_len u32 | record
//!   0x02 lease:   id i64 | ttl_seconds i64 | remaining_ttl_ms i64
//!   0xFF end:     record_count u64 | crc32c u32 of every byte before the crc
//! record (a version): kind u8 (1 put, 2 tombstone); a put goes on with
//!   create_revision u64 | version u64 | lease i64 | value (the rest)
//! ```
//!
//! Versions come in key order (then revision, sub-revision), then leases in id order; only what
//! compaction left reachable is in it. Restore checks the whole input before it touches anything,
//! builds the new state directory beside the old one and swaps the two (see `recovery.rs` for
//! the crash cases), so it is all or nothing.

use super::error::MvccError;
use super::index::{Position, Version};
use super::layout::{self, ChangeKey, CommitRecord, PutMeta};
use super::limits::KEY_BYTES_MAX;
use super::recovery::restore_dirs;
use super::segments::{self, SegmentId};
use super::store::MvccStore;
use super::types::{LeaseId, Revision};
use super::view::{value_of, Files};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"BALLOTMV";
const SNAPSHOT_FORMAT: u32 = 1;
const TAG_VERSION: u8 = 0x01;
const TAG_LEASE: u8 = 0x02;
const TAG_END: u8 = 0xFF;
const HEADER_BYTES: usize = 8 + 4 + 8 * 3;
const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const PUT_HEADER_BYTES: usize = 25;
/// A version record: kind, put header, value.
const RECORD_BYTES_MAX: usize = PUT_HEADER_BYTES + super::limits::VALUE_BYTES_MAX;

/// A version as the snapshot (and the hash) encodes it: `kind | create | version | lease | value`.
pub(crate) fn encode_version_record(put: Option<(&PutMeta, &[u8])>, out: &mut Vec<u8>) {
    match put {
        None => out.push(KIND_TOMBSTONE),
        Some((meta, value)) => {
            out.push(KIND_PUT);
            out.extend_from_slice(&(meta.create_revision as u64).to_be_bytes());
            out.extend_from_slice(&(meta.version as u64).to_be_bytes());
            out.extend_from_slice(&meta.lease.to_be_bytes());
            out.extend_from_slice(value);
        }
    }
}

fn decode_version_record(bytes: &[u8]) -> Result<Option<(PutMeta, &[u8])>, MvccError> {
    match bytes.first() {
        Some(&KIND_TOMBSTONE) if bytes.len() == 1 => Ok(None),
        Some(&KIND_PUT) if bytes.len() >= PUT_HEADER_BYTES => {
            let field =
                |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let meta = PutMeta {
                create_revision: field(1) as i64,
                version: field(9) as i64,
                lease: field(17) as i64,
            };
            if meta.version < 1 || meta.create_revision < 1 {
                return Err(MvccError::Snapshot(format!("a put with {meta:?}")));
            }
            Ok(Some((meta, &bytes[PUT_HEADER_BYTES..])))
        }
        _ => Err(MvccError::Snapshot(format!(
            "malformed version record of {} bytes",
            bytes.len()
        ))),
    }
}

/// One version's contribution to the store hash (`MvccStore::hash_kv`, and the hash a saved
/// snapshot's summary reports): versions are fed in revision order, each as
/// `revision u64 | sub u32 | key_len u32 | key | version record`.
pub(crate) fn hash_version(hash: u32, key: &[u8], at: ChangeKey, record: &[u8]) -> u32 {
    let hash = crc32c::crc32c_append(hash, &at.0.to_be_bytes());
    let hash = crc32c::crc32c_append(hash, &at.1.to_be_bytes());
    let hash = crc32c::crc32c_append(hash, &(key.len() as u32).to_be_bytes());
    let hash = crc32c::crc32c_append(hash, key);
    crc32c::crc32c_append(hash, record)
}

/// What a snapshot holds, in numbers, after the whole of it has been checked: what
/// `ballot snapshot status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub applied_index: u64,
    pub revision: Revision,
    pub compacted_revision: Revision,
    /// Keys whose newest version is a put.
    pub keys: u64,
    /// Every version kept (puts and deletions since the compacted revision).
    pub versions: u64,
    pub leases: u64,
    /// The store hash at `revision`: what `Maintenance.HashKV` at that revision answers on a
    /// member holding exactly this state.
    pub hash: u32,
}

/// Checks `snapshot` completely (as a restore would) and summarises it.
pub fn summarize(snapshot: &[u8]) -> Result<SnapshotSummary, MvccError> {
    let parsed = parse(snapshot)?;
    let mut by_revision: Vec<&SnapshotVersion<'_>> = parsed.versions.iter().collect();
    by_revision.sort_unstable_by_key(|version| version.at);
    let mut hash = 0u32;
    let mut record = Vec::new();
    for version in by_revision {
        record.clear();
        let put = version.put.as_ref().map(|(meta, value)| (meta, *value));
        encode_version_record(put, &mut record);
        hash = hash_version(hash, version.key, version.at, &record);
    }
    let keys = parsed
        .versions
        .iter()
        .enumerate()
        .filter(|(i, version)| {
            let newest = parsed
                .versions
                .get(i + 1)
                .is_none_or(|next| next.key != version.key);
            newest && version.put.is_some()
        })
        .count() as u64;
    Ok(SnapshotSummary {
        applied_index: parsed.position.applied_index,
        revision: parsed.position.current_revision,
        compacted_revision: parsed.position.compacted_revision,
        keys,
        versions: parsed.versions.len() as u64,
        leases: parsed.leases.len() as u64,
        hash,
    })
}

/// Counts and checksums what goes through it.
struct Summing<W> {
    inner: W,
    crc: u32,
    bytes: u64,
}

impl<W: Write> Summing<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), MvccError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.inner
            .write_all(bytes)
            .map_err(|e| MvccError::Snapshot(format!("write: {e}")))
    }
}

/// A snapshot's state, fixed by [`MvccStore::begin_snapshot`] and not yet encoded: which version
/// records it holds (records never change, and the files stay readable while open), the leases
/// and the position.
pub struct SnapshotReader {
    pub(crate) position: Position,
    pub(crate) versions: Vec<(Bytes, Version)>,
    pub(crate) leases: Vec<(LeaseId, i64, i64)>,
    pub(crate) files: Files,
}

impl SnapshotReader {
    /// The applied index of the state this reader sees.
    pub fn applied_index(&self) -> u64 {
        self.position.applied_index
    }

    /// The encoded snapshot, in memory.
    pub fn into_bytes(self) -> Result<Bytes, MvccError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// Streams the encoded snapshot to `out`; returns the bytes written.
    pub fn write_to(self, out: impl Write) -> Result<u64, MvccError> {
        let mut out = Summing {
            inner: std::io::BufWriter::with_capacity(1 << 20, out),
            crc: 0,
            bytes: 0,
        };
        out.put(MAGIC)?;
        out.put(&SNAPSHOT_FORMAT.to_be_bytes())?;
        let position = self.position;
        for number in [
            position.applied_index,
            position.current_revision as u64,
            position.compacted_revision as u64,
        ] {
            out.put(&number.to_be_bytes())?;
        }
        let mut record = Vec::new();
        for (key, version) in &self.versions {
            record.clear();
            match version.put {
                Some(meta) => {
                    let value = value_of(&self.files, key, version)?;
                    encode_version_record(Some((&meta, &value)), &mut record);
                }
                None => encode_version_record(None, &mut record),
            }
            out.put(&[TAG_VERSION])?;
            out.put(&(key.len() as u32).to_be_bytes())?;
            out.put(key)?;
            out.put(&version.at.0.to_be_bytes())?;
            out.put(&version.at.1.to_be_bytes())?;
            out.put(&(record.len() as u32).to_be_bytes())?;
            out.put(&record)?;
        }
        for &(id, ttl_seconds, remaining_ttl_ms) in &self.leases {
            out.put(&[TAG_LEASE])?;
            for field in [id, ttl_seconds, remaining_ttl_ms] {
                out.put(&field.to_be_bytes())?;
            }
        }
        let records = (self.versions.len() + self.leases.len()) as u64;
        out.put(&[TAG_END])?;
        out.put(&records.to_be_bytes())?;
        let crc = out.crc;
        out.put(&crc.to_be_bytes())?;
        let written = out.bytes;
        out.inner
            .flush()
            .map_err(|e| MvccError::Snapshot(format!("write: {e}")))?;
        Ok(written)
    }
}

impl MvccStore {
    /// The whole state at one applied index, in memory. See [`Self::snapshot_to`].
    pub fn snapshot(&self) -> Result<Bytes, MvccError> {
        self.begin_snapshot()?.into_bytes()
    }

    /// Streams the whole state at one applied index to `out`. Returns the bytes written.
    pub fn snapshot_to(&self, out: impl Write) -> Result<u64, MvccError> {
        self.begin_snapshot()?.write_to(out)
    }
}

/// A version found in a snapshot.
struct SnapshotVersion<'a> {
    key: &'a [u8],
    at: ChangeKey,
    put: Option<(PutMeta, &'a [u8])>,
}

/// Everything a snapshot holds, checked.
pub(crate) struct ParsedSnapshot<'a> {
    position: Position,
    versions: Vec<SnapshotVersion<'a>>,
    leases: BTreeMap<LeaseId, (i64, i64)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], MvccError> {
        if count > self.bytes.len() - self.offset {
            return Err(MvccError::Snapshot(format!(
                "truncated at offset {}",
                self.offset
            )));
        }
        let slice = &self.bytes[self.offset..self.offset + count];
        self.offset += count;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, MvccError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, MvccError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Checks the whole snapshot: framing, checksum, order, bounds, that no two versions share a
/// revision, and that every key attached to a lease names one the snapshot holds.
pub(crate) fn parse(snapshot: &[u8]) -> Result<ParsedSnapshot<'_>, MvccError> {
    let bad = |what: String| Err(MvccError::Snapshot(what));
    if snapshot.len() < HEADER_BYTES + 1 + 8 + 4 {
        return bad(format!(
            "{} bytes is too short for a snapshot",
            snapshot.len()
        ));
    }
    let (body, crc) = snapshot.split_at(snapshot.len() - 4);
    let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return bad("checksum mismatch".into());
    }
    let mut cursor = Cursor {
        bytes: body,
        offset: 0,
    };
    if cursor.take(8)? != MAGIC {
        return bad("not a ballot MVCC snapshot (bad magic)".into());
    }
    let format = cursor.u32()?;
    if format != SNAPSHOT_FORMAT {
        return bad(format!(
            "snapshot format {format}; this build reads {SNAPSHOT_FORMAT}"
        ));
    }
    let position = Position {
        applied_index: cursor.u64()?,
        current_revision: cursor.u64()? as Revision,
        compacted_revision: cursor.u64()? as Revision,
    };
    if position.current_revision < 1
        || position.compacted_revision < 0
        || position.compacted_revision > position.current_revision
    {
        return bad(format!(
            "revisions out of order: compacted {} current {}",
            position.compacted_revision, position.current_revision
        ));
    }
    let mut parsed = ParsedSnapshot {
        position,
        versions: Vec::new(),
        leases: BTreeMap::new(),
    };
    let mut records = 0u64;
    loop {
        match cursor.take(1)?[0] {
            TAG_VERSION => {
                if !parsed.leases.is_empty() {
                    return bad("a version after the leases".into());
                }
                let key_len = cursor.u32()? as usize;
                if key_len == 0 || key_len > KEY_BYTES_MAX {
                    return bad(format!("key of {key_len} bytes"));
                }
                let key = cursor.take(key_len)?;
                let at = (cursor.u64()?, cursor.u32()?);
                let record_len = cursor.u32()? as usize;
                if record_len > RECORD_BYTES_MAX {
                    return bad(format!("record of {record_len} bytes"));
                }
                let put = decode_version_record(cursor.take(record_len)?)?;
                if at.0 == 0 || at.0 > position.current_revision as u64 {
                    return bad(format!(
                        "version at revision {} outside 1..={}",
                        at.0, position.current_revision
                    ));
                }
                if parsed
                    .versions
                    .last()
                    .is_some_and(|last| (last.key, last.at) >= (key, at))
                {
                    return bad(format!("versions out of order at key {key:?}"));
                }
                parsed.versions.push(SnapshotVersion { key, at, put });
            }
            TAG_LEASE => {
                let id = cursor.u64()? as i64;
                if parsed
                    .leases
                    .last_key_value()
                    .is_some_and(|(&last, _)| last >= id)
                {
                    return bad(format!("leases out of order at {id}"));
                }
                let (ttl_seconds, remaining_ttl_ms) = (cursor.u64()? as i64, cursor.u64()? as i64);
                parsed.leases.insert(id, (ttl_seconds, remaining_ttl_ms));
            }
            TAG_END => break,
            tag => {
                return bad(format!(
                    "unknown record tag {tag:#04x} at offset {}",
                    cursor.offset - 1
                ))
            }
        }
        records += 1;
    }
    let declared = cursor.u64()?;
    if declared != records || cursor.offset != body.len() {
        return bad(format!("{records} records read, {declared} declared"));
    }
    let mut revisions: Vec<ChangeKey> = parsed.versions.iter().map(|v| v.at).collect();
    revisions.sort_unstable();
    if let Some(pair) = revisions.windows(2).find(|pair| pair[0] == pair[1]) {
        return bad(format!("two versions at {:?}", pair[0]));
    }
    // A key's newest version decides its lease.
    for (i, version) in parsed.versions.iter().enumerate() {
        let newest = parsed
            .versions
            .get(i + 1)
            .is_none_or(|next| next.key != version.key);
        if let (true, Some((meta, _))) = (newest, &version.put) {
            if meta.lease != 0 && !parsed.leases.contains_key(&meta.lease) {
                return bad(format!(
                    "key {:?} is attached to missing lease {}",
                    version.key, meta.lease
                ));
            }
        }
    }
    Ok(parsed)
}

/// Writes `parsed` as a complete, synced state directory `dir` (which must not exist), in
/// segments numbered from `first_segment`, each ending with a commit record.
pub(crate) fn write_state_dir(
    dir: &Path,
    parsed: &ParsedSnapshot<'_>,
    first_segment: SegmentId,
    segment_bytes: u64,
) -> Result<(), MvccError> {
    segments::ensure_dir(dir)?;
    let commit = CommitRecord {
        applied_index: parsed.position.applied_index,
        current_revision: parsed.position.current_revision,
        compacted_revision: parsed.position.compacted_revision,
        synced_bytes: 0,
    };
    let mut segment = first_segment;
    let (mut file, mut length) = segments::create(dir, segment)?;
    let mut buffer = Vec::new();
    let flush_segment = |file: &std::fs::File, length: &mut u64, buffer: &mut Vec<u8>| {
        layout::encode_commit(&commit, buffer);
        file.write_all_at(buffer, *length)
            .and_then(|()| file.sync_data())
            .map_err(|e| MvccError::Storage(format!("cannot write the restored state: {e}")))?;
        *length += buffer.len() as u64;
        buffer.clear();
        Ok::<(), MvccError>(())
    };
    let mut records = parsed
        .versions
        .iter()
        .map(Item::Version)
        .chain(
            parsed
                .leases
                .iter()
                .map(|(&id, &lease)| Item::Lease(id, lease)),
        )
        .peekable();
    while let Some(item) = records.next() {
        match item {
            Item::Version(version) => {
                let put = version.put.as_ref().map(|(meta, value)| (meta, *value));
                layout::encode_version(version.key, version.at, put, &mut buffer);
            }
            Item::Lease(id, (ttl_seconds, remaining_ttl_ms)) => {
                let index = parsed.position.applied_index;
                layout::encode_lease(id, index, ttl_seconds, remaining_ttl_ms, &mut buffer);
            }
        }
        if length + buffer.len() as u64 >= segment_bytes && records.peek().is_some() {
            flush_segment(&file, &mut length, &mut buffer)?;
            segment += 1;
            (file, length) = segments::create(dir, segment)?;
        }
    }
    flush_segment(&file, &mut length, &mut buffer)?;
    segments::sync_dir(dir)
}

enum Item<'p, 'a> {
    Version(&'p SnapshotVersion<'a>),
    Lease(LeaseId, (i64, i64)),
}

/// Replaces `dir` by `new` (a complete, synced state directory): the swap of `recovery.rs`.
pub(crate) fn swap_in(dir: &Path, new: &Path) -> Result<(), MvccError> {
    let (_, old) = restore_dirs(dir);
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| segments::io_error("cannot delete", &old, e))?;
    }
    std::fs::rename(dir, &old).map_err(|e| segments::io_error("cannot rename", dir, e))?;
    segments::sync_dir(parent)?;
    std::fs::rename(new, dir).map_err(|e| segments::io_error("cannot rename", new, e))?;
    segments::sync_dir(parent)?;
    std::fs::remove_dir_all(&old).map_err(|e| segments::io_error("cannot delete", &old, e))?;
    segments::sync_dir(parent)
}
