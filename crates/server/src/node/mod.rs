//! A running ballot node: the node loop thread with the groups it hosts, its ticker, the peer
//! transport, and the handle through which client APIs reach them. See `docs/design/server.md`.

pub mod catalog;
mod envelope;
mod events;
mod force_new_cluster;
mod group_host;
mod inbox;
mod latency;
mod liveness;
pub mod members;
mod node_loop;

pub use catalog::{CatalogError, GroupRecord};
pub use latency::{LatencySnapshot, ETCD_DISK_BOUNDS_MICROS, ETCD_ROUND_TRIP_BOUNDS_MICROS};
pub use members::{MemberCommand, MemberInfo};

use crate::config::ServerConfig;
use crate::transport::{InboundConnection, Transport, TransportConfig};
use ballot_core::{
    GroupId, LogIndex, LogPosition, MembershipChange, NodeId, ReadMode, Replica, ReplicaError,
    ReplicaSettings, ReplicaStart, Role, Term, WireMessage,
};
use ballot_storage::dir_lock::DirLock;
use ballot_storage::identity::Identity;
use ballot_storage::lessor::LessorError;
use ballot_storage::mvcc::types::{Command, CommandResult};
use ballot_storage::mvcc::types::{Lease, LeaseId};
use ballot_storage::mvcc::{ApplyError, MvccStore};
use ballot_storage::watch::{StreamId, WatchCreate, WatchError, WatchId, WatchResponse};
use inbox::InputSender;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Inputs queued for the replica loop before callers are told to back off.
pub const INPUTS_QUEUED_MAX: usize = 4096;

/// What a caller can be told instead of a result. The messages are etcd's where etcd has one,
/// so etcd client libraries recognise them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("etcdserver: not leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("{0}")]
    Rejected(ReplicaError),
    #[error("{0}")]
    Apply(ApplyError),
    #[error("{0}")]
    Watch(WatchError),
    #[error("{0}")]
    Lease(LessorError),
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    #[error("ballot: this node hosts no group {0} (`ballot group list` shows where groups are)")]
    UnknownGroup(GroupId),
    #[error("ballot: {0}")]
    Catalog(CatalogError),
}

impl From<LessorError> for NodeError {
    fn from(error: LessorError) -> Self {
        match error {
            LessorError::NotLeader => NodeError::NotLeader { leader: None },
            other => NodeError::Lease(other),
        }
    }
}

impl From<ReplicaError> for NodeError {
    fn from(error: ReplicaError) -> Self {
        match error {
            ReplicaError::NotLeader { leader_hint } => NodeError::NotLeader {
                leader: leader_hint,
            },
            ReplicaError::Busy { .. } => NodeError::TooManyRequests,
            other => NodeError::Rejected(other),
        }
    }
}

/// A snapshot of the node's state for Status, metrics and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    /// The cluster's id: as the member registry records it, or (until it does) as this member's
    /// identity file derived it.
    pub cluster_id: u64,
    pub role: Option<Role>,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub leader_changes: u64,
    pub proposals_committed: u64,
    pub proposals_failed: u64,
    /// Proposals (this member's own and those it forwarded) waiting to be applied.
    pub proposals_pending: u64,
    /// The last index the log was compacted at (the store durable through it), 0 if never.
    pub compaction_index: LogIndex,
    /// Snapshot images this node built for followers that needed one.
    pub snapshot_images_built: u64,
    /// Snapshot images this node installed from a leader.
    pub snapshot_images_installed: u64,
    /// Peer messages of a group this node does not host, dropped.
    pub unknown_group_messages: u64,
    /// Groups this node hosts a replica of, group 0 included.
    pub groups_hosted: u64,
    /// Of those, the ones hibernating (not ticked until something wakes them).
    pub groups_asleep: u64,
    /// Times node liveness declared a peer down (nothing heard for an election timeout).
    pub peers_declared_down: u64,
    /// WAL fdatasync latencies.
    pub wal_sync: LatencySnapshot,
    /// Per peer: time from a heartbeat sent to the next heartbeat answer from that peer (the
    /// network both ways plus the peer's loop), measured only while this node leads.
    pub peer_round_trips: Vec<(NodeId, LatencySnapshot)>,
    /// Every voter and learner, with what the registry knows of it.
    pub members: Vec<MemberInfo>,
    /// Group 0's: every group the catalog records, as this node has applied it.
    pub catalog: Arc<Vec<GroupRecord>>,
}

