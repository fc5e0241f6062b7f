//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are validated at the edge (operations per txn level against `max_txn_ops`, the
//! storage layer's stateless checks, then the encoded size against `max_request_bytes`, in
//! etcd's order) and proposed; nothing is proposed when a check fails. A Range is linearizable by
//! default (a ReadIndex barrier, then the local store) and served from the local store at once
//! when `serializable`; ballot's read levels ([`ReadLevel`], in request metadata) add a leader
//! lease read. On a follower, writes and linearizable reads go to the leader
//! ([`super::forward`]). Transactions always go through the log, read-only ones included (the
//! store has no read-only transaction path yet). A Put, DeleteRange or Txn with
//! [`super::fence::FENCE_HEADER`] metadata is applied only while its lock is held with its token
//! ([`super::fence`]). A Put with [`super::sequential::SEQUENTIAL_HEADER`] creates the next
//! sequential key under its key ([`super::sequential`]).

use super::fence::{self, Fence, FENCE_HEADER};
use super::sequential;
use super::{convert, forward, status, Context};
use crate::node::NodeHandle;
use ballot_core::{GroupId, ReadMode};
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_storage::mvcc::limits;
use ballot_storage::mvcc::types::{Command, CommandResult};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

/// Metadata entry choosing how a Range is served, beyond etcd's `serializable` flag: ballot's
/// read levels, as Consul names them. Without it a Range is `consistent` (etcd's linearizable
/// default); `serializable = true` wins over it.
pub const READ_LEVEL_HEADER: &str = "ballot-read-level";

/// Metadata entry naming the group (`ballot group create`) whose keyspace a request reads and
/// writes; without it, group 0's (the one etcd clients know).
pub const GROUP_HEADER: &str = "ballot-group";

/// Metadata entry marking a key request one member relayed to another because it hosts no
/// replica of the request's group: the receiver serves it or refuses it, never relays again.
pub const GROUP_RELAYED_HEADER: &str = "ballot-group-relayed";

/// Where a key request is served.
pub enum GroupTarget {
    /// This node hosts a replica of the group (group 0 always).
    Here(NodeHandle),
    /// Another member does: the request goes there whole.
    Elsewhere(tonic::transport::Channel, GroupId),
}

/// The group `metadata` names (group 0 without [`GROUP_HEADER`]), here or on a member that
/// hosts it.
pub async fn group_of_request(
    context: &Context,
    metadata: &MetadataMap,
) -> Result<GroupTarget, Status> {
    let Some(value) = metadata.get(GROUP_HEADER) else {
        return Ok(GroupTarget::Here(context.node.clone()));
    };
    let text = value.to_str().unwrap_or("");
    let group = text.parse::<GroupId>().map_err(|_| {
        Status::invalid_argument(format!(
            "{GROUP_HEADER} is {text:?}; use a group id (`ballot group list` shows them)"
        ))
    })?;
    let error = match context.node.group_caught_up(group).await {
        Ok(node) => return Ok(GroupTarget::Here(node)),
        Err(error) => error,
    };
    let replicas = context
        .node
        .catalog()
        .iter()
        .find(|record| record.id == group)
        .map(|record| record.replicas.clone());
    let (Some(replicas), false) = (replicas, metadata.contains_key(GROUP_RELAYED_HEADER)) else {
        return Err(status::from_node(&error));
    };
    replicas
        .iter()
        .find_map(|&replica| context.leaders.channel(replica))
        .map(|channel| GroupTarget::Elsewhere(channel, group))
        .ok_or_else(|| {
            Status::unavailable(format!(
                "group {group} has no replica on this member, and no client URL of its \
                 replicas is known here"
            ))
        })
}

