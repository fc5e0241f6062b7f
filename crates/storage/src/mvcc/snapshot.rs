//! Whole-state snapshots of the store, for Raft snapshots (a follower too far behind is sent
//! one and restores it). Format, big-endian (mirrors `docs/design/storage.md`):
//!
//! ```text
//! "BALLOTMV" (8) | format u32 (= 1) | applied_index u64 | current_revision u64 | compacted_revision u64
//! records, each starting with a tag byte:
//!   0x01 version: key_len u32 | key | revision u64 | sub_revision u32 | record_len u32 | record
//!   0x02 lease:   id i64 | ttl_seconds i64 | remaining_ttl_ms i64
//!   0xFF end:     record_count u64 | crc32c u32 of every byte before the crc
//! ```
//!
//! Versions come in key order (then revision, sub-revision: `mvcc_index` order), then leases in
//! id order. The derived tables (`mvcc_index`, `mvcc_lease_keys`) are rebuilt on restore, so a
//! snapshot cannot carry an inconsistent index; the revision records are appended in revision
//! order, so a restored `mvcc_revisions` is packed full. Restore checks the whole input before
//! touching the database.

use super::apply::{append_revision_records, Position, Sweep, Tables};
use super::error::MvccError;
use super::layout::*;
use super::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use super::store::{read_sweep, write_position_in, MvccStore};
use super::view::View;
use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable};
use std::io::Write;

const MAGIC: &[u8; 8] = b"BALLOTMV";
const SNAPSHOT_FORMAT: u32 = 1;
const TAG_VERSION: u8 = 0x01;
const TAG_LEASE: u8 = 0x02;
const TAG_END: u8 = 0xFF;
const HEADER_BYTES: usize = 8 + 4 + 8 * 3;
/// A version record: kind, put header, value.
const RECORD_BYTES_MAX: usize = 25 + VALUE_BYTES_MAX;

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