pub(crate) enum Input {
    Tick,
    /// An input for a group other than 0 (every other variant alone is group 0's).
    ToGroup {
        group: GroupId,
        input: Box<Input>,
    },
    /// Proposes a new group to the catalog (group 0's).
    CreateGroup {
        requested: Option<GroupId>,
        replicas: usize,
        reply: oneshot::Sender<Result<GroupRecord, NodeError>>,
    },
    RemoveGroup {
        id: GroupId,
        reply: oneshot::Sender<Result<GroupRecord, NodeError>>,
    },
    /// Answered by the node loop once every batch before it has been handled, catalog changes
    /// followed (groups started and stopped) included.
    CatalogFollowed {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    /// An accepted peer connection, past its hello: the loop reads its frames from now on.
    PeerConnection(InboundConnection),
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<CommandResult, NodeError>>,
    },
    ProposeMember {
        command: MemberCommand,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Read {
        mode: ReadMode,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<LogPosition, NodeError>>,
    },
    TransferLeadership {
        target: NodeId,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    WatchOpen {
        reply: oneshot::Sender<Result<(StreamId, mpsc::Receiver<WatchResponse>), NodeError>>,
    },
    WatchCreate {
        stream: StreamId,
        create: WatchCreate,
        reply: oneshot::Sender<Result<WatchId, NodeError>>,
    },
    WatchCancel {
        stream: StreamId,
        watch_id: WatchId,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    WatchProgress {
        stream: StreamId,
    },
    WatchClose {
        stream: StreamId,
    },
    LeaseKeepAlive {
        id: LeaseId,
        reply: oneshot::Sender<Result<i64, NodeError>>,
    },
    LeaseTimeToLive {
        id: LeaseId,
        reply: oneshot::Sender<Result<(Lease, i64), NodeError>>,
    },
    /// A state machine image for a follower, built off the loop (see `GroupHost::build_image`).
    SnapshotEncoded {
        applied: LogIndex,
        result: Result<bytes::Bytes, String>,
    },
    /// The compaction marker for `index` is durable (or could not be written).
    CompactionSaved {
        index: LogIndex,
        result: Result<(), String>,
    },
    Stop,
}

impl Input {
    /// `input` addressed to `group`.
    pub(crate) fn for_group(group: GroupId, input: Input) -> Input {
        if group == 0 {
            input
        } else {
            Input::ToGroup {
                group,
                input: Box::new(input),
            }
        }
    }

    /// Answers whoever waits on this input with `error` instead (its group is not here).
    pub(crate) fn refuse(self, error: NodeError) {
        fn answer<T>(reply: oneshot::Sender<Result<T, NodeError>>, error: NodeError) {
            let _ = reply.send(Err(error));
        }
        match self {
            Input::Propose { reply, .. } => answer(reply, error),
            Input::ProposeMember { reply, .. } | Input::Read { reply, .. } => answer(reply, error),
            Input::TransferLeadership { reply, .. } | Input::WatchCancel { reply, .. } => {
                answer(reply, error)
            }
            Input::ChangeMembership { reply, .. } => answer(reply, error),
            Input::CreateGroup { reply, .. } | Input::RemoveGroup { reply, .. } => {
                answer(reply, error)
            }
            Input::CatalogFollowed { reply } => answer(reply, error),
            Input::WatchOpen { reply } => answer(reply, error),
            Input::WatchCreate { reply, .. } => answer(reply, error),
            Input::LeaseKeepAlive { reply, .. } => answer(reply, error),
            Input::LeaseTimeToLive { reply, .. } => answer(reply, error),
            Input::ToGroup { input, .. } => input.refuse(error),
            Input::Tick
            | Input::PeerConnection(_)
            | Input::WatchProgress { .. }
            | Input::WatchClose { .. }
            | Input::SnapshotEncoded { .. }
            | Input::CompactionSaved { .. }
            | Input::Stop => {}
        }
    }
}

/// What client handles reach of a group other than 0 that this node hosts.
#[derive(Clone)]
pub(crate) struct GroupCell {
    pub(crate) store: Arc<MvccStore>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) leader_found: Arc<tokio::sync::Notify>,
}

/// The groups this node hosts (beyond 0), kept by the node loop as the catalog changes.
pub(crate) type GroupCells = Arc<RwLock<BTreeMap<GroupId, GroupCell>>>;

/// One client watch stream: create and cancel watches on it, read their responses from
/// `responses`. Closed on drop.
pub struct WatchStream {
    pub id: StreamId,
    pub responses: mpsc::Receiver<WatchResponse>,
    inputs: InputSender,
}

impl WatchStream {
    pub async fn create(
        &self,
        handle: &NodeHandle,
        create: WatchCreate,
    ) -> Result<WatchId, NodeError> {
        let stream = self.id;
        handle
            .call(|reply| Input::WatchCreate {
                stream,
                create,
                reply,
            })
            .await
    }

    pub async fn cancel(&self, handle: &NodeHandle, watch_id: WatchId) -> Result<(), NodeError> {
        let stream = self.id;
        handle
            .call(|reply| Input::WatchCancel {
                stream,
                watch_id,
                reply,
            })
            .await
    }

    /// etcd's RequestProgress: an empty response with the current revision once caught up.
    pub fn request_progress(&self) {
        let _ = self
            .inputs
            .try_send(Input::WatchProgress { stream: self.id });
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let inputs = self.inputs.clone();
        let stream = self.id;
        // The close must not be lost to a momentarily full queue, or the hub keeps the stream.
        tokio::spawn(async move {
            let _ = inputs.send(Input::WatchClose { stream }).await;
        });
    }
}

/// How client APIs talk to the node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    /// The group this handle's calls, store and status are of (0 unless [`NodeHandle::group`]
    /// made it).
    group: GroupId,
    inputs: InputSender,
    store: Arc<MvccStore>,
    status: Arc<Mutex<NodeStatus>>,
    /// Woken when this group's replica learns of a leader after knowing none.
    leader_found: Arc<tokio::sync::Notify>,
    cells: GroupCells,
    /// Group 0's, whatever group this handle is of (the catalog lives there).
    zero_status: Arc<Mutex<NodeStatus>>,
    zero_store: Arc<MvccStore>,
    zero_leader_found: Arc<tokio::sync::Notify>,
    request_timeout: Duration,
    cluster_token: Arc<str>,
    /// Durations of the store's durable commits made by the background flusher.
    backend_commits: Arc<Mutex<latency::LatencyHistogram>>,
}

impl NodeHandle {
    /// The same node's handle for `group`: its calls, store and status are that group's.
    pub fn group(&self, group: GroupId) -> Result<NodeHandle, NodeError> {
        if group == self.group {
            return Ok(self.clone());
        }
        if group == 0 {
            return Ok(NodeHandle {
                group: 0,
                status: self.zero_status.clone(),
                store: self.zero_store.clone(),
                leader_found: self.zero_leader_found.clone(),
                ..self.clone()
            });
        }
        let cell = self
            .cells
            .read()
            .expect("group cells lock")
            .get(&group)
            .cloned()
            .ok_or(NodeError::UnknownGroup(group))?;
        Ok(NodeHandle {
            group,
            store: cell.store,
            status: cell.status,
            leader_found: cell.leader_found,
            ..self.clone()
        })
    }

