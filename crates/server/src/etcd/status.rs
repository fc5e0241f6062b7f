//! Errors to `tonic::Status`, with etcd's gRPC codes and exact messages (etcd's
//! `api/v3rpc/rpctypes/error.go`), because etcd clients recognise errors by message: Go
//! `clientv3` turns a status whose message it knows into its `rpctypes.Err*` value, and retries
//! by code. Where ballot knows more than etcd's message says (which limit, which value), the
//! message stays etcd's and the detail travels in the `ballot-detail` metadata entry.
//!
//! Never decides anything: the mapping is total and pure.

use crate::node::{CatalogError, NodeError};
use ballot_core::ReplicaError;
use ballot_storage::lessor::LessorError;
use ballot_storage::mvcc::types::HistoryError;
use ballot_storage::mvcc::{ApplyError, MvccError};
use ballot_storage::watch::WatchError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Metadata key of the human detail behind an etcd message (limit and value).
pub const DETAIL_METADATA_KEY: &str = "ballot-detail";

// etcd's messages, verbatim.
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const NOT_LEADER: &str = "etcdserver: not leader";
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
/// etcd's `ErrTimeoutLeaderTransfer`.
pub const LEADER_TRANSFER_TIMEOUT: &str =
    "etcdserver: request timed out, leader transfer took too long";

/// A status with etcd's `message` and ballot's `detail` beside it.
pub fn with_detail(code: Code, message: &str, detail: String) -> Status {
    let mut metadata = MetadataMap::new();
    // A detail that is not valid ASCII metadata is dropped rather than failing the answer.
    if let Ok(value) = MetadataValue::try_from(detail.replace(['\r', '\n'], " ")) {
        metadata.insert(DETAIL_METADATA_KEY, value);
    }
    Status::with_metadata(code, message, metadata)
}

/// The request is larger than `max_request_bytes` (etcd's `ErrGRPCRequestTooLarge`).
pub fn request_too_large(bytes: usize, max: usize) -> Status {
    with_detail(
        Code::InvalidArgument,
        REQUEST_TOO_LARGE,
        format!("request is {bytes} bytes; max-request-bytes is {max}"),
    )
}

/// A transaction level has more operations than `max_txn_ops` (etcd's `ErrGRPCTooManyOps`).
pub fn too_many_ops(count: usize, max: usize) -> Status {
    with_detail(
        Code::InvalidArgument,
        TOO_MANY_OPS,
        format!("{count} operations in one txn level; max-txn-ops is {max}"),
    )
}

/// An enum field holds a value the proto does not define.
pub fn unknown_enum(field: &str, value: i32) -> Status {
    Status::invalid_argument(format!("{field}: unknown enum value {value}"))
}

pub fn from_node(error: &NodeError) -> Status {
    match error {
        NodeError::NotLeader { leader: Some(_) } => Status::failed_precondition(NOT_LEADER),
        NodeError::NotLeader { leader: None } | NodeError::NoLeader => {
            Status::unavailable(NO_LEADER)
        }
        NodeError::LeaderChanged => Status::unavailable(LEADER_CHANGED),
        NodeError::Timeout => Status::unavailable(TIMEOUT),
        NodeError::TooManyRequests => Status::resource_exhausted(TOO_MANY_REQUESTS),
        NodeError::Stopped => Status::unavailable(STOPPED),
        NodeError::Rejected(replica) => from_replica(replica),
        NodeError::Apply(apply) => from_apply(apply),
        NodeError::Watch(watch) => from_watch(watch),
        NodeError::Lease(lease) => from_lessor(lease),
        NodeError::Storage(_) => Status::internal(error.to_string()),
        NodeError::UnknownGroup(_) => Status::not_found(error.to_string()),
        NodeError::Catalog(catalog) => {
            let message = error.to_string();
            match catalog {
                CatalogError::IdUsed(_) => Status::already_exists(message),
                CatalogError::UnknownGroup(_) => Status::not_found(message),
                CatalogError::Full => Status::resource_exhausted(message),
                CatalogError::NotTheCatalog => Status::internal(message),
                CatalogError::GroupZero
                | CatalogError::Reserved(_)
                | CatalogError::BadReplicas(_)
                | CatalogError::ReplicaCount { .. } => Status::invalid_argument(message),
            }
        }
    }
}

pub fn from_replica(error: &ReplicaError) -> Status {
    match error {
        ReplicaError::NotLeader {
            leader_hint: Some(_),
        } => Status::failed_precondition(NOT_LEADER),
        ReplicaError::NotLeader { leader_hint: None } => Status::unavailable(NO_LEADER),
        ReplicaError::Busy { .. } => with_detail(
            Code::ResourceExhausted,
            TOO_MANY_REQUESTS,
            error.to_string(),
        ),
        ReplicaError::CommandTooLarge { .. } => {
            with_detail(Code::InvalidArgument, REQUEST_TOO_LARGE, error.to_string())
        }
        // Transient: the client should retry (Go clientv3 retries Unavailable).
        ReplicaError::LeaderNotReady
        | ReplicaError::TransferInProgress { .. }
        | ReplicaError::MembershipChangePending
        | ReplicaError::LearnerBehind { .. } => Status::unavailable(error.to_string()),
        ReplicaError::Removed => with_detail(Code::Unavailable, STOPPED, error.to_string()),
        _ => Status::failed_precondition(error.to_string()),
    }
}

