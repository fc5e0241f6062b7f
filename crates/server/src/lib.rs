//! The ballot node: a thin tokio shell around synchronous, tested cores (the Raft replica, the
//! WAL, the MVCC state machine). It owns sockets, threads and clocks; the cores own decisions.
//!
//! - [`transport`]: Raft messages between peers over TCP, one connection per peer, batched.

pub mod config;
pub mod transport;
