//! Three real nodes in one process (real WAL, real state store, real TCP on loopback): election,
//! replicated writes, linearizable reads, losing the leader, and a restarted node catching up.

use ballot_core::{ReadMode, Role};
use ballot_server::config::{ClusterState, ServerConfig};
use ballot_server::node::{Node, NodeError, NodeHandle};
use ballot_storage::mvcc::types::{Command, CommandResult, KeyRange, PutRequest, RangeRequest};
use bytes::Bytes;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/ports.rs"]
mod ports;
use ports::free_port;

fn configs(root: &Path, size: usize) -> Vec<ServerConfig> {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let initial_cluster: Vec<(String, String)> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| (format!("n{}", i + 1), url(*peer)))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, &(client, peer))| ServerConfig {
            name: format!("n{}", i + 1),
            data_dir: root.join(format!("n{}", i + 1)),
            listen_client_urls: vec![url(client)],
            advertise_client_urls: vec![url(client)],
            listen_peer_urls: vec![url(peer)],
            initial_advertise_peer_urls: vec![url(peer)],
            initial_cluster: initial_cluster.clone(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "test".into(),
            heartbeat_interval_ms: 20,
            election_timeout_ms: 200,
            snapshot_count: 50,
            ..ServerConfig::default()
        })
        .collect()
}

async fn start_all(configs: &[ServerConfig]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(
            Node::start(config.clone(), ballot_raft::Raft::start)
                .await
                .unwrap(),
        );
    }
    nodes
}

/// Handles of the nodes still running (a stopped one is `None`).
fn handles(nodes: &[Option<Node>]) -> Vec<NodeHandle> {
    nodes.iter().flatten().map(|n| n.handle.clone()).collect()
}

async fn wait_for_leader(nodes: &[&NodeHandle]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = nodes
            .iter()
            .position(|n| n.status().role == Some(Role::Leader))
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    })
}