/// Returns once `node`'s group knows a leader, or the request timeout passed. A group other than
/// 0 elects on demand (just created, or woken from hibernation), so a request that finds it
/// without a leader waits for one, as etcd's requests wait out an election, rather than failing
/// at once. Group 0 answers "no leader" at once, as it always has.
async fn leader_elected(node: &NodeHandle) {
    if node.group_id() != 0 && node.with_status(|status| status.leader.is_none()) {
        node.wait_for_leader().await;
    }
}

/// `message` relayed whole to a member hosting `group`.
fn relayed_to_group<T>(message: T, group: GroupId) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(GROUP_HEADER, MetadataValue::from(group));
    metadata.insert(GROUP_RELAYED_HEADER, MetadataValue::from_static("1"));
    request.set_timeout(forward::FORWARD_TIMEOUT);
    request
}

/// `message` to send to the leader of `node`'s group: marked forwarded, and naming the group.
fn forwarded_to<T>(node: &NodeHandle, message: T) -> Request<T> {
    let mut request = forward::request(message);
    if node.group_id() != 0 {
        request
            .metadata_mut()
            .insert(GROUP_HEADER, MetadataValue::from(node.group_id()));
    }
    request
}

/// How much a read may trail the latest committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLevel {
    /// Any member's local store, at once: may be arbitrarily stale (a partitioned member keeps
    /// answering). etcd's `serializable`.
    Stale,
    /// The leader answers from its store while its lease holds (no round trip), otherwise after
    /// a ReadIndex round. Linearizable unless clocks drift beyond the lease's margin.
    Default,
    /// A ReadIndex round on the leader before answering: linearizable whatever the clocks do.
    Consistent,
}

impl ReadLevel {
    pub const NAMES: &'static str = "stale, default or consistent";

    pub fn parse(text: &str) -> Option<ReadLevel> {
        match text {
            "stale" => Some(ReadLevel::Stale),
            "default" => Some(ReadLevel::Default),
            "consistent" => Some(ReadLevel::Consistent),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReadLevel::Stale => "stale",
            ReadLevel::Default => "default",
            ReadLevel::Consistent => "consistent",
        }
    }

    /// The level a request asks for, if any; an unknown level is refused rather than guessed.
    pub fn of_request(metadata: &MetadataMap) -> Result<Option<ReadLevel>, Status> {
        let Some(value) = metadata.get(READ_LEVEL_HEADER) else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or("");
        ReadLevel::parse(text).map(Some).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{READ_LEVEL_HEADER} is {text:?}; use {}",
                ReadLevel::NAMES
            ))
        })
    }

    pub fn mark(self, metadata: &mut MetadataMap) {
        metadata.insert(READ_LEVEL_HEADER, MetadataValue::from_static(self.name()));
    }
}

pub struct KvService {
    context: Context,
}

impl KvService {
    pub fn new(context: Context) -> Self {
        Self { context }
    }

    /// The edge checks of a write, in etcd's order; `Ok` means it may be proposed.
    fn check_write(&self, message: &impl Message, command: &Command) -> Result<(), Status> {
        limits::validate_command(command).map_err(|error| status::from_apply(&error))?;
        let bytes = message.encoded_len();
        let max = self.context.limits.max_request_bytes;
        if bytes > max {
            return Err(status::request_too_large(bytes, max));
        }
        Ok(())
    }

    /// `op` applied behind `fence` ([`fence::apply`]): the answer `unwrap` finds in the fenced
    /// txn's first response, with that txn's header.
    async fn fenced<T: forward::Relayed>(
        &self,
        fence: Fence,
        op: Op,
        unwrap: fn(OpResponse) -> Option<T>,
    ) -> Result<Response<T>, Status> {
        let (header, answer) = fence::apply(self, &fence, op).await?;
        let mut answer = unwrap(answer).ok_or_else(|| {
            Status::internal("a fenced write answered as another kind of request")
        })?;
        if let Some(slot) = answer.header_mut() {
            *slot = header;
        }
        Ok(Response::new(answer))
    }