    /// Which group this handle is of.
    pub fn group_id(&self) -> GroupId {
        self.group
    }

    /// [`NodeHandle::group`] for a request that may have raced the group's creation through
    /// another member. When this node does not host `group` yet, it first catches up: a
    /// linearizable read of group 0 (if its catalog does not name the group), so every catalog
    /// change committed before this call is applied here, then a round through the node loop, so
    /// the groups that catalog names are started. `UnknownGroup` then means the group does not
    /// exist, or has no replica on this node.
    pub async fn group_caught_up(&self, group: GroupId) -> Result<NodeHandle, NodeError> {
        match self.group(group) {
            Err(NodeError::UnknownGroup(_)) => {}
            found => return found,
        }
        let zero = self.group(0)?;
        let here = zero.with_status(|status| status.id);
        let hosted_here = zero
            .catalog()
            .iter()
            .find(|record| record.id == group)
            .map(|record| record.replicas.contains(&here));
        match hosted_here {
            Some(false) => return Err(NodeError::UnknownGroup(group)),
            Some(true) => {}
            None => zero.read(ReadMode::ReadIndex).await?,
        }
        zero.call(|reply| Input::CatalogFollowed { reply }).await?;
        self.group(group)
    }

    /// Waits (up to the request timeout) until this group's replica knows a leader; false if
    /// none was found in time. A group other than 0 elects on demand: when just created, or
    /// when a request wakes it from hibernation, so its first request may find no leader yet.
    pub async fn wait_for_leader(&self) -> bool {
        let found = self.leader_found.notified();
        tokio::pin!(found);
        // Registered before the status is read: a leader found in between still wakes it.
        found.as_mut().enable();
        if self.with_status(|status| status.leader.is_some()) {
            return true;
        }
        tokio::time::timeout(self.request_timeout, found)
            .await
            .is_ok()
    }

