//! The bytes of the state directory, mirroring `docs/design/storage.md` ("MVCC state machine"):
//! record framing and the codec of every record type. Pure: no I/O. Only this module knows the
//! bytes.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length n, u32 LE (the type byte is not counted)
//! 4       4     CRC32C of type byte + payload, u32 LE
//! 8       1     record type
//! 9       n     payload
//!
//! 1 segment header  magic "BALLOTST" (8) | format u32 LE (= 3) | segment number u64 LE
//! 2 version         key_len v | key | revision v | sub_revision v | kind u8 (1 put, 2 tombstone)
//!                   put only: create_revision v | version v | lease z | value (the rest)
//! 3 lease           id z | change_index v | ttl_seconds z | remaining_ttl_ms z
//! 4 lease gone      id z | change_index v
//! 5 commit          applied_index v | current_revision v | compacted_revision v | synced_bytes v
//! ```
//!
//! `v` is an unsigned LEB128 varint, `z` a zigzag-encoded signed one. A version record's key,
//! revision and sub-revision identify it wherever it is copied to; lease records are ordered by
//! the log index of the change (`change_index`). Decoding never trusts a length: it is bounded by
//! [`RECORD_BYTES_MAX`] and by the bytes present.

use super::types::{KeyValue, LeaseId, Revision};
use bytes::Bytes;

pub const RECORD_HEADER_BYTES: usize = 9;
pub const SEGMENT_MAGIC: [u8; 8] = *b"BALLOTST";
/// 1 and 2 were redb files (`state.redb`); 3 is this directory of segments.
pub const FORMAT_VERSION: u32 = 3;
/// The largest record: a key and a value at their ceilings, with room for the numbers.
pub const RECORD_BYTES_MAX: usize =
    super::limits::KEY_BYTES_MAX + super::limits::VALUE_BYTES_MAX + 128;
/// The revision of a store nothing has been written to (etcd's too).
pub const INITIAL_REVISION: Revision = 1;

const TYPE_SEGMENT_HEADER: u8 = 1;
const TYPE_VERSION: u8 = 2;
const TYPE_LEASE: u8 = 3;
const TYPE_LEASE_GONE: u8 = 4;
const TYPE_COMMIT: u8 = 5;

pub const KIND_PUT: u8 = 1;
pub const KIND_TOMBSTONE: u8 = 2;

/// `(revision, sub_revision)`: where a change sits in the store's history.
pub type ChangeKey = (u64, u32);

/// What a put stores besides its key, value and revision (a tombstone stores none of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutMeta {
    pub create_revision: Revision,
    pub version: i64,
    pub lease: LeaseId,
}

/// One version of a key: a put or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub key: Bytes,
    pub at: ChangeKey,
    /// `None` for a tombstone.
    pub put: Option<(PutMeta, Bytes)>,
}

impl VersionRecord {
    /// The key-value this version is, or `None` for a tombstone.
    pub fn into_kv(self) -> Option<KeyValue> {
        let (meta, value) = self.put?;
        Some(KeyValue {
            key: self.key,
            create_revision: meta.create_revision,
            mod_revision: self.at.0 as Revision,
            version: meta.version,
            value,
            lease: meta.lease,
        })
    }
}

/// The state's position, written at the end of every batch: a batch without its commit record
/// did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitRecord {
    pub applied_index: u64,
    pub current_revision: Revision,
    pub compacted_revision: Revision,
    /// How much of this segment a completed sync had made durable when the batch was written:
    /// damage below it, found at open, is damage to synced data (refused), above it a torn write
    /// (cut off).
    pub synced_bytes: u64,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    SegmentHeader {
        format: u32,
        segment: u64,
    },
    Version(VersionRecord),
    Lease {
        id: LeaseId,
        change_index: u64,
        ttl_seconds: i64,
        remaining_ttl_ms: i64,
    },
    LeaseGone {
        id: LeaseId,
        change_index: u64,
    },
    Commit(CommitRecord),
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    #[error("record header runs past the end ({available} bytes left)")]
    ShortHeader { available: usize },
    #[error("record length {length} is over the limit of {max} bytes")]
    TooLong { length: usize, max: usize },
    #[error("record of {length} bytes runs past the end ({available} bytes left)")]
    ShortPayload { length: usize, available: usize },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("malformed {0} record")]
    Malformed(&'static str),
    #[error("zeros (nothing was written here)")]
    Zeros,
}

// ---- encoding ----

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_zigzag(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reserves the header, runs `body` to write the payload, then fills in length and checksum.
/// Returns the record's size.
fn frame(out: &mut Vec<u8>, record_type: u8, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(record_type);
    body(out);
    let payload_bytes = out.len() - start - RECORD_HEADER_BYTES;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

pub fn encode_segment_header(segment: u64, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_SEGMENT_HEADER, |out| {
        out.extend_from_slice(&SEGMENT_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&segment.to_le_bytes());
    })
}

/// A version record; `put` is `None` for a tombstone.
pub fn encode_version(
    key: &[u8],
    at: ChangeKey,
    put: Option<(&PutMeta, &[u8])>,
    out: &mut Vec<u8>,
) -> usize {
    frame(out, TYPE_VERSION, |out| {
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key);
        put_varint(out, at.0);
        put_varint(out, u64::from(at.1));
        match put {
            None => out.push(KIND_TOMBSTONE),
            Some((meta, value)) => {
                out.push(KIND_PUT);
                put_varint(out, meta.create_revision as u64);
                put_varint(out, meta.version as u64);
                put_zigzag(out, meta.lease);
                out.extend_from_slice(value);
            }
        }
    })
}

