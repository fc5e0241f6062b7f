//! What may differ between two correct servers, and nothing else, made equal: member and cluster
//! ids and the Raft term (each becomes 1 when set, so a field etcd leaves at 0 still shows),
//! server-assigned lease ids (labels, by order of grant: [`LeaseMap`]), remaining TTLs (within
//! a second: [`reconcile`]), and the order of lists etcd builds from Go maps (the lease list,
//! sorted by expiry there, and a lease's keys) which are sorted here.
//!
//! The arrival time of watch events is handled where they are collected (`session`): events
//! are compared per watch, in order, whatever responses carried them.

use ballot_proto::etcdserverpb as pb;
use ballot_proto::mvccpb;
use pb::response_op::Response;
use std::collections::HashMap;

use super::generate::AUTO_LABEL_BASE;

/// A gRPC error, as compared: code and message (metadata such as ballot's detail is not part
/// of etcd's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: tonic::Code,
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

pub type Reply<T> = Result<T, Failure>;

/// One server's answer to one request, normalised.
#[derive(Debug)]
pub enum Answer {
    Range(Reply<pb::RangeResponse>),
    Put(Reply<pb::PutResponse>),
    DeleteRange(Reply<pb::DeleteRangeResponse>),
    Txn(Reply<pb::TxnResponse>),
    Compact(Reply<pb::CompactionResponse>),
    LeaseGrant(Reply<pb::LeaseGrantResponse>),
    LeaseRevoke(Reply<pb::LeaseRevokeResponse>),
    LeaseTimeToLive(Reply<pb::LeaseTimeToLiveResponse>),
    LeaseLeases(Reply<pb::LeaseLeasesResponse>),
    LeaseKeepAlive(Reply<pb::LeaseKeepAliveResponse>),
    /// A watch request: what it causes arrives on its stream.
    Sent,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        match self {
            Answer::Range(r) => r.is_ok(),
            Answer::Put(r) => r.is_ok(),
            Answer::DeleteRange(r) => r.is_ok(),
            Answer::Txn(r) => r.is_ok(),
            Answer::Compact(r) => r.is_ok(),
            Answer::LeaseGrant(r) => r.is_ok(),
            Answer::LeaseRevoke(r) => r.is_ok(),
            Answer::LeaseTimeToLive(r) => r.is_ok(),
            Answer::LeaseLeases(r) => r.is_ok(),
            Answer::LeaseKeepAlive(r) => r.is_ok(),
            Answer::Sent => true,
        }
    }
}

/// Lease labels (see `generate`) to this server's ids and back.
#[derive(Debug, Default)]
pub struct LeaseMap {
    to_server: HashMap<i64, i64>,
    to_label: HashMap<i64, i64>,
    auto_grants: i64,
}

impl LeaseMap {
    /// The server numbered a lease `id` (a grant without an id succeeded).
    pub fn granted_auto(&mut self, id: i64) {
        let label = AUTO_LABEL_BASE + self.auto_grants;
        self.auto_grants += 1;
        self.to_server.insert(label, id);
        self.to_label.insert(id, label);
    }

    pub fn to_server(&self, label: i64) -> i64 {
        self.to_server.get(&label).copied().unwrap_or(label)
    }

    pub fn label(&self, id: i64) -> i64 {
        self.to_label.get(&id).copied().unwrap_or(id)
    }
}

pub fn header(header: &mut Option<pb::ResponseHeader>) {
    if let Some(header) = header {
        header.cluster_id = u64::from(header.cluster_id != 0);
        header.member_id = u64::from(header.member_id != 0);
        header.raft_term = u64::from(header.raft_term != 0);
    }
}

pub fn key_value(kv: &mut mvccpb::KeyValue, leases: &LeaseMap) {
    kv.lease = leases.label(kv.lease);
}

pub fn event(event: &mut mvccpb::Event, leases: &LeaseMap) {
    if let Some(kv) = &mut event.kv {
        key_value(kv, leases);
    }
    if let Some(kv) = &mut event.prev_kv {
        key_value(kv, leases);
    }
}

pub fn range(response: &mut pb::RangeResponse, leases: &LeaseMap) {
    header(&mut response.header);
    response.kvs.iter_mut().for_each(|kv| key_value(kv, leases));
}

pub fn put(response: &mut pb::PutResponse, leases: &LeaseMap) {
    header(&mut response.header);
    if let Some(kv) = &mut response.prev_kv {
        key_value(kv, leases);
    }
}

pub fn delete_range(response: &mut pb::DeleteRangeResponse, leases: &LeaseMap) {
    header(&mut response.header);
    response
        .prev_kvs
        .iter_mut()
        .for_each(|kv| key_value(kv, leases));
}

pub fn txn(response: &mut pb::TxnResponse, leases: &LeaseMap) {
    header(&mut response.header);
    for op in &mut response.responses {
        match &mut op.response {
            Some(Response::ResponseRange(r)) => range(r, leases),
            Some(Response::ResponsePut(r)) => put(r, leases),
            Some(Response::ResponseDeleteRange(r)) => delete_range(r, leases),
            Some(Response::ResponseTxn(r)) => txn(r, leases),
            None => {}
        }
    }
}

pub fn watch_response(response: &mut pb::WatchResponse, leases: &LeaseMap) {
    header(&mut response.header);
    response.events.iter_mut().for_each(|e| event(e, leases));
}

/// Normalises `answer` in place (lease ids become labels, lists etcd orders by chance are
/// sorted).
pub fn answer(answer: &mut Answer, leases: &LeaseMap) {
    match answer {
        Answer::Range(Ok(r)) => range(r, leases),
        Answer::Put(Ok(r)) => put(r, leases),
        Answer::DeleteRange(Ok(r)) => delete_range(r, leases),
        Answer::Txn(Ok(r)) => txn(r, leases),
        Answer::Compact(Ok(r)) => header(&mut r.header),
        Answer::LeaseGrant(Ok(r)) => {
            header(&mut r.header);
            r.id = leases.label(r.id);
        }
        Answer::LeaseRevoke(Ok(r)) => header(&mut r.header),
        Answer::LeaseTimeToLive(Ok(r)) => {
            header(&mut r.header);
            r.id = leases.label(r.id);
            r.keys.sort();
        }
        Answer::LeaseLeases(Ok(r)) => {
            header(&mut r.header);
            r.leases
                .iter_mut()
                .for_each(|lease| lease.id = leases.label(lease.id));
            r.leases.sort_by_key(|lease| lease.id);
        }
        Answer::LeaseKeepAlive(Ok(r)) => {
            header(&mut r.header);
            r.id = leases.label(r.id);
        }
        _ => {}
    }
}

/// Remaining TTLs are read from two clocks at two moments: within a second, ballot's is taken
/// to be etcd's.
pub fn reconcile(etcd: &[Answer], ballot: &mut [Answer]) {
    for (etcd, ballot) in etcd.iter().zip(ballot.iter_mut()) {
        if let (Answer::LeaseTimeToLive(Ok(e)), Answer::LeaseTimeToLive(Ok(b))) = (etcd, ballot) {
            if e.ttl.abs_diff(b.ttl) <= 1 {
                b.ttl = e.ttl;
            }
        }
    }
}