    /// The groups beyond 0 this node hosts, with their statuses.
    pub fn hosted_groups(&self) -> Vec<(GroupId, NodeStatus)> {
        self.cells
            .read()
            .expect("group cells lock")
            .iter()
            .map(|(&id, cell)| (id, cell.status.lock().expect("status lock").clone()))
            .collect()
    }

    /// Every group the catalog records (as this node has applied it), whether hosted here or
    /// not.
    pub fn catalog(&self) -> Vec<GroupRecord> {
        self.zero_status
            .lock()
            .expect("status lock")
            .catalog
            .as_ref()
            .clone()
    }

    /// Creates a group of `replicas` replicas (with id `requested` if given), placed on the
    /// voters hosting the fewest; answers once the catalog has it (on the leader of group 0).
    pub async fn create_group(
        &self,
        requested: Option<GroupId>,
        replicas: usize,
    ) -> Result<GroupRecord, NodeError> {
        self.group(0)?
            .call(|reply| Input::CreateGroup {
                requested,
                replicas,
                reply,
            })
            .await
    }

    /// Removes group `id` from the catalog; its replicas stop and delete their storage.
    pub async fn remove_group(&self, id: GroupId) -> Result<GroupRecord, NodeError> {
        self.group(0)?
            .call(|reply| Input::RemoveGroup { id, reply })
            .await
    }

    /// The local state machine, for serializable reads (and linearizable ones after `read`).
    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Equal on every member; member ids derive from it and a peer URL.
    pub fn cluster_token(&self) -> &str {
        &self.cluster_token
    }

    /// The cluster's id (see [`NodeStatus::cluster_id`]).
    pub fn cluster_id(&self) -> u64 {
        self.with_status(|status| status.cluster_id)
    }

    /// How long the state machine's durable commits take (etcd's backend commit duration).
    pub fn backend_commit_latency(&self) -> LatencySnapshot {
        self.backend_commits
            .lock()
            .expect("backend commit histogram lock")
            .snapshot()
    }

