//! The on-disk layout of `state.redb`, mirroring `docs/design/storage.md` ("MVCC state machine"):
//! the redb tables, the records, and their invariants. Only this module knows the bytes.
//!
//! | table | key | value |
//! |---|---|---|
//! | `mvcc_meta` | `&str` name | `u64` |
//! | `mvcc_revisions` | `(revision u64, sub_revision u32)` | revision record (key and version record) |
//! | `mvcc_index` | `(key, revision u64, sub_revision u32)` | `u8` kind of the version (1 put, 2 tombstone) |
//! | `mvcc_leases` | `i64` id | `(ttl_seconds i64, remaining_ttl_ms i64)` |
//! | `mvcc_lease_keys` | `(i64 id, key)` | `()` |
//!
//! Values live only in `mvcc_revisions`, which is written in revision order (appended, so its
//! leaves are packed full) and loses whole runs of old revisions at compaction; `mvcc_index` is
//! the small key-ordered table that finds them (etcd's layout: bbolt's `key` bucket and its
//! in-memory `keyIndex`).
//!
//! Revision record, big-endian: `key_len u32 | key | version record`. Version record:
//!
//! ```text
//! offset size field
//! 0      1    kind: 1 = put, 2 = tombstone
//! -- put only --
//! 1      8    create_revision u64
//! 9      8    version u64 (>= 1)
//! 17     8    lease i64 (0: none)
//! 25     n    value
//! ```

use super::error::MvccError;
use super::types::{KeyValue, LeaseId, Revision};
use bytes::Bytes;
use redb::TableDefinition;

/// `(key, revision, sub_revision)`: sorts by key, then revision, then sub-revision.
pub type VersionKey = (&'static [u8], u64, u32);
/// `(revision, sub_revision)`.
pub type ChangeKey = (u64, u32);

pub const META: TableDefinition<&str, u64> = TableDefinition::new("mvcc_meta");
pub const REVISIONS: TableDefinition<ChangeKey, &[u8]> = TableDefinition::new("mvcc_revisions");
pub const INDEX: TableDefinition<VersionKey, u8> = TableDefinition::new("mvcc_index");
pub const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("mvcc_leases");
pub const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("mvcc_lease_keys");

pub const META_FORMAT_VERSION: &str = "format_version";
pub const META_APPLIED_INDEX: &str = "applied_index";
pub const META_CURRENT_REVISION: &str = "current_revision";
/// The revision of a store nothing has been written to (etcd's too).
pub const INITIAL_REVISION: super::types::Revision = 1;
pub const META_COMPACTED_REVISION: &str = "compacted_revision";
/// The sweep (compaction's deletions, in bounded steps): done up to this revision, and the next
/// change it visits.
pub const META_SWEEP_DONE_REVISION: &str = "sweep_done_revision";
pub const META_SWEEP_RESUME_REVISION: &str = "sweep_resume_revision";
pub const META_SWEEP_RESUME_SUB_REVISION: &str = "sweep_resume_sub_revision";
/// The layout described above (1 was values in a key-ordered `mvcc_versions` table). A file with
/// another number is refused at open.
pub const FORMAT_VERSION: u64 = 2;

pub const KIND_PUT: u8 = 1;
pub const KIND_TOMBSTONE: u8 = 2;
const PUT_HEADER_BYTES: usize = 25;

/// One version of a key as stored: a put (with everything but key and mod revision, which are
/// the table key) or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Put {
        create_revision: Revision,
        version: i64,
        lease: LeaseId,
        value: Bytes,
    },
    Tombstone,
}

