//! A local cluster of real `ballot server` processes on free loopback ports, data under one
//! directory: what `ballot dev` runs, and what tests and `ballot check` start.
//!
//! The ports chosen on first start are kept in `<data-dir>/cluster.toml`: member ids derive from
//! peer URLs, so a restarted cluster must come back on the same ports to find its own data.
//!
//! One cluster per directory: a [`RunningCluster`] holds `<data-dir>/LOCK` while it lives, and
//! before a node starts its ports and its data directory's lock are checked ([`preflight`]), so
//! a server left from an earlier run is named instead of being mistaken for a new node.
//!
//! The servers die with the process that started them, however it dies: each gets the
//! hidden `--stop-on-stdin-eof` flag and a pipe as its standard input, whose write end only this
//! process holds; the kernel closes it when this process ends, and the server shuts down on
//! end-of-file. Each runs in its own process group, so a terminal's Ctrl-C reaches only the
//! starter, which stops them in order.
//!
//! Signals go only to children not yet reaped (`Child::try_wait` has not returned their
//! status): until then their pid cannot have been given to another process.

pub mod preflight;

use ballot_server::ports::PortPicker;
use ballot_storage::dir_lock::{DirLock, DirLockError, LOCK_FILE_NAME};
use preflight::Busy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most nodes a dev cluster has.
const NODES_MAX: usize = 7;
/// Fresh starts tried when a planned port was taken before a server could bind it.
const PORT_RACE_ATTEMPTS: u32 = 3;
/// How long to wait for every node to report a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DevNode {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DevCluster {
    pub token: String,
    pub nodes: Vec<DevNode>,
}

impl DevCluster {
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.client_port))
            .collect()
    }
}

/// The CPUs divided among `nodes` processes on one machine, at least one each.
pub fn worker_threads_per_node(nodes: usize) -> usize {
    (crate::cpus() / nodes.max(1)).max(1)
}

/// A loopback port free now, below the kernel's ephemeral range (`ballot_server::ports`): a node
/// restarted later on it (`start n1` after a kill, or `ballot dev` again with the same
/// `cluster.toml`) must not find an outgoing connection holding it. The range is apart from the
/// tests' (20000-31999); the offset comes from the process id and the clock, so `ballot dev`
/// processes starting at once start far apart. Port 0 is the fallback when the range is full.
fn free_port() -> std::io::Result<u16> {
    static PICKER: std::sync::OnceLock<PortPicker> = std::sync::OnceLock::new();
    let picker = PICKER.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        PortPicker::new(
            10_000..20_000,
            std::process::id().wrapping_mul(7_919).wrapping_add(nanos),
        )
    });
    match picker.pick() {
        Some(port) => Ok(port),
        None => Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()),
    }
}

/// Reads `cluster.toml`, or picks ports and writes it.
fn plan(data_dir: &Path, nodes: usize) -> Result<DevCluster, String> {
    let file = data_dir.join("cluster.toml");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let cluster: DevCluster =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if cluster.nodes.len() != nodes {
            return Err(format!(
                "{} holds a {}-node cluster; run with --nodes {} or --fresh",
                data_dir.display(),
                cluster.nodes.len(),
                cluster.nodes.len()
            ));
        }
        return Ok(cluster);
    }
    let mut planned = Vec::new();
    for i in 1..=nodes {
        let port = || free_port().map_err(|e| format!("cannot find a free port: {e}"));
        planned.push(DevNode {
            name: format!("n{i}"),
            client_port: port()?,
            peer_port: port()?,
            metrics_port: port()?,
        });
    }
    let cluster = DevCluster {
        token: format!("ballot-dev-{}", std::process::id()),
        nodes: planned,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let text = toml::to_string(&cluster).expect("cluster plan serializes");
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(cluster)
}

/// The running children; dropping it stops them.
pub struct RunningCluster {
    pub plan: DevCluster,
    pub data_dir: PathBuf,
    exe: PathBuf,
    children: Vec<(String, Child)>,
    /// Flags appended to every node's `ballot server` command line (also on restart).
    extra_args: Vec<String>,
    /// Per node name, how it starts differently from a `ballot dev` node (see [`NodeOptions`]).
    node_options: HashMap<String, NodeOptions>,
    /// `<data-dir>/LOCK`: one cluster per directory. Released after the nodes are stopped
    /// (fields drop after `Drop::drop`); `None` only while handed back for another attempt.
    lock: Option<DirLock>,
}

