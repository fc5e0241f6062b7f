//! Opening a node's replica loop: the data directory's snapshot store, WAL and state machine
//! recovered and reconciled, the member registry read, and the replica built from what they
//! hold (the engine's constructor is the caller's).

use super::*;

impl<R> ReplicaLoop<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// Recovers everything from the data directory (whose lock the caller holds and whose
    /// identity it has read or created) and builds the replica.
    // Each argument is one part `Node::start` built for this loop alone; a struct to carry
    // them would have no other use.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        config: &ServerConfig,
        identity: &Identity,
        lock: DirLock,
        transport: Arc<Transport>,
        status: Arc<Mutex<NodeStatus>>,
        inbox: Inbox,
        loopback: InputSender,
        new_replica: impl FnOnce(&ReplicaSettings, ReplicaStart) -> Result<R, String>,
    ) -> Result<ReplicaLoop<R>, String> {
        let data_dir = &config.data_dir;
        let snapshots = SnapshotStore::open(data_dir.join("snap"), SNAPSHOTS_RETAINED)
            .map_err(|e| e.to_string())?;
        // A background thread makes writes durable every 100 ms (`spawn_store_flusher`); the
        // count is a backstop for bursts, bounding what a restart replays from the WAL.
        let store = Arc::new(
            MvccStore::open_with(
                data_dir.join("state"),
                MvccOptions {
                    non_durable_commits_max: SERVER_NON_DURABLE_COMMITS_MAX,
                    ..MvccOptions::default()
                },
            )
            .map_err(|e| e.to_string())?,
        );
        let snapshot = snapshots.latest().map_err(|e| e.to_string())?;
        let initial_members = identity.initial_members.iter().map(|member| MemberInfo {
            id: member.id,
            name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            client_urls: Vec::new(),
        });
        let mut registry = MemberRegistry::open(data_dir.join("members"), initial_members)?;
        let own_info = MemberInfo {
            id: identity.member_id,
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        let (wal, recovered) = open_wal(data_dir, snapshot.as_ref(), &store, &mut registry)?;
        let watch_hub = WatchHub::new(WatchLimits::default(), store.revision());
        // Until the log is first compacted or a snapshot installed, the replica starts from the
        // membership the identity file recorded when the directory was created.
        let compacted = match snapshot {
            Some(snapshot) => Some(snapshot.meta),
            None => PersistedState::bootstrap(identity.bootstrap.clone()).compacted,
        };
        let mut persisted = PersistedState {
            hard_state: recovered.hard_state,
            compacted,
            entries: recovered.entries,
        };
        let mut wal = wal;
        if config.force_new_cluster {
            crate::node::force_new_cluster::rewrite(
                data_dir,
                &mut persisted,
                &mut wal,
                identity.member_id,
            )?;
        }
        let replica = new_replica(
            &config.replica_settings(),
            ReplicaStart {
                node_id: identity.member_id,
                // This node hosts the one group so far.
                group: 0,
                persisted,
                // Outside the simulator a different seed per start is what we want; nothing
                // replays it.
                rng_seed: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(identity.member_id, |elapsed| {
                        elapsed.as_nanos() as u64 ^ identity.member_id
                    }),
                incarnation: 0,
            },
        )
        .map_err(|e| format!("cannot restore the replica: {e}"))?;
        let transitions = Transitions::new(&replica.status());
        Ok(ReplicaLoop {
            replica,
            wal,
            snapshots: SharedSnapshots(Arc::new(snapshots)),
            image_in_progress: false,
            compaction_in_progress: false,
            loopback,
            store,
            transport,
            inbox,
            peer_messages: Vec::new(),
            status,
            proposals: BTreeMap::new(),
            forwarded: HashMap::new(),
            next_forward_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64),
            ticks: 0,
            member_proposals: BTreeMap::new(),
            registry,
            own_info,
            founding_cluster_id: (!identity.bootstrap.voters.is_empty())
                .then_some(identity.cluster_id),
            identity_cluster_id: identity.cluster_id,
            ticks_until_publish_check: 0,
            membership_changes: BTreeMap::new(),
            reads_unconfirmed: HashMap::new(),
            reads_confirmed: Vec::new(),
            next_read_id: 1,
            watch_hub,
            watch_streams: HashMap::new(),
            lessor: Lessor::new(LessorConfig::default()),
            keepalives_unproposed: Vec::new(),
            keepalives_proposed: BTreeMap::new(),
            started: Instant::now(),
            counters: Counters::default(),
            transitions,
            _lock: lock,
        })
    }
}

/// Opens the WAL and reconciles it with the latest record in `snap/` and the state machine: a
/// state machine behind an installed image is restored from it, one behind a compaction marker
/// is refused (the entries it lacks are gone), and a WAL whose snapshot marker is older learns
/// of the record (dropping entries it covers, or all entries if they conflict).
fn open_wal(
    data_dir: &Path,
    snapshot: Option<&Snapshot>,
    store: &MvccStore,
    registry: &mut MemberRegistry,
) -> Result<(Wal, ballot_storage::wal::Recovered), String> {
    let wal_dir = data_dir.join("wal");
    let (mut wal, recovered) =
        Wal::open(&wal_dir, WalOptions::default()).map_err(|e| e.to_string())?;
    if let Some(repair) = &recovered.tail_repair {
        tracing::warn!(
            ?repair,
            "cut a damaged tail off the WAL (written after the last fsync, or rotted since)"
        );
    }
    let Some(snapshot) = snapshot else {
        return Ok((wal, recovered));
    };
    let position = snapshot.meta.last_included;
    if snapshot.data.is_empty() {
        // A compaction marker: the store was durable through it on its own before the WAL
        // dropped anything, so a store behind it lost writes it had made durable.
        if store.applied_index() < position.index {
            return Err(format!(
                "the state machine in {} has applied up to index {}, but the log was compacted \
                 at index {} (snap/ says so): entries in between are gone; the state directory \
                 was replaced or rolled back. Restore the data directory from a backup, or \
                 remove this member and add it back empty",
                data_dir.join("state").display(),
                store.applied_index(),
                position.index
            ));
        }
    } else {
        let (registry_part, mvcc_part) =
            decode_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        if store.applied_index() < position.index {
            store.restore(mvcc_part).map_err(|e| e.to_string())?;
        }
        registry.restore_if_behind(registry_part, position.index)?;
    }
    if recovered
        .snapshot
        .is_none_or(|marker| marker.index < position.index)
    {
        wal.install_snapshot(position).map_err(|e| e.to_string())?;
        drop(wal);
        return Wal::open(&wal_dir, WalOptions::default()).map_err(|e| e.to_string());
    }
    Ok((wal, recovered))
}
