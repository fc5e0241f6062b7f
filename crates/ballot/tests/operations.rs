//! Operating a cluster as etcd operators do, on real `ballot server` processes.
//!
//! Groups: groups made with `ballot group create`, written beside group 0 while every member is
//! SIGKILLed, come back with every acknowledged write, served through every member (those that
//! host no replica relay).
//!
//! Restarts: every member SIGKILLed in the middle of writes and started again with
//! `--initial-cluster-state new`, with `existing` and with the bootstrap flags left out; one
//! member alone; a member added with `member add`; after log compactions and a snapshot install;
//! a directory started under another member's name; and `--force-new-cluster` after two of three
//! members are lost for good. Every write that was acknowledged before a kill must be there after
//! the restart.
//!
//! Backups: `snapshot save` from a loaded cluster, `snapshot status`, and `snapshot restore`
//! into a new three-member cluster that holds every key with its revisions; damaged and
//! truncated files refused by both.
//!
//! Upgrades (feature `upgrade-tests`, with `BALLOT_OLD_BIN` naming an older release's binary):
//! a cluster of the old release upgraded one member at a time under load, old and new members
//! side by side, loses no acknowledged write.

use ballot_proto::etcdserverpb as pb;
use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");
const TOKEN: &str = "restart-test";
/// How long a cluster may take to elect a leader after a start.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The tests here start three or four processes each; one at a time keeps elections quick on a
/// small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[path = "../../server/tests/support/ports.rs"]
mod ports;
use ports::free_port;

struct Member {
    name: String,
    /// The `ballot` binary this member runs (this build's, or an older release's).
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }
}

/// How the bootstrap flags are given at a start.
#[derive(Clone, Copy, Debug)]
enum Bootstrap {
    New,
    Existing,
    /// No `--initial-cluster*` and no `--initial-advertise-peer-urls`, as a unit file written
    /// for restarts might have it.
    LeftOut,
}

struct Cluster {
    dir: PathBuf,
    members: Vec<Member>,
    /// The `--initial-cluster` of the first start.
    initial_cluster: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn new(test: &str, size: usize) -> Cluster {
        let dir =
            std::env::temp_dir().join(format!("ballot-restart-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<Member> = (1..=size).map(|i| new_member(&dir, i)).collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir,
            members,
            initial_cluster,
        }
    }

    fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Starts member `name` in the background.
    fn start(&mut self, name: &str, bootstrap: Bootstrap, extra: &[&str]) {
        let initial_cluster = self.initial_cluster.clone();
        let index = self.index(name);
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "{name} already runs");
        let child = server_command(member, &initial_cluster, bootstrap, extra)
            .stdout(Stdio::null())
            .stderr(log_file(member))
            .spawn()
            .expect("ballot server starts");
        member.child = Some(child);
    }

    fn start_all(&mut self, bootstrap: Bootstrap) {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for name in names {
            self.start(&name, bootstrap, &[]);
        }
    }

