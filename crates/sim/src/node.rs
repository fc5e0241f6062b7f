//! A simulated node: the replica (absent while crashed), its disk, the key-value state machine,
//! and the host that `ballot_core::driver` (the server's driver too) handles its `Ready` batches
//! through.
//!
//! The driver owns the order of effects of one `Ready`. This node owns when a write becomes
//! durable: a batch that must be synced waits the fsync latency before the driver completes it,
//! and no new `Ready` is taken meanwhile. It never decides what to check or whom to tell: every
//! observable effect goes to a [`ReadyHandler`].

use crate::disk::{Disk, DiskError};
use crate::kv::{ApplyResult, Command, KvStore};
use ballot_core::driver::{self, InFlight, ReadyHost};
use ballot_core::{
    Entry, EntryPayload, GroupId, LogIndex, LogPosition, LogStore, Membership, NodeId,
    PersistedState, ReadState, Replica, ReplicaStart, Snapshot, SnapshotMeta, SnapshotStore,
    StateMachine,
};

/// A deliberately broken driver, for proving that the checkers catch what a driver (the server,
/// or this simulator) can get wrong around a replica, as `--break` does for protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverBreak {
    /// The starting membership is handed to a node's first start from memory and never written
    /// to its disk (as a server did that read `--initial-cluster` at every start but stored
    /// nothing): after a crash the node starts with no membership at all, cannot vote or
    /// campaign, and once every node has crashed the cluster never elects a leader (liveness).
    ForgetBootstrap,
    /// A failed sync is retried, and the driver carries on when the retry succeeds (as
    /// PostgreSQL did before 2018's "fsyncgate"): the kernel dropped the failed pages, so the
    /// retry has nothing to write and succeeds, and the node acknowledges records that are not
    /// on its disk. Caught under `sync-fail`.
    RetryFailedSync,
    /// Recovery cuts the log at a damaged record that later records follow, as if it were a
    /// torn tail (a WAL that took every checksum failure for a torn write): the node comes back
    /// without entries it acknowledged and votes and counts as if it never had them. Caught
    /// under `bit-flip`.
    CutAtDamage,
}

impl DriverBreak {
    pub const ALL: [DriverBreak; 3] = [
        DriverBreak::ForgetBootstrap,
        DriverBreak::RetryFailedSync,
        DriverBreak::CutAtDamage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DriverBreak::ForgetBootstrap => "forget-bootstrap",
            DriverBreak::RetryFailedSync => "retry-failed-sync",
            DriverBreak::CutAtDamage => "cut-at-damage",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            DriverBreak::ForgetBootstrap => {
                "the driver never stores a node's starting membership; restarts come back without it"
            }
            DriverBreak::RetryFailedSync => {
                "a failed fsync is retried and the node carries on, acknowledging writes its disk lost"
            }
            DriverBreak::CutAtDamage => {
                "recovery cuts the log at a damaged record that later ones follow, as if torn"
            }
        }
    }
}

impl std::fmt::Display for DriverBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the node runs, waits to restart, or has left the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    Crashed {
        restart_at: u64,
    },
    /// Removed from the membership and stopped; its disk is wiped when it comes back.
    Removed,
    /// The replica refused to start from the durable state; the node stays down.
    Refused,
    /// Its disk holds a damaged record (the `bit-flip` fault), so it refuses to start, as the
    /// WAL's open does, until the operator rebuilds it: removed, wiped, added back.
    Damaged,
}