impl RunningCluster {
    /// Starts `nodes` nodes of the `ballot` binary at `exe` and waits until each reports a
    /// leader. With `fresh`, `data_dir` is emptied first.
    pub fn start(
        exe: &Path,
        nodes: usize,
        data_dir: &Path,
        fresh: bool,
    ) -> Result<RunningCluster, String> {
        RunningCluster::start_with_args(exe, nodes, data_dir, fresh, &[])
    }

    /// As [`RunningCluster::start`], with `extra_args` (e.g. `--snapshot-count=50`) given to
    /// every node's `ballot server`.
    pub fn start_with_args(
        exe: &Path,
        nodes: usize,
        data_dir: &Path,
        fresh: bool,
        extra_args: &[String],
    ) -> Result<RunningCluster, String> {
        if nodes == 0 || nodes > NODES_MAX {
            return Err(format!(
                "--nodes must be between 1 and {NODES_MAX}, got {nodes}"
            ));
        }
        let mut lock = Some(lock_cluster_dir(data_dir)?);
        // Ports are picked free, then bound by the servers a moment later; in between another
        // process (often some node's outgoing connection, given an ephemeral port) may take
        // one. A fresh cluster then picks new ports and tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            if fresh {
                empty_keeping_lock(data_dir)?;
            }
            let plan = plan(data_dir, nodes)?;
            let mut running = RunningCluster {
                plan: plan.clone(),
                data_dir: data_dir.to_path_buf(),
                exe: exe.to_path_buf(),
                children: Vec::new(),
                extra_args: extra_args.to_vec(),
                node_options: HashMap::new(),
                lock: lock.take(),
            };
            // Every node checked before any starts: a leftover is named before anything runs.
            let started = plan
                .nodes
                .iter()
                .try_for_each(|node| running.check_node(node).map_err(|busy| busy.to_string()))
                .and_then(|()| {
                    plan.nodes
                        .iter()
                        .try_for_each(|node| running.start_node(&node.name).map(|_| ()))
                });
            match started.and_then(|()| running.wait_healthy()) {
                Ok(()) => return Ok(running),
                Err(error) if fresh && attempt < PORT_RACE_ATTEMPTS && error.contains("in use") => {
                    lock = Some(running.into_lock());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stops every node and gives the directory lock back, for another attempt.
    fn into_lock(mut self) -> DirLock {
        self.stop();
        self.lock.take().expect("held from start to drop")
    }

    fn spawn(&self, node: &DevNode) -> Result<Child, String> {
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let initial_cluster: Vec<String> = self
            .plan
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.name, url(self.advertised_peer_port(n))))
            .collect();
        let dir = self.data_dir.join(&node.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Command::new(&self.exe)
            .arg("server")
            .args(["--name", &node.name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url(node.client_port)])
            .args(["--advertise-client-urls", &url(node.client_port)])
            .args(["--listen-peer-urls", &url(node.peer_port)])
            .args([
                "--initial-advertise-peer-urls",
                &url(self.advertised_peer_port(node)),
            ])
            .args(["--listen-metrics-urls", &url(node.metrics_port)])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-token", &self.plan.token])
            .args(self.worker_threads_args())
            .args(&self.extra_args)
            .args(self.cluster_state_args(node))
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", node.name))
    }

    /// The nodes share this machine: each gets its share of the CPUs for its client and peer
    /// threads (at least one) instead of a thread per CPU, unless the caller says otherwise with
    /// its own arguments or `BALLOT_WORKER_THREADS` (which the servers inherit; a flag would
    /// beat it). With 3 nodes on 2 CPUs, one worker each gave 5% more puts per second at 256
    /// clients and 8% less server CPU per put than two each (docs/benchmarks.md).
    fn worker_threads_args(&self) -> Vec<String> {
        let chosen_by_caller = self
            .extra_args
            .iter()
            .any(|arg| arg.starts_with("--worker-threads"))
            || std::env::var_os("BALLOT_WORKER_THREADS").is_some();
        if chosen_by_caller {
            return Vec::new();
        }
        vec![
            "--worker-threads".to_string(),
            worker_threads_per_node(self.plan.nodes.len()).to_string(),
        ]
    }

    /// SIGKILL: no chance to sync or say goodbye, as in a crash.
    pub fn kill(&mut self, name: &str) {
        if let Some(position) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(position);
            // `Child::kill` sends nothing to a child already reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// As [`RunningCluster::kill`], with its exit status; an error if `name` is not running.
    pub fn kill_node(&mut self, name: &str) -> Result<ExitStatus, String> {
        let mut child = self.take_child(name)?;
        let _ = child.kill();
        child.wait().map_err(|e| format!("waiting for {name}: {e}"))
    }

    /// Starts a killed or stopped node again from its data directory.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        self.start_node(name).map(|_| ())
    }

    /// Starts `name` (not running) after checking that its ports are free and its data
    /// directory unlocked; returns its pid. Does not wait for it to find a leader.
    pub fn start_node(&mut self, name: &str) -> Result<u32, String> {
        let node = self.node(name)?.clone();
        if let Some(pid) = self.pid(name) {
            return Err(format!("{name} is already running (pid {pid})"));
        }
        self.check_node(&node).map_err(|busy| busy.to_string())?;
        let child = self.spawn(&node)?;
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Ok(pid)
    }

    /// SIGTERM, then wait up to `grace` (SIGKILL after it); an error if `name` is not running.
    pub fn stop_node(&mut self, name: &str, grace: Duration) -> Result<Stopped, String> {
        let mut child = self.take_child(name)?;
        terminate(&mut child);
        Ok(wait_or_kill(&mut child, Instant::now() + grace))
    }

    /// Whether `node` could start now: its ports free, its data directory unlocked.
    pub fn check_node(&self, node: &DevNode) -> Result<(), Busy> {
        preflight::check_node(&self.data_dir.join(&node.name), node)
    }

    /// The planned node called `name`, or an error listing the names there are.
    pub fn node(&self, name: &str) -> Result<&DevNode, String> {
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.plan.nodes.iter().map(|n| n.name.as_str()).collect();
                format!("no node {name} (nodes: {})", names.join(", "))
            })
    }

    fn take_child(&mut self, name: &str) -> Result<Child, String> {
        self.node(name)?;
        let position = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(format!("{name} is not running"))?;
        Ok(self.children.remove(position).1)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for node in self.plan.nodes.clone() {
            loop {
                if let Some((name, status)) = self.exited() {
                    return Err(format!(
                        "{name} exited ({status}) during startup:\n{}",
                        self.log_tail(&name)
                    ));
                }
                if health(node.metrics_port) {
                    break;
                }
                // A failed start of this node must not be hidden by someone else answering.
                if !self.is_running(&node.name) {
                    return Err(format!("{} is not running", node.name));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} reported no leader within {STARTUP_TIMEOUT:?}:\n{}",
                        node.name,
                        self.log_tail(&node.name)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The first child that has exited, if any.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| child.try_wait().ok().flatten().map(|s| (name.clone(), s)))
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.data_dir.join(name).join("server.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM to every node, then wait (SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) {
        self.stop_all();
    }

    /// As [`RunningCluster::stop`], saying how each node that was running ended.
    pub fn stop_all(&mut self) -> Vec<(String, Stopped)> {
        for (_, child) in &mut self.children {
            terminate(child);
        }
        let deadline = Instant::now() + STOP_GRACE;
        self.children
            .drain(..)
            .map(|(name, mut child)| (name, wait_or_kill(&mut child, deadline)))
            .collect()
    }
}

/// How a node's process ended when asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself (after SIGTERM, or earlier) with this status.
    Exited(ExitStatus),
    /// It outlived the grace period and was SIGKILLed.
    Killed(ExitStatus),
}

