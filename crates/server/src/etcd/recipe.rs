//! The steps of etcd's concurrency recipes (the mutex and the election of `clientv3/concurrency`)
//! run inside the server, over the KV and Lease services and this member's watch hub: the Lock
//! and Election services ([`super::lock`], [`super::election`]) are made of them.
//!
//! They write the keys a client-side recipe writes, so a lock taken through the Lock service,
//! by `etcdctl lock` or by Go's `concurrency.Mutex` excludes the others: a name's contenders are
//! the keys under `NAME/`, one per lease (`NAME/` and the lease id in lower-case hex), and the
//! one with the lowest create revision holds the lock (or leads). Its create revision is the
//! grant's fencing token: it only grows for a name. A contender waits for every key created
//! before its own to go, watching only the newest of them, so a holder that leaves wakes its
//! successor and no herd.
//!
//! Every write and read goes through the KV service as a client's would (proposed on the
//! leader, forwarded from a follower, linearizable); waits watch this member's store, which
//! applies every revision.

use super::kv::KvService;
use super::lease::LeaseService;
use super::{convert, status, Context};
use crate::node::{NodeError, WatchStream};
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_server::Kv;
use ballot_proto::etcdserverpb::lease_server::Lease;
use ballot_proto::mvccpb;
use ballot_storage::mvcc::types::{prefix_end, EventKind};
use bytes::Bytes;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
use tonic::{Request, Status};

/// The TTL of the lease a Lock or Campaign without one is given (etcd's default session TTL;
/// etcd grants it and never renews it, so such a lock lapses after a minute, and so does ours).
pub const SESSION_TTL_SECONDS: i64 = 60;

/// What a lock whose key vanished while it waited answers (etcd's `ErrSessionExpired`).
pub const SESSION_EXPIRED: &str = "mutex: session is expired";

/// The KV and Lease services and the watch hub, as the recipes use them.
pub struct Recipe {
    context: Context,
    kv: KvService,
    leases: LeaseService,
}

impl Recipe {
    pub fn new(context: Context) -> Self {
        Self {
            kv: KvService::new(context.clone()),
            leases: LeaseService::new(context.clone()),
            context,
        }
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// `lease`, or a new lease of [`SESSION_TTL_SECONDS`] when it is 0 (etcd's
    /// `NewSession(WithLease(0))`).
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = pb::LeaseGrantRequest {
            ttl: SESSION_TTL_SECONDS,
            id: 0,
        };
        let granted = self.leases.lease_grant(Request::new(grant)).await;
        Ok(granted.map_err(as_step_error)?.into_inner().id)
    }

    pub async fn txn(&self, txn: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let answer = self.kv.txn(Request::new(txn)).await;
        Ok(answer.map_err(as_step_error)?.into_inner())
    }

    pub async fn range(&self, range: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let answer = self.kv.range(Request::new(range)).await;
        Ok(answer.map_err(as_step_error)?.into_inner())
    }

    pub async fn delete(&self, key: Bytes) -> Result<pb::DeleteRangeResponse, Status> {
        let delete = pb::DeleteRangeRequest {
            key,
            ..Default::default()
        };
        let answer = self.kv.delete_range(Request::new(delete)).await;
        Ok(answer.map_err(as_step_error)?.into_inner())
    }

    /// The contender with the lowest create revision under `prefix` (the holder, the leader),
    /// with the header of the read that found it.
    pub async fn first_created(
        &self,
        prefix: &[u8],
    ) -> Result<(pb::ResponseHeader, Option<mvccpb::KeyValue>), Status> {
        let response = self.range(first_created_under(prefix)).await?;
        let header = response.header.unwrap_or_default();
        Ok((header, response.kvs.into_iter().next()))
    }