/// Everything a node reports while it handles a `Ready`.
pub trait ReadyHandler<R: Replica> {
    fn send(&mut self, now: u64, message: R::Message);
    /// `entries` were just written (unsynced) to `node`'s disk; `replica` already holds them.
    fn entries_written(&mut self, now: u64, node: NodeId, replica: &R, entries: &[Entry]);
    fn snapshot_restored(&mut self, now: u64, node: NodeId, meta: &SnapshotMeta);
    /// `entry` was applied after `previous_applied`; `result` is the command's result, if any.
    fn applied(
        &mut self,
        now: u64,
        node: NodeId,
        previous_applied: LogIndex,
        entry: &Entry,
        result: Option<ApplyResult>,
    );
    fn read_served(&mut self, now: u64, node: NodeId, read: ReadState, kv: &KvStore);
    fn read_dropped(&mut self, now: u64, node: NodeId, request_id: u64);
    /// The node made its state machine durable at `at` and compacted, or built an image at `at`
    /// for a follower; `Err` if the replica refused it.
    fn snapshot_taken(
        &mut self,
        now: u64,
        node: NodeId,
        at: LogPosition,
        purpose: SnapshotPurpose,
        outcome: Result<(), String>,
    );
    /// The replica broke the `Ready` contract (or handed out something unusable).
    fn contract_broken(&mut self, now: u64, node: NodeId, description: String);
    /// `node`'s disk failed a sync; the node must stop (every group's replica on it).
    fn sync_failed(&mut self, now: u64, node: NodeId);
}

/// Why a node cut its state machine at an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPurpose {
    /// Made durable (the disk's image stands for a server's own durable store), then the log
    /// compacted up to it.
    Compaction,
    /// Built in memory for a follower whose next entry was compacted away.
    Image,
}

/// A batch whose write waits for the simulated fsync latency.
struct PendingReady<M> {
    durable_at: u64,
    batch: InFlight<M>,
}

/// Why a batch could not be finished.
enum Stop {
    /// The replica broke the `Ready` contract (or handed out something unusable), or the state
    /// machine refused what it was given.
    BrokenContract(String),
    /// The disk failed a sync: the node stops, as a server's node loop does on a WAL error.
    SyncFailed,
}

impl From<DiskError> for Stop {
    fn from(error: DiskError) -> Self {
        match error {
            DiskError::SyncFailed { .. } => Stop::SyncFailed,
            error => Stop::BrokenContract(format!("unusable write: {error}")),
        }
    }
}

/// Bound on `Ready` batches handled for one node in one drain, so a replica that always has
/// output cannot hang the simulator.
const READIES_PER_DRAIN_MAX: usize = 64;

pub struct Node<R: Replica> {
    pub id: NodeId,
    /// The group this node's replica belongs to.
    pub group: GroupId,
    pub replica: Option<R>,
    pub liveness: Liveness,
    pub disk: Disk,
    /// The state machine, with the index it has applied through.
    pub kv: KvStore,
    /// Membership as of the applied index (the bootstrap one, then snapshots and applied changes):
    /// what a snapshot taken now must record.
    pub applied_membership: Membership,
    /// Only with the `forget-bootstrap` driver break: the starting membership, kept in memory
    /// instead of on the disk and handed to the first start only.
    bootstrap_in_memory: Option<Membership>,
    /// A deliberately broken driver, if any.
    driver_break: Option<DriverBreak>,
    pub incarnation: u64,
    pending: Option<PendingReady<R::Message>>,
    /// Confirmed reads waiting for the applied index to reach theirs.
    waiting_reads: Vec<ReadState>,
}

impl<R: Replica> Node<R> {
    /// A node whose empty disk is about to be bootstrapped with `membership` (see
    /// [`Node::bootstrap`]).
    pub fn new(
        id: NodeId,
        group: GroupId,
        membership: Membership,
        broken: Option<DriverBreak>,
    ) -> Self {
        let mut node = Self {
            id,
            group,
            replica: None,
            liveness: Liveness::Crashed { restart_at: 0 },
            disk: Disk::default(),
            kv: KvStore::default(),
            applied_membership: Membership::default(),
            bootstrap_in_memory: None,
            driver_break: broken,
            incarnation: 0,
            pending: None,
            waiting_reads: Vec::new(),
        };
        node.bootstrap(membership, broken);
        node
    }

    /// Gives an empty disk its starting membership, durably, before the node first starts (what a
    /// server does when it creates a data directory). With the `forget-bootstrap` break the
    /// membership stays in memory, for the first start only.
    pub fn bootstrap(&mut self, membership: Membership, broken: Option<DriverBreak>) {
        assert!(
            self.disk.is_empty(),
            "n{}: only an empty disk is bootstrapped",
            self.id
        );
        match broken {
            Some(DriverBreak::ForgetBootstrap) => self.bootstrap_in_memory = Some(membership),
            Some(DriverBreak::RetryFailedSync | DriverBreak::CutAtDamage) | None => self
                .disk
                .bootstrap(membership, KvStore::default().encode_image()),
        }
    }

