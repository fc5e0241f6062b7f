//! etcd's Lease service: grant and revoke go through the log; keep-alive and time-to-live are
//! the leader's (its lessor keeps the clocks), so a follower forwards them; the lease list is
//! read from the local store (every member holds every lease).
//!
//! As etcd does: a keep-alive of an unknown lease answers TTL 0 (not an error), and a
//! time-to-live of an unknown lease answers TTL -1.

use super::{forward, status, Context};
use crate::node::NodeError;
use ballot_core::NodeId;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::lease_client::LeaseClient;
use ballot_storage::lessor::{LessorConfig, LessorError};
use ballot_storage::mvcc::types::{Command, CommandResult};
use ballot_storage::mvcc::ApplyError;
use prost::Message;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Keep-alive answers queued for one client before the relay waits for it to read.
pub const KEEP_ALIVE_RESPONSES_QUEUED_MAX: usize = 16;

pub struct LeaseService {
    context: Context,
    lessor: LessorConfig,
}

impl LeaseService {
    pub fn new(context: Context) -> Self {
        Self {
            context,
            lessor: LessorConfig::default(),
        }
    }
}

fn is_lease_not_found(error: &NodeError) -> bool {
    matches!(
        error,
        NodeError::Lease(LessorError::LeaseNotFound { .. })
            | NodeError::Apply(ApplyError::LeaseNotFound { .. })
    )
}

type KeepAliveResponses =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let message = request.into_inner();
        let ttl_seconds = self
            .lessor
            .grant_ttl_seconds(message.ttl)
            .map_err(|error| status::from_lessor(&error))?;
        let bytes = message.encoded_len();
        let max = self.context.limits.max_request_bytes;
        if bytes > max {
            return Err(status::request_too_large(bytes, max));
        }
        let command = Command::LeaseGrant {
            id: message.id,
            ttl_seconds,
        };
        match self.context.node.propose(command).await {
            Ok(CommandResult::LeaseGrant { id, ttl_seconds }) => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(self.context.current_header()),
                    id,
                    ttl: ttl_seconds,
                    error: String::new(),
                }))
            }
            Ok(other) => Err(Status::internal(format!(
                "unexpected result from the state machine: {other:?}"
            ))),
            Err(error) => {
                let channel = self.context.leader_channel(error, forwarded)?;
                self.context
                    .relay(LeaseClient::new(channel).lease_grant(forward::request(message)))
                    .await
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let message = request.into_inner();
        let command = Command::LeaseRevoke { id: message.id };
        match self.context.node.propose(command).await {
            Ok(CommandResult::LeaseRevoke { revision }) => {
                Ok(Response::new(pb::LeaseRevokeResponse {
                    header: Some(self.context.header(revision)),
                }))
            }
            Ok(other) => Err(Status::internal(format!(
                "unexpected result from the state machine: {other:?}"
            ))),
            Err(error) => {
                let channel = self.context.leader_channel(error, forwarded)?;
                self.context
                    .relay(LeaseClient::new(channel).lease_revoke(forward::request(message)))
                    .await
            }
        }
    }

    type LeaseKeepAliveStream = KeepAliveResponses;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let requests = request.into_inner();
        let (sender, receiver) = mpsc::channel(KEEP_ALIVE_RESPONSES_QUEUED_MAX);
        tokio::spawn(keep_alive_relay(
            self.context.clone(),
            requests,
            sender,
            forwarded,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let message = request.into_inner();
        match self.context.node.lease_time_to_live(message.id).await {
            Ok((lease, remaining_seconds)) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.context.current_header()),
                id: lease.id,
                ttl: remaining_seconds,
                granted_ttl: lease.ttl_seconds,
                keys: if message.keys { lease.keys } else { Vec::new() },
            })),
            Err(error) if is_lease_not_found(&error) => {
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: Some(self.context.current_header()),
                    id: message.id,
                    ttl: -1,
                    ..Default::default()
                }))
            }
            Err(error) => {
                let channel = self.context.leader_channel(error, forwarded)?;
                self.context
                    .relay(LeaseClient::new(channel).lease_time_to_live(forward::request(message)))
                    .await
            }
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let leases = self
            .context
            .node
            .store()
            .leases()
            .map_err(|error| status::from_mvcc(&error))?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.context.current_header()),
            leases: leases
                .into_iter()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        }))
    }
}

type Outbound = mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>;

/// Answers keep-alives in order, one at a time (as etcd does). Those this node cannot answer
/// because it does not lead go to the leader over one forwarded stream, opened on first need
/// and reopened if the leader changes.
async fn keep_alive_relay(
    context: Context,
    mut requests: Streaming<pb::LeaseKeepAliveRequest>,
    outbound: Outbound,
    forwarded: bool,
) {
    let mut to_leader: Option<LeaderKeepAlive> = None;
    loop {
        let request = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => return,
            },
            () = outbound.closed() => return,
        };
        let answer = keep_alive(&context, &mut to_leader, request, forwarded).await;
        let failed = answer.is_err();
        if outbound.send(answer).await.is_err() || failed {
            return;
        }
    }
}

async fn keep_alive(
    context: &Context,
    to_leader: &mut Option<LeaderKeepAlive>,
    request: pb::LeaseKeepAliveRequest,
    forwarded: bool,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    // The header is taken before the renewal, as etcd does, so a client never sees a revision
    // later than the keep-alive.
    let header = context.current_header();
    let ttl = match context.node.lease_keep_alive(request.id).await {
        Ok(ttl) => ttl,
        Err(error) if is_lease_not_found(&error) => 0,
        Err(error) => {
            let leader = match &error {
                NodeError::NotLeader {
                    leader: Some(leader),
                } => *leader,
                _ => return Err(status::from_node(&error)),
            };
            let channel = context.leader_channel(error, forwarded)?;
            if to_leader.as_ref().map(|stream| stream.leader) != Some(leader) {
                *to_leader = Some(LeaderKeepAlive::open(leader, channel).await?);
            }
            let stream = to_leader.as_mut().expect("opened above");
            return match stream.keep_alive(request).await {
                Ok(response) => Ok(response),
                Err(error) => {
                    *to_leader = None;
                    Err(error)
                }
            };
        }
    };
    Ok(pb::LeaseKeepAliveResponse {
        header: Some(header),
        id: request.id,
        ttl,
    })
}

/// A keep-alive stream to the leader, on behalf of one client stream.
struct LeaderKeepAlive {
    leader: NodeId,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: Streaming<pb::LeaseKeepAliveResponse>,
}

impl LeaderKeepAlive {
    async fn open(leader: NodeId, channel: Channel) -> Result<Self, Status> {
        let (requests, receiver) = mpsc::channel(1);
        let mut request = forward::request(ReceiverStream::new(receiver));
        // A stream lives as long as the client's; only each answer is bounded.
        request.metadata_mut().remove("grpc-timeout");
        let responses = forward::call(LeaseClient::new(channel).lease_keep_alive(request))
            .await?
            .into_inner();
        Ok(Self {
            leader,
            requests,
            responses,
        })
    }

    async fn keep_alive(
        &mut self,
        request: pb::LeaseKeepAliveRequest,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        if self.requests.send(request).await.is_err() {
            return Err(Status::unavailable(status::LEADER_CHANGED));
        }
        match forward::call(self.responses.message()).await? {
            Some(response) => Ok(response),
            None => Err(Status::unavailable(status::LEADER_CHANGED)),
        }
    }
}
