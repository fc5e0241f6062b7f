//! etcd's Maintenance service, answered by the member the client talks to (as etcd does), except
//! MoveLeader, which only the leader can start (a follower forwards it).
//!
//! - Status: etcd's fields from the node's status; `version` is the etcd API version ballot
//!   speaks ([`ETCD_VERSION`]), which `etcdctl endpoint status` prints and Go `clientv3` parses
//!   as `major.minor.patch` when told to reject old clusters.
//! - Snapshot: the store's snapshot (`MvccStore::snapshot`, the state at one applied index) streamed
//!   in 32 KiB chunks, then the SHA-256 of everything sent as a last message, as etcd does.
//!   `etcdctl snapshot save` (clientv3 `snapshot.SaveWithVersion`) refuses a download whose
//!   size is not `512 * n + 32` ("sha256 checksum not found"), because bbolt files are whole
//!   pages; ballot's snapshot is not, so it is framed to a multiple of 512 bytes before
//!   hashing (see [`crate::backup`]). A reader strips the 32-byte digest and checks it, reads
//!   the snapshot's length from the last 8 bytes, and restores the snapshot that many bytes
//!   long (`MvccStore::restore` checks its own CRC).
//! - Defragment: a no-op. The store's segment GC reclaims the space compaction frees as writes
//!   go on, so there is nothing to defragment; answering success keeps `etcdctl defrag` and operators' scripts working.
//! - Alarm: ballot raises no alarms (no space quota, corruption stops the node), so the list is
//!   empty, deactivating is a no-op, and activating is refused.
//! - Hash: etcd hashes its whole bbolt file; ballot answers the HashKV hash at the current
//!   revision, which is what members compare.
//! - Downgrade: not supported.

use super::{forward, status, Context};
use crate::backup::snapshot_payload;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use bytes::Bytes;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The etcd version ballot's API corresponds to.
pub const ETCD_VERSION: &str = "3.5.0";
/// etcd's snapshot chunk size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// How long MoveLeader waits for the target to lead.
pub const MOVE_LEADER_WAIT: Duration = Duration::from_secs(5);
const MOVE_LEADER_POLL: Duration = Duration::from_millis(10);

pub struct MaintenanceService {
    context: Context,
}

impl MaintenanceService {
    pub fn new(context: Context) -> Self {
        Self { context }
    }

    /// Runs blocking store work (whole-store reads) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ballot_storage::mvcc::MvccStore) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.context.node.store().clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| Status::internal(format!("store task failed: {error}")))?
    }
}

type SnapshotChunks = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let action = request.get_ref().action;
        match AlarmAction::try_from(action) {
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => {
                Ok(Response::new(pb::AlarmResponse {
                    header: Some(self.context.current_header()),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(Status::unimplemented(
                "ballot raises no alarms; activating one is not supported",
            )),
            Err(_) => Err(status::unknown_enum("AlarmRequest.action", action)),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let node = self.context.node.status();
        let (db_size, db_size_in_use) = self
            .blocking(|store| {
                // The segment files, and the records the state still refers to in them.
                let space = store.space().map_err(|e| status::from_mvcc(&e))?;
                Ok((space.file_bytes, space.live_bytes))
            })
            .await?;
        let leader = node.leader.unwrap_or(0);
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push(status::NO_LEADER.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.context.current_header()),
            version: ETCD_VERSION.to_string(),
            db_size: db_size as i64,
            leader,
            raft_index: node.commit_index,
            raft_term: node.term,
            raft_applied_index: node.applied_index,
            errors,
            db_size_in_use: db_size_in_use as i64,
            is_learner: node.learners.contains(&node.id),
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: Some(pb::DowngradeInfo::default()),
        }))
    }

    /// A documented no-op: see the module documentation.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // A no-op, and it says so: the store reuses pages freed by compaction as it goes, so
        // there is nothing to rewrite, and nothing blocks the member the way etcd's defrag does.
        tracing::info!("defragment requested: a no-op (the store reuses freed space online)");
        let mut response = Response::new(pb::DefragmentResponse {
            header: Some(self.context.current_header()),
        });
        response.metadata_mut().insert(
            status::DETAIL_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(DEFRAGMENT_NOTE),
        );
        Ok(response)
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let revision = self.context.node.store().revision();
        let (hash, _) = self
            .blocking(move |store| store.hash_kv(revision).map_err(|e| status::from_mvcc(&e)))
            .await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.context.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let requested = request.get_ref().revision;
        let current = self.context.node.store().revision();
        let hash_revision = if requested == 0 { current } else { requested };
        let (hash, compact_revision) = self
            .blocking(move |store| {
                store
                    .hash_kv(hash_revision)
                    .map_err(|e| status::from_mvcc(&e))
            })
            .await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.context.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotChunks;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (body, digest) = self
            .blocking(|store| {
                let snapshot = store.snapshot().map_err(|e| status::from_mvcc(&e))?;
                Ok(snapshot_payload(&snapshot))
            })
            .await?;
        let header = self.context.current_header();
        let body = Bytes::from(body);
        let total = body.len();
        let chunks = (0..total)
            .step_by(SNAPSHOT_CHUNK_BYTES)
            .map(move |start| {
                let end = (start + SNAPSHOT_CHUNK_BYTES).min(total);
                (body.slice(start..end), (total - end) as u64)
            })
            .chain(std::iter::once((Bytes::copy_from_slice(&digest), 0)))
            .map(move |(blob, remaining_bytes)| {
                Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes,
                    blob,
                    version: String::new(),
                })
            });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    /// Starts a leadership transfer (on the leader; a follower forwards) and waits until the
    /// target leads, as etcd does.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let forwarded = forward::is_forwarded(request.metadata());
        let message = request.into_inner();
        let target = message.target_id;
        match self.context.node.transfer_leadership(target).await {
            Ok(()) => {}
            Err(crate::node::NodeError::Rejected(
                ballot_core::ReplicaError::UnknownNode { .. }
                | ballot_core::ReplicaError::NotAVoter { .. },
            )) => {
                return Err(status::with_detail(
                    tonic::Code::FailedPrecondition,
                    status::BAD_LEADER_TRANSFEREE,
                    format!("{target:x} is not a voting member"),
                ))
            }
            Err(error) => {
                let channel = self.context.leader_channel(error, forwarded)?;
                return self
                    .context
                    .relay(MaintenanceClient::new(channel).move_leader(forward::request(message)))
                    .await;
            }
        }
        let deadline = Instant::now() + MOVE_LEADER_WAIT;
        while self.context.node.status().leader != Some(target) {
            if Instant::now() >= deadline {
                return Err(Status::unavailable(status::LEADER_TRANSFER_TIMEOUT));
            }
            tokio::time::sleep(MOVE_LEADER_POLL).await;
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.context.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("ballot does not support downgrades"))
    }
}

/// What a Defragment call is told (response metadata `ballot-detail`).
pub const DEFRAGMENT_NOTE: &str =
    "defragment is a no-op on ballot: the store reuses space freed by compaction online";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::snapshot_from_payload;

    #[test]
    fn the_payload_passes_the_etcd_clients_size_check_and_round_trips() {
        for len in [0, 1, 503, 504, 505, 511, 512, 513, 70_000] {
            let snapshot: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (body, digest) = snapshot_payload(&snapshot);
            let mut payload = body.clone();
            payload.extend_from_slice(&digest);
            assert_eq!(payload.len() % 512, 32, "len {len}");
            assert_eq!(snapshot_from_payload(&payload).unwrap(), &snapshot[..]);
            payload[0] ^= 1;
            assert!(snapshot_from_payload(&payload).is_err());
        }
    }
}
