//! One operation of each workload, as etcd v3 requests: what a client sends, and nothing about
//! when or how often (that is [`super::driver`]).

use super::args::{Plan, Workload};
use super::grpc::Connection;
use super::keys::{self, KeySpace, SplitMix64};
use super::stats::Outcome;
use ballot_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballot_proto::etcdserverpb::{
    request_op, Compare, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use ballot_proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse};
use ballot_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use bytes::Bytes;
use std::time::Instant;

/// etcd's gRPC method paths (`/package.Service/Method`).
pub const RANGE: &str = "/etcdserverpb.KV/Range";
pub const PUT: &str = "/etcdserverpb.KV/Put";
pub const TXN: &str = "/etcdserverpb.KV/Txn";
pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
pub const LOCK: &str = "/v3lockpb.Lock/Lock";
pub const UNLOCK: &str = "/v3lockpb.Lock/Unlock";

/// The TTL of a lock client's lease, in seconds: longer than any run, so it never lapses.
const LOCK_LEASE_TTL_SECONDS: i64 = 600;

/// What one client keeps between its operations.
#[derive(Default)]
pub struct Session {
    /// The lease this client's locks are taken under, granted by its first lock.
    lock_lease: Option<i64>,
}

/// What every client of a run shares: the workload, keys and value.
pub struct Operations {
    pub workload: Workload,
    pub keys: KeySpace,
    pub value: Bytes,
    pub serializable: bool,
    pub read_ratio: f64,
    /// Watch values carry their send time as nanoseconds since this instant.
    pub epoch: Instant,
}

impl Operations {
    pub fn new(plan: &Plan, epoch: Instant) -> Self {
        Operations {
            workload: plan.workload,
            keys: KeySpace::new(
                plan.key_prefix.clone(),
                plan.key_space,
                plan.sequential_keys,
            ),
            value: keys::value(plan.value_bytes),
            serializable: plan.serializable,
            read_ratio: plan.read_ratio,
            epoch,
        }
    }

    /// Sends operation `op_number` of the workload.
    pub async fn run(
        &self,
        kv: &mut Connection,
        op_number: u64,
        rng: &mut SplitMix64,
        session: &mut Session,
    ) -> Result<Outcome, tonic::Status> {
        if self.workload == Workload::Lock {
            return self.lock_and_unlock(kv, session).await;
        }
        let key = self.keys.key_for(op_number, rng);
        match self.workload {
            Workload::Put => self.put(kv, key, self.value.clone()).await,
            Workload::Get => self.get(kv, key).await,
            Workload::Txn => self.compare_and_swap(kv, key).await,
            Workload::Mixed if rng.next_f64() < self.read_ratio => self.get(kv, key).await,
            Workload::Mixed => self.put(kv, key, self.value.clone()).await,
            Workload::Watch => {
                let sent_ns = self.epoch.elapsed().as_nanos() as u64;
                let value = keys::stamped_value(&self.value, sent_ns);
                self.put(kv, key, value).await
            }
            Workload::Lock => unreachable!("answered above"),
        }
    }

    /// Takes the lock named by the key prefix under this client's lease, then releases it.
    async fn lock_and_unlock(
        &self,
        kv: &mut Connection,
        session: &mut Session,
    ) -> Result<Outcome, tonic::Status> {
        let lease = match session.lock_lease {
            Some(lease) => lease,
            None => {
                let grant = LeaseGrantRequest {
                    ttl: LOCK_LEASE_TTL_SECONDS,
                    id: 0,
                };
                let granted: LeaseGrantResponse = kv.unary(LEASE_GRANT, &grant).await?;
                *session.lock_lease.insert(granted.id)
            }
        };
        let lock = LockRequest {
            name: Bytes::copy_from_slice(self.keys.prefix()),
            lease,
        };
        let held: LockResponse = kv.unary(LOCK, &lock).await?;
        let _: UnlockResponse = kv.unary(UNLOCK, &UnlockRequest { key: held.key }).await?;
        Ok(Outcome::Lock)
    }

    pub async fn put(
        &self,
        kv: &mut Connection,
        key: Bytes,
        value: Bytes,
    ) -> Result<Outcome, tonic::Status> {
        let request = PutRequest {
            key,
            value,
            ..Default::default()
        };
        kv.unary::<_, PutResponse>(PUT, &request).await?;
        Ok(Outcome::Put)
    }

    async fn get(&self, kv: &mut Connection, key: Bytes) -> Result<Outcome, tonic::Status> {
        kv.unary::<_, RangeResponse>(RANGE, &self.range_request(key))
            .await?;
        Ok(Outcome::Get)
    }

    /// Reads the key, then puts it only if its mod_revision is still the one read (0: the key
    /// does not exist). Another client swapping the same key in between makes the compare fail.
    async fn compare_and_swap(
        &self,
        kv: &mut Connection,
        key: Bytes,
    ) -> Result<Outcome, tonic::Status> {
        let current: RangeResponse = kv.unary(RANGE, &self.range_request(key.clone())).await?;
        let mod_revision = current.kvs.first().map_or(0, |kv| kv.mod_revision);
        let compare = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(TargetUnion::ModRevision(mod_revision)),
        };
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            })),
        };
        let request = TxnRequest {
            compare: vec![compare],
            success: vec![put],
            failure: Vec::new(),
        };
        let response: TxnResponse = kv.unary(TXN, &request).await?;
        Ok(Outcome::Swap {
            swapped: response.succeeded,
        })
    }

    fn range_request(&self, key: Bytes) -> RangeRequest {
        RangeRequest {
            key,
            serializable: self.serializable,
            ..Default::default()
        }
    }
}
