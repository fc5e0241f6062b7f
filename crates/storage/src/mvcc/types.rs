//! The vocabulary of the key-value state machine, with etcd v3 semantics so the server can expose
//! the etcd API exactly: revisions, key-values, key ranges, requests and responses, events, and the
//! commands that travel through the replicated log.
//!
//! These are plain data; the store (`mvcc`), the watch hub (`watch`) and the server all speak them.

use bytes::Bytes;
use std::fmt;

/// The store's logical clock: every change (put, delete, transaction with writes, lease revoke
/// that deletes keys) creates exactly one new revision. Signed, like etcd's, so the wire maps 1:1.
pub type Revision = i64;

/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Bytes,
    /// Revision of the last creation of this key (after a delete, a put creates it again).
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Number of modifications since the last creation (1 right after creation).
    pub version: i64,
    pub value: Bytes,
    pub lease: LeaseId,
}

/// etcd's key-range convention: `range_end` empty means the single key `key`; `range_end` equal to
/// `"\0"` means every key `>= key`; otherwise the half-open range `[key, range_end)`. A prefix `p`
/// is `[p, p with its last byte incremented)`; `key = "\0", range_end = "\0"` is every key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct KeyRange {
    pub key: Bytes,
    pub range_end: Bytes,
}

impl KeyRange {
    pub fn single(key: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            range_end: Bytes::new(),
        }
    }

    pub fn new(key: impl Into<Bytes>, range_end: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// Every key starting with `prefix` (every key at all for an empty prefix).
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let prefix: Bytes = prefix.into();
        Self {
            range_end: prefix_end(&prefix),
            key: prefix,
        }
    }

    pub fn is_single_key(&self) -> bool {
        self.range_end.is_empty()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == &self.key[..];
        }
        if key < &self.key[..] {
            return false;
        }
        &self.range_end[..] == b"\0" || key < &self.range_end[..]
    }
}

/// The smallest key greater than every key with this prefix; `"\0"` (meaning "no end") when the
/// prefix is empty or all `0xff`, as etcd's `clientv3.GetPrefixRangeEnd`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if self.range_end.is_empty() {
            write!(f, "{}", show(&self.key))
        } else {
            write!(f, "[{}, {})", show(&self.key), show(&self.range_end))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest`; zero means "not set" for every number, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read as of this revision (0: the current one).
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// Keys matched in the range (before `limit`).
    pub count: i64,
    /// The store's revision when the read was served.
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: LeaseId,
    pub prev_kv: bool,
    /// Keep the current value (error if the key does not exist).
    pub ignore_value: bool,
    /// Keep the current lease (error if the key does not exist).
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the value to compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(Bytes),
    Lease(LeaseId),
}

/// etcd's `Compare`: true when every key in `range` satisfies it (a missing key has version,
/// create and mod revision 0, empty value, lease 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub range: KeyRange,
    pub target: CompareTarget,
    pub result: CompareResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// Compare, then run `success` or `failure` atomically: all their writes share one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. For a delete, `kv` holds the key and `mod_revision` is the
/// revision of the deletion; every other field is zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's previous version, when the watcher asked for it and it exists.
    pub prev_kv: Option<KeyValue>,
}

/// A lease as the state machine holds it. The TTL bookkeeping is the leader's (see `lessor`);
/// the replicated state keeps the granted TTL and the last checkpointed remaining TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_seconds: i64,
    /// Remaining TTL at the last checkpoint (the full TTL right after grant or keep-alive).
    pub remaining_ttl_ms: i64,
    pub keys: Vec<Bytes>,
}

/// What travels through the replicated log and is applied, in log order, by every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Drop history below `revision` (reads below it fail with "compacted").
    Compact {
        revision: Revision,
    },
    /// `id` 0: the store picks one (deterministically, so every replica picks the same).
    LeaseGrant {
        id: LeaseId,
        ttl_seconds: i64,
    },
    /// Deletes every key attached to the lease at one revision, then the lease. Also how the
    /// leader's lessor expires a lease.
    LeaseRevoke {
        id: LeaseId,
    },
    /// Remaining TTLs decided by the leader (after keep-alives and periodically), so that a new
    /// leader neither expires a lease early nor resets it to its full TTL.
    LeaseCheckpoint {
        checkpoints: Vec<(LeaseId, i64)>,
    },
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact { revision: Revision },
    LeaseGrant { id: LeaseId, ttl_seconds: i64 },
    LeaseRevoke { revision: Revision },
    LeaseCheckpoint,
}

/// Read access to the store's history, which watchers replay from. Implemented by the MVCC
/// store; the watch hub depends only on this.
pub trait History {
    fn current_revision(&self) -> Revision;
    fn compacted_revision(&self) -> Revision;
    /// etcd's compacted revision, which is -1 before the first compaction (ours is 0) and 0
    /// after a compaction at 0. Only a negative watch start revision can tell them apart.
    fn compaction_floor(&self) -> Revision {
        match self.compacted_revision() {
            0 => -1,
            compacted => compacted,
        }
    }
    /// Events with revision in `[start_revision, end_revision]` on keys in `range`, in revision
    /// order (within one revision, in the order the transaction applied them), at most `limit`
    /// events (cut at a revision boundary when possible), each with `prev_kv` when asked and
    /// available.
    fn events(
        &self,
        range: &KeyRange,
        start_revision: Revision,
        end_revision: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, HistoryError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// etcd's `mvcc: required revision has been compacted`.
    #[error("mvcc: required revision has been compacted (compacted at {compact_revision})")]
    Compacted { compact_revision: Revision },
    /// etcd's `mvcc: required revision is a future revision`.
    #[error(
        "mvcc: required revision is a future revision (current revision is {current_revision})"
    )]
    FutureRevision { current_revision: Revision },
    #[error("storage error: {0}")]
    Storage(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_follows_etcd_conventions() {
        assert!(KeyRange::single("a").contains(b"a"));
        assert!(!KeyRange::single("a").contains(b"ab"));
        let prefix = KeyRange::prefix("ab");
        assert_eq!(&prefix.range_end[..], b"ac");
        assert!(prefix.contains(b"ab") && prefix.contains(b"abz") && !prefix.contains(b"ac"));
        let from_b = KeyRange::new("b", "\0");
        assert!(from_b.contains(b"zzz") && !from_b.contains(b"a"));
        assert_eq!(&prefix_end(&[0x61, 0xff])[..], &[0x62]);
        assert_eq!(&prefix_end(&[0xff])[..], b"\0");
        assert!(KeyRange::prefix("").contains(b"anything"));
    }
}
