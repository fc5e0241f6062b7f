//! The etcd v3 gRPC wire contract, and ballot's own small API beside it ([`ballotpb`]).
//!
//! This crate owns the `.proto` files under `proto/` (written by us from the
//! public etcd v3 API: same packages, services, methods, messages, field names,
//! field numbers and enum values, so unmodified etcd clients such as `etcdctl`,
//! Go `clientv3` and the `etcd-client` crate can talk to ballot) and the Rust
//! code tonic and prost generate from them at build time. It has no behaviour:
//! serving these services is the server crate's job.
//!
//! Modules mirror the proto packages and sit side by side so that the
//! generated cross-package paths (`super::mvccpb::KeyValue`, ...) resolve:
//!
//! - [`mvccpb`]: `KeyValue` and watch `Event`.
//! - [`authpb`]: the auth types the Auth service carries.
//! - [`etcdserverpb`]: services `KV`, `Watch`, `Lease`, `Cluster`,
//!   `Maintenance`, `Auth`, and their messages. Each service `X` has a client
//!   in `x_client` and a server trait in `x_server`.
//! - [`v3electionpb`], [`v3lockpb`]: the `Election` and `Lock` services.
//!
//! Every proto `bytes` field is a [`bytes::Bytes`]. Proto field names in
//! camelCase become snake_case Rust fields as prost spells them, e.g.
//! `Member.peerURLs` is `peer_ur_ls` and `LeaseGrantRequest.TTL` is `ttl`.

/// Key-value records and watch events (proto package `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Auth types referenced by the Auth service (proto package `authpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 services and their messages (proto package `etcdserverpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The etcd v3 election service (proto package `v3electionpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// The etcd v3 lock service (proto package `v3lockpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// ballot's own services, for what etcd's API cannot express (proto package `ballotpb`):
/// `Groups`, the replicated groups beside group 0.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod ballotpb {
    tonic::include_proto!("ballotpb");
}

/// The encoded `google.protobuf.FileDescriptorSet` of every proto in this
/// crate (imports included, with source info), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor_set.bin"));