    /// Returns once no key under `prefix` has a create revision at or below
    /// `max_create_revision`: each round finds the newest such key and waits for its delete.
    /// The header is the last read's, the one that found none.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<pb::ResponseHeader, Status> {
        loop {
            let newest_before = pb::RangeRequest {
                key: Bytes::copy_from_slice(prefix),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision,
                ..Default::default()
            };
            let response = self.range(newest_before).await?;
            let header = response.header.unwrap_or_default();
            let Some(predecessor) = response.kvs.into_iter().next() else {
                return Ok(header);
            };
            self.wait_delete(&predecessor.key, header.revision).await?;
        }
    }

    /// Returns once `key` is deleted at or after `from_revision`. A watch cancelled by a
    /// compaction returns too: the caller reads again, which is what the watch would have told.
    async fn wait_delete(&self, key: &Bytes, from_revision: i64) -> Result<(), Status> {
        let mut watch = self.watch(key.clone(), Bytes::new(), from_revision).await?;
        while let Some(response) = watch.responses.recv().await {
            let deleted = response
                .events
                .iter()
                .any(|event| event.kind == EventKind::Delete);
            if deleted || response.canceled {
                return Ok(());
            }
        }
        Err(Status::unavailable(status::STOPPED))
    }

    /// A watch of `key` (to `range_end`, if not empty) on this member from `from_revision`.
    pub async fn watch(
        &self,
        key: Bytes,
        range_end: Bytes,
        from_revision: i64,
    ) -> Result<WatchStream, Status> {
        let node = &self.context.node;
        let stream = node
            .open_watch_stream()
            .await
            .map_err(|error| status::from_node(&error))?;
        let create = convert::watch_create(&pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: from_revision,
            ..Default::default()
        })
        .map_err(Status::internal)?;
        stream
            .create(node, create)
            .await
            .map_err(|error| match error {
                NodeError::Watch(error) => status::from_watch(&error),
                other => status::from_node(&other),
            })?;
        Ok(stream)
    }
}

/// A step's refusal as etcd's Lock and Election services answer it: they run the recipe over a
/// client of their own and return its errors as plain errors, so a refusal of the request
/// (an unknown lease, an empty key) reaches the caller with code Unknown and etcd's message.
/// Refusals a client retries (no leader, a timeout, too many requests) keep their code, so
/// clients still retry them.
fn as_step_error(status: Status) -> Status {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
            Status::with_metadata(Code::Unknown, status.message(), status.metadata().clone())
        }
        _ => status,
    }
}

/// A lock or election must be named: without a name the contenders' prefix would be `/`.
/// `field` names the request field in the refusal.
pub fn check_name(name: &[u8], field: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} is empty; name the lock or election"
        )));
    }
    Ok(())
}

/// `NAME/`: the prefix every contender for `name` is under.
pub fn contenders_prefix(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// The key of the contender holding `lease` under `prefix`, as etcd's recipes name it.
pub fn contender_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

/// The read of the first created key under `prefix` (etcd's `WithFirstCreate`).
pub fn first_created_under(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The read of `key` alone.
pub fn single_key(key: &Bytes) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

pub fn txn_request(
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::TxnRequest {
    pb::TxnRequest {
        compare,
        success,
        failure,
    }
}

/// "`key` has create revision `revision`" (0: the key does not exist).
pub fn created_at(key: &Bytes, revision: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(range: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(range)),
    }
}

pub fn delete_op(key: &Bytes) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

/// The key-values a txn's `index`th answer read (empty when that answer is not a read).
pub fn read_in(response: &pb::TxnResponse, index: usize) -> &[mvccpb::KeyValue] {
    match response
        .responses
        .get(index)
        .and_then(|op| op.response.as_ref())
    {
        Some(OpResponse::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

/// Deletes `key` if it still has create revision `revision`, in the background: what a Lock or
/// Campaign leaves behind when its caller goes away while it waits (etcd's recipes unlock or
/// resign then), so an abandoned waiter does not hold its place in line until its lease ends.
pub struct Withdraw {
    pending: Option<(Context, Bytes, i64)>,
}

impl Withdraw {
    pub fn new(context: &Context, key: Bytes, revision: i64) -> Self {
        Self {
            pending: Some((context.clone(), key, revision)),
        }
    }

    /// The wait ended as it should: the key stays.
    pub fn keep(mut self) {
        self.pending = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some((context, key, revision)) = self.pending.take() else {
            return;
        };
        // Outside a runtime (the server stopping) there is nothing to withdraw with; the
        // waiter's lease still ends its place in line.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let withdraw = pb::TxnRequest {
                compare: vec![created_at(&key, revision)],
                success: vec![delete_op(&key)],
                failure: vec![],
            };
            let _ = Recipe::new(context).txn(withdraw).await;
        });
    }
}
