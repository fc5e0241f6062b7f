//! The errors of the state machine, split by who must act on them: [`ApplyError`] is the
//! request's fault (deterministic on every replica, sent back to the client with etcd's message),
//! [`MvccError`] is the node's (the disk or the file is broken: stop the node), and
//! [`CodecError`] is a command that does not decode.

use super::types::{LeaseId, Revision};
use ballot_core::LogIndex;
use bytes::Bytes;

/// Why a command (or a read) was refused. Deterministic: every replica refuses the same command
/// the same way, changes nothing and still advances its applied index. `Display` is etcd's exact
/// message wherever etcd has one, so the server can send it to etcd clients unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("etcdserver: key not found")]
    KeyNotFound { key: Bytes },
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { id: LeaseId },
    #[error("etcdserver: lease already exists")]
    LeaseExists { id: LeaseId },
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge { ttl_seconds: i64, max: i64 },
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey { key: Bytes },
    #[error("mvcc: required revision has been compacted")]
    Compacted { compacted_revision: Revision },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { current_revision: Revision },
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps { count: usize, max: usize },
    /// etcd has no message for these (its request size limit catches them first); ours names the
    /// limit and the value.
    #[error("etcdserver: request is too large (key is {bytes} bytes; key_bytes_max is {max})")]
    KeyTooLarge { bytes: usize, max: usize },
    #[error("etcdserver: request is too large (value is {bytes} bytes; value_bytes_max is {max})")]
    ValueTooLarge { bytes: usize, max: usize },
    #[error("etcdserver: too many operations in txn request (nesting depth {depth}; txn_depth_max is {max})")]
    TxnTooDeep { depth: usize, max: usize },
    #[error("etcdserver: too many lease checkpoints ({count}; lease_checkpoints_max is {max})")]
    TooManyCheckpoints { count: usize, max: usize },
    /// Not a failure of the command: the entry was applied before (a restart replays the log
    /// from the durable applied index). Nothing changed.
    #[error("log index {index} is already applied (applied index {applied_index})")]
    AlreadyApplied {
        index: LogIndex,
        applied_index: LogIndex,
    },
}

/// The store cannot go on: the disk failed, or the file or a snapshot breaks an invariant. Not
/// retryable by the client; the node should stop (and may be rebuilt from a snapshot).
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// A read that the request itself made invalid (compacted or future revision, empty key).
    #[error(transparent)]
    Request(#[from] ApplyError),
    #[error("state store: {0}")]
    Storage(String),
    #[error("state store is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot rejected: {0}")]
    Snapshot(String),
}

/// A command that does not decode. Never a panic, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("command is truncated (needed {needed} more bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    #[error("unknown command format {0} (this build reads format 1)")]
    UnknownFormat(u8),
    #[error("unknown {what} tag {tag} at offset {offset}")]
    UnknownTag {
        what: &'static str,
        tag: u8,
        offset: usize,
    },
    #[error("unknown {what} flag bits {bits:#04x} at offset {offset}")]
    UnknownFlags {
        what: &'static str,
        bits: u8,
        offset: usize,
    },
    #[error("varint too long at offset {offset}")]
    BadVarint { offset: usize },
    #[error("{trailing} trailing bytes after the command")]
    TrailingBytes { trailing: usize },
    #[error("{what} is {value}; {limit} is {max}")]
    OverLimit {
        what: &'static str,
        value: u64,
        limit: &'static str,
        max: u64,
    },
    #[error("{what} is out of range: {value}")]
    OutOfRange { what: &'static str, value: u64 },
}