    pub fn status(&self) -> NodeStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// `read` of the status without copying it: every response header needs two fields of it,
    /// and a copy (members, latency histograms) cost more than the rest of a put's handler.
    pub fn with_status<T>(&self, read: impl FnOnce(&NodeStatus) -> T) -> T {
        read(&self.status.lock().expect("status lock"))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Input,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .try_send(Input::for_group(self.group, make(reply)))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => NodeError::TooManyRequests,
                mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
            })?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Replicates and applies `command` (on the leader); answers with its result.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.call(|reply| Input::Propose { command, reply }).await
    }

    /// Waits until the local store reflects every write committed before this call (ReadIndex or
    /// lease, on the leader); then a read of `store()` is linearizable.
    pub async fn read(&self, mode: ReadMode) -> Result<(), NodeError> {
        self.call(|reply| Input::Read { mode, reply }).await
    }

    /// Replicates a change to the member registry (on the leader).
    pub async fn propose_member(&self, command: MemberCommand) -> Result<(), NodeError> {
        self.call(|reply| Input::ProposeMember { command, reply })
            .await
    }

    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<LogPosition, NodeError> {
        self.call(|reply| Input::ChangeMembership { change, reply })
            .await
    }

    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), NodeError> {
        self.call(|reply| Input::TransferLeadership { target, reply })
            .await
    }

    pub async fn open_watch_stream(&self) -> Result<WatchStream, NodeError> {
        let (id, responses) = self.call(|reply| Input::WatchOpen { reply }).await?;
        Ok(WatchStream {
            id,
            responses,
            inputs: self.inputs.clone(),
        })
    }

    /// Renews a lease on the leader; answers with its TTL once the renewal is replicated, so a
    /// new leader continues from it.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, NodeError> {
        self.call(|reply| Input::LeaseKeepAlive { id, reply }).await
    }

    /// The lease as replicated, and its remaining TTL in seconds by the leader's clock.
    pub async fn lease_time_to_live(&self, id: LeaseId) -> Result<(Lease, i64), NodeError> {
        self.call(|reply| Input::LeaseTimeToLive { id, reply })
            .await
    }
}

/// The addresses a started node actually bound (useful with port 0).
#[derive(Debug, Clone)]
pub struct BoundAddresses {
    pub peer: SocketAddr,
}