    /// A Put of the next sequential key under its key ([`sequential`]).
    async fn sequential_put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        for other in [FENCE_HEADER, GROUP_HEADER] {
            if request.metadata().contains_key(other) {
                return Err(Status::invalid_argument(format!(
                    "{} with {other}: sequential keys are group 0's and unfenced for now",
                    sequential::SEQUENTIAL_HEADER
                )));
            }
        }
        let (key, answer) = sequential::put(self, request.into_inner()).await?;
        let mut response = Response::new(answer);
        response.metadata_mut().insert_bin(
            sequential::CREATED_KEY_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&key),
        );
        Ok(response)
    }

    /// Proposes `command` to `node`'s group; on a follower, `Err(channel)` says where to
    /// forward the request.
    async fn propose(
        &self,
        node: &NodeHandle,
        command: Command,
        forwarded: bool,
    ) -> Result<Result<CommandResult, tonic::transport::Channel>, Status> {
        leader_elected(node).await;
        match node.propose(command).await {
            Ok(result) => Ok(Ok(result)),
            Err(error) => Ok(Err(self.context.leader_channel(error, forwarded)?)),
        }
    }
}

/// etcd's `checkTxnRequest`, in its order, so that a request with several faults gets etcd's
/// answer: at each level the op budget (at most `ops_max` compares, success ops and failure ops;
/// a nested transaction gets what its parent level left), then the compares' keys, then each op
/// in turn (success first), a nested transaction checked whole where it stands. `limit` is the
/// configured `max_txn_ops`, for the detail.
pub fn check_txn_request(txn: &pb::TxnRequest, ops_max: usize, limit: usize) -> Result<(), Status> {
    let ops = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if ops > ops_max {
        return Err(status::too_many_ops(ops, limit));
    }
    if txn.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(Status::invalid_argument(status::EMPTY_KEY));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        check_request_op(op, ops_max - ops, limit)?;
    }
    Ok(())
}

/// etcd's `checkRequestOp`: an op that holds no request is "key not found", as etcd answers.
fn check_request_op(op: &pb::RequestOp, ops_max: usize, limit: usize) -> Result<(), Status> {
    use pb::request_op::Request;
    let empty_key = || Err(Status::invalid_argument(status::EMPTY_KEY));
    match &op.request {
        Some(Request::RequestRange(range)) if range.key.is_empty() => empty_key(),
        Some(Request::RequestDeleteRange(delete)) if delete.key.is_empty() => empty_key(),
        Some(Request::RequestPut(put)) => {
            limits::validate_command(&Command::Put(convert::put_request(put)))
                .map_err(|error| status::from_apply(&error))
        }
        Some(Request::RequestTxn(nested)) => check_txn_request(nested, ops_max, limit),
        Some(Request::RequestRange(_) | Request::RequestDeleteRange(_)) => Ok(()),
        None => Err(Status::invalid_argument(status::KEY_NOT_FOUND)),
    }
}

