//! The MVCC key-value state machine (being written). Its vocabulary, shared with watches and
//! the server, is in [`types`].

pub mod types;