impl MvccStore {
    /// The whole state at one applied index, in memory. See [`Self::snapshot_to`].
    pub fn snapshot(&self) -> Result<Bytes, MvccError> {
        let mut out = Vec::new();
        self.snapshot_to(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// Streams the whole state, read in one redb read transaction (so at one applied index,
    /// with its revision, compacted revision and leases), to `out`. Returns the bytes written.
    pub fn snapshot_to(&self, out: impl Write) -> Result<u64, MvccError> {
        self.begin_snapshot()?.write_to(out)
    }

    /// Fixes the state a snapshot will hold (one redb read transaction, cheap) without reading
    /// it: the caller may encode it on another thread while this store keeps applying.
    pub fn begin_snapshot(&self) -> Result<SnapshotReader, MvccError> {
        let txn = self.database().begin_read()?;
        let applied_index = txn
            .open_table(META)?
            .get(META_APPLIED_INDEX)?
            .map_or(0, |v| v.value());
        Ok(SnapshotReader { txn, applied_index })
    }
}

/// A snapshot's state, fixed by [`MvccStore::begin_snapshot`] and not yet encoded.
pub struct SnapshotReader {
    txn: redb::ReadTransaction,
    applied_index: u64,
}

impl SnapshotReader {
    /// The applied index of the state this reader sees.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The encoded snapshot, in memory.
    pub fn into_bytes(self) -> Result<Bytes, MvccError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// Streams the encoded snapshot to `out`; returns the bytes written.
    pub fn write_to(self, out: impl Write) -> Result<u64, MvccError> {
        let txn = self.txn;
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<u64, MvccError> { Ok(meta.get(name)?.map_or(0, |v| v.value())) };
        let mut out = Summing {
            inner: out,
            crc: 0,
            bytes: 0,
        };
        out.put(MAGIC)?;
        out.put(&SNAPSHOT_FORMAT.to_be_bytes())?;
        for name in [
            META_APPLIED_INDEX,
            META_CURRENT_REVISION,
            META_COMPACTED_REVISION,
        ] {
            out.put(&get(name)?.to_be_bytes())?;
        }
        let compacted_revision = get(META_COMPACTED_REVISION)? as i64;
        let sweeping = read_sweep(&meta)?.is_behind(compacted_revision);
        let mut records = 0u64;
        let revisions = txn.open_table(REVISIONS)?;
        let index = txn.open_table(INDEX)?;
        let view = View {
            revisions: &revisions,
            index: &index,
            pending: &[],
        };
        for entry in index.iter()? {
            let (at, kind) = entry?;
            let (key, revision, sub_revision) = at.value();
            // Only what compaction left reachable, whether or not the sweep deleted the rest.
            let tombstone = kind.value() == KIND_TOMBSTONE;
            if sweeping
                && !view.reachable(key, (revision, sub_revision), tombstone, compacted_revision)?
            {
                continue;
            }
            let stored = revisions.get((revision, sub_revision))?.ok_or_else(|| {
                MvccError::Corrupt(format!(
                    "index entry ({revision}, {sub_revision}) has no record"
                ))
            })?;
            let (stored_key, record) = split_revision_record(stored.value())?;
            if stored_key != key {
                return Err(MvccError::Corrupt(format!(
                    "revision ({revision}, {sub_revision}) holds another key than its index entry"
                )));
            }
            out.put(&[TAG_VERSION])?;
            out.put(&(key.len() as u32).to_be_bytes())?;
            out.put(key)?;
            out.put(&revision.to_be_bytes())?;
            out.put(&sub_revision.to_be_bytes())?;
            out.put(&(record.len() as u32).to_be_bytes())?;
            out.put(record)?;
            records += 1;
        }
        for entry in txn.open_table(LEASES)?.iter()? {
            let (id, lease) = entry?;
            let (ttl_seconds, remaining_ttl_ms) = lease.value();
            out.put(&[TAG_LEASE])?;
            for field in [id.value(), ttl_seconds, remaining_ttl_ms] {
                out.put(&field.to_be_bytes())?;
            }
            records += 1;
        }
        out.put(&[TAG_END])?;
        out.put(&records.to_be_bytes())?;
        let crc = out.crc;
        out.put(&crc.to_be_bytes())?;
        Ok(out.bytes)
    }
}

impl MvccStore {
    /// Replaces the whole state with `snapshot`, atomically (one durable write transaction).
    /// The input is checked completely first; a bad one changes nothing.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), MvccError> {
        let position = parse(snapshot, |_| Ok(()))?;
        let _writer = self.writer_lock();
        let mut txn = self.database().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(REVISIONS)?;
        txn.delete_table(INDEX)?;
        txn.delete_table(LEASES)?;
        txn.delete_table(LEASE_KEYS)?;
        {
            let mut tables = Tables::open(&txn)?;
            // Where each revision record is in the snapshot: sorted into revision order below,
            // then encoded and appended in one run.
            let mut revision_records: Vec<RecordInSnapshot<'_>> = Vec::new();
            // The key being read and, if its newest version so far is a put, that put's lease.
            let mut newest: Option<(Vec<u8>, Option<i64>)> = None;
            parse(snapshot, |item| {
                match item {
                    Item::Version {
                        key,
                        revision,
                        sub_revision,
                        record,
                    } => {
                        if let Some((last_key, lease)) =
                            newest.take_if(|(last_key, _)| last_key[..] != key[..])
                        {
                            settle_newest(&mut tables, &last_key, lease)?;
                        }
                        let decoded = Record::decode(record)?;
                        tables
                            .index
                            .insert((key, revision, sub_revision), decoded.kind())?;
                        revision_records.push(((revision, sub_revision), key, record));
                        let lease = match decoded {
                            Record::Put { lease, .. } => Some(lease),
                            Record::Tombstone => None,
                        };
                        newest = Some((key.to_vec(), lease));
                    }
                    Item::Lease {
                        id,
                        ttl_seconds,
                        remaining_ttl_ms,
                    } => {
                        if let Some((last_key, lease)) = newest.take() {
                            settle_newest(&mut tables, &last_key, lease)?;
                        }
                        tables.leases.insert(id, (ttl_seconds, remaining_ttl_ms))?;
                    }
                }
                Ok(())
            })?;
            if let Some((last_key, lease)) = newest.take() {
                settle_newest(&mut tables, &last_key, lease)?;
            }
            revision_records.sort_unstable_by_key(|(at, _, _)| *at);
            if let Some(pair) = revision_records
                .windows(2)
                .find(|pair| pair[0].0 == pair[1].0)
            {
                let (revision, sub_revision) = pair[0].0;
                return Err(MvccError::Snapshot(format!(
                    "two versions at ({revision}, {sub_revision})"
                )));
            }
            append_revision_records(
                &mut tables.revisions,
                revision_records
                    .into_iter()
                    .map(|(at, key, record)| (at, encode_revision_record(key, record))),
            )?;
            // Every attached key's lease must be in the snapshot.
            for entry in tables.lease_keys.iter()? {
                let (attached, _) = entry?;
                let (lease, key) = attached.value();
                if tables.leases.get(lease)?.is_none() {
                    return Err(MvccError::Snapshot(format!(
                        "key {key:?} is attached to missing lease {lease}"
                    )));
                }
            }
        }
        write_position_in(&txn, &position)?;
        txn.commit()?;
        self.reload_position()
    }
}

/// The newest version of a key decides whether it is attached to a lease (`None`: a tombstone).
fn settle_newest(tables: &mut Tables<'_>, key: &[u8], lease: Option<i64>) -> Result<(), MvccError> {
    let Some(lease) = lease else { return Ok(()) };
    if lease != 0 {
        tables.lease_keys.insert((lease, key), ())?;
    }
    Ok(())
}

/// A version found in a snapshot: `(revision, sub_revision)`, key, version record.
type RecordInSnapshot<'a> = (ChangeKey, &'a [u8], &'a [u8]);

enum Item<'a> {
    Version {
        key: &'a [u8],
        revision: u64,
        sub_revision: u32,
        record: &'a [u8],
    },
    Lease {
        id: i64,
        ttl_seconds: i64,
        remaining_ttl_ms: i64,
    },
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

/// Checks the snapshot and hands each record to `visit`, in order. Returns the position.
fn parse<'a>(
    snapshot: &'a [u8],
    mut visit: impl FnMut(Item<'a>) -> Result<(), MvccError>,
) -> Result<Position, MvccError> {
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
    let applied_index = cursor.u64()?;
    let current_revision = cursor.u64()? as i64;
    let compacted_revision = cursor.u64()? as i64;
    // A snapshot holds only what compaction left reachable: nothing to sweep.
    let position = Position {
        applied_index,
        current_revision,
        compacted_revision,
        sweep: Sweep::finished(compacted_revision),
    };
    if position.current_revision < 0
        || position.compacted_revision < 0
        || position.compacted_revision > position.current_revision
    {
        return bad(format!(
            "revisions out of order: compacted {} current {}",
            position.compacted_revision, position.current_revision
        ));
    }
    let mut records = 0u64;
    let mut last_version: Option<(&[u8], u64, u32)> = None;
    let mut last_lease: Option<i64> = None;
    loop {
        match cursor.take(1)?[0] {
            TAG_VERSION => {
                if last_lease.is_some() {
                    return bad("a version after the leases".into());
                }
                let key_len = cursor.u32()? as usize;
                if key_len == 0 || key_len > KEY_BYTES_MAX {
                    return bad(format!("key of {key_len} bytes"));
                }
                let key = cursor.take(key_len)?;
                let revision = cursor.u64()?;
                let sub_revision = cursor.u32()?;
                let record_len = cursor.u32()? as usize;
                if record_len > RECORD_BYTES_MAX {
                    return bad(format!("record of {record_len} bytes"));
                }
                let record = cursor.take(record_len)?;
                Record::decode(record).map_err(|e| MvccError::Snapshot(e.to_string()))?;
                if revision == 0 || revision > position.current_revision as u64 {
                    return bad(format!(
                        "version at revision {revision} outside 1..={}",
                        position.current_revision
                    ));
                }
                let at = (key, revision, sub_revision);
                if last_version.is_some_and(|last| last >= at) {
                    return bad(format!("versions out of order at key {key:?}"));
                }
                last_version = Some(at);
                visit(Item::Version {
                    key,
                    revision,
                    sub_revision,
                    record,
                })?;
            }
            TAG_LEASE => {
                let id = cursor.u64()? as i64;
                if last_lease.is_some_and(|last| last >= id) {
                    return bad(format!("leases out of order at {id}"));
                }
                last_lease = Some(id);
                let (ttl_seconds, remaining_ttl_ms) = (cursor.u64()? as i64, cursor.u64()? as i64);
                visit(Item::Lease {
                    id,
                    ttl_seconds,
                    remaining_ttl_ms,
                })?;
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
    Ok(position)
}
