//! The ballot node: a thin tokio shell around synchronous, tested cores (a replica of whichever
//! engine the tools layer builds, the
//! WAL, the MVCC state machine). It owns sockets, threads and clocks; the cores own decisions.
//!
//! - [`node`]: the replica loop that owns the replica, the WAL and the state machine.
//! - [`transport`]: protocol messages between peers over TCP, one connection per peer, batched.
//! - [`config`]: etcd-compatible configuration.
//! - [`etcd`]: the etcd v3 gRPC services over a [`node::NodeHandle`], served over
//!   [`coalesce`]d connections (many responses per socket write) whose URL-form `:authority`
//!   headers are repaired ([`authority`]) for h2.
//! - [`http`]: `/metrics`, `/health` and [`native`], the HTTP/JSON API with read levels.
//! - [`auto_compaction`]: etcd's `--auto-compaction-mode` / `--auto-compaction-retention`, the
//!   leader compacting history as etcd's does.
//! - [`backup`]: the snapshot file `snapshot save` writes, its status, and its restore into a
//!   new member's data directory.

pub mod authority;
pub mod auto_compaction;
pub mod backup;
pub mod coalesce;
pub mod config;
pub mod etcd;
pub mod http;
pub mod native;
pub mod node;
pub mod ports;
pub mod transport;
