//! etcd's Election service (`v3electionpb.Election`): etcd's election recipe run in the server
//! ([`super::recipe`]), so its leaders are the ones `etcdctl elect` and Go's
//! `concurrency.Election` see.
//!
//! Campaign puts `NAME/LEASE` with the candidate's value and waits until every candidate
//! before it is gone; the answer's `LeaderKey` (name, key, create revision, lease) is what
//! Proclaim and Resign take, and its `rev` is the leadership's fencing token. Before a won
//! campaign is answered the candidate's key is read again: a lease that expired while it
//! waited took the key with it, and the answer is "election: not leader" rather than a
//! leadership nobody holds (etcd checks this only for its mutex, etcd-io/etcd#11456). Proclaim
//! and Resign change or delete the key only while it still has that create revision. Leader
//! reads the first created key; Observe streams it, then each value it proclaims, then the next
//! leader's, for as long as the caller listens.

use super::recipe::{self, Recipe, Withdraw};
use super::{convert, status, Context};
use ballot_proto::etcdserverpb as etcdpb;
use ballot_proto::v3electionpb as pb;
use ballot_storage::mvcc::types::{prefix_end, EventKind};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

/// etcd's `ErrElectionNotLeader`.
pub const NOT_LEADER: &str = "election: not leader";
/// etcd's `ErrElectionNoLeader`.
pub const NO_LEADER: &str = "election: no leader";
/// etcd's `ErrMissingLeaderKey`.
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Leaders queued for one observer before the task waits for it to read.
pub const OBSERVED_LEADERS_QUEUED_MAX: usize = 16;

pub struct ElectionService {
    recipe: Recipe,
}

impl ElectionService {
    pub fn new(context: Context) -> Self {
        Self {
            recipe: Recipe::new(context),
        }
    }
}

fn not_leader(detail: String) -> Status {
    status::with_detail(Code::Unknown, NOT_LEADER, detail)
}

fn leader_key(leader: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    leader.ok_or_else(|| Status::new(Code::Unknown, MISSING_LEADER_KEY))
}

