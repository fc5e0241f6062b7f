//! The `ResponseHeader` every etcd response carries: which cluster and member answered, at
//! which store revision and Raft term.

use super::Context;
use ballot_proto::etcdserverpb::ResponseHeader;
use ballot_storage::mvcc::types::Revision;

impl Context {
    /// A header for an answer at `revision` (the store revision the answer reflects).
    pub fn header(&self, revision: Revision) -> ResponseHeader {
        let (cluster_id, member_id, raft_term) = self
            .node
            .with_status(|status| (status.cluster_id, status.id, status.term));
        ResponseHeader {
            cluster_id,
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