impl Stopped {
    /// Exited by itself with status 0.
    pub fn is_clean(&self) -> bool {
        matches!(self, Stopped::Exited(status) if status.success())
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Exited(status) => write!(f, "{status}"),
            Stopped::Killed(_) => write!(f, "still running after SIGTERM; SIGKILLed"),
        }
    }
}

/// SIGTERM, unless the child was already reaped (its pid may belong to someone else by now).
fn terminate(child: &mut Child) {
    signal_unreaped(child, libc::SIGTERM);
}

/// Sends `signal` to a child not yet reaped; false if it was.
fn signal_unreaped(child: &mut Child, signal: libc::c_int) -> bool {
    if !matches!(child.try_wait(), Ok(None)) {
        return false;
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory effects; the pid is our unreaped child's (see above).
    unsafe { libc::kill(pid, signal) == 0 }
}

fn wait_or_kill(child: &mut Child, deadline: Instant) -> Stopped {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Stopped::Exited(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let status = child.wait().expect("waiting for a killed child");
                return Stopped::Killed(status);
            }
        }
    }
}

/// Locks `<data_dir>/LOCK` (creating the directory), or says which process uses it.
fn lock_cluster_dir(data_dir: &Path) -> Result<DirLock, String> {
    DirLock::acquire(data_dir).map_err(|error| match error {
        DirLockError::Held { holder_pid, .. } => format!(
            "{} is in use by another cluster ({}): one cluster per directory; stop it or choose \
             another directory",
            data_dir.display(),
            holder_pid.map_or("its process is unknown".to_string(), |pid| format!(
                "process {pid}"
            ))
        ),
        other => other.to_string(),
    })
}

