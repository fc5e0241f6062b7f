//! The scheduler's connection to the cluster: one channel kept open (workers and leaders call
//! many times a second), moved to the next endpoint when its member goes away.
//!
//! Every write the scheduler makes is a transaction guarded by compares (create-if-absent, the
//! revision it read) and, for leaders and executors, a fence. Sending one again after an
//! unknown outcome therefore cannot apply it twice: a repeat fails its compare, and the caller
//! re-reads. That is why, unlike the CLI's `Endpoints::call`, this retries writes too.

use crate::cmd::client::connect::{is_transport_failure, status_text, Endpoints};
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_proto::etcdserverpb::{self as pb, RangeRequest, TxnRequest, TxnResponse};
use ballot_proto::v3electionpb::election_client::ElectionClient;
use ballot_proto::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ResignRequest};
use ballot_server::etcd::fence::{FENCE_HEADER, NOT_HELD};
use ballot_server::etcd::recipe;
use ballot_storage::mvcc::types::prefix_end;
use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// Why a scheduler call failed.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The fence the write carried does not hold: whoever sent it has lost its lock or its
    /// leadership. Nothing was written.
    FenceLost(String),
    /// No endpoint served the call before its deadline; each with why.
    Unavailable(String),
    /// A member answered with an error that retrying will not change.
    Refused(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::FenceLost(why) => write!(f, "{why}"),
            StoreError::Unavailable(why) => write!(f, "the cluster did not answer: {why}"),
            StoreError::Refused(why) => write!(f, "{why}"),
        }
    }
}

/// A connection that moves between endpoints.
#[derive(Clone)]
pub struct Store {
    endpoints: Endpoints,
    /// The endpoint index and channel in use.
    current: Arc<Mutex<Option<(usize, Channel)>>>,
    /// Which endpoint to dial next when no channel is open.
    next: Arc<AtomicUsize>,
}