    /// SIGKILL: nothing is flushed, as on a crash.
    fn kill(&mut self, name: &str) {
        let index = self.index(name);
        let member = &mut self.members[index];
        let mut child = member.child.take().expect("member runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn kill_all(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
    }

    fn running_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            let log = std::fs::read_to_string(member.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("--- {} log (last lines)\n", member.name));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Waits until every running member reports the same leader.
    fn wait_for_leader(&self, runtime: &tokio::runtime::Runtime) -> u64 {
        self.wait_for_leader_other_than(runtime, 0)
    }

    /// Waits until every running member reports the same leader, and it is not `old`.
    fn wait_for_leader_other_than(&self, runtime: &tokio::runtime::Runtime, old: u64) -> u64 {
        let urls = self.running_urls();
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            if let Some(leader) = runtime.block_on(agreed_leader(&urls)) {
                if leader != old {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {LEADER_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn new_member(dir: &Path, i: usize) -> Member {
    let name = format!("n{i}");
    Member {
        data_dir: dir.join(&name),
        name,
        binary: PathBuf::from(BALLOT),
        client_port: free_port(),
        peer_port: free_port(),
        metrics_port: free_port(),
        child: None,
    }
}

fn log_file(member: &Member) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(member.log())
        .unwrap()
}

fn server_command(
    member: &Member,
    initial_cluster: &str,
    bootstrap: Bootstrap,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(&member.binary);
    command
        .args(["server", "--name", &member.name])
        .arg("--data-dir")
        .arg(&member.data_dir)
        .args(["--listen-client-urls", &member.client_url()])
        .args(["--advertise-client-urls", &member.client_url()])
        .args(["--listen-peer-urls", &member.peer_url()])
        .args([
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{}", member.metrics_port),
        ])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--worker-threads", "1"])
        .args(extra);
    let state = match bootstrap {
        Bootstrap::New => Some("new"),
        Bootstrap::Existing => Some("existing"),
        Bootstrap::LeftOut => None,
    };
    if let Some(state) = state {
        command
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", TOKEN]);
    }
    command
}

async fn channel(url: &str) -> Option<Channel> {
    Channel::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()
}

/// The leader every member in `urls` names, if they all name the same one.
async fn agreed_leader(urls: &[String]) -> Option<u64> {
    let mut leaders = Vec::new();
    for url in urls {
        let status = MaintenanceClient::new(channel(url).await?)
            .status(pb::StatusRequest {})
            .await
            .ok()?
            .into_inner();
        leaders.push(status.leader);
    }
    let first = *leaders.first()?;
    (first != 0 && leaders.iter().all(|&l| l == first)).then_some(first)
}

/// Writes `k/<prefix>/<n>` = `v<n>` one after another, through every member in turn (followers
/// forward to the leader), until stopped; returns every write that was acknowledged.
fn write_until_stopped(
    urls: Vec<String>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acknowledged_before_kill_min: usize,
    enough: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, String>> {
    write_counting(
        urls,
        prefix,
        stop,
        acknowledged_before_kill_min,
        enough,
        Arc::new(AtomicUsize::new(0)),
    )
}

/// [`write_until_stopped`], counting the acknowledged writes in `acknowledged_count` as they
/// come. A put to a member that is down fails and is not counted; the next goes to the next
/// member (a channel reconnects by itself once its member is back).
fn write_counting(
    urls: Vec<String>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acknowledged_before_kill_min: usize,
    enough: Arc<AtomicBool>,
    acknowledged_count: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<BTreeMap<String, String>> {
    write_counting_in(
        0,
        urls,
        prefix,
        stop,
        acknowledged_before_kill_min,
        enough,
        acknowledged_count,
    )
}

/// [`write_counting`] into group `group`'s keyspace.
fn write_counting_in(
    group: u32,
    urls: Vec<String>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acknowledged_before_kill_min: usize,
    enough: Arc<AtomicBool>,
    acknowledged_count: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<BTreeMap<String, String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut acknowledged = BTreeMap::new();
            let mut clients = Vec::new();
            for url in &urls {
                clients.push(channel(url).await.map(KvClient::new));
            }
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("k/{prefix}/{n:06}");
                let value = format!("v{n}");
                let count = clients.len();
                let Some(client) = clients[n as usize % count].as_mut() else {
                    continue;
                };
                let put = in_group(
                    group,
                    pb::PutRequest {
                        key: key.clone().into_bytes().into(),
                        value: value.clone().into_bytes().into(),
                        ..Default::default()
                    },
                );
                if client.put(put).await.is_ok() {
                    acknowledged.insert(key, value);
                    acknowledged_count.store(acknowledged.len(), Ordering::Relaxed);
                    if acknowledged.len() >= acknowledged_before_kill_min {
                        enough.store(true, Ordering::Relaxed);
                    }
                }
            }
            acknowledged
        })
    })
}

/// Writes through the cluster, SIGKILLs every member while writes are in flight, and returns
/// the writes acknowledged before.
fn write_then_kill_all(cluster: &mut Cluster, prefix: &'static str) -> BTreeMap<String, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let enough = Arc::new(AtomicBool::new(false));
    let writer = write_until_stopped(
        cluster.running_urls(),
        prefix,
        stop.clone(),
        200,
        enough.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !enough.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "200 writes were not acknowledged within a minute\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.kill_all();
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    assert!(acknowledged.len() >= 200);
    acknowledged
}

/// Writes `count` keys `k/<prefix>/<n>` through `url`, one after another, retrying a put that
/// fails while a leader is elected (each key is written once, so a retry changes nothing).
fn write_keys(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    prefix: &str,
    count: usize,
) -> BTreeMap<String, String> {
    runtime.block_on(async {
        let mut kv = KvClient::new(channel(url).await.expect("reach the member"));
        let mut written = BTreeMap::new();
        for n in 0..count {
            let key = format!("k/{prefix}/{n:06}");
            let value = format!("v{n}");
            let put = pb::PutRequest {
                key: key.clone().into_bytes().into(),
                value: value.clone().into_bytes().into(),
                ..Default::default()
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Err(status) = kv.put(put.clone()).await {
                assert!(
                    Instant::now() < deadline,
                    "a quorum serves writes: {status}"
                );
            }
            written.insert(key, value);
        }
        written
    })
}

/// Waits until member `name` has applied every write in `expected` (serializable reads: what it
/// holds itself).
fn wait_until_applied(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    expected: &BTreeMap<String, String>,
) {
    let url = cluster.members[cluster.index(name)].client_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = runtime
            .block_on(read_all_with(&url, true))
            .unwrap_or_default();
        if expected
            .iter()
            .all(|(key, value)| held.get(key) == Some(value))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not apply every write\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every key under `k/` with its value, read linearizably from `url`.
async fn read_all(url: &str) -> Result<BTreeMap<String, String>, String> {
    read_all_with(url, false).await
}

async fn read_all_with(url: &str, serializable: bool) -> Result<BTreeMap<String, String>, String> {
    read_all_in(0, url, serializable).await
}

/// A request for group `group`'s keyspace (group 0's carries no metadata, as etcd's).
fn in_group<T>(group: u32, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if group != 0 {
        request.metadata_mut().insert(
            ballot_server::etcd::kv::GROUP_HEADER,
            tonic::metadata::MetadataValue::from(group),
        );
    }
    request
}

/// [`read_all_with`] from group `group`'s keyspace.
async fn read_all_in(
    group: u32,
    url: &str,
    serializable: bool,
) -> Result<BTreeMap<String, String>, String> {
    let channel = channel(url)
        .await
        .ok_or_else(|| format!("cannot reach {url}"))?;
    let request = pb::RangeRequest {
        key: b"k/".to_vec().into(),
        range_end: b"k0".to_vec().into(),
        serializable,
        ..Default::default()
    };
    let response = KvClient::new(channel)
        .range(in_group(group, request))
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.to_vec()).unwrap(),
                String::from_utf8(kv.value.to_vec()).unwrap(),
            )
        })
        .collect())
}