/// Empties a locked cluster directory for a fresh start, after checking that no node's server
/// still runs in it (deleting files under a live server would corrupt nothing of ours but
/// leave it serving a deleted directory). The lock file stays: deleting it would let a second
/// cluster lock a new file while this one holds the old.
fn empty_keeping_lock(data_dir: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            preflight::check_data_dir(&name, &path.join("data"))
                .map_err(|busy| busy.to_string())?;
        }
    }
    for entry in std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.file_name() == Some(LOCK_FILE_NAME.as_ref()) {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET /health answers 200 (the node knows a leader).
pub fn health(metrics_port: u16) -> bool {
    http_get(metrics_port, "/health").is_some_and(|response| response.starts_with("HTTP/1.1 200"))
}

/// A node's view of the election, from its `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    pub term: u64,
    pub is_leader: bool,
    pub has_leader: bool,
}

impl NodeView {
    /// `leader`, `follower` (knows a leader) or `leaderless` (one word, for tables).
    pub fn role(&self) -> &'static str {
        match (self.is_leader, self.has_leader) {
            (true, _) => "leader",
            (false, true) => "follower",
            (false, false) => "leaderless",
        }
    }

    /// Reads the `ballot_raft_*` gauges of a `/metrics` page; `None` when one is missing.
    pub fn from_metrics(text: &str) -> Option<NodeView> {
        let gauge = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        Some(NodeView {
            term: gauge("ballot_raft_term")?,
            is_leader: gauge("ballot_raft_is_leader")? == 1,
            has_leader: gauge("ballot_raft_has_leader")? == 1,
        })
    }
}

/// What the node serving `/metrics` on `metrics_port` says of the election, if it answers.
pub fn node_view(metrics_port: u16) -> Option<NodeView> {
    NodeView::from_metrics(&http_get(metrics_port, "/metrics")?)
}

/// The whole HTTP/1.1 response (head and body) to a GET on loopback, with short timeouts.
fn http_get(port: u16, path: &str) -> Option<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    Some(response)
}

impl RunningCluster {
    /// Process id of a node, e.g. to kill it with SIGKILL in a test.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }
}

/// How a node starts differently from a `ballot dev` node; the default changes nothing.
/// `ballot check` puts a fault-injecting proxy in front of every node's peer port and re-adds
/// removed members, which is what these are for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// The peer port other members are told to dial (`--initial-advertise-peer-urls`, and this
    /// node's entry in `--initial-cluster`), e.g. a proxy's in front of the node's real
    /// `peer_port`, on which it still listens. `None`: the real one.
    pub advertised_peer_port: Option<u16>,
    /// Start with `--initial-cluster-state existing`: a member added to a running cluster with
    /// `member add`, which learns the membership from the leader instead of bootstrapping.
    pub joins_existing: bool,
}

impl RunningCluster {
    /// Plans a fresh cluster in an emptied `data_dir` without starting any node, so that the
    /// caller can set [`NodeOptions`] (knowing the planned ports) before [`RunningCluster::launch`].
    pub fn plan_fresh(exe: &Path, nodes: usize, data_dir: &Path) -> Result<RunningCluster, String> {
        if nodes == 0 || nodes > NODES_MAX {
            return Err(format!(
                "--nodes must be between 1 and {NODES_MAX}, got {nodes}"
            ));
        }
        let lock = lock_cluster_dir(data_dir)?;
        empty_keeping_lock(data_dir)?;
        let plan = plan(data_dir, nodes)?;
        Ok(RunningCluster {
            plan,
            data_dir: data_dir.to_path_buf(),
            exe: exe.to_path_buf(),
            children: Vec::new(),
            extra_args: Vec::new(),
            node_options: HashMap::new(),
            lock: Some(lock),
        })
    }