/// A started node. Dropping it does not stop it; call [`Node::stop`].
pub struct Node {
    pub handle: NodeHandle,
    pub transport: Arc<Transport>,
    pub addresses: BoundAddresses,
    loop_thread: Option<std::thread::JoinHandle<()>>,
    ticker_stop: Arc<std::sync::atomic::AtomicBool>,
    auto_compaction: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens the data directory (recovering the WAL, snapshot and state machine), binds the peer
    /// listener and starts the replica loop. Must run inside a tokio runtime.
    ///
    /// A directory that holds state restarts from it: who this member is, its cluster and the
    /// membership it started from are read from its identity file, and `--initial-cluster`,
    /// `--initial-cluster-state` and `--initial-cluster-token` are ignored, as etcd ignores them.
    /// An empty directory is created from those flags, its identity written before anything else.
    ///
    /// `new_replica` builds the replica from the node's settings and durable state (the tools
    /// layer passes its engine's constructor, `ballot_raft::Raft::start` today): the node names
    /// no protocol.
    pub async fn start<R>(
        config: ServerConfig,
        new_replica: impl Fn(&ReplicaSettings, ReplicaStart) -> Result<R, String> + Send + 'static,
    ) -> Result<Node, String>
    where
        R: Replica + Send + 'static,
        R::Message: WireMessage,
    {
        config.validate().map_err(|error| error.to_string())?;
        let data_dir = &config.data_dir;
        // Another member's directory is refused before anything in it is touched (the lock file
        // included).
        if let Some(identity) = Identity::load(data_dir).map_err(|e| e.to_string())? {
            check_owner(&identity, &config)?;
        }
        let lock = DirLock::acquire(data_dir).map_err(|e| e.to_string())?;
        let identity = open_identity(&config)?;
        let (inputs, inbox) = inbox::channel(INPUTS_QUEUED_MAX)
            .map_err(|error| format!("cannot set up the replica loop's poll: {error}"))?;
        let peer_listen = crate::config::parse_url(&config.listen_peer_urls[0])?;
        let transport_config =
            TransportConfig::new(identity.member_id, identity.cluster_token.clone());
        let handoff = inputs.clone();
        let deliver = move |connection: InboundConnection| {
            // Waits for room rather than try_send: a connection lost to a momentarily full queue
            // would leave the peer talking into silence. Connections are rare; a task is cheap.
            let handoff = handoff.clone();
            tokio::spawn(async move {
                let _ = handoff.send(Input::PeerConnection(connection)).await;
            });
        };
        let (transport, peer_addr) =
            Transport::start_handing_off(transport_config, peer_listen, deliver)
                .await
                .map_err(|error| format!("cannot listen for peers on {peer_listen}: {error}"))?;
        for member in &identity.initial_members {
            if member.id == identity.member_id {
                continue;
            }
            // The registry below knows the current URLs; these are a start only, and a member
            // removed long ago may name a host that no longer resolves.
            match member
                .peer_urls
                .first()
                .map(|url| crate::config::parse_url(url))
            {
                Some(Ok(address)) => transport.set_peer(member.id, address),
                Some(Err(error)) => tracing::warn!(
                    %error,
                    member = %member.name,
                    "an initial member's peer URL is unusable; using the member registry's"
                ),
                None => {}
            }
        }
        let status = Arc::new(Mutex::new(NodeStatus {
            id: identity.member_id,
            cluster_id: identity.cluster_id,
            ..NodeStatus::default()
        }));
        let cells = GroupCells::default();
        let leader_found = Arc::new(tokio::sync::Notify::new());
        let opened = node_loop::NodeLoop::open(
            config.clone(),
            identity.clone(),
            lock,
            transport.clone(),
            status.clone(),
            leader_found.clone(),
            cells.clone(),
            inbox,
            inputs.clone(),
            Box::new(new_replica),
        )?;
        for (id, url) in opened.peer_urls() {
            match crate::config::parse_url(&url) {
                Ok(address) => transport.set_peer(id, address),
                Err(error) => {
                    tracing::warn!(%error, member = id, "unusable peer URL in the member registry")
                }
            }
        }
        let store = opened.zero().store();
        let loop_thread = std::thread::Builder::new()
            .name(format!("replica-{}", config.name))
            .spawn(move || {
                // Fail-stop: a node whose replica loop died must not look alive to its peers and
                // supervisors (its ports would stay open, answering "server stopped").
                let run = std::panic::AssertUnwindSafe(|| opened.run());
                if std::panic::catch_unwind(run).is_err() {
                    std::process::abort();
                }
            })
            .map_err(|error| error.to_string())?;
        let ticker_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_ticker(inputs.clone(), ticker_stop.clone());
        let backend_commits = Arc::new(Mutex::new(latency::LatencyHistogram::new(
            latency::FSYNC_BOUNDS_MICROS,
        )));
        spawn_store_flusher(
            store.clone(),
            cells.clone(),
            ticker_stop.clone(),
            backend_commits.clone(),
        );
        let handle = NodeHandle {
            group: 0,
            inputs,
            store: store.clone(),
            status: status.clone(),
            leader_found: leader_found.clone(),
            cells,
            zero_status: status,
            zero_store: store,
            zero_leader_found: leader_found,
            request_timeout: Duration::from_secs(5),
            cluster_token: Arc::from(identity.cluster_token.as_str()),
            backend_commits,
        };
        let auto_compaction = crate::auto_compaction::spawn(handle.clone(), config.auto_compaction);
        Ok(Node {
            handle,
            transport,
            addresses: BoundAddresses { peer: peer_addr },
            loop_thread: Some(loop_thread),
            ticker_stop,
            auto_compaction,
        })
    }

