//! ballot's Groups service (`ballotpb.Groups`, not etcd's): create, list and remove the
//! replicated groups beside group 0. Changes go through group 0's catalog on its leader; a
//! follower forwards them there as the etcd services forward writes.

use super::{forward, status, Context};
use crate::node::{GroupRecord, NodeError, NodeHandle};
use ballot_core::GroupId;
use ballot_proto::ballotpb as bpb;
use ballot_proto::ballotpb::groups_client::GroupsClient;
use tonic::{Request, Response, Status};

pub struct GroupsService {
    context: Context,
}

impl GroupsService {
    pub fn new(context: Context) -> Self {
        Self { context }
    }

    /// A change the node refused with `error`: forwarded to group 0's leader when that is the
    /// reason and the request was not forwarded already, else answered with the error.
    fn leader(
        &self,
        error: NodeError,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<GroupsClient<tonic::transport::Channel>, Status> {
        let channel = self
            .context
            .leader_channel(error, forward::is_forwarded(metadata))?;
        Ok(GroupsClient::new(channel))
    }
}

/// A group as this node sees it: its record, and its status if this node hosts a replica.
pub fn describe(node: &NodeHandle, record: &GroupRecord) -> bpb::Group {
    let mut group = bpb::Group {
        id: record.id,
        replicas: record.replicas.clone(),
        ..Default::default()
    };
    if let Ok(handle) = node.group(record.id) {
        let status = handle.status();
        group.hosted = true;
        group.leader = status.leader.unwrap_or(0);
        group.term = status.term;
        group.commit_index = status.commit_index;
        group.applied_index = status.applied_index;
    }
    group
}

#[tonic::async_trait]
impl bpb::groups_server::Groups for GroupsService {
    async fn group_create(
        &self,
        request: Request<bpb::GroupCreateRequest>,
    ) -> Result<Response<bpb::GroupCreateResponse>, Status> {
        let message = *request.get_ref();
        let requested = (message.id != 0).then_some(message.id as GroupId);
        match self
            .context
            .node
            .create_group(requested, message.replicas as usize)
            .await
        {
            Ok(record) => Ok(Response::new(bpb::GroupCreateResponse {
                group: Some(describe(&self.context.node, &record)),
            })),
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                forward::call(leader.group_create(forward::request(message))).await
            }
            Err(error) => Err(status::from_node(&error)),
        }
    }

    async fn group_list(
        &self,
        _request: Request<bpb::GroupListRequest>,
    ) -> Result<Response<bpb::GroupListResponse>, Status> {
        let node = &self.context.node;
        Ok(Response::new(bpb::GroupListResponse {
            member_id: node.with_status(|status| status.id),
            groups: node
                .catalog()
                .iter()
                .map(|record| describe(node, record))
                .collect(),
        }))
    }

    async fn group_remove(
        &self,
        request: Request<bpb::GroupRemoveRequest>,
    ) -> Result<Response<bpb::GroupRemoveResponse>, Status> {
        let message = *request.get_ref();
        match self.context.node.remove_group(message.id).await {
            Ok(record) => Ok(Response::new(bpb::GroupRemoveResponse {
                group: Some(bpb::Group {
                    id: record.id,
                    replicas: record.replicas,
                    ..Default::default()
                }),
            })),
            Err(error @ NodeError::NotLeader { .. }) => {
                let mut leader = self.leader(error, request.metadata())?;
                forward::call(leader.group_remove(forward::request(message))).await
            }
            Err(error) => Err(status::from_node(&error)),
        }
    }
}
