//! The etcd v3 gRPC services (KV, Watch, Lease, Maintenance, Auth, Cluster, Lock, Election) over a
//! [`NodeHandle`], so unmodified etcd clients (`etcdctl`, Go `clientv3`, the `etcd-client` crate)
//! work against ballot (DESIGN principle 9).
//!
//! This module is a thin shell (STYLE habit 15): each handler validates its request at the edge
//! (bad input changes nothing, principle 8), converts it to the storage vocabulary
//! ([`convert`]), hands it to the node, and converts the answer back. Decisions stay in the
//! synchronous cores (Raft, the MVCC store, the watch hub, the lessor). No lock is held across an
//! `.await`: the only shared state is the [`NodeHandle`] and the immutable [`Context`].
//!
//! - [`kv`], [`watch`], [`lease`], [`maintenance`], [`auth`], [`cluster`], [`lock`],
//!   [`election`]: one file per service.
//! - [`fence`]: writes applied only while a lock is held with a given token.
//! - [`sequential`]: Puts that create the next of a prefix's numbered keys.
//! - [`recipe`]: etcd's mutex and election recipes, as steps over the KV and Lease services and
//!   the watch hub, that the Lock and Election services are made of.
//! - [`convert`]: proto <-> storage types; [`status`]: errors -> `tonic::Status` with etcd's
//!   codes and exact messages; [`header`]: the `ResponseHeader` every response carries.
//! - [`serve`]: HTTP/2 connections and gRPC framing, on h2 directly; KV's unary calls are
//!   dispatched there, every other call goes to tonic's generated services.
//! - [`groups`]: ballot's own Groups service (not etcd's), served beside them; a request with
//!   [`kv::GROUP_HEADER`] metadata reads and writes that group's keyspace instead of group 0's.
//! - [`forward`]: a follower sends writes, linearizable reads, keep-alives and time-to-live
//!   queries to the leader's client endpoint, as etcd clients expect any member to answer.

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod election;
pub mod fence;
pub mod forward;
pub mod groups;
pub mod header;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod recipe;
pub mod sequential;
pub mod serve;
pub mod status;
pub mod watch;

pub use forward::{LeaderChannel, NoLeaderChannel, FORWARDED_HEADER};
pub use serve::{serve, Services};

use crate::config::ServerConfig;
use crate::node::NodeHandle;
use ballot_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use ballot_proto::v3electionpb::election_server::ElectionServer;
use ballot_proto::v3lockpb::lock_server::LockServer;
use std::sync::Arc;

/// gRPC framing and header room allowed above `max_request_bytes` (etcd allows 512 KiB), so a
/// request just over the limit reaches the handler and gets etcd's "request is too large"
/// instead of a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The request limits checked at the API edge before anything is proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest encoded request that may be proposed (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most compares, success ops or failure ops per transaction level (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
}

impl RequestLimits {
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
        }
    }

    /// The gRPC decoding limit for every service.
    pub fn max_decoding_message_bytes(&self) -> usize {
        self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
    }
}

impl Default for RequestLimits {
    /// etcd's defaults.
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
        }
    }
}

/// What every handler shares. Immutable; cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub node: NodeHandle,
    pub limits: RequestLimits,
    pub leaders: Arc<dyn LeaderChannel>,
}

/// Every etcd v3 service over `node`, ready for [`serve`] (one copy per listen address:
/// [`Services`] is `Clone`).
pub fn services(
    node: NodeHandle,
    limits: RequestLimits,
    leaders: Arc<dyn LeaderChannel>,
) -> Services {
    let context = Context {
        node,
        limits,
        leaders,
    };
    let decoding_max = limits.max_decoding_message_bytes();
    let routes = tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(context.clone())).max_decoding_message_size(decoding_max),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        AuthServer::new(auth::AuthService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        LockServer::new(lock::LockService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(
        ElectionServer::new(election::ElectionService::new(context.clone()))
            .max_decoding_message_size(decoding_max),
    )
    .add_service(ballot_proto::ballotpb::groups_server::GroupsServer::new(
        groups::GroupsService::new(context.clone()),
    ));
    Services {
        kv: Arc::new(kv::KvService::new(context)),
        routes,
        decoding_max,
    }
}