    /// The index the state machine has applied through.
    pub fn applied_index(&self) -> LogIndex {
        self.kv.applied_index()
    }

    pub fn is_running(&self) -> bool {
        self.replica.is_some()
    }

    pub fn is_persisting(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the disk can be recovered for a start: a damaged record refuses it (the entry it
    /// held is returned), unless the `cut-at-damage` break cuts the log there.
    pub fn recover_damage(&mut self) -> Result<(), LogIndex> {
        match self.disk.damaged_entry() {
            None => Ok(()),
            Some(_) if self.driver_break == Some(DriverBreak::CutAtDamage) => {
                self.disk.cut_at_damage();
                Ok(())
            }
            Some(index) => Err(index),
        }
    }

    /// What the next incarnation starts from; the state machine is rebuilt from the durable
    /// snapshot and the replica re-delivers the committed entries after it.
    pub fn prepare_start(&mut self, rng_seed: u64) -> ReplicaStart {
        // A start follows a reboot, which clears a transient disk fault.
        self.disk.repair();
        // An image saved but not yet marked in the log (the node stopped in between: a sync
        // failed) is installed now, as the server's recovery does before the replica starts.
        if let Some(position) = self.disk.snapshot().map(|image| image.meta.last_included) {
            if position.index > self.disk.floor_index() {
                self.disk
                    .install_snapshot(position)
                    .expect("a disk that just came back up syncs");
            }
        }
        let mut persisted = self.disk.to_persisted_state();
        if let Some(membership) = self.bootstrap_in_memory.take() {
            persisted.compacted = PersistedState::bootstrap(membership).compacted;
        }
        match self.disk.snapshot() {
            Some(snapshot) => {
                // A snapshot that cannot be decoded was written by this simulator, so failing to
                // read it back is a simulator bug, not a protocol one.
                self.kv = KvStore::decode_image(&snapshot.data).expect("durable snapshot decodes");
                self.applied_membership = snapshot.meta.membership.clone();
            }
            None => {
                self.kv = KvStore::default();
                self.applied_membership = persisted.base_membership();
            }
        }
        ReplicaStart {
            node_id: self.id,
            group: self.group,
            persisted,
            rng_seed,
            incarnation: self.incarnation,
        }
    }

    pub fn start(&mut self, replica: R) {
        self.replica = Some(replica);
        self.liveness = Liveness::Running;
        self.incarnation += 1;
    }

    /// Power loss: the replica and everything in memory are gone; unsynced writes are lost, or
    /// with `torn_items` a prefix of them survives.
    pub fn crash(&mut self, restart_at: u64, torn_items: Option<usize>) {
        self.replica = None;
        self.pending = None;
        self.waiting_reads.clear();
        self.disk.crash(torn_items);
        self.liveness = Liveness::Crashed { restart_at };
    }

    /// Stop for good and forget everything: a later re-add is a new, empty incarnation.
    /// The caller bootstraps its disk before starting it again.
    pub fn remove(&mut self) {
        self.crash(u64::MAX, None);
        self.disk = Disk::default();
        self.liveness = Liveness::Removed;
    }

    /// Handle every `Ready` the replica has, finishing a pending one once its write is durable.
    pub fn drain(
        &mut self,
        now: u64,
        fsync_ticks: &mut impl FnMut() -> u64,
        handler: &mut impl ReadyHandler<R>,
    ) {
        for _ in 0..READIES_PER_DRAIN_MAX {
            if let Some(pending) = &self.pending {
                if now < pending.durable_at {
                    return;
                }
                let pending = self.pending.take().expect("checked above");
                let mut host = Host {
                    node: self,
                    handler,
                    now,
                };
                if let Err(stop) = driver::complete(&mut host, pending.batch) {
                    if self.stopped(now, stop, handler) {
                        return;
                    }
                }
                continue;
            }
            let Some(replica) = self.replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                return;
            }
            let ready = replica.ready();
            let mut host = Host {
                node: self,
                handler,
                now,
            };
            let result = match driver::begin(&mut host, ready) {
                Ok(batch) if batch.must_sync() => {
                    self.pending = Some(PendingReady {
                        durable_at: now + fsync_ticks(),
                        batch,
                    });
                    Ok(())
                }
                Ok(batch) => driver::complete(&mut host, batch),
                Err(error) => Err(error),
            };
            if let Err(stop) = result {
                if self.stopped(now, stop, handler) {
                    return;
                }
            }
        }
    }

    /// Reports why a batch stopped; whether the node must stop draining (its disk failed: the
    /// handler crashes it).
    fn stopped(&mut self, now: u64, stop: Stop, handler: &mut impl ReadyHandler<R>) -> bool {
        match stop {
            Stop::BrokenContract(description) => {
                handler.contract_broken(now, self.id, description);
                false
            }
            Stop::SyncFailed => {
                handler.sync_failed(now, self.id);
                true
            }
        }
    }

    fn apply(&mut self, now: u64, entry: &Entry, handler: &mut impl ReadyHandler<R>) {
        let previous = self.applied_index();
        if entry.index <= previous {
            // Already in the state machine (e.g. covered by a restored snapshot): report it so the
            // order check sees it, but never apply twice.
            handler.applied(now, self.id, previous, entry, None);
            return;
        }
        let result = match &entry.payload {
            EntryPayload::Command(data) => match Command::decode(data) {
                Ok(command) => StateMachine::apply(&mut self.kv, &[(entry.index, command)])
                    .expect("the map applies every command")
                    .pop()
                    .flatten(),
                Err(error) => {
                    handler.contract_broken(
                        now,
                        self.id,
                        format!("entry {} does not decode: {error}", entry.position()),
                    );
                    None
                }
            },
            EntryPayload::Membership(_, membership) => {
                self.applied_membership = membership.clone();
                None
            }
            EntryPayload::Noop => None,
        };
        if self.kv.applied_index() < entry.index {
            // A no-op, a membership change, or a command that did not decode.
            self.kv
                .mark_applied(entry.index)
                .expect("the map marks any index");
        }
        handler.applied(now, self.id, previous, entry, result);
    }

    fn serve_reads(&mut self, now: u64, handler: &mut impl ReadyHandler<R>) {
        let applied = self.applied_index();
        let kv = &self.kv;
        let id = self.id;
        self.waiting_reads.retain(|read| {
            let ready = read.index <= applied;
            if ready {
                handler.read_served(now, id, *read, kv);
            }
            !ready
        });
    }

    /// Cut the state machine at the applied index: for a compaction, store the image durably
    /// (what a server's store does on its own), tell the replica and drop the disk entries it
    /// compacted away; for a follower, hand the image to the replica only.
    /// `Err` only when the disk failed a sync (the node stops).
    fn take_snapshot(
        &mut self,
        now: u64,
        purpose: SnapshotPurpose,
        handler: &mut impl ReadyHandler<R>,
    ) -> Result<(), Stop> {
        let Some(replica) = self.replica.as_mut() else {
            return Ok(());
        };
        let applied = self.kv.applied_index();
        if applied == 0
            || (purpose == SnapshotPurpose::Compaction && applied <= self.disk.snapshot_index())
        {
            return Ok(());
        }
        // Steps keep arriving while a `Ready` is persisted, so the replica may already have
        // installed a newer snapshot from the leader and forgotten this index: nothing to do then.
        let Some(term) = replica.entry_term(applied) else {
            let at = LogPosition::new(applied, 0);
            handler.snapshot_taken(
                now,
                self.id,
                at,
                purpose,
                Err("the replica no longer knows this index".into()),
            );
            return Ok(());
        };
        let at = LogPosition::new(applied, term);
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_included: at,
                membership: self.applied_membership.clone(),
            },
            data: self.kv.encode_image(),
        };
        let outcome = match purpose {
            SnapshotPurpose::Compaction => {
                let expected = snapshot.meta.clone();
                if let Err(error) = SnapshotStore::save(&mut self.disk, &snapshot) {
                    handler.contract_broken(now, self.id, format!("image not saved: {error}"));
                    return Ok(());
                }
                match replica.compact(at.index) {
                    Ok(Some(meta)) if meta != expected => {
                        handler.contract_broken(
                            now,
                            self.id,
                            format!(
                                "compaction at {at} recorded {meta:?}, but the state machine \
                                 there is {expected:?}"
                            ),
                        );
                        Ok(())
                    }
                    Ok(_) => {
                        let first_kept = replica.status().first_log_index;
                        match self.disk.compact_to(first_kept.saturating_sub(1)) {
                            Err(DiskError::SyncFailed { .. }) => return Err(Stop::SyncFailed),
                            Err(error) => handler.contract_broken(
                                now,
                                self.id,
                                format!("log not compacted: {error}"),
                            ),
                            Ok(()) => {}
                        }
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            SnapshotPurpose::Image => replica
                .snapshot_taken(snapshot)
                .map(|_| ())
                .map_err(|error| error.to_string()),
        };
        handler.snapshot_taken(now, self.id, at, purpose, outcome);
        Ok(())
    }
}

/// The node as the driver's host, for the length of one call into the driver.
struct Host<'a, R: Replica, H> {
    node: &'a mut Node<R>,
    handler: &'a mut H,
    now: u64,
}

impl<R: Replica, H: ReadyHandler<R>> ReadyHost for Host<'_, R, H> {
    type Replica = R;
    type Log = Disk;
    type Snapshots = Disk;
    type Error = Stop;

