//! etcd's Cluster service over the member registry (names and URLs, replicated through the log)
//! and Raft's membership (who votes, who learns). Also [`RegistryLeaderChannel`], which finds
//! the leader's client endpoint in the registry for forwarding.
//!
//! `member add` publishes the new member's peer URLs first and then proposes the Raft change, so
//! every node can reach the new member as soon as it counts in a quorum. Member ids derive from
//! the cluster token and the first peer URL, as the new node itself derives its own.

use super::{forward, status, Context, LeaderChannel};
use crate::config::{member_id, parse_url};
use crate::node::{MemberCommand, MemberInfo, NodeError, NodeHandle};
use ballot_core::{MembershipChange, NodeId, ReadMode, ReplicaError};
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::cluster_client::ClusterClient;
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const MEMBER_EXISTS: &str = "etcdserver: member ID already exist";
const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

pub struct ClusterService {
    context: Context,
}

impl ClusterService {
    pub fn new(context: Context) -> Self {
        Self { context }
    }

    fn members(&self) -> Vec<pb::Member> {
        let status = self.context.node.status();
        status
            .members
            .iter()
            .map(|info| to_proto(info, status.learners.contains(&info.id)))
            .collect()
    }

    /// A channel to the leader when `error` redirects there (and this request was not forwarded).
    fn leader(
        &self,
        error: NodeError,
        request_metadata: &tonic::metadata::MetadataMap,
    ) -> Result<ClusterClient<Channel>, Status> {
        let channel = self
            .context
            .leader_channel(error, forward::is_forwarded(request_metadata))?;
        Ok(ClusterClient::new(channel))
    }
}

fn to_proto(info: &MemberInfo, is_learner: bool) -> pb::Member {
    pb::Member {
        id: info.id,
        name: info.name.clone(),
        peer_ur_ls: info.peer_urls.clone(),
        client_ur_ls: info.client_urls.clone(),
        is_learner,
    }
}

/// Membership errors in etcd's words.
fn membership_status(error: NodeError) -> Status {
    match &error {
        NodeError::Rejected(ReplicaError::UnknownNode { .. }) => {
            Status::not_found(MEMBER_NOT_FOUND)
        }
        NodeError::Rejected(ReplicaError::LearnerBehind { .. }) => {
            Status::failed_precondition(LEARNER_NOT_READY)
        }
        NodeError::Rejected(ReplicaError::InvalidMembershipChange { reason })
            if reason.contains("not a learner") =>
        {
            Status::failed_precondition(NOT_LEARNER)
        }
        NodeError::Rejected(ReplicaError::InvalidMembershipChange { reason })
            if reason.contains("already a member") =>
        {
            Status::failed_precondition(MEMBER_EXISTS)
        }
        _ => status::from_node(&error),
    }
}

fn validate_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: member peer URLs are not provided",
        ));
    }
    for url in urls {
        parse_url(url).map_err(|reason| {
            Status::invalid_argument(format!("etcdserver: bad peer URL: {reason}"))
        })?;
    }
    Ok(())
}

impl ClusterService {
    async fn add(&self, request: &pb::MemberAddRequest) -> Result<pb::Member, NodeError> {
        let node = &self.context.node;
        let id = member_id(node.cluster_token(), &request.peer_ur_ls[0]);
        let info = MemberInfo {
            id,
            name: String::new(),
            peer_urls: request.peer_ur_ls.clone(),
            client_urls: Vec::new(),
        };
        node.propose_member(MemberCommand::Publish(info.clone()))
            .await?;
        let change = if request.is_learner {
            MembershipChange::AddLearner(id)
        } else {
            MembershipChange::AddVoter(id)
        };
        node.change_membership(change).await?;
        Ok(to_proto(&info, request.is_learner))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let message = request.get_ref();
        validate_peer_urls(&message.peer_ur_ls)?;
        let status = self.context.node.status();
        let taken = status.members.iter().any(|m| {
            m.peer_urls
                .iter()
                .any(|url| message.peer_ur_ls.contains(url))
        });
        if taken {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        match self.add(message).await {
            Ok(member) => Ok(Response::new(pb::MemberAddResponse {
                header: Some(self.context.current_header()),
                member: Some(member),
                members: self.members(),
            })),
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                self.context
                    .relay(leader.member_add(forward::request(message.clone())))
                    .await
            }
            Err(error) => Err(membership_status(error)),
        }
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.get_ref().id;
        match self
            .context
            .node
            .change_membership(MembershipChange::Remove(id))
            .await
        {
            Ok(_) => {
                // The registry entry goes too; the Raft change is what matters, so a failure
                // here (e.g. a leader change in between) only leaves a description behind.
                let _ = self
                    .context
                    .node
                    .propose_member(MemberCommand::Forget(id))
                    .await;
                Ok(Response::new(pb::MemberRemoveResponse {
                    header: Some(self.context.current_header()),
                    members: self.members(),
                }))
            }
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                self.context
                    .relay(leader.member_remove(forward::request(request.into_inner())))
                    .await
            }
            Err(error) => Err(membership_status(error)),
        }
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let message = request.get_ref();
        validate_peer_urls(&message.peer_ur_ls)?;
        let status = self.context.node.status();
        let Some(current) = status.members.iter().find(|m| m.id == message.id) else {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        };
        let info = MemberInfo {
            peer_urls: message.peer_ur_ls.clone(),
            ..current.clone()
        };
        match self
            .context
            .node
            .propose_member(MemberCommand::Publish(info))
            .await
        {
            Ok(()) => Ok(Response::new(pb::MemberUpdateResponse {
                header: Some(self.context.current_header()),
                members: self.members(),
            })),
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                self.context
                    .relay(leader.member_update(forward::request(message.clone())))
                    .await
            }
            Err(error) => Err(membership_status(error)),
        }
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            if let Err(error) = self.context.node.read(ReadMode::ReadIndex).await {
                let mut leader = self.leader(error, request.metadata())?;
                return self
                    .context
                    .relay(leader.member_list(forward::request(request.into_inner())))
                    .await;
            }
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.context.current_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.get_ref().id;
        match self
            .context
            .node
            .change_membership(MembershipChange::PromoteLearner(id))
            .await
        {
            Ok(_) => Ok(Response::new(pb::MemberPromoteResponse {
                header: Some(self.context.current_header()),
                members: self.members(),
            })),
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                self.context
                    .relay(leader.member_promote(forward::request(request.into_inner())))
                    .await
            }
            Err(error) => Err(membership_status(error)),
        }
    }
}

/// Finds a member's client endpoint in the replicated registry; one lazily connected channel
/// per URL, reused.
pub struct RegistryLeaderChannel {
    node: NodeHandle,
    channels: Mutex<HashMap<String, Channel>>,
}

impl RegistryLeaderChannel {
    pub fn new(node: NodeHandle) -> Self {
        Self {
            node,
            channels: Mutex::new(HashMap::new()),
        }
    }
}

impl LeaderChannel for RegistryLeaderChannel {
    fn channel(&self, leader: NodeId) -> Option<Channel> {
        let status = self.node.status();
        let url = status
            .members
            .iter()
            .find(|m| m.id == leader)?
            .client_urls
            .first()?
            .clone();
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(channel) = channels.get(&url) {
            return Some(channel.clone());
        }
        let channel = Channel::from_shared(url.clone()).ok()?.connect_lazy();
        channels.insert(url, channel.clone());
        Some(channel)
    }
}
