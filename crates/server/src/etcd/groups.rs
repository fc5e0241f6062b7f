//! ballot's Groups service (`ballotpb.Groups`, not etcd's): create, list and remove the
//! replicated groups beside group 0. Changes go through group 0's catalog on its leader; a
//! follower forwards them there as the etcd services forward writes.

use super::{forward, status, Context};
use crate::node::{GroupRecord, NodeError, NodeHandle};
use ballot_core::{GroupId, NodeId, Role};
use ballot_proto::ballotpb as bpb;
use ballot_proto::ballotpb::groups_client::GroupsClient;
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// How long a member has to show its release before `group create` counts it as behind.
const RELEASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// A channel to `member`'s client API. A member publishes its client URLs through group
    /// 0's log once it has a leader, so on a cluster that has just started this waits for
    /// that, re-reading the registry every few milliseconds (up to [`RELEASE_PROBE_TIMEOUT`]).
    async fn client_channel(&self, member: NodeId) -> Option<tonic::transport::Channel> {
        let deadline = tokio::time::Instant::now() + RELEASE_PROBE_TIMEOUT;
        loop {
            if let Some(channel) = self.context.leaders.channel(member) {
                return Some(channel);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Refuses a group's creation while a member runs a release from before groups: such a
    /// member takes a group's peer frame for an oversized frame and drops the connection, and
    /// group 0's messages with it. A member's release shows in its client API: one from before
    /// groups has no Groups service (`Unimplemented`). Checked until the first group exists:
    /// after that every member read group frames once, and a release is never downgraded (an
    /// older one refuses the newer files). A member added later is the operator's to check.
    async fn every_member_reads_group_frames(&self) -> Result<(), Status> {
        let status = self.context.node.status();
        let mut behind = Vec::new();
        for member in status
            .members
            .iter()
            .filter(|member| member.id != status.id)
        {
            let label = match member.name.as_str() {
                "" => format!("{:x}", member.id),
                name => format!("{name} ({:x})", member.id),
            };
            let Some(channel) = self.client_channel(member.id).await else {
                behind.push(format!("{label}: its client URL is not known yet"));
                continue;
            };
            let mut probe = Request::new(bpb::GroupListRequest {});
            probe.set_timeout(RELEASE_PROBE_TIMEOUT);
            match GroupsClient::new(channel).group_list(probe).await {
                Ok(_) => {}
                Err(error) if error.code() == Code::Unimplemented => {
                    behind.push(format!("{label} runs a release from before groups"))
                }
                Err(error) => behind.push(format!("{label} did not answer ({})", error.message())),
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "ballot: a group is created only once every member runs a release that knows \
             groups (upgrade them first): {}",
            behind.join("; ")
        )))
    }
}

/// The error of a change forwarded to group 0's leader, with the reason spelled out when the
/// leader runs a release from before groups (it has no Groups service).
fn leader_behind(error: Status) -> Status {
    if error.code() != Code::Unimplemented {
        return error;
    }
    Status::failed_precondition(
        "ballot: group 0's leader runs a release from before groups, so no group can be created \
         or removed yet (upgrade every member first)",
    )
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
        let node = &self.context.node;
        let leads = node.with_status(|status| status.role == Some(Role::Leader));
        if leads && node.with_status(|status| status.catalog.is_empty()) {
            self.every_member_reads_group_frames().await?;
        }
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
                forward::call(leader.group_create(forward::request(message)))
                    .await
                    .map_err(leader_behind)
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
                forward::call(leader.group_remove(forward::request(message)))
                    .await
                    .map_err(leader_behind)
            }
            Err(error) => Err(status::from_node(&error)),
        }
    }
}