impl Store {
    pub fn new(endpoints: Endpoints) -> Self {
        Store {
            endpoints,
            current: Arc::new(Mutex::new(None)),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Runs `op` on the current channel, moving on through the endpoints (round after round,
    /// pausing between rounds) while the failure is one another member might not have, until
    /// `deadline` has passed.
    pub async fn call<T, F, Fut>(&self, deadline: Duration, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let give_up = tokio::time::Instant::now() + deadline;
        let mut last_failure = String::from("no attempt finished in time");
        let mut failures_in_round = 0;
        loop {
            // Either an answer to return, or the endpoint that failed and why.
            let (index, why) = match self.channel().await {
                Err(failed) => failed,
                Ok((index, channel)) => match tokio::time::timeout_at(give_up, op(channel)).await {
                    Err(_) => return Err(StoreError::Unavailable(last_failure)),
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(status))
                        if status.code() == Code::FailedPrecondition
                            && status.message().starts_with(NOT_HELD) =>
                    {
                        return Err(StoreError::FenceLost(status.message().to_string()))
                    }
                    Ok(Err(status)) if worth_another_member(&status) => {
                        (index, status_text(&status))
                    }
                    Ok(Err(status)) => return Err(StoreError::Refused(status_text(&status))),
                },
            };
            last_failure = format!("{}: {why}", self.endpoints.list[index]);
            self.advance(index);
            failures_in_round += 1;
            if !self
                .pause_after_round(&mut failures_in_round, give_up)
                .await
            {
                return Err(StoreError::Unavailable(last_failure));
            }
        }
    }

    /// After a whole round of endpoints failed, waits a little; false when the deadline has
    /// passed.
    async fn pause_after_round(&self, failures: &mut usize, give_up: tokio::time::Instant) -> bool {
        if *failures >= self.endpoints.list.len() {
            *failures = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::Instant::now() < give_up
    }

    async fn channel(&self) -> Result<(usize, Channel), (usize, String)> {
        let index = {
            let current = self.current.lock().expect("not poisoned");
            match &*current {
                Some((index, channel)) => return Ok((*index, channel.clone())),
                None => self.next_index(),
            }
        };
        let channel = self
            .endpoints
            .dial(&self.endpoints.list[index])
            .await
            .map_err(|why| (index, why))?;
        *self.current.lock().expect("not poisoned") = Some((index, channel.clone()));
        Ok((index, channel))
    }

    fn next_index(&self) -> usize {
        self.next.load(Ordering::Relaxed) % self.endpoints.list.len()
    }

    /// Drops the channel to endpoint `index`; the next call dials the endpoint after it.
    fn advance(&self, index: usize) {
        self.next.store(index + 1, Ordering::Relaxed);
        let mut current = self.current.lock().expect("not poisoned");
        if matches!(&*current, Some((in_use, _)) if *in_use == index) {
            *current = None;
        }
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range_prefix(
        &self,
        prefix: &str,
    ) -> Result<(i64, Vec<ballot_proto::mvccpb::KeyValue>), StoreError> {
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let response = self
            .call(self.endpoints.command_timeout, |channel| {
                let request = request.clone();
                async move { Ok(KvClient::new(channel).range(request).await?.into_inner()) }
            })
            .await?;
        let revision = response.header.map_or(0, |header| header.revision);
        Ok((revision, response.kvs))
    }

    /// Sends `txn`, fenced by `fence` (`LOCKNAME:TOKEN`) when given.
    pub async fn txn(
        &self,
        txn: TxnRequest,
        fence: Option<&str>,
    ) -> Result<TxnResponse, StoreError> {
        let fence = fence
            .map(|fence| {
                tonic::metadata::MetadataValue::try_from(fence)
                    .map_err(|_| StoreError::Refused(format!("fence {fence:?} is not ASCII")))
            })
            .transpose()?;
        self.call(self.endpoints.command_timeout, |channel| {
            let mut request = tonic::Request::new(txn.clone());
            if let Some(fence) = &fence {
                request.metadata_mut().insert(FENCE_HEADER, fence.clone());
            }
            async move { Ok(KvClient::new(channel).txn(request).await?.into_inner()) }
        })
        .await
    }

    /// Campaigns in `election` until this candidate leads; the call waits as long as that
    /// takes (only a failure of the member moves it elsewhere).
    pub async fn campaign(
        &self,
        election: &str,
        lease: i64,
        value: &str,
    ) -> Result<LeaderKey, StoreError> {
        let request = CampaignRequest {
            name: election.as_bytes().to_vec().into(),
            lease,
            value: value.as_bytes().to_vec().into(),
        };
        let response = self
            .call(Duration::from_secs(365 * 24 * 3600), |channel| {
                let request = request.clone();
                async move {
                    Ok(ElectionClient::new(channel)
                        .campaign(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        response
            .leader
            .ok_or_else(|| StoreError::Refused("the Campaign answer has no leader key".into()))
    }

    /// Gives up leadership, best effort.
    pub async fn resign(&self, leader: LeaderKey) {
        let _ = self
            .call(self.endpoints.command_timeout, |channel| {
                let request = ResignRequest {
                    leader: Some(leader.clone()),
                };
                async move {
                    Ok(ElectionClient::new(channel)
                        .resign(request)
                        .await?
                        .into_inner())
                }
            })
            .await;
    }

    /// Who leads `election` now: the leader's value and rev, if anyone campaigns.
    pub async fn leader(&self, election: &str) -> Result<Option<(String, i64)>, StoreError> {
        let request = LeaderRequest {
            name: election.as_bytes().to_vec().into(),
        };
        let answer = self
            .call(self.endpoints.command_timeout, |channel| {
                let request = request.clone();
                async move {
                    match ElectionClient::new(channel).leader(request).await {
                        Ok(response) => Ok(response.into_inner().kv),
                        Err(status)
                            if status.message().contains("no leader")
                                && status.code() != Code::Unavailable =>
                        {
                            Ok(None)
                        }
                        Err(status) => Err(status),
                    }
                }
            })
            .await?;
        Ok(answer.map(|kv| {
            (
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.create_revision,
            )
        }))
    }
}

/// A failure another member might not have: this one is unreachable, has no leader, or is
/// going away.
fn worth_another_member(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable
        || is_transport_failure(status)
        || status.message() == "etcdserver: not leader"
        || status.message() == "etcdserver: no leader"
        || status.message() == "etcdserver: request timed out"
        || status.message() == "etcdserver: leader changed"
}

// The operations below are the Lock service's recipe helpers, taking the scheduler's string
// keys.

/// A compare that `key` does not exist.
pub fn absent(key: &str) -> pb::Compare {
    recipe::created_at(&Bytes::copy_from_slice(key.as_bytes()), 0)
}

/// A compare that no key under `prefix` exists.
pub fn none_under(prefix: &str) -> pb::Compare {
    let mut compare = absent(prefix);
    compare.range_end = prefix_end(prefix.as_bytes());
    compare
}

/// A compare that `key` was last modified at `revision` (0: it does not exist).
pub fn unchanged(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.to_vec().into(),
        range_end: Default::default(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
    }
}

pub fn put(key: &str, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    recipe::put_op(&Bytes::copy_from_slice(key.as_bytes()), value.into(), lease)
}

pub fn delete(key: &str) -> pb::RequestOp {
    recipe::delete_op(&Bytes::copy_from_slice(key.as_bytes()))
}

pub fn delete_prefix(prefix: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            },
        )),
    }
}

pub fn txn(compare: Vec<pb::Compare>, success: Vec<pb::RequestOp>) -> TxnRequest {
    recipe::txn_request(compare, success, vec![])
}