    fn replica(&mut self) -> &mut R {
        self.node
            .replica
            .as_mut()
            .expect("only a running node's batches are driven")
    }

    fn log(&mut self) -> &mut Disk {
        &mut self.node.disk
    }

    fn snapshots(&mut self) -> &mut Disk {
        &mut self.node.disk
    }

    fn sync_log(&mut self) -> Result<(), Stop> {
        match self.node.disk.sync() {
            Err(DiskError::SyncFailed { .. })
                if self.node.driver_break == Some(DriverBreak::RetryFailedSync) =>
            {
                Ok(self.node.disk.sync()?)
            }
            result => Ok(result?),
        }
    }

    fn send(&mut self, message: R::Message) {
        self.handler.send(self.now, message);
    }

    fn written(&mut self, entries: &[Entry]) {
        let replica = self.node.replica.as_ref().expect("running");
        self.handler
            .entries_written(self.now, self.node.id, replica, entries);
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Stop> {
        let kv = KvStore::decode_image(&snapshot.data)
            .map_err(|error| Stop::BrokenContract(format!("snapshot does not decode: {error}")))?;
        if kv.applied_index() != snapshot.meta.last_included.index {
            return Err(Stop::BrokenContract(format!(
                "the image of the snapshot at {} holds the state at index {}",
                snapshot.meta.last_included,
                kv.applied_index()
            )));
        }
        let node = &mut *self.node;
        node.kv = kv;
        node.applied_membership = snapshot.meta.membership.clone();
        self.handler
            .snapshot_restored(self.now, node.id, &snapshot.meta);
        Ok(())
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<(), Stop> {
        for entry in entries {
            self.node.apply(self.now, entry, self.handler);
        }
        Ok(())
    }

    fn reads(&mut self, confirmed: &[ReadState], dropped: &[u64]) {
        self.node.waiting_reads.extend_from_slice(confirmed);
        self.node.serve_reads(self.now, self.handler);
        for &request_id in dropped {
            self.handler
                .read_dropped(self.now, self.node.id, request_id);
        }
    }

    fn compaction_wanted(&mut self) -> Result<(), Stop> {
        self.node
            .take_snapshot(self.now, SnapshotPurpose::Compaction, self.handler)
    }

    fn snapshot_wanted(&mut self) -> Result<(), Stop> {
        self.node
            .take_snapshot(self.now, SnapshotPurpose::Image, self.handler)
    }
}
