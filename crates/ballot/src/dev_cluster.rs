//! A local cluster of real `ballot server` processes on free loopback ports, data under one
//! directory: what `ballot dev` runs, and what tests and `ballot check` start.
//!
//! The ports chosen on first start are kept in `<data-dir>/cluster.toml`: member ids derive from
//! peer URLs, so a restarted cluster must come back on the same ports to find its own data.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most nodes a dev cluster has.
const NODES_MAX: usize = 7;
/// Fresh starts tried when a planned port was taken before a server could bind it.
const PORT_RACE_ATTEMPTS: u32 = 3;
/// How long to wait for every node to report a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

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

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
        // Ports are picked free, then bound by the servers a moment later; in between another
        // process (often some node's outgoing connection, given an ephemeral port) may take
        // one. A fresh cluster then picks new ports and tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            if fresh && data_dir.exists() {
                std::fs::remove_dir_all(data_dir)
                    .map_err(|e| format!("{}: {e}", data_dir.display()))?;
            }
            let plan = plan(data_dir, nodes)?;
            let mut running = RunningCluster {
                plan: plan.clone(),
                data_dir: data_dir.to_path_buf(),
                exe: exe.to_path_buf(),
                children: Vec::new(),
                extra_args: extra_args.to_vec(),
                node_options: HashMap::new(),
            };
            let started = plan.nodes.iter().try_for_each(|node| {
                let child = running.spawn(node)?;
                running.children.push((node.name.clone(), child));
                Ok::<(), String>(())
            });
            match started.and_then(|()| running.wait_healthy()) {
                Ok(()) => return Ok(running),
                Err(error) if fresh && attempt < PORT_RACE_ATTEMPTS && error.contains("in use") => {
                    running.stop();
                }
                Err(error) => return Err(error),
            }
        }
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
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
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed or stopped node again from its data directory.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        let node = self
            .plan
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or(format!("no node {name}"))?;
        let child = self.spawn(&node)?;
        self.children.push((name.to_string(), child));
        Ok(())
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

    /// SIGTERM to every node, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for (_, child) in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.children {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET /health answers 200 (the node knows a leader).
pub fn health(metrics_port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
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
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir)
                .map_err(|e| format!("{}: {e}", data_dir.display()))?;
        }
        let plan = plan(data_dir, nodes)?;
        Ok(RunningCluster {
            plan,
            data_dir: data_dir.to_path_buf(),
            exe: exe.to_path_buf(),
            children: Vec::new(),
            extra_args: Vec::new(),
            node_options: HashMap::new(),
        })
    }

    /// Starts every planned node that is not running and waits until each reports a leader.
    pub fn launch(&mut self) -> Result<(), String> {
        for node in self.plan.nodes.clone() {
            if !self.is_running(&node.name) {
                let child = self.spawn(&node)?;
                self.children.push((node.name.clone(), child));
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
    pub fn pause(&self, name: &str) -> Result<(), String> {
        self.signal(name, "-STOP")
    }

    /// SIGCONT after [`RunningCluster::pause`].
    pub fn resume(&self, name: &str) -> Result<(), String> {
        self.signal(name, "-CONT")
    }

    fn signal(&self, name: &str, signal: &str) -> Result<(), String> {
        let pid = self.pid(name).ok_or(format!("{name} is not running"))?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {signal} {pid} ({name}) exited with {status}"))
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
    use super::worker_threads_per_node;

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
