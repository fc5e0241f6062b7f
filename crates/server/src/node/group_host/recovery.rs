//! Opening one group on this node: its snapshot store, WAL and state machine recovered and
//! reconciled, group 0's member registry and catalog read, and the replica built from what they
//! hold (the engine's constructor is the caller's).

use super::*;
use ballot_core::LogStore;
use ballot_storage::wal::{GroupWal, Recovered, Wal, WalOptions};

impl<R> GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// Recovers `group` from its directory (the data directory for group 0, whose lock the
    /// caller holds and whose identity it has read or created; `groups/<id>` for another,
    /// created if missing) and builds the replica. `bootstrap` is the membership a group with
    /// an empty log starts from (group 0's comes from the identity file). `shared` is the
    /// group's log in the node's shared WAL, with what it recovered (`None` for group 0, whose
    /// WAL is its own).
    pub(crate) fn open(
        config: &ServerConfig,
        identity: &Identity,
        group: GroupId,
        bootstrap: Membership,
        node: NodeParts,
        shared: Option<(GroupWal, Recovered)>,
        new_replica: &dyn Fn(&ReplicaSettings, ReplicaStart) -> Result<R, String>,
    ) -> Result<GroupHost<R>, String> {
        assert_eq!(
            shared.is_none(),
            group == 0,
            "group 0 has a WAL of its own; every other group's log is in the shared WAL"
        );
        let NodeParts {
            transport,
            status,
            leader_found,
            loopback,
        } = node;
        let data_dir = &group_dir(&config.data_dir, group);
        if group != 0 {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("{}: {e}", data_dir.display()))?;
        }
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
        let (mut registry, mut catalog) = if group == 0 {
            (
                MemberRegistry::open(data_dir.join("members"), initial_members)?,
                GroupCatalog::open(data_dir.join("catalog"))?,
            )
        } else {
            (
                MemberRegistry::open(data_dir.join("members"), [])?,
                GroupCatalog::in_memory(),
            )
        };
        let own_info = MemberInfo {
            id: identity.member_id,
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        let (log, recovered) = open_log(
            data_dir,
            shared,
            snapshot.as_ref(),
            &store,
            &mut registry,
            &mut catalog,
        )?;
        let watch_hub = WatchHub::new(WatchLimits::default(), store.revision());
        // Until the log is first compacted or a snapshot installed, the replica starts from the
        // membership the identity file recorded when the directory was created.
        let compacted = match snapshot {
            Some(snapshot) => Some(snapshot.meta),
            None => PersistedState::bootstrap(bootstrap).compacted,
        };
        let mut persisted = PersistedState {
            hard_state: recovered.hard_state,
            compacted,
            entries: recovered.entries,
        };
        let mut log = log;
        if config.force_new_cluster && group == 0 {
            crate::node::force_new_cluster::rewrite(
                data_dir,
                &mut persisted,
                log.own().expect("group 0 has a WAL of its own"),
                identity.member_id,
            )?;
        }
        let mut settings = config.replica_settings();
        // Group 0 (leases, member publication, the catalog) never sleeps; the others may, with
        // node liveness (`node::liveness`) watching for their leaders.
        settings.hibernate = group != 0;
        let replica = new_replica(
            &settings,
            ReplicaStart {
                node_id: identity.member_id,
                group,
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
        Ok(GroupHost {
            group,
            replica,
            log,
            snapshots: SharedSnapshots(Arc::new(snapshots)),
            image_in_progress: false,
            compaction_in_progress: false,
            loopback,
            store,
            transport,
            status,
            leader_found,
            proposals: BTreeMap::new(),
            forwarded: HashMap::new(),
            next_forward_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64),
            ticks: 0,
            member_proposals: BTreeMap::new(),
            registry,
            catalog,
            group_proposals: BTreeMap::new(),
            // The node loop starts the groups the catalog names once this host is open.
            catalog_changed: false,
            own_info,
            founding_cluster_id: (!identity.bootstrap.voters.is_empty())
                .then_some(identity.cluster_id),
            identity_cluster_id: identity.cluster_id,
            ticks_until_publish_check: 0,
            membership_changes: BTreeMap::new(),
            reads_unconfirmed: HashMap::new(),
            reads_until_term_commit: Vec::new(),
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
        })
    }
}

/// Opens the group's log (group 0's own WAL, or takes the group's view of the shared one) and
/// reconciles it with the latest record in `snap/` and the state machine: a state machine
/// behind an installed image is restored from it, one behind a compaction marker is refused
/// (the entries it lacks are gone), and a log whose snapshot marker is older learns of the
/// record (dropping entries it covers, or all entries if they conflict).
fn open_log(
    data_dir: &Path,
    shared: Option<(GroupWal, Recovered)>,
    snapshot: Option<&Snapshot>,
    store: &MvccStore,
    registry: &mut MemberRegistry,
    catalog: &mut GroupCatalog,
) -> Result<(HostLog, Recovered), String> {
    let (mut log, recovered) = match shared {
        Some((wal, recovered)) => (HostLog::Shared(wal), recovered),
        None => {
            let (wal, recovered) = Wal::open(data_dir.join("wal"), WalOptions::default())
                .map_err(|e| e.to_string())?;
            if let Some(repair) = &recovered.tail_repair {
                tracing::warn!(
                    ?repair,
                    "cut a damaged tail off the WAL (written after the last fsync, or rotted \
                     since)"
                );
            }
            (HostLog::Own(Box::new(wal)), recovered)
        }
    };
    let Some(snapshot) = snapshot else {
        return Ok((log, recovered));
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
        let parts = decode_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        if store.applied_index() < position.index {
            store.restore(parts.mvcc).map_err(|e| e.to_string())?;
        }
        registry.restore_if_behind(parts.registry, position.index)?;
        catalog.restore_if_behind(parts.catalog, position.index)?;
    }
    if recovered
        .snapshot
        .is_none_or(|marker| marker.index < position.index)
    {
        log.install_snapshot(position).map_err(|e| e.to_string())?;
        return Ok((log, installed(recovered, position)));
    }
    Ok((log, recovered))
}

/// What a log recovered as `recovered` holds after [`LogStore::install_snapshot`] at
/// `position`: the entries after it if the log held `position` itself, else none.
fn installed(mut recovered: Recovered, position: LogPosition) -> Recovered {
    let holds_position = recovered
        .entries
        .iter()
        .any(|entry| entry.index == position.index && entry.term == position.term);
    if holds_position {
        recovered
            .entries
            .retain(|entry| entry.index > position.index);
    } else {
        recovered.entries.clear();
    }
    recovered.first_index = position.index + 1;
    recovered.snapshot = Some(position);
    recovered
}

/// What every group's host shares with the node: the peer transport, where it publishes its
/// status (and wakes those waiting for a leader), and the node loop's queue for the work it does
/// off the loop.
pub(crate) struct NodeParts {
    pub(crate) transport: Arc<Transport>,
    pub(crate) status: Arc<Mutex<NodeStatus>>,
    pub(crate) leader_found: Arc<tokio::sync::Notify>,
    pub(crate) loopback: InputSender,
}

/// Where `group` keeps its storage: the data directory itself for group 0 (the layout of a
/// node before groups), `groups/<id>` inside it for any other.
pub(crate) fn group_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    if group == 0 {
        data_dir.to_path_buf()
    } else {
        data_dir.join("groups").join(group.to_string())
    }
}