    /// Starts every planned node that is not running and waits until each reports a leader.
    pub fn launch(&mut self) -> Result<(), String> {
        for node in self.plan.nodes.clone() {
            if !self.is_running(&node.name) {
                self.start_node(&node.name)?;
            }
        }
        self.wait_healthy()
    }

    /// Applies from the next (re)start of `name` on.
    pub fn set_node_options(&mut self, name: &str, options: NodeOptions) {
        self.node_options.insert(name.to_string(), options);
    }

    pub fn node_options(&self, name: &str) -> NodeOptions {
        self.node_options.get(name).cloned().unwrap_or_default()
    }

    /// The peer port other members dial to reach `node`.
    pub fn advertised_peer_port(&self, node: &DevNode) -> u16 {
        self.node_options
            .get(&node.name)
            .and_then(|options| options.advertised_peer_port)
            .unwrap_or(node.peer_port)
    }

    fn cluster_state_args(&self, node: &DevNode) -> Vec<&'static str> {
        if self.node_options(&node.name).joins_existing {
            vec!["--initial-cluster-state", "existing"]
        } else {
            Vec::new()
        }
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.children.iter().any(|(n, _)| n == name)
    }

    /// SIGSTOP: the process freezes with its sockets open, as in a long GC pause or a VM stall.
    pub fn pause(&mut self, name: &str) -> Result<(), String> {
        self.signal(name, libc::SIGSTOP, "SIGSTOP")
    }

    /// SIGCONT after [`RunningCluster::pause`].
    pub fn resume(&mut self, name: &str) -> Result<(), String> {
        self.signal(name, libc::SIGCONT, "SIGCONT")
    }

    fn signal(&mut self, name: &str, signal: libc::c_int, signal_name: &str) -> Result<(), String> {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or(format!("{name} is not running"))?;
        if signal_unreaped(child, signal) {
            Ok(())
        } else {
            Err(format!("{signal_name} to {name}: it has exited"))
        }
    }

    /// Deletes the data directory of `name`, which must not be running (its log is kept), so
    /// that its next start is a new, empty member.
    pub fn wipe_data(&mut self, name: &str) -> Result<(), String> {
        if self.is_running(name) {
            return Err(format!("{name} is running; kill it before wiping its data"));
        }
        let dir = self.data_dir.join(name).join("data");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(format!("{}: {error}", dir.display())),
        }
    }

    /// Removes and returns the children that exited since the last call (a node that died on
    /// its own: a panic, a fail-stop on a storage error).
    pub fn reap_exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        self.children
            .retain_mut(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    exited.push((name.clone(), status));
                    false
                }
                _ => true,
            });
        exited
    }
}

#[cfg(test)]
mod tests {
    use super::{worker_threads_per_node, NodeView};

    #[test]
    fn the_election_view_is_read_from_the_metrics_gauges() {
        let page = "# HELP ballot_raft_term Current Raft term.\n# TYPE ballot_raft_term gauge\n\
                    ballot_raft_term 7\nballot_raft_is_leader 0\nballot_raft_has_leader 1\n\
                    ballot_raft_leader_changes_total 3\n";
        let view = NodeView::from_metrics(page).unwrap();
        assert_eq!(
            view,
            NodeView {
                term: 7,
                is_leader: false,
                has_leader: true
            }
        );
        assert_eq!(view.role(), "follower");
        assert_eq!(NodeView::from_metrics("ballot_raft_term 7\n"), None);
    }

    #[test]
    fn nodes_share_the_cpus_and_each_gets_at_least_one_worker() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(worker_threads_per_node(1), cpus);
        assert_eq!(worker_threads_per_node(2), (cpus / 2).max(1));
        assert_eq!(worker_threads_per_node(cpus + 1), 1);
        assert_eq!(
            worker_threads_per_node(0),
            cpus,
            "no nodes is treated as one"
        );
    }
}