fn get(handle: &NodeHandle, key: &str) -> Option<Bytes> {
    let request = RangeRequest {
        range: KeyRange::single(key.to_string()),
        ..Default::default()
    };
    handle
        .store()
        .range(&request)
        .unwrap()
        .kvs
        .first()
        .map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_reads_fails_over_and_catches_up() {
    let root = tempdir();
    let configs = configs(root.path(), 3);
    let mut nodes: Vec<Option<Node>> = start_all(&configs).await.into_iter().map(Some).collect();
    let all = handles(&nodes);
    let leader = wait_for_leader(&all.iter().collect::<Vec<_>>()).await;

    // Writes through the leader; a follower hands its writes to the leader through Raft and
    // answers once it applied them itself.
    for i in 0..100 {
        let result = all[leader]
            .propose(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
        assert!(matches!(result, CommandResult::Put(_)));
    }
    let follower = (leader + 1) % 3;
    let through_follower = all[follower].propose(put("x", "y")).await.unwrap();
    let CommandResult::Put(put_response) = through_follower else {
        panic!("a put answers with a put response, got {through_follower:?}")
    };
    assert_eq!(
        put_response.revision, 102,
        "after 100 writes from revision 1, the 101st"
    );
    assert_eq!(
        get(&all[follower], "x"),
        Some(Bytes::from("y")),
        "applied on the follower"
    );
    all[leader].read(ReadMode::ReadIndex).await.unwrap();
    assert_eq!(get(&all[leader], "k99"), Some(Bytes::from("v99")));
    assert_eq!(get(&all[leader], "x"), Some(Bytes::from("y")));

    // Stop the leader: the others elect a new one and keep taking writes. (Handles keep the
    // state machine open, as a process would; let go of the stopped node's before restarting it.)
    let stopped_id = all[leader].status().id;
    drop(all);
    nodes[leader].take().unwrap().stop();
    let survivors: Vec<NodeHandle> = handles(&nodes);
    assert_eq!(survivors.len(), 2);
    let new_leader = wait_for_leader(&survivors.iter().collect::<Vec<_>>()).await;
    assert_ne!(survivors[new_leader].status().id, stopped_id);
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while written < 100 {
        match survivors[new_leader]
            .propose(put(&format!("after{written}"), "x"))
            .await
        {
            Ok(_) => written += 1,
            Err(NodeError::LeaderChanged | NodeError::NotLeader { .. }) => {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }

    // Restart the old leader from its data directory: it recovers and catches up (from the
    // log: the others compact every 50 entries but keep 500 behind; the test below covers
    // catching up by an image).
    drop(survivors);
    nodes[leader] = Some(
        Node::start(configs[leader].clone(), ballot_raft::Raft::start)
            .await
            .unwrap(),
    );
    let restarted = nodes[leader].as_ref().unwrap().handle.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&restarted, "after99").is_none() {
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&restarted, "k42"), Some(Bytes::from("v42")));
    for node in nodes.into_iter().flatten() {
        node.stop();
    }
}

/// The latest record in a node's `snap/`: (index, whether it carries an image).
fn latest_snapshot_record(data_dir: &Path) -> Option<(u64, bool)> {
    let store =
        ballot_storage::snapshot_store::SnapshotStore::open(data_dir.join("snap"), 3).unwrap();
    store
        .latest()
        .unwrap()
        .map(|record| (record.meta.last_included.index, !record.data.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_builds_no_image_until_a_follower_needs_one() {
    let root = tempdir();
    let configs = configs(root.path(), 3);
    let mut nodes: Vec<Option<Node>> = start_all(&configs).await.into_iter().map(Some).collect();
    let all = handles(&nodes);
    let leader = wait_for_leader(&all.iter().collect::<Vec<_>>()).await;
    let lagging = (leader + 1) % 3;
    let write = |from: usize, prefix: &'static str, count: usize| {
        let handle = all[from].clone();
        async move {
            for i in 0..count {
                handle
                    .propose(put(&format!("{prefix}{i}"), "v"))
                    .await
                    .unwrap();
            }
        }
    };
    // Writes in rounds with pauses, so the stores' 100 ms flushers make them durable and each
    // node compacts its log (every 50 entries here) up to what its store holds.
    for round in 0..4 {
        write(leader, ["a", "b", "c", "d"][round], 60).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for config in &configs {
        let (index, has_image) = latest_snapshot_record(&config.data_dir)
            .unwrap_or_else(|| panic!("{} never compacted", config.name));
        assert!(index >= 50, "{}: compacted at {index}", config.name);
        assert!(
            !has_image,
            "{}: an image was written though no follower needed one",
            config.name
        );
    }

    // A follower down while the others compact past what it has (and past the 500 entries
    // they keep behind each compaction point) catches up from an image built for it on demand.
    let lagging_id = all[lagging].status().id;
    drop(all);
    nodes[lagging].take().unwrap().stop();
    let survivors = handles(&nodes);
    let leader = wait_for_leader(&survivors.iter().collect::<Vec<_>>()).await;
    for round in 0..3 {
        for i in 0..300 {
            survivors[leader]
                .propose(put(&format!("late{round}-{i}"), "w"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(survivors);
    nodes[lagging] = Some(
        Node::start(configs[lagging].clone(), ballot_raft::Raft::start)
            .await
            .unwrap(),
    );
    let restarted = nodes[lagging].as_ref().unwrap().handle.clone();
    assert_eq!(restarted.status().id, lagging_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&restarted, "late2-299").is_none() {
        assert!(
            Instant::now() < deadline,
            "the lagging node did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&restarted, "a0"), Some(Bytes::from("v")));
    let (_, installed_image) = latest_snapshot_record(&configs[lagging].data_dir).unwrap();
    assert!(installed_image, "the lagging node caught up by an image");
    // The status is published after the loop's batch, a moment after the store shows it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while restarted.status().snapshot_images_installed == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(restarted.status().snapshot_images_installed, 1);
    let built: u64 = nodes
        .iter()
        .flatten()
        .map(|node| node.handle.status().snapshot_images_built)
        .sum();
    assert!(
        built >= 1,
        "an image was built for the follower that needed it"
    );
    let survivor = (lagging + 1) % 3;
    assert!(
        nodes[survivor]
            .as_ref()
            .unwrap()
            .handle
            .status()
            .compaction_index
            >= 50,
        "the status shows where the log was compacted"
    );

    // A store that lost what the compaction marker says it had is refused, by name.
    drop(restarted);
    let wiped = (lagging + 1) % 3;
    let (_, has_image) = latest_snapshot_record(&configs[wiped].data_dir).unwrap();
    assert!(
        !has_image,
        "{} holds a compaction marker",
        configs[wiped].name
    );
    nodes[wiped].take().unwrap().stop();
    std::fs::remove_dir_all(configs[wiped].data_dir.join("state")).unwrap();
    // The stopped node's listener closes asynchronously: retry while its port is still taken.
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        match Node::start(configs[wiped].clone(), ballot_raft::Raft::start).await {
            Ok(_) => panic!("a node whose store is behind its compaction point started"),
            Err(error) if error.to_string().contains("Address already in use") => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => break error.to_string(),
        }
    };
    assert!(
        error.contains("but the log was compacted at index"),
        "{error}"
    );
    for node in nodes.into_iter().flatten() {
        node.stop();
    }
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "ballot-node-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_writes_and_leases_expire_through_the_log() {
    use ballot_storage::mvcc::types::EventKind;
    use ballot_storage::watch::WatchCreate;
    let root = tempdir();
    let configs = configs(root.path(), 3);
    let nodes = start_all(&configs).await;
    let all: Vec<NodeHandle> = nodes.iter().map(|n| n.handle.clone()).collect();
    let leader = wait_for_leader(&all.iter().collect::<Vec<_>>()).await;
    let follower = (leader + 1) % 3;

    // A watch on a follower sees writes made through the leader, in order.
    let mut stream = all[follower].open_watch_stream().await.unwrap();
    let create = WatchCreate {
        range: KeyRange::prefix("w/"),
        prev_kv: true,
        ..Default::default()
    };
    let watch_id = stream.create(&all[follower], create).await.unwrap();
    for i in 0..5 {
        all[leader]
            .propose(put(&format!("w/{i}"), "v"))
            .await
            .unwrap();
    }
    all[leader].propose(put("other", "v")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let response = tokio::time::timeout(Duration::from_secs(5), stream.responses.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.watch_id, watch_id);
        seen.extend(response.events.into_iter().map(|e| (e.kind, e.kv.key)));
    }
    let expected: Vec<_> = (0..5)
        .map(|i| (EventKind::Put, Bytes::from(format!("w/{i}"))))
        .collect();
    assert_eq!(seen, expected);

    // A lease keeps its key while kept alive, and its expiry (decided by the leader, applied
    // through the log) deletes the key on every node.
    let granted = all[leader]
        .propose(Command::LeaseGrant {
            id: 0,
            ttl_seconds: 2,
        })
        .await
        .unwrap();
    let CommandResult::LeaseGrant { id, .. } = granted else {
        panic!("{granted:?}")
    };
    let attached = PutRequest {
        key: Bytes::from("leased"),
        value: Bytes::from("x"),
        lease: id,
        ..Default::default()
    };
    all[leader].propose(Command::Put(attached)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(all[leader].lease_keep_alive(id).await.unwrap(), 2);
    }
    let (lease, remaining) = all[leader].lease_time_to_live(id).await.unwrap();
    assert_eq!(lease.keys, vec![Bytes::from("leased")]);
    assert!((1..=2).contains(&remaining), "remaining {remaining} s");
    assert!(matches!(
        all[follower].lease_keep_alive(id).await,
        Err(NodeError::NotLeader { .. })
    ));
    assert!(
        get(&all[follower], "leased").is_some(),
        "kept alive past its TTL"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&all[follower], "leased").is_some() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stream);
    drop(all);
    for node in nodes {
        node.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_learns_every_members_name_and_client_urls() {
    let root = tempdir();
    let configs = configs(root.path(), 3);
    let nodes = start_all(&configs).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in &nodes {
        loop {
            let members = node.handle.status().members;
            let complete = members.len() == 3
                && members
                    .iter()
                    .all(|m| !m.name.is_empty() && !m.client_urls.is_empty());
            if complete {
                let mut names: Vec<_> = members.iter().map(|m| m.name.clone()).collect();
                names.sort();
                assert_eq!(names, ["n1", "n2", "n3"]);
                for member in &members {
                    let config = configs.iter().find(|c| c.name == member.name).unwrap();
                    assert_eq!(member.client_urls, config.advertise_client_urls);
                    assert_eq!(member.id, config.node_id());
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "members never published: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for node in nodes {
        node.stop();
    }
}

/// Waits until one of `handles` leads group `group`; returns its position.
async fn wait_for_group_leader(handles: &[NodeHandle], group: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = handles.iter().position(|handle| {
            handle
                .group(group)
                .is_ok_and(|group| group.status().role == Some(Role::Leader))
        });
        if let Some(leader) = leader {
            return leader;
        }
        let statuses: Vec<_> = handles
            .iter()
            .map(|handle| {
                handle
                    .group(group)
                    .map(|g| (g.status().role, g.status().term))
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "group {group} elected no leader within 10 s: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_written_survive_restarts_and_are_removed() {
    let root = tempdir();
    let configs = configs(root.path(), 3);
    let nodes = start_all(&configs).await;
    let all: Vec<NodeHandle> = nodes.iter().map(|n| n.handle.clone()).collect();
    let leader = wait_for_leader(&all.iter().collect::<Vec<_>>()).await;
    let follower = (leader + 1) % 3;

    // Bad input creates nothing and says why.
    let too_many = all[follower].create_group(None, 4).await.unwrap_err();
    assert!(
        too_many.to_string().contains("4 replicas asked for")
            && too_many.to_string().contains("3 voting members"),
        "{too_many}"
    );
    assert!(all[leader].create_group(None, 0).await.is_err());
    assert!(all[leader].catalog().is_empty(), "nothing created");

    let everywhere = all[leader].create_group(None, 3).await.unwrap();
    assert_eq!(everywhere.id, 1);
    assert_eq!(everywhere.replicas.len(), 3);
    let used = all[leader].create_group(Some(1), 1).await.unwrap_err();
    assert!(
        used.to_string().contains("group 1 already exists"),
        "{used}"
    );
    let pair = all[leader].create_group(Some(7), 2).await.unwrap();
    assert_eq!(pair.id, 7);
    assert_eq!(pair.replicas.len(), 2);

    // Group 1 elects, takes writes through its leader and through a follower (which hands
    // them on), and every replica applies them; group 0 does not see them.
    let group_leader = wait_for_group_leader(&all, 1).await;
    let through_leader = all[group_leader].group(1).unwrap();
    let through_follower = all[(group_leader + 1) % 3].group(1).unwrap();
    through_leader.propose(put("g1", "leader")).await.unwrap();
    through_follower
        .propose(put("g1f", "follower"))
        .await
        .unwrap();
    through_follower.read(ReadMode::ReadIndex).await.unwrap();
    assert_eq!(
        get(&through_follower, "g1").as_deref(),
        Some(&b"leader"[..])
    );
    assert_eq!(get(&all[leader], "g1"), None, "group 0's keyspace is apart");
    let pair_leader = wait_for_group_leader(&all, 7).await;
    all[pair_leader]
        .group(7)
        .unwrap()
        .propose(put("g7", "pair"))
        .await
        .unwrap();
    let outsider = configs
        .iter()
        .position(|config| !pair.replicas.contains(&config.node_id()))
        .expect("a node without group 7");
    assert!(matches!(
        all[outsider].group(7).err(),
        Some(NodeError::UnknownGroup(7))
    ));

    // Every node stopped at once, then started: the catalog, the groups and their keys are
    // all still there.
    for node in nodes {
        node.stop();
    }
    let nodes = start_all(&configs).await;
    let all: Vec<NodeHandle> = nodes.iter().map(|n| n.handle.clone()).collect();
    assert_eq!(all[0].catalog().len(), 2);
    let group_leader = wait_for_group_leader(&all, 1).await;
    let group = all[group_leader].group(1).unwrap();
    group.read(ReadMode::ReadIndex).await.unwrap();
    assert_eq!(get(&group, "g1f").as_deref(), Some(&b"follower"[..]));
    group.propose(put("after", "restart")).await.unwrap();

    // Removal stops every replica and deletes its storage; the id stays taken.
    let leader = wait_for_leader(&all.iter().collect::<Vec<_>>()).await;
    all[leader].remove_group(1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (handle, config) in all.iter().zip(&configs) {
        while handle.group(1).is_ok() || config.data_dir.join("groups/1").exists() {
            assert!(
                Instant::now() < deadline,
                "group 1 still on {}",
                config.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(matches!(
        all[leader].remove_group(1).await.unwrap_err(),
        NodeError::Catalog(_)
    ));
    assert_eq!(all[leader].create_group(None, 1).await.unwrap().id, 8);
    for node in nodes {
        node.stop();
    }
}

/// Segments of the node's shared WAL (`groups/wal/*.wal`).
fn shared_wal_segments(config: &ServerConfig) -> usize {
    std::fs::read_dir(config.data_dir.join("groups/wal"))
        .map(|dir| {
            dir.filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_went_quiet_does_not_keep_the_shared_wal_growing() {
    // One write into a group that then sleeps keeps the shared WAL's first segment; another
    // group writes on. The node compacts a sleeping group that keeps the oldest segment, so
    // the WAL shrinks back once both sleep, and nothing is lost across a restart.
    let root = tempdir();
    let mut configs = configs(root.path(), 1);
    configs[0].shared_wal_segment_bytes = 64 * 1024;
    let node = start_all(&configs).await.remove(0);
    let handle = node.handle.clone();
    wait_for_leader(&[&handle]).await;
    let quiet = handle.create_group(None, 1).await.unwrap().id;
    let busy = handle.create_group(None, 1).await.unwrap().id;
    let handles = [handle.clone()];
    wait_for_group_leader(&handles, quiet).await;
    wait_for_group_leader(&handles, busy).await;
    let quiet_group = handle.group(quiet).unwrap();
    quiet_group.propose(put("quiet", "once")).await.unwrap();
    let busy_group = handle.group(busy).unwrap();
    let value = "v".repeat(1024);
    let mut most_segments = 0;
    for i in 0..600 {
        busy_group
            .propose(put(&format!("k{i:03}"), &value))
            .await
            .unwrap();
        most_segments = most_segments.max(shared_wal_segments(&configs[0]));
    }
    assert!(
        most_segments >= 5,
        "600 KiB of writes fill several 64 KiB segments: {most_segments}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared_wal_segments(&configs[0]) > 2 {
        assert!(
            Instant::now() < deadline,
            "the shared WAL kept {} segments 30 s after the writes stopped",
            shared_wal_segments(&configs[0])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop();

    let node = start_all(&configs).await.remove(0);
    let handle = node.handle.clone();
    let handles = [handle.clone()];
    wait_for_group_leader(&handles, quiet).await;
    wait_for_group_leader(&handles, busy).await;
    let quiet_group = handle.group(quiet).unwrap();
    quiet_group.read(ReadMode::ReadIndex).await.unwrap();
    assert_eq!(get(&quiet_group, "quiet").as_deref(), Some(&b"once"[..]));
    let busy_group = handle.group(busy).unwrap();
    busy_group.read(ReadMode::ReadIndex).await.unwrap();
    assert_eq!(get(&busy_group, "k599").as_deref(), Some(value.as_bytes()));
    busy_group.propose(put("after", "restart")).await.unwrap();
    node.stop();
}