/// Every acknowledged write is readable, through every running member.
fn assert_all_present(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    acknowledged: &BTreeMap<String, String>,
) {
    for url in cluster.running_urls() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stored = loop {
            match runtime.block_on(read_all(&url)) {
                Ok(stored) => break stored,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("reading from {url}: {error}\n{}", cluster.logs()),
            }
        };
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|(key, value)| stored.get(*key) != Some(*value))
            .map(|(key, _)| key)
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes missing through {url}, first {:?}",
            missing.len(),
            acknowledged.len(),
            missing.first()
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_member_killed_mid_write_comes_back_with_new_with_existing_and_with_the_flags_left_out() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("all", 3);
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    let mut acknowledged = BTreeMap::new();
    for (round, bootstrap) in [
        ("new", Bootstrap::New),
        ("existing", Bootstrap::Existing),
        ("left-out", Bootstrap::LeftOut),
    ] {
        acknowledged.extend(write_then_kill_all(&mut cluster, round));
        cluster.start_all(bootstrap);
        cluster.wait_for_leader(&runtime);
        assert_all_present(&cluster, &runtime, &acknowledged);
    }
    let log = std::fs::read_to_string(cluster.members[0].log()).unwrap();
    assert!(
        log.contains("restarting from the data directory"),
        "a restart says the bootstrap flags are ignored:\n{log}"
    );
}

