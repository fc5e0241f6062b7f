//! Serving on a follower what only the leader can answer: etcd clients send any request to any
//! member and expect an answer, so when the node says "not leader, the leader is L", the handler
//! sends the same gRPC request to L's client endpoint and returns L's answer.
//!
//! A request is forwarded at most once: the forwarded copy carries [`FORWARDED_HEADER`], and a
//! node that receives such a request and is not the leader either (leadership moved meanwhile)
//! answers `etcdserver: not leader` instead of forwarding again, so no request loops.

use super::{status, Context};
use crate::node::NodeError;
use ballot_core::NodeId;
use ballot_proto::etcdserverpb as pb;
use std::future::Future;
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Metadata entry that marks a request forwarded by a follower.
pub const FORWARDED_HEADER: &str = "ballot-forwarded";

/// Longest wait for the leader's answer to a forwarded request. The leader's own deadline for
/// the request (5 s) is shorter, so this fires only when the leader is unreachable.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach a member's client API. Implemented from the replicated member registry (the
/// members' client URLs); a channel is usually built once per member and cloned.
pub trait LeaderChannel: Send + Sync {
    /// A channel to `leader`'s client endpoint, or `None` when its address is not known.
    fn channel(&self, leader: NodeId) -> Option<Channel>;
}

/// Knows no member: every follower answers `etcdserver: not leader`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLeaderChannel;

impl LeaderChannel for NoLeaderChannel {
    fn channel(&self, _leader: NodeId) -> Option<Channel> {
        None
    }
}

/// Whether the request was forwarded to this node by another member.
pub fn is_forwarded(metadata: &MetadataMap) -> bool {
    metadata.contains_key(FORWARDED_HEADER)
}

/// The request to send to the leader: `message`, marked as forwarded.
pub fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    request.set_timeout(FORWARD_TIMEOUT);
    request
}

impl Context {
    /// Where to send a request the node refused with `error`: the leader's channel when `error`
    /// is a redirect to a known leader and the request was not forwarded already; otherwise the
    /// status to answer with.
    pub fn leader_channel(&self, error: NodeError, forwarded: bool) -> Result<Channel, Status> {
        let NodeError::NotLeader {
            leader: Some(leader),
        } = error
        else {
            return Err(status::from_node(&error));
        };
        if forwarded || leader == self.node.with_status(|status| status.id) {
            return Err(status::from_node(&error));
        }
        self.leaders
            .channel(leader)
            .ok_or_else(|| status::from_node(&error))
    }
}

/// Awaits a call to the leader, bounded by [`FORWARD_TIMEOUT`]. Transport failures become
/// `Unavailable`, so clients retry.
pub async fn call<T>(forwarded_call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(FORWARD_TIMEOUT, forwarded_call).await {
        Ok(answer) => answer,
        Err(_) => Err(Status::unavailable(status::TIMEOUT)),
    }
}

/// Answers that carry etcd's `ResponseHeader`. A relayed answer is re-signed by the member that
/// was asked: etcd clients read `member_id` as "who answered me", and in etcd the member asked
/// answers itself (it proposes through Raft rather than relaying).
pub trait Relayed {
    fn header_mut(&mut self) -> Option<&mut pb::ResponseHeader>;
}

macro_rules! relayed {
    ($($response:ty),* $(,)?) => {
        $(impl Relayed for $response {
            fn header_mut(&mut self) -> Option<&mut pb::ResponseHeader> {
                self.header.as_mut()
            }
        })*
    };
}

relayed!(
    pb::RangeResponse,
    pb::PutResponse,
    pb::DeleteRangeResponse,
    pb::TxnResponse,
    pb::CompactionResponse,
    pb::LeaseGrantResponse,
    pb::LeaseRevokeResponse,
    pb::LeaseTimeToLiveResponse,
    pb::MemberAddResponse,
    pb::MemberRemoveResponse,
    pb::MemberUpdateResponse,
    pb::MemberListResponse,
    pb::MemberPromoteResponse,
    pb::MoveLeaderResponse,
);

impl Context {
    /// [`call`], then the answer's header names this member (the leader's revision and term
    /// stay: they describe the answer).
    pub async fn relay<T: Relayed>(
        &self,
        forwarded_call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let mut response = call(forwarded_call).await?;
        if let Some(header) = response.get_mut().header_mut() {
            header.member_id = self.node.with_status(|status| status.id);
        }
        Ok(response)
    }
}