pub fn from_apply(error: &ApplyError) -> Status {
    let detail = |code, message| with_detail(code, message, format!("{error:?}"));
    match error {
        ApplyError::EmptyKey => Status::invalid_argument(EMPTY_KEY),
        ApplyError::KeyNotFound { .. } => Status::invalid_argument(KEY_NOT_FOUND),
        ApplyError::ValueProvided => Status::invalid_argument(VALUE_PROVIDED),
        ApplyError::LeaseProvided => Status::invalid_argument(LEASE_PROVIDED),
        ApplyError::DuplicateKey { .. } => detail(Code::InvalidArgument, DUPLICATE_KEY),
        ApplyError::TooManyOps { count, max } => too_many_ops(*count, *max),
        ApplyError::Compacted { .. } => detail(Code::OutOfRange, COMPACTED),
        ApplyError::FutureRevision { .. } => detail(Code::OutOfRange, FUTURE_REVISION),
        ApplyError::LeaseNotFound { .. } => detail(Code::NotFound, LEASE_NOT_FOUND),
        ApplyError::LeaseExists { .. } => detail(Code::FailedPrecondition, LEASE_EXISTS),
        ApplyError::LeaseTtlTooLarge { .. } => detail(Code::OutOfRange, LEASE_TTL_TOO_LARGE),
        // etcd's size limit would have caught these; ours name the limit and the value.
        ApplyError::KeyTooLarge { .. }
        | ApplyError::ValueTooLarge { .. }
        | ApplyError::TxnTooDeep { .. }
        | ApplyError::TooManyCheckpoints { .. } => Status::invalid_argument(error.to_string()),
        // Never a client's doing: a replayed entry. Reaching a client is a bug.
        ApplyError::AlreadyApplied { .. } => Status::internal(error.to_string()),
    }
}

pub fn from_history(error: &HistoryError) -> Status {
    match error {
        HistoryError::Compacted { .. } => {
            with_detail(Code::OutOfRange, COMPACTED, error.to_string())
        }
        HistoryError::FutureRevision { .. } => {
            with_detail(Code::OutOfRange, FUTURE_REVISION, error.to_string())
        }
        HistoryError::Storage(_) => Status::internal(error.to_string()),
    }
}

pub fn from_watch(error: &WatchError) -> Status {
    match error {
        WatchError::UnknownStream(_) | WatchError::UnknownWatch { .. } => {
            Status::not_found(error.to_string())
        }
        WatchError::DuplicateWatchId { .. } | WatchError::InvalidRange { .. } => {
            Status::invalid_argument(error.to_string())
        }
        WatchError::TooManyWatches { .. } | WatchError::TooManyStreams { .. } => {
            Status::resource_exhausted(error.to_string())
        }
    }
}

pub fn from_lessor(error: &LessorError) -> Status {
    match error {
        LessorError::NotLeader => Status::failed_precondition(NOT_LEADER),
        LessorError::LeaseNotFound { .. } => {
            with_detail(Code::NotFound, LEASE_NOT_FOUND, format!("{error:?}"))
        }
        LessorError::TtlTooLarge {
            ttl_seconds,
            max_ttl_seconds,
        } => with_detail(
            Code::OutOfRange,
            LEASE_TTL_TOO_LARGE,
            format!("TTL {ttl_seconds} s; the maximum is {max_ttl_seconds} s"),
        ),
    }
}

pub fn from_mvcc(error: &MvccError) -> Status {
    match error {
        MvccError::Request(apply) => from_apply(apply),
        // etcd's ErrGRPCCorrupt is DataLoss.
        MvccError::Corrupt(_) => Status::data_loss(error.to_string()),
        MvccError::Storage(_) | MvccError::Snapshot(_) => Status::internal(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_keep_their_codes_and_exact_messages() {
        let cases: Vec<(Status, Code, &str)> = vec![
            (
                from_apply(&ApplyError::LeaseNotFound { id: 7 }),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                from_apply(&ApplyError::Compacted {
                    compacted_revision: 3,
                }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                from_apply(&ApplyError::FutureRevision {
                    current_revision: 3,
                }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                from_apply(&ApplyError::KeyNotFound { key: "k".into() }),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                from_apply(&ApplyError::DuplicateKey { key: "k".into() }),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                from_apply(&ApplyError::TooManyOps { count: 9, max: 8 }),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                request_too_large(10, 5),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                from_apply(&ApplyError::EmptyKey),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                from_apply(&ApplyError::LeaseExists { id: 1 }),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                from_lessor(&LessorError::TtlTooLarge {
                    ttl_seconds: 10,
                    max_ttl_seconds: 5,
                }),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                from_node(&NodeError::NotLeader { leader: Some(2) }),
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                from_node(&NodeError::NotLeader { leader: None }),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                from_node(&NodeError::NoLeader),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                from_node(&NodeError::LeaderChanged),
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (
                from_node(&NodeError::Timeout),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                from_node(&NodeError::TooManyRequests),
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                from_node(&NodeError::Stopped),
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                from_history(&HistoryError::Compacted {
                    compact_revision: 4,
                }),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
        ];
        for (status, code, message) in cases {
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn the_detail_names_the_limit_and_the_value() {
        let status = request_too_large(2_000_000, 1_572_864);
        let detail = status.metadata().get(DETAIL_METADATA_KEY).unwrap();
        assert_eq!(
            detail.to_str().unwrap(),
            "request is 2000000 bytes; max-request-bytes is 1572864"
        );
    }
}