impl Record {
    pub fn put_from(kv: &KeyValue) -> Self {
        Record::Put {
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Tombstone => vec![KIND_TOMBSTONE],
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => {
                let mut out = Vec::with_capacity(PUT_HEADER_BYTES + value.len());
                out.push(KIND_PUT);
                out.extend_from_slice(&(*create_revision as u64).to_be_bytes());
                out.extend_from_slice(&(*version as u64).to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
        }
    }

    /// Decodes a record; a malformed one is corruption (we wrote it).
    pub fn decode(bytes: &[u8]) -> Result<Self, MvccError> {
        match bytes.first() {
            Some(&KIND_TOMBSTONE) if bytes.len() == 1 => Ok(Record::Tombstone),
            Some(&KIND_PUT) if bytes.len() >= PUT_HEADER_BYTES => {
                let field =
                    |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
                Ok(Record::Put {
                    create_revision: field(1) as i64,
                    version: field(9) as i64,
                    lease: field(17) as i64,
                    value: Bytes::copy_from_slice(&bytes[PUT_HEADER_BYTES..]),
                })
            }
            _ => Err(MvccError::Corrupt(format!(
                "malformed version record of {} bytes",
                bytes.len()
            ))),
        }
    }

    /// Only the kind, without copying the value.
    pub fn is_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&KIND_TOMBSTONE)
    }

    /// The kind byte, as `mvcc_index` stores it.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Put { .. } => KIND_PUT,
            Record::Tombstone => KIND_TOMBSTONE,
        }
    }

    /// The key-value this record describes, for `key` at `mod_revision` (None for a tombstone).
    pub fn into_kv(self, key: &[u8], mod_revision: Revision) -> Option<KeyValue> {
        match self {
            Record::Tombstone => None,
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => Some(KeyValue {
                key: Bytes::copy_from_slice(key),
                create_revision,
                mod_revision,
                version,
                value,
                lease,
            }),
        }
    }

    /// Like [`Self::into_kv`] straight from the stored bytes, with or without the value.
    pub fn decode_kv(
        bytes: &[u8],
        key: &[u8],
        mod_revision: Revision,
        with_value: bool,
    ) -> Result<Option<KeyValue>, MvccError> {
        if with_value || Record::is_tombstone(bytes) {
            return Ok(Record::decode(bytes)?.into_kv(key, mod_revision));
        }
        let header = bytes
            .get(..PUT_HEADER_BYTES)
            .ok_or_else(|| MvccError::Corrupt("short put record".into()))?;
        Ok(Record::decode(header)?.into_kv(key, mod_revision))
    }
}

/// A revision record: the key, then its (encoded) version record.
pub fn encode_revision_record(key: &[u8], record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + record.len());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(record);
    out
}

/// Splits a revision record into the key and the version record; a malformed one is corruption.
pub fn split_revision_record(bytes: &[u8]) -> Result<(&[u8], &[u8]), MvccError> {
    let corrupt = || {
        MvccError::Corrupt(format!(
            "malformed revision record of {} bytes",
            bytes.len()
        ))
    };
    let key_len = bytes.get(..4).ok_or_else(corrupt)?;
    let key_len = u32::from_be_bytes(key_len.try_into().expect("4 bytes")) as usize;
    let rest = &bytes[4..];
    if key_len == 0 || key_len >= rest.len() {
        return Err(corrupt());
    }
    Ok(rest.split_at(key_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_corruption() {
        let put = Record::Put {
            create_revision: 3,
            version: 2,
            lease: -7,
            value: Bytes::from_static(b"v"),
        };
        assert_eq!(Record::decode(&put.encode()).unwrap(), put);
        assert_eq!(
            Record::decode(&Record::Tombstone.encode()).unwrap(),
            Record::Tombstone
        );
        for garbage in [&[][..], &[0], &[1, 2, 3], &[2, 0], &[9; 40]] {
            assert!(matches!(
                Record::decode(garbage),
                Err(MvccError::Corrupt(_))
            ));
        }
        let stored = encode_revision_record(b"key", &put.encode());
        let (key, record) = split_revision_record(&stored).unwrap();
        assert_eq!((key, Record::decode(record).unwrap()), (&b"key"[..], put));
        for garbage in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 0, 0, 2],
            &[0, 0, 0, 3, b'k', b'e', b'y'],
        ] {
            assert!(matches!(
                split_revision_record(garbage),
                Err(MvccError::Corrupt(_))
            ));
        }
    }
}