impl ElectionService {
    /// Sets `leader`'s value while it still leads (etcd's `Proclaim`).
    async fn proclaim(
        &self,
        leader: &pb::LeaderKey,
        value: bytes::Bytes,
    ) -> Result<etcdpb::ResponseHeader, Status> {
        let proclaim = recipe::txn_request(
            vec![recipe::created_at(&leader.key, leader.rev)],
            vec![recipe::put_op(&leader.key, value, leader.lease)],
            vec![],
        );
        let answer = self.recipe.txn(proclaim).await?;
        if !answer.succeeded {
            return Err(not_leader(format!(
                "{} no longer has create revision {}: its leadership ended",
                String::from_utf8_lossy(&leader.key),
                leader.rev
            )));
        }
        Ok(answer.header.unwrap_or_default())
    }
}

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let message = request.into_inner();
        recipe::check_name(&message.name, "CampaignRequest.name")?;
        let recipe = &self.recipe;
        let lease = recipe.session_lease(message.lease).await?;
        let prefix = recipe::contenders_prefix(&message.name);
        let key = recipe::contender_key(&prefix, lease);
        let enter = recipe::txn_request(
            vec![recipe::created_at(&key, 0)],
            vec![recipe::put_op(&key, message.value.clone(), lease)],
            vec![recipe::get_op(recipe::single_key(&key))],
        );
        let entered = recipe.txn(enter).await?;
        let header = entered.header.unwrap_or_default();
        let mut leader = pb::LeaderKey {
            name: message.name.clone(),
            key: key.clone(),
            rev: header.revision,
            lease,
        };
        // This lease already campaigns under the name (etcd resumes that candidacy): keep its
        // place in line, and its value becomes this campaign's.
        if !entered.succeeded {
            let existing = recipe::read_in(&entered, 0)
                .first()
                .cloned()
                .ok_or_else(|| Status::internal("the candidate's key vanished inside its txn"))?;
            leader.rev = existing.create_revision;
            if existing.value != message.value {
                if let Err(refused) = self.proclaim(&leader, message.value.clone()).await {
                    drop(Withdraw::new(recipe.context(), key, leader.rev));
                    return Err(refused);
                }
            }
        }
        // If the caller goes away while it waits, its candidacy ends (etcd resigns it).
        let withdraw = Withdraw::new(recipe.context(), key.clone(), leader.rev);
        recipe.wait_deletes(&prefix, leader.rev - 1).await?;
        let still_ours = recipe.range(recipe::single_key(&key)).await?;
        if still_ours.kvs.first().map(|kv| kv.create_revision) != Some(leader.rev) {
            return Err(not_leader(format!(
                "{} was deleted while it waited to lead (its lease {lease:x} expired or was \
                 revoked)",
                String::from_utf8_lossy(&key)
            )));
        }
        withdraw.keep();
        Ok(Response::new(pb::CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let message = request.into_inner();
        let leader = leader_key(message.leader)?;
        let header = ElectionService::proclaim(self, &leader, message.value).await?;
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let name = request.into_inner().name;
        recipe::check_name(&name, "LeaderRequest.name")?;
        let prefix = recipe::contenders_prefix(&name);
        match self.recipe.first_created(&prefix).await? {
            (header, Some(kv)) => Ok(Response::new(pb::LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            })),
            (_, None) => Err(Status::new(Code::Unknown, NO_LEADER)),
        }
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        recipe::check_name(&name, "LeaderRequest.name")?;
        let (sender, receiver) = mpsc::channel(OBSERVED_LEADERS_QUEUED_MAX);
        let recipe = Recipe::new(self.recipe.context().clone());
        tokio::spawn(async move {
            let observed = tokio::select! {
                observed = observe(&recipe, &name, &sender) => observed,
                () = sender.closed() => return,
            };
            if let Err(error) = observed {
                let _ = sender.send(Err(error)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let leader = leader_key(request.into_inner().leader)?;
        // As etcd: resigning a leadership that already ended is not an error.
        let resign = recipe::txn_request(
            vec![recipe::created_at(&leader.key, leader.rev)],
            vec![recipe::delete_op(&leader.key)],
            vec![],
        );
        let answer = self.recipe.txn(resign).await?;
        Ok(Response::new(pb::ResignResponse {
            header: answer.header,
        }))
    }
}

type Observer = mpsc::Sender<Result<pb::LeaderResponse, Status>>;

/// Sends each leader of `name` and each value it proclaims, in order, until the observer goes
/// away (`Ok`) or a read or watch fails (`Err`).
async fn observe(recipe: &Recipe, name: &[u8], observer: &Observer) -> Result<(), Status> {
    let context = recipe.context();
    let prefix = recipe::contenders_prefix(name);
    loop {
        let (header, first) = recipe.first_created(&prefix).await?;
        let found = match first {
            Some(leader) => Some((header, leader)),
            None => first_candidate(recipe, &prefix, header.revision).await?,
        };
        // None: the watch for a candidate was cancelled by a compaction; read again.
        let Some((header, leader)) = found else {
            continue;
        };
        if observer
            .send(Ok(pb::LeaderResponse {
                header: Some(header),
                kv: Some(leader.clone()),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut watch = recipe
            .watch(leader.key.clone(), Default::default(), header.revision + 1)
            .await?;
        'leading: while let Some(response) = watch.responses.recv().await {
            if response.canceled {
                break;
            }
            let revision = response.header_revision;
            for event in response.events {
                if event.kind == EventKind::Delete {
                    break 'leading;
                }
                let proclaimed = pb::LeaderResponse {
                    header: Some(context.header(revision)),
                    kv: Some(convert::key_value(event.kv)),
                };
                if observer.send(Ok(proclaimed)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The first candidate to appear under `prefix` from `from_revision` on, with the header of the
/// revision that put it; `None` when the watch was cancelled by a compaction.
async fn first_candidate(
    recipe: &Recipe,
    prefix: &bytes::Bytes,
    from_revision: i64,
) -> Result<Option<(etcdpb::ResponseHeader, ballot_proto::mvccpb::KeyValue)>, Status> {
    let mut watch = recipe
        .watch(prefix.clone(), prefix_end(prefix), from_revision)
        .await?;
    while let Some(response) = watch.responses.recv().await {
        if response.canceled {
            return Ok(None);
        }
        let put = response
            .events
            .into_iter()
            .find(|event| event.kind == EventKind::Put);
        if let Some(put) = put {
            let header = recipe.context().header(put.kv.mod_revision);
            return Ok(Some((header, convert::key_value(put.kv))));
        }
    }
    Err(Status::unavailable(status::STOPPED))
}