pub fn encode_lease(
    id: LeaseId,
    change_index: u64,
    ttl_seconds: i64,
    remaining_ttl_ms: i64,
    out: &mut Vec<u8>,
) -> usize {
    frame(out, TYPE_LEASE, |out| {
        put_zigzag(out, id);
        put_varint(out, change_index);
        put_zigzag(out, ttl_seconds);
        put_zigzag(out, remaining_ttl_ms);
    })
}

pub fn encode_lease_gone(id: LeaseId, change_index: u64, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_LEASE_GONE, |out| {
        put_zigzag(out, id);
        put_varint(out, change_index);
    })
}

pub fn encode_commit(commit: &CommitRecord, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_COMMIT, |out| {
        put_varint(out, commit.applied_index);
        put_varint(out, commit.current_revision as u64);
        put_varint(out, commit.compacted_revision as u64);
        put_varint(out, commit.synced_bytes);
    })
}

// ---- decoding ----

/// Reads a payload front to back; every read is bounds-checked.
struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn malformed(&self) -> Defect {
        Defect::Malformed(self.what)
    }

    fn varint(&mut self) -> Result<u64, Defect> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or(self.malformed())?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed())
    }

    fn zigzag(&mut self) -> Result<i64, Defect> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn signed(&mut self) -> Result<i64, Defect> {
        i64::try_from(self.varint()?).map_err(|_| self.malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Defect> {
        if self.bytes.len() < n {
            return Err(self.malformed());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, Defect> {
        Ok(self.take(1)?[0])
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn end(&self) -> Result<(), Defect> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

/// Length and checksum of the record starting at `bytes[0]`: its total size, once both check out.
pub fn check_frame(bytes: &[u8]) -> Result<usize, Defect> {
    if bytes.len() < RECORD_HEADER_BYTES {
        if bytes.iter().all(|&b| b == 0) {
            return Err(Defect::Zeros);
        }
        return Err(Defect::ShortHeader {
            available: bytes.len(),
        });
    }
    let length = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if length == 0 && stored == 0 && bytes[8] == 0 {
        return Err(Defect::Zeros);
    }
    if length + RECORD_HEADER_BYTES > RECORD_BYTES_MAX {
        return Err(Defect::TooLong {
            length,
            max: RECORD_BYTES_MAX,
        });
    }
    let available = bytes.len() - RECORD_HEADER_BYTES;
    if length > available {
        return Err(Defect::ShortPayload { length, available });
    }
    let computed = crc32c::crc32c(&bytes[8..RECORD_HEADER_BYTES + length]);
    if computed != stored {
        return Err(Defect::Checksum { stored, computed });
    }
    Ok(RECORD_HEADER_BYTES + length)
}

/// Decodes the record at the start of `bytes` (a shared buffer, so keys and values are slices of
/// it, not copies): the record and its size.
pub fn decode_record(bytes: &Bytes) -> Result<(Record, usize), Defect> {
    let size = check_frame(bytes)?;
    let record_type = bytes[8];
    let payload = bytes.slice(RECORD_HEADER_BYTES..size);
    let record = match record_type {
        TYPE_SEGMENT_HEADER => {
            let mut fields = Fields {
                bytes: &payload,
                what: "segment header",
            };
            if fields.take(8)? != SEGMENT_MAGIC {
                return Err(fields.malformed());
            }
            let format = u32::from_le_bytes(fields.take(4)?.try_into().expect("4 bytes"));
            let segment = u64::from_le_bytes(fields.take(8)?.try_into().expect("8 bytes"));
            fields.end()?;
            Record::SegmentHeader { format, segment }
        }
        TYPE_VERSION => Record::Version(decode_version(&payload)?),
        TYPE_LEASE => {
            let mut fields = Fields {
                bytes: &payload,
                what: "lease",
            };
            let record = Record::Lease {
                id: fields.zigzag()?,
                change_index: fields.varint()?,
                ttl_seconds: fields.zigzag()?,
                remaining_ttl_ms: fields.zigzag()?,
            };
            fields.end()?;
            record
        }
        TYPE_LEASE_GONE => {
            let mut fields = Fields {
                bytes: &payload,
                what: "lease gone",
            };
            let record = Record::LeaseGone {
                id: fields.zigzag()?,
                change_index: fields.varint()?,
            };
            fields.end()?;
            record
        }
        TYPE_COMMIT => {
            let mut fields = Fields {
                bytes: &payload,
                what: "commit",
            };
            let record = Record::Commit(CommitRecord {
                applied_index: fields.varint()?,
                current_revision: fields.signed()?,
                compacted_revision: fields.signed()?,
                synced_bytes: fields.varint()?,
            });
            fields.end()?;
            record
        }
        other => return Err(Defect::UnknownType(other)),
    };
    Ok((record, size))
}

fn decode_version(payload: &Bytes) -> Result<VersionRecord, Defect> {
    let mut fields = Fields {
        bytes: payload,
        what: "version",
    };
    let key_len = usize::try_from(fields.varint()?).map_err(|_| fields.malformed())?;
    if key_len == 0 {
        return Err(fields.malformed());
    }
    let key_start = payload.len() - fields.bytes.len();
    fields.take(key_len)?;
    let key = payload.slice(key_start..key_start + key_len);
    let revision = fields.varint()?;
    let sub_revision = u32::try_from(fields.varint()?).map_err(|_| fields.malformed())?;
    let put = match fields.byte()? {
        KIND_TOMBSTONE => {
            fields.end()?;
            None
        }
        KIND_PUT => {
            let meta = PutMeta {
                create_revision: fields.signed()?,
                version: fields.signed()?,
                lease: fields.zigzag()?,
            };
            let value_start = payload.len() - fields.bytes.len();
            fields.rest();
            Some((meta, payload.slice(value_start..)))
        }
        _ => return Err(fields.malformed()),
    };
    Ok(VersionRecord {
        key,
        at: (revision, sub_revision),
        put,
    })
}

/// The version record at the start of `bytes`, for a read that expects one there.
pub fn decode_version_record(bytes: &Bytes) -> Result<VersionRecord, Defect> {
    match decode_record(bytes)? {
        (Record::Version(version), _) => Ok(version),
        _ => Err(Defect::Malformed("version (another record type is there)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(encode: impl FnOnce(&mut Vec<u8>) -> usize) -> Record {
        let mut out = vec![7, 7, 7];
        let size = encode(&mut out);
        assert_eq!(size, out.len() - 3);
        let bytes = Bytes::from(out).slice(3..);
        let (record, decoded_size) = decode_record(&bytes).unwrap();
        assert_eq!(decoded_size, size);
        record
    }

    #[test]
    fn every_record_round_trips() {
        let meta = PutMeta {
            create_revision: 3,
            version: 2,
            lease: -7,
        };
        assert_eq!(
            round_trip(|out| encode_version(b"key", (9, 1), Some((&meta, b"value")), out)),
            Record::Version(VersionRecord {
                key: Bytes::from_static(b"key"),
                at: (9, 1),
                put: Some((meta, Bytes::from_static(b"value"))),
            })
        );
        assert_eq!(
            round_trip(|out| encode_version(b"k", (u64::MAX >> 1, u32::MAX), None, out)),
            Record::Version(VersionRecord {
                key: Bytes::from_static(b"k"),
                at: (u64::MAX >> 1, u32::MAX),
                put: None,
            })
        );
        assert_eq!(
            round_trip(|out| encode_lease(i64::MIN, 5, 60, -1500, out)),
            Record::Lease {
                id: i64::MIN,
                change_index: 5,
                ttl_seconds: 60,
                remaining_ttl_ms: -1500
            }
        );
        assert_eq!(
            round_trip(|out| encode_lease_gone(42, 6, out)),
            Record::LeaseGone {
                id: 42,
                change_index: 6
            }
        );
        let commit = CommitRecord {
            applied_index: 10,
            current_revision: 4,
            compacted_revision: 2,
            synced_bytes: 4096,
        };
        assert_eq!(
            round_trip(|out| encode_commit(&commit, out)),
            Record::Commit(commit)
        );
        assert_eq!(
            round_trip(|out| encode_segment_header(12, out)),
            Record::SegmentHeader {
                format: FORMAT_VERSION,
                segment: 12
            }
        );
    }

    #[test]
    fn damage_is_a_defect_never_a_panic() {
        let mut out = Vec::new();
        encode_version(
            b"key",
            (9, 1),
            Some((&PutMeta::default(), b"value")),
            &mut out,
        );
        let good = Bytes::from(out.clone());
        for cut in 0..good.len() {
            assert!(decode_record(&good.slice(..cut)).is_err(), "cut at {cut}");
        }
        for bit in 0..good.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&Bytes::from(flipped)).is_err(),
                "bit {bit} flipped"
            );
        }
        assert_eq!(
            decode_record(&Bytes::from(vec![0u8; 32])).unwrap_err(),
            Defect::Zeros
        );
        // A valid frame around a payload that is not a version record of its type.
        let mut bad = Vec::new();
        frame(&mut bad, TYPE_VERSION, |out| {
            out.extend_from_slice(&[0, 1, 2])
        });
        assert_eq!(
            decode_record(&Bytes::from(bad)).unwrap_err(),
            Defect::Malformed("version")
        );
        let mut unknown = Vec::new();
        frame(&mut unknown, 99, |_| {});
        assert_eq!(
            decode_record(&Bytes::from(unknown)).unwrap_err(),
            Defect::UnknownType(99)
        );
    }
}