    /// Stops the replica loop after the batch it is on, and waits for it (the WAL is synced).
    pub fn stop(mut self) {
        if let Some(task) = self.auto_compaction.take() {
            task.abort();
        }
        self.ticker_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.handle.inputs.try_send(Input::Stop);
        if let Some(thread) = self.loop_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The data directory's identity: read if it has one (checking that it is this member's), else
/// created from the bootstrap flags, durably, before anything else is written there.
fn open_identity(config: &ServerConfig) -> Result<Identity, String> {
    let data_dir = &config.data_dir;
    if let Some(identity) = Identity::load(data_dir).map_err(|e| e.to_string())? {
        check_owner(&identity, config)?;
        let token_given = config
            .bootstrap_flags_given
            .contains(&"initial-cluster-token");
        if token_given && identity.cluster_token != config.initial_cluster_token {
            tracing::warn!(
                stored = %identity.cluster_token,
                flag = %config.initial_cluster_token,
                "--initial-cluster-token differs from the token this data directory was created \
                 with; the stored one is used"
            );
        }
        let ignored: Vec<String> = config
            .bootstrap_flags_given
            .iter()
            .map(|flag| format!("--{flag}"))
            .collect();
        tracing::info!(
            data_dir = %data_dir.display(),
            member = %identity.member_name,
            id = format!("{:x}", identity.member_id),
            ignored = %ignored.join(" "),
            "restarting from the data directory (the bootstrap flags are read only when it is \
             empty)"
        );
        return Ok(identity);
    }
    config
        .validate_bootstrap()
        .map_err(|error| error.to_string())?;
    let mut identity = config.bootstrap_identity();
    if has_wal(data_dir) {
        // Written by a ballot from before the identity file. Its members are those of
        // --initial-cluster whatever --initial-cluster-state says (restarts usually say
        // `existing`): a member that joined later has the membership in its log or a snapshot
        // marker, which override this.
        identity.bootstrap = ballot_core::Membership::with_voters(config.initial_member_ids());
        tracing::warn!(
            data_dir = %data_dir.display(),
            voters = identity.bootstrap.voters.len(),
            "this data directory has a log but no identity file (an older ballot wrote it); \
             recording the identity --initial-cluster gives"
        );
    } else {
        tracing::info!(
            data_dir = %data_dir.display(),
            state = %config.initial_cluster_state,
            voters = identity.bootstrap.voters.len(),
            "new data directory: identity and starting membership written"
        );
    }
    identity
        .create(data_dir)
        .map_err(|error| error.to_string())?;
    Ok(identity)
}

/// A data directory belongs to the member that created it.
fn check_owner(identity: &Identity, config: &ServerConfig) -> Result<(), String> {
    if identity.member_name == config.name {
        return Ok(());
    }
    Err(format!(
        "the data directory {} belongs to member '{}', but --name is '{}': start it with --name \
         {} or give this member an empty data directory",
        config.data_dir.display(),
        identity.member_name,
        config.name,
        identity.member_name
    ))
}

fn has_wal(data_dir: &std::path::Path) -> bool {
    std::fs::read_dir(data_dir.join("wal")).is_ok_and(|mut entries| entries.next().is_some())
}

/// How often the state machine's non-durable commits are made durable.
const STORE_FLUSH_PERIOD: Duration = Duration::from_millis(100);

/// Makes the stores durable in the background, off the node loop's path: the loop applies with
/// non-durable commits (the WAL holds the entries, so a crash only redoes work), and this thread
/// pays one fsync per store with writes per period instead of every few batches paying one
/// inside the apply. One thread for every group's store: group 0's, and those in `groups`.
fn spawn_store_flusher(
    store: Arc<MvccStore>,
    groups: GroupCells,
    stop: Arc<std::sync::atomic::AtomicBool>,
    commits: Arc<Mutex<latency::LatencyHistogram>>,
) {
    std::thread::Builder::new()
        .name("store-flusher".into())
        .spawn(move || {
            let mut stores = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(STORE_FLUSH_PERIOD);
                stores.clear();
                stores.push((0, store.clone()));
                stores.extend(
                    groups
                        .read()
                        .expect("group cells lock")
                        .iter()
                        .map(|(&group, cell)| (group, cell.store.clone())),
                );
                for (group, store) in &stores {
                    let started = std::time::Instant::now();
                    match store.flush_if_pending() {
                        Ok(true) => commits
                            .lock()
                            .expect("backend commit histogram lock")
                            .observe(started.elapsed().as_micros() as u64),
                        Ok(false) => {}
                        Err(error) => {
                            // The node loop meets the same failure on its next commit and stops
                            // the node.
                            tracing::error!(group, %error, "background state machine flush failed");
                            return;
                        }
                    }
                }
            }
        })
        .expect("spawn store flusher thread");
}

/// One tick every `TICK_MILLIS`. A tick that finds the queue full is skipped: the loop is busy,
/// and a late tick only delays timeouts, which is safe.
fn spawn_ticker(inputs: InputSender, stop: Arc<std::sync::atomic::AtomicBool>) {
    std::thread::Builder::new()
        .name("replica-ticker".into())
        .spawn(move || {
            let period = Duration::from_millis(crate::config::TICK_MILLIS);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(period);
                if let Err(mpsc::error::TrySendError::Closed(_)) = inputs.try_send(Input::Tick) {
                    return;
                }
            }
        })
        .expect("spawn ticker thread");
}