fn unexpected(result: CommandResult) -> Status {
    Status::internal(format!(
        "unexpected result from the state machine: {result:?}"
    ))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let level = ReadLevel::of_request(request.metadata())?;
        let target = group_of_request(&self.context, request.metadata()).await?;
        let message = request.into_inner();
        let node = match target {
            GroupTarget::Here(node) => node,
            GroupTarget::Elsewhere(channel, group) => {
                let mut request = relayed_to_group(message, group);
                if let Some(level) = level {
                    level.mark(request.metadata_mut());
                }
                return self
                    .context
                    .relay(KvClient::new(channel).range(request))
                    .await;
            }
        };
        let range = convert::range_request(&message)?;
        limits::check_range_request(&range).map_err(|error| status::from_apply(&error))?;
        let mode = match (message.serializable, level) {
            (true, _) | (false, Some(ReadLevel::Stale)) => None,
            (false, Some(ReadLevel::Default)) => Some(ReadMode::Lease),
            (false, Some(ReadLevel::Consistent) | None) => Some(ReadMode::ReadIndex),
        };
        if let Some(mode) = mode {
            leader_elected(&node).await;
            if let Err(error) = node.read(mode).await {
                let channel = self.context.leader_channel(error, forwarded)?;
                let mut request = forwarded_to(&node, message);
                if let Some(level) = level {
                    level.mark(request.metadata_mut());
                }
                return self
                    .context
                    .relay(KvClient::new(channel).range(request))
                    .await;
            }
        }
        let response = node
            .store()
            .range(&range)
            .map_err(|error| status::from_mvcc(&error))?;
        let header = self.context.header(response.revision);
        Ok(Response::new(convert::range_response(response, header)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        if sequential::is_requested(request.metadata()) {
            return self.sequential_put(request).await;
        }
        if let Some(fence) = Fence::of_request(request.metadata())? {
            let op = Op::RequestPut(request.into_inner());
            return self
                .fenced(fence, op, |answer| match answer {
                    OpResponse::ResponsePut(put) => Some(put),
                    _ => None,
                })
                .await;
        }
        let forwarded = forward::is_forwarded(request.metadata());
        let target = group_of_request(&self.context, request.metadata()).await?;
        let message = request.into_inner();
        let node = match target {
            GroupTarget::Here(node) => node,
            GroupTarget::Elsewhere(channel, group) => {
                return self
                    .context
                    .relay(KvClient::new(channel).put(relayed_to_group(message, group)))
                    .await
            }
        };
        let command = Command::Put(convert::put_request(&message));
        self.check_write(&message, &command)?;
        match self.propose(&node, command, forwarded).await? {
            Ok(CommandResult::Put(put)) => {
                let header = self.context.header(put.revision);
                Ok(Response::new(convert::put_response(put, header)))
            }
            Ok(other) => Err(unexpected(other)),
            Err(channel) => {
                self.context
                    .relay(KvClient::new(channel).put(forwarded_to(&node, message)))
                    .await
            }
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        if let Some(fence) = Fence::of_request(request.metadata())? {
            let op = Op::RequestDeleteRange(request.into_inner());
            return self
                .fenced(fence, op, |answer| match answer {
                    OpResponse::ResponseDeleteRange(delete) => Some(delete),
                    _ => None,
                })
                .await;
        }
        let forwarded = forward::is_forwarded(request.metadata());
        let target = group_of_request(&self.context, request.metadata()).await?;
        let message = request.into_inner();
        let node = match target {
            GroupTarget::Here(node) => node,
            GroupTarget::Elsewhere(channel, group) => {
                return self
                    .context
                    .relay(KvClient::new(channel).delete_range(relayed_to_group(message, group)))
                    .await
            }
        };
        let command = Command::DeleteRange(convert::delete_range_request(&message));
        self.check_write(&message, &command)?;
        match self.propose(&node, command, forwarded).await? {
            Ok(CommandResult::DeleteRange(delete)) => {
                let header = self.context.header(delete.revision);
                Ok(Response::new(convert::delete_range_response(
                    delete, header,
                )))
            }
            Ok(other) => Err(unexpected(other)),
            Err(channel) => {
                self.context
                    .relay(KvClient::new(channel).delete_range(forwarded_to(&node, message)))
                    .await
            }
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        if let Some(fence) = Fence::of_request(request.metadata())? {
            let op = Op::RequestTxn(request.into_inner());
            return self
                .fenced(fence, op, |answer| match answer {
                    OpResponse::ResponseTxn(txn) => Some(txn),
                    _ => None,
                })
                .await;
        }
        let forwarded = forward::is_forwarded(request.metadata());
        let target = group_of_request(&self.context, request.metadata()).await?;
        let message = request.into_inner();
        let node = match target {
            GroupTarget::Here(node) => node,
            GroupTarget::Elsewhere(channel, group) => {
                return self
                    .context
                    .relay(KvClient::new(channel).txn(relayed_to_group(message, group)))
                    .await
            }
        };
        let ops_max = self.context.limits.max_txn_ops;
        check_txn_request(&message, ops_max, ops_max)?;
        let command = Command::Txn(convert::txn_request(&message)?);
        self.check_write(&message, &command)?;
        match self.propose(&node, command, forwarded).await? {
            Ok(CommandResult::Txn(txn)) => {
                let header = self.context.header(txn.revision);
                Ok(Response::new(convert::txn_response(txn, header)))
            }
            Ok(other) => Err(unexpected(other)),
            Err(channel) => {
                self.context
                    .relay(KvClient::new(channel).txn(forwarded_to(&node, message)))
                    .await
            }
        }
    }

    /// `physical` is accepted and ignored: compacted history is unreadable from the moment the
    /// compaction is applied on this member, and its space is reclaimed by segment GC as writes
    /// go on (there is no later step to wait for).
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let target = group_of_request(&self.context, request.metadata()).await?;
        let message = request.into_inner();
        let node = match target {
            GroupTarget::Here(node) => node,
            GroupTarget::Elsewhere(channel, group) => {
                return self
                    .context
                    .relay(KvClient::new(channel).compact(relayed_to_group(message, group)))
                    .await
            }
        };
        let command = Command::Compact {
            revision: message.revision,
        };
        match self.propose(&node, command, forwarded).await? {
            Ok(CommandResult::Compact { .. }) => Ok(Response::new(pb::CompactionResponse {
                header: Some(self.context.current_header()),
            })),
            Ok(other) => Err(unexpected(other)),
            Err(channel) => {
                self.context
                    .relay(KvClient::new(channel).compact(forwarded_to(&node, message)))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn op(request: Request) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request),
        }
    }

    fn put(key: &str) -> pb::RequestOp {
        op(Request::RequestPut(pb::PutRequest {
            key: key.to_string().into(),
            ..Default::default()
        }))
    }

    fn message(txn: &pb::TxnRequest, ops_max: usize) -> String {
        check_txn_request(txn, ops_max, ops_max)
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn txn_checks_run_in_etcds_order() {
        let too_big_nested = pb::TxnRequest {
            success: vec![put("a"), put("b"), put("c")],
            ..Default::default()
        };
        let empty_compare = pb::Compare {
            key: bytes::Bytes::new(),
            ..Default::default()
        };
        // The compares' keys are checked before the nested transaction's budget.
        let txn = pb::TxnRequest {
            compare: vec![empty_compare.clone()],
            success: vec![op(Request::RequestTxn(too_big_nested.clone()))],
            ..Default::default()
        };
        assert_eq!(message(&txn, 3), status::EMPTY_KEY);
        // An op before the nested transaction is checked before it...
        let txn = pb::TxnRequest {
            success: vec![put(""), op(Request::RequestTxn(too_big_nested.clone()))],
            ..Default::default()
        };
        assert_eq!(message(&txn, 3), status::EMPTY_KEY);
        // ...and one after it, after it.
        let txn = pb::TxnRequest {
            success: vec![op(Request::RequestTxn(too_big_nested)), put("")],
            ..Default::default()
        };
        assert_eq!(message(&txn, 3), status::TOO_MANY_OPS);
        // The level's own budget comes first of all.
        let txn = pb::TxnRequest {
            compare: vec![empty_compare; 4],
            ..Default::default()
        };
        assert_eq!(message(&txn, 3), status::TOO_MANY_OPS);
        // An op that holds nothing is etcd's "key not found".
        let txn = pb::TxnRequest {
            failure: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(message(&txn, 3), status::KEY_NOT_FOUND);
        let fine = pb::TxnRequest {
            success: vec![put("a")],
            ..Default::default()
        };
        assert!(check_txn_request(&fine, 3, 3).is_ok());
    }
}