#[test]
fn groups_come_back_from_every_member_killed_mid_write_and_every_member_serves_them() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("groups", 3);
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    let endpoints = cluster.running_urls().join(",");
    for (replicas, expected) in [("3", "group 1 created on "), ("1", "group 2 created on ")] {
        let created = group_create(&endpoints, &["--replicas", replicas]);
        let stdout = String::from_utf8_lossy(&created.stdout);
        assert!(
            created.status.success() && stdout.starts_with(expected),
            "{stdout}{}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let refused = group_create(&endpoints, &["--replicas", "4"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the cluster has 3 voting members"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [(0, "zero"), (1, "one"), (2, "two")]
        .into_iter()
        .map(|(group, prefix)| {
            let enough = Arc::new(AtomicBool::new(false));
            let writer = write_counting_in(
                group,
                cluster.running_urls(),
                prefix,
                stop.clone(),
                100,
                enough.clone(),
                Arc::new(AtomicUsize::new(0)),
            );
            (group, enough, writer)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writers
        .iter()
        .all(|(_, enough, _)| enough.load(Ordering::Relaxed))
    {
        assert!(
            Instant::now() < deadline,
            "100 writes per group were not acknowledged within a minute\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.kill_all();
    stop.store(true, Ordering::Relaxed);
    let acknowledged: Vec<(u32, BTreeMap<String, String>)> = writers
        .into_iter()
        .map(|(group, _, writer)| (group, writer.join().unwrap()))
        .collect();

    cluster.start_all(Bootstrap::Existing);
    cluster.wait_for_leader(&runtime);
    for (group, written) in &acknowledged {
        for url in cluster.running_urls() {
            let deadline = Instant::now() + Duration::from_secs(20);
            let stored = loop {
                match runtime.block_on(read_all_in(*group, &url, false)) {
                    Ok(stored) => break stored,
                    Err(error) => assert!(
                        Instant::now() < deadline,
                        "group {group} through {url}: {error}\n{}",
                        cluster.logs()
                    ),
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let missing = written
                .iter()
                .filter(|(key, value)| stored.get(*key) != Some(*value))
                .count();
            assert_eq!(
                missing,
                0,
                "group {group} through {url}: {missing} of {} acknowledged writes missing",
                written.len()
            );
        }
    }
    let listed = ballot(&["group", "list", "--endpoints", &endpoints]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listing.lines().count(), 2, "{listing}");
}

/// Idle groups hibernate (no ticks, no heartbeats); when the node leading some of them is
/// killed, node liveness on the survivors declares it down and those groups elect again, so every
/// group takes writes.
#[test]
fn sleeping_groups_elect_again_when_node_liveness_declares_their_leaders_node_down() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("hibernate", 3);
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    let endpoints = cluster.running_urls().join(",");
    // Each group's first campaign is on replica `id % 3`: groups 1, 2 and 3 start with leaders
    // on three different nodes, so whichever node is killed led one of them.
    let groups = ["1", "2", "3"];
    let created = group_create(&endpoints, &["--replicas", "3", "--count", "3"]);
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success()
            && groups
                .iter()
                .all(|group| stdout.contains(&format!("group {group} created on "))),
        "{stdout}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    for group in groups {
        let put = ballot(&[
            "put",
            "before",
            group,
            "--group",
            group,
            "--endpoints",
            &endpoints,
        ]);
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
    }
    let count =
        |member: &Member, series: &str| metric(&scrape_metrics(member.metrics_port), series);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .members
        .iter()
        .all(|m| count(m, "ballot_groups_hibernating") == Some(groups.len() as f64))
    {
        assert!(
            Instant::now() < deadline,
            "the idle groups did not all hibernate within 30 s: {:?}",
            cluster
                .members
                .iter()
                .map(|m| count(m, "ballot_groups_hibernating"))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A thousand groups must not flood the page: per-group series only on request.
    let n2 = &cluster.members[1];
    let default_page = scrape_metrics(n2.metrics_port);
    assert!(
        !default_page.contains("ballot_group_term"),
        "{default_page}"
    );
    assert_eq!(
        metric(&default_page, "ballot_groups_without_leader"),
        Some(0.0)
    );
    let all = scrape(n2.metrics_port, "/metrics?groups=all");
    let listed = scrape(n2.metrics_port, "/metrics?groups=2");
    for group in groups {
        let series = format!("ballot_group_has_leader{{group=\"{group}\"}}");
        assert_eq!(metric(&all, &series), Some(1.0), "{all}");
        assert_eq!(metric(&listed, &series).is_some(), group == "2", "{listed}");
    }
    let refused = scrape(n2.metrics_port, "/metrics?groups=some");
    assert!(
        refused.starts_with("HTTP/1.1 400") && refused.contains("groups=all"),
        "{refused}"
    );

    cluster.kill("n1");
    let survivors = cluster.running_urls().join(",");
    for group in groups {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let put = ballot(&[
                "put",
                "after",
                group,
                "--group",
                group,
                "--endpoints",
                &survivors,
            ]);
            if put.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group {group} took no write within 30 s of n1's death: {}\n{}",
                String::from_utf8_lossy(&put.stderr),
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for member in &cluster.members[1..] {
        assert!(
            count(member, "ballot_node_liveness_peers_declared_down_total").unwrap_or(0.0) >= 1.0,
            "{} never declared n1 down",
            member.name
        );
    }
}

#[test]
fn one_member_restarts_alone_and_catches_up() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("one", 3);
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    for (name, bootstrap) in [("n1", Bootstrap::Existing), ("n3", Bootstrap::LeftOut)] {
        cluster.kill(name);
        cluster.wait_for_leader(&runtime);
        let written = write_keys(&runtime, &cluster.running_urls()[0], name, 50);
        cluster.start(name, bootstrap, &[]);
        cluster.wait_for_leader(&runtime);
        assert_all_present(&cluster, &runtime, &written);
    }
}

#[test]
fn a_member_added_with_member_add_restarts_from_its_data() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("added", 4);
    // n4 is not in the first --initial-cluster: it joins later.
    cluster.initial_cluster = cluster.members[..3]
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for name in ["n1", "n2", "n3"] {
        cluster.start(name, Bootstrap::New, &[]);
    }
    cluster.wait_for_leader(&runtime);
    let n4_peer = cluster.members[3].peer_url();
    let first = cluster.members[0].client_url();
    runtime.block_on(async {
        let mut members = ClusterClient::new(channel(&first).await.unwrap());
        // A follower forwards to the leader once the leader has published its client URL, a
        // moment after the election.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(status) = members
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec![n4_peer.clone()],
                is_learner: false,
            })
            .await
        {
            assert!(
                status.message() == "etcdserver: not leader" && Instant::now() < deadline,
                "member add: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // As etcd's `member add` prints it: the existing members and the new one, state existing.
    cluster.initial_cluster = format!("{},n4={n4_peer}", cluster.initial_cluster);
    cluster.start("n4", Bootstrap::Existing, &[]);
    cluster.wait_for_leader(&runtime);
    // Its own flags derive another cluster id; it learns the cluster's from the log.
    let cluster_ids = |cluster: &Cluster| -> Vec<u64> {
        let urls = cluster.running_urls();
        runtime.block_on(async {
            let mut ids = Vec::new();
            for url in &urls {
                let status = MaintenanceClient::new(channel(url).await.unwrap())
                    .status(pb::StatusRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                ids.push(status.header.unwrap().cluster_id);
            }
            ids
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster_ids(&cluster)
        .windows(2)
        .any(|pair| pair[0] != pair[1])
    {
        assert!(
            Instant::now() < deadline,
            "every member reports the same cluster id: {:?}",
            cluster_ids(&cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let acknowledged = write_then_kill_all(&mut cluster, "four");
    cluster.start_all(Bootstrap::LeftOut);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
    let ids = cluster_ids(&cluster);
    assert!(
        ids.windows(2).all(|pair| pair[0] == pair[1]),
        "the cluster id survives restarts: {ids:?}"
    );
    // n4 alone, as a member among four: the others serve while it is away and it rejoins.
    cluster.kill("n4");
    cluster.start("n4", Bootstrap::LeftOut, &[]);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
}

#[test]
fn members_restart_after_compactions_and_after_installing_a_snapshot() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("compacted", 3);
    let small_log = ["--snapshot-count", "40"];
    for name in ["n1", "n2"] {
        cluster.start(name, Bootstrap::New, &small_log);
    }
    cluster.wait_for_leader(&runtime);
    // n3 is away while the others write and compact: it can only catch up by snapshot.
    let acknowledged = write_then_kill_all(&mut cluster, "compacted");
    for name in ["n1", "n2"] {
        cluster.start(name, Bootstrap::Existing, &small_log);
    }
    cluster.start("n3", Bootstrap::New, &small_log);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
    let installed = |cluster: &Cluster| {
        let log = std::fs::read_to_string(cluster.members[2].log()).unwrap();
        log.contains("installed a snapshot from the leader")
    };
    assert!(
        installed(&cluster),
        "n3 caught up by installing a snapshot\n{}",
        cluster.logs()
    );
    cluster.kill_all();
    cluster.start_all(Bootstrap::LeftOut);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
}

#[test]
fn a_directory_started_under_another_members_name_is_refused_and_left_alone() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("renamed", 1);
    cluster.initial_cluster = format!("n1={}", cluster.members[0].peer_url());
    cluster.start("n1", Bootstrap::New, &[]);
    cluster.wait_for_leader(&runtime);
    cluster.kill("n1");
    let before = listing(&cluster.members[0].data_dir);
    let mut impostor = new_member(&cluster.dir, 2);
    impostor.data_dir = cluster.members[0].data_dir.clone();
    let output = server_command(&impostor, &cluster.initial_cluster, Bootstrap::LeftOut, &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("belongs to member 'n1'") && stderr.contains("--name is 'n2'"),
        "{stderr}"
    );
    assert_eq!(
        listing(&cluster.members[0].data_dir),
        before,
        "nothing changed"
    );
    // A restart that leaves the token out says nothing of it; a different token given is only
    // warned about.
    cluster.start("n1", Bootstrap::LeftOut, &[]);
    cluster.wait_for_leader(&runtime);
    let log = std::fs::read_to_string(cluster.members[0].log()).unwrap();
    assert!(!log.contains("--initial-cluster-token differs"), "{log}");
    cluster.kill("n1");
    cluster.start(
        "n1",
        Bootstrap::LeftOut,
        &["--initial-cluster-token", "another-token"],
    );
    cluster.wait_for_leader(&runtime);
    let log = std::fs::read_to_string(cluster.members[0].log()).unwrap();
    assert!(log.contains("--initial-cluster-token differs"), "{log}");
}

/// Runs a server that is expected to refuse to start, and returns how it exited (killing it and
/// failing if it is still running after `limit`).
fn run_expecting_exit(mut command: Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ballot server starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the server kept running: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every file under `dir` with its length and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                files.push((entry.path(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn force_new_cluster_recovers_a_survivor_after_two_of_three_are_lost() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("forced", 3);
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    // As etcd does, the survivor keeps what it knows to be committed: wait until n1 has applied
    // the writes (a write committed by the two lost members alone would be lost with them).
    let acknowledged = write_keys(&runtime, &cluster.members[1].client_url(), "forced", 200);
    wait_until_applied(&cluster, &runtime, "n1", &acknowledged);
    cluster.kill_all();
    // n2 and n3 are gone for good; n1 alone cannot elect a leader.
    for name in ["n2", "n3"] {
        let index = cluster.index(name);
        std::fs::remove_dir_all(&cluster.members[index].data_dir).unwrap();
    }
    cluster.members.truncate(1);
    cluster.start("n1", Bootstrap::LeftOut, &["--force-new-cluster"]);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
    let url = cluster.members[0].client_url();
    let members = runtime.block_on(async {
        let channel = channel(&url).await.unwrap();
        KvClient::new(channel.clone())
            .put(pb::PutRequest {
                key: b"k/after".to_vec().into(),
                value: b"alone".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("a one-member cluster takes writes");
        ClusterClient::new(channel)
            .member_list(pb::MemberListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .members
    });
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].name, "n1");
    // The new membership is durable: a plain restart keeps it, and so does a restart that
    // still carries the flag while the member is alone.
    let mut expected = acknowledged;
    expected.insert("k/after".into(), "alone".into());
    for flags in [&[][..], &["--force-new-cluster"][..]] {
        cluster.kill("n1");
        cluster.start("n1", Bootstrap::LeftOut, flags);
        cluster.wait_for_leader(&runtime);
        assert_all_present(&cluster, &runtime, &expected);
    }
    // Once the cluster has grown again, a start with the flag left in is refused: forcing again
    // would cut the new members off.
    let n4 = new_member(&cluster.dir, 4);
    runtime.block_on(async {
        ClusterClient::new(channel(&url).await.unwrap())
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec![n4.peer_url()],
                is_learner: true,
            })
            .await
            .expect("member add");
    });
    cluster.kill("n1");
    let refused = run_expecting_exit(
        server_command(
            &cluster.members[0],
            &cluster.initial_cluster,
            Bootstrap::LeftOut,
            &["--force-new-cluster"],
        ),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("already applied") && stderr.contains("remove the flag"),
        "{stderr}"
    );
    cluster.start("n1", Bootstrap::LeftOut, &[]);
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &expected);
}

/// Every key under `k/` with its whole `KeyValue`, and the store revision, read linearizably.
fn read_key_values(
    runtime: &tokio::runtime::Runtime,
    url: &str,
) -> (i64, Vec<ballot_proto::mvccpb::KeyValue>) {
    runtime.block_on(async {
        let response = KvClient::new(channel(url).await.expect("reach the member"))
            .range(pb::RangeRequest {
                key: b"k/".to_vec().into(),
                range_end: b"k0".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        (response.header.expect("header").revision, response.kvs)
    })
}

/// `ballot group create ARGS --endpoints ENDPOINTS`.
fn group_create(endpoints: &str, args: &[&str]) -> std::process::Output {
    let mut words = vec!["group", "create"];
    words.extend_from_slice(args);
    words.extend_from_slice(&["--endpoints", endpoints]);
    ballot(&words)
}

fn ballot(args: &[&str]) -> std::process::Output {
    Command::new(BALLOT)
        .args(args)
        .output()
        .expect("ballot runs")
}

#[test]
fn a_snapshot_saved_from_a_loaded_cluster_restores_into_a_new_cluster_with_every_revision() {
    let _serial = serial();
    let runtime = runtime();
    let mut source = Cluster::new("backup-source", 3);
    source.start_all(Bootstrap::New);
    source.wait_for_leader(&runtime);
    // Puts, overwrites, deletes and a compaction: versions, create and mod revisions all differ.
    let url = source.members[0].client_url();
    write_keys(&runtime, &url, "a", 300);
    write_keys(&runtime, &url, "a", 100);
    runtime.block_on(async {
        let channel = channel(&url).await.unwrap();
        let mut kv = KvClient::new(channel);
        kv.delete_range(pb::DeleteRangeRequest {
            key: b"k/a/000200".to_vec().into(),
            range_end: b"k/a/000250".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        kv.compact(pb::CompactionRequest {
            revision: 150,
            physical: true,
        })
        .await
        .unwrap();
    });
    let (revision, expected) = read_key_values(&runtime, &url);
    assert_eq!(expected.len(), 250);
    let file = source.dir.join("backup.db");
    let file_text = file.to_str().unwrap().to_string();
    let saved = ballot(&["snapshot", "save", &file_text, "--endpoints", &url]);
    assert!(saved.status.success(), "{saved:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    }
    let status = ballot(&["snapshot", "status", &file_text, "-w", "json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"], revision);
    assert_eq!(status["totalKey"], 250);
    assert_eq!(status["totalSize"], std::fs::metadata(&file).unwrap().len());
    let hash = runtime.block_on(async {
        MaintenanceClient::new(channel(&url).await.unwrap())
            .hash_kv(pb::HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner()
            .hash
    });
    assert_eq!(
        status["hash"], hash,
        "the status hash is what hashkv answers"
    );

    // Damaged or cut files are refused by status and restore, and restore writes nothing.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = source.dir.join("damaged.db");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let truncated = source.dir.join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    for bad in [&damaged, &truncated] {
        let bad = bad.to_str().unwrap();
        let status = ballot(&["snapshot", "status", bad]);
        assert_eq!(status.status.code(), Some(1), "{status:?}");
        let dir = source.dir.join("never");
        let restore = ballot(&[
            "snapshot",
            "restore",
            bad,
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(restore.status.code(), Some(1), "{restore:?}");
        assert!(
            String::from_utf8_lossy(&restore.stderr).contains("not a usable ballot snapshot"),
            "{restore:?}"
        );
        assert!(!dir.exists(), "a refused restore writes nothing");
    }

    // A new three-member cluster, restored member by member from the one file.
    let mut target = Cluster::new("backup-target", 3);
    for member in &target.members {
        let restored = ballot(&[
            "snapshot",
            "restore",
            &file_text,
            "--name",
            &member.name,
            "--data-dir",
            member.data_dir.to_str().unwrap(),
            "--initial-cluster",
            &target.initial_cluster,
            "--initial-cluster-token",
            TOKEN,
            "--initial-advertise-peer-urls",
            &member.peer_url(),
        ]);
        assert!(restored.status.success(), "{restored:?}");
    }
    let again = ballot(&[
        "snapshot",
        "restore",
        &file_text,
        "--data-dir",
        target.members[0].data_dir.to_str().unwrap(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing data-dir is refused: {again:?}"
    );
    target.start_all(Bootstrap::New);
    target.wait_for_leader(&runtime);
    for member in &target.members {
        let (restored_revision, restored) = read_key_values(&runtime, &member.client_url());
        assert_eq!(restored_revision, revision);
        assert_eq!(restored, expected, "through {}", member.name);
    }
    // And it goes on from there.
    let url = target.members[1].client_url();
    write_keys(&runtime, &url, "after", 5);
    assert_eq!(read_key_values(&runtime, &url).0, revision + 5);
    drop(source);
}

fn scrape_metrics(port: u16) -> String {
    scrape(port, "/metrics")
}

/// The response (head and body) to `GET target` on the metrics port.
fn scrape(port: u16, target: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of the sample named exactly `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The log's JSON lines whose message is `message`.
fn json_events(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["fields"]["message"] == message)
        .collect()
}

#[test]
fn operators_see_elections_and_peers_in_json_logs_and_etcds_metrics() {
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("observed", 3);
    let json = ["--log-format", "json", "--log-level", "info"];
    for name in ["n1", "n2", "n3"] {
        cluster.start(name, Bootstrap::New, &json);
    }
    let leader_id = cluster.wait_for_leader(&runtime);
    let url = cluster.members[0].client_url();
    write_keys(&runtime, &url, "m", 20);
    runtime.block_on(async {
        KvClient::new(channel(&url).await.unwrap())
            .delete_range(pb::DeleteRangeRequest {
                key: b"k/m/000000".to_vec().into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let leader = cluster
        .members
        .iter()
        .position(|m| metric(&scrape_metrics(m.metrics_port), "etcd_server_is_leader") == Some(1.0))
        .expect("one member says it leads");
    // etcd's names and meanings, on the leader (after a round trip to each peer).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape_metrics(cluster.members[leader].metrics_port);
        let peers_timed = text
            .lines()
            .filter(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{To=\""))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) > Some(0))
            .count();
        let committed_once = metric(&text, "etcd_disk_backend_commit_duration_seconds_count")
            .is_some_and(|count| count >= 1.0);
        if peers_timed == 2 && committed_once {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no round trips or commits timed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&text, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(metric(&text, "etcd_debugging_mvcc_keys_total"), Some(19.0));
    let committed = metric(&text, "etcd_server_proposals_committed_total").unwrap();
    let applied = metric(&text, "etcd_server_proposals_applied_total").unwrap();
    assert!(
        committed >= 21.0 && applied <= committed,
        "{committed} {applied}"
    );
    assert!(metric(&text, "etcd_server_proposals_pending").is_some());
    assert!(metric(&text, "etcd_server_proposals_failed_total").is_some());
    assert!(metric(&text, "etcd_server_leader_changes_seen_total").unwrap() >= 1.0);
    assert!(metric(&text, "etcd_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
    assert!(metric(&text, "etcd_disk_wal_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(
        text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}")
            && text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}"),
        "etcd's buckets: 1 ms doubling to 8.192 s"
    );

    // The leader dies: the others log its loss and a new election, in JSON.
    let leader_name = cluster.members[leader].name.clone();
    cluster.kill(&leader_name);
    let new_leader = cluster.wait_for_leader_other_than(&runtime, leader_id);
    let survivors: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.child.is_some())
        .map(|m| std::fs::read_to_string(m.log()).unwrap())
        .collect();
    let all = survivors.join("\n");
    assert!(
        !json_events(&all, "won the election: this member leads").is_empty(),
        "the new leader says it won:\n{all}"
    );
    let changes = json_events(&all, "leader changed");
    assert!(
        changes
            .iter()
            .any(|e| e["fields"]["leader"] == format!("{new_leader:x}")),
        "the change to the new leader is logged:\n{all}"
    );
    assert!(
        !json_events(&all, "lost the connection to peer; reconnecting").is_empty()
            || !json_events(&all, "cannot reach peer; retrying").is_empty(),
        "the dead peer is logged:\n{all}"
    );
    for line in all.lines().filter(|line| !line.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
    }
}

/// Waits until `count` has grown by `more` (writes keep being acknowledged).
#[cfg(feature = "upgrade-tests")]
fn wait_for_progress(cluster: &Cluster, count: &AtomicUsize, more: usize, what: &str) {
    let target = count.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "{what}: {more} more writes were not acknowledged within a minute\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// n3 still runs the old release, which cannot read a group's peer frames: no group may be
/// created yet, through any member. The answer depends on who leads group 0: the old n3 has no
/// Groups service at all (the forwarded create says the leader is behind); a new leader probes
/// the members and names n3. Both are checked, n1 made leader for the second.
#[cfg(feature = "upgrade-tests")]
fn refuses_groups_while_n3_runs_the_old_release(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
) {
    let endpoints = cluster.running_urls().join(",");
    let create = || {
        let refused = group_create(&endpoints, &["--replicas", "3"]);
        assert!(
            !refused.status.success(),
            "a group was created with n3 on the old release"
        );
        String::from_utf8_lossy(&refused.stderr).into_owned()
    };
    let stderr = create();
    assert!(stderr.contains("before groups"), "{stderr}");

    let n1 = cluster.members[cluster.index("n1")].client_url();
    runtime.block_on(async {
        let mut n1_client = MaintenanceClient::new(channel(&n1).await.unwrap());
        let n1_id = n1_client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let deadline = Instant::now() + Duration::from_secs(20);
        while agreed_leader(&cluster.running_urls()).await != Some(n1_id) {
            // MoveLeader is the leader's; a follower forwards it.
            let moved = n1_client
                .move_leader(pb::MoveLeaderRequest { target_id: n1_id })
                .await;
            assert!(
                Instant::now() < deadline,
                "n1 did not become leader: {moved:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stderr = create();
    assert!(
        stderr.contains("n3") && stderr.contains("runs a release from before groups"),
        "{stderr}"
    );
}

#[cfg(feature = "upgrade-tests")]
#[test]
fn a_cluster_upgraded_one_member_at_a_time_under_load_loses_no_acknowledged_write() {
    let old = std::env::var_os("BALLOT_OLD_BIN").expect(
        "BALLOT_OLD_BIN names the binary of the older release to upgrade from (.ci/run builds \
         it from the commit before the multi-group work)",
    );
    let _serial = serial();
    let runtime = runtime();
    let mut cluster = Cluster::new("upgrade", 3);
    for member in &mut cluster.members {
        member.binary = PathBuf::from(&old);
    }
    cluster.start_all(Bootstrap::New);
    cluster.wait_for_leader(&runtime);
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_count = Arc::new(AtomicUsize::new(0));
    let writer = write_counting(
        cluster.running_urls(),
        "upgrade",
        stop.clone(),
        usize::MAX,
        Arc::new(AtomicBool::new(false)),
        acknowledged_count.clone(),
    );
    wait_for_progress(&cluster, &acknowledged_count, 200, "the old cluster");
    for name in ["n1", "n2", "n3"] {
        // As an operator upgrades: stop the member (SIGTERM, a clean stop), start this build on
        // its data directory with the same flags.
        let index = cluster.index(name);
        let mut child = cluster.members[index].child.take().expect("member runs");
        // SAFETY: the child is ours and has not been waited for, so its pid is still its own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap();
        wait_for_progress(&cluster, &acknowledged_count, 50, &format!("{name} down"));
        cluster.members[index].binary = PathBuf::from(BALLOT);
        cluster.start(name, Bootstrap::New, &[]);
        cluster.wait_for_leader(&runtime);
        // Old and new members side by side, under load, for a while.
        wait_for_progress(
            &cluster,
            &acknowledged_count,
            200,
            &format!("{name} upgraded"),
        );
        if name == "n2" {
            refuses_groups_while_n3_runs_the_old_release(&cluster, &runtime);
        }
    }
    // Every member upgraded: groups can be created, and take writes.
    let endpoints = cluster.running_urls().join(",");
    let created = group_create(&endpoints, &["--replicas", "3"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let put = ballot(&[
        "put",
        "grouped",
        "1",
        "--group",
        "1",
        "--endpoints",
        &endpoints,
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    wait_for_progress(&cluster, &acknowledged_count, 100, "group 1 created");
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    cluster.wait_for_leader(&runtime);
    assert_all_present(&cluster, &runtime, &acknowledged);
    for member in &cluster.members {
        let log = std::fs::read_to_string(member.log()).unwrap_or_default();
        assert!(
            log.contains("upgraded the member registry file's format"),
            "{} upgraded its member registry file in place, with a log line:\n{}",
            member.name,
            cluster.logs()
        );
    }
}
