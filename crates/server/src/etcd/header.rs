//! The `ResponseHeader` every etcd response carries: which cluster and member answered, at
//! which store revision and Raft term.

use super::Context;
use crate::config::ServerConfig;
use ballot_proto::etcdserverpb::ResponseHeader;
use ballot_storage::mvcc::types::Revision;

/// The cluster id: derived, like member ids, from what every initial member agrees on (the
/// cluster token and the initial members' ids, sorted), so every member reports the same id and
/// two clusters with different tokens differ. FNV-1a, stable across versions and platforms.
/// (etcd hashes the sorted initial member ids with SHA-1; the value only has to agree within a
/// cluster.)
pub fn cluster_id(config: &ServerConfig) -> u64 {
    let mut members = config.initial_member_ids();
    members.sort_unstable();
    let bytes = config
        .initial_cluster_token
        .bytes()
        .chain([b'/'])
        .chain(members.iter().flat_map(|id| id.to_be_bytes()));
    crate::config::fnv1a(bytes).max(1)
}

impl Context {
    /// A header for an answer at `revision` (the store revision the answer reflects).
    pub fn header(&self, revision: Revision) -> ResponseHeader {
        let (member_id, raft_term) = self.node.with_status(|status| (status.id, status.term));
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id,
            revision,
            raft_term,
        }
    }

    /// A header at the local store's current revision.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.node.store().revision())
    }
}
