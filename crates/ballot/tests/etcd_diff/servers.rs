//! The two servers under comparison: a one-member etcd (`ETCD_BIN`, default `/usr/bin/etcd`)
//! and a one-member `ballot server`, each a real process on loopback ports with a fresh data
//! directory (on tmpfs when there is one: etcd syncs every write) and the same limits. Owns
//! their start, their readiness and their end: dropping a [`Server`] kills the process and
//! removes its directory, unless [`Server::keep`] was called (a failing seed keeps the logs).

use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_client::KvClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");
/// Where Debian's `etcd-server` package puts etcd.
pub const ETCD_DEFAULT: &str = "/usr/bin/etcd";

/// `--max-txn-ops` of both servers: low, so that "too many operations" is cheap to reach.
pub const MAX_TXN_OPS: usize = 8;
/// `--max-request-bytes` of both servers: low, so that "request is too large" is cheap to reach.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Longest wait for a server to answer a linearizable read after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The etcd binary to compare with: `ETCD_BIN`, or Debian's. Panics (the test must not pass
/// without a reference) when it is not there.
pub fn etcd_binary() -> PathBuf {
    let path = PathBuf::from(std::env::var("ETCD_BIN").unwrap_or_else(|_| ETCD_DEFAULT.into()));
    assert!(
        path.is_file(),
        "etcd not found at {} (install Debian's etcd-server, or set ETCD_BIN): the differential \
         test needs a real etcd 3.4 to compare with",
        path.display()
    );
    path
}

#[path = "../../../server/tests/support/ports.rs"]
mod ports;
/// Both servers' ports come from one process-wide counter, so they differ.
pub use ports::free_ports;

/// A directory for a run's data: tmpfs when the machine has one.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

pub struct Server {
    pub name: &'static str,
    child: Child,
    pub dir: PathBuf,
    pub endpoint: String,
    keep: bool,
}

/// The flags both servers are started with, under the same (etcd's) names: a one-member cluster
/// named `diff` with its data in `dir/data`, and the limits both must share for their answers
/// to match.
fn member_flags(dir: &Path, client: &str, peer: &str) -> Vec<String> {
    [
        "--name",
        "diff",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        &format!("diff={peer}"),
        "--max-txn-ops",
        &MAX_TXN_OPS.to_string(),
        "--max-request-bytes",
        &MAX_REQUEST_BYTES.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

impl Server {
    /// Starts a one-member etcd in `dir` (created, must not exist) on the client and peer
    /// ports `ports`.
    pub fn etcd(binary: &Path, dir: PathBuf, ports: [u16; 2]) -> Server {
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        std::fs::create_dir_all(&dir).expect("create etcd's directory");
        let log = std::fs::File::create(dir.join("server.log")).expect("create etcd's log");
        let child = Command::new(binary)
            .args(member_flags(&dir, &client, &peer))
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Server {
            name: "etcd",
            child,
            dir,
            endpoint: client,
            keep: false,
        }
    }

    /// Starts a one-member `ballot server` in `dir` (created, must not exist) on the client,
    /// peer and metrics ports `ports`, with etcd's defaults but for the limits both servers share.
    pub fn ballot(dir: PathBuf, ports: [u16; 3]) -> Server {
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        std::fs::create_dir_all(&dir).expect("create ballot's directory");
        let log = std::fs::File::create(dir.join("server.log")).expect("create ballot's log");
        let child = Command::new(BALLOT)
            .arg("server")
            .args(member_flags(&dir, &client, &peer))
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", ports[2]),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ballot server");
        Server {
            name: "ballot",
            child,
            dir,
            endpoint: client,
            keep: false,
        }
    }

    /// Waits until a linearizable read succeeds (the member leads and serves), and returns the
    /// channel. Reads change nothing, so both servers start from the same state.
    pub async fn ready(&mut self) -> Channel {
        let deadline = Instant::now() + READY_TIMEOUT;
        let channel = Channel::from_shared(self.endpoint.clone())
            .expect("a valid URL")
            .connect_lazy();
        loop {
            let probe = pb::RangeRequest {
                key: "ready".into(),
                ..Default::default()
            };
            let mut kv = KvClient::new(channel.clone());
            let answer = tokio::time::timeout(READY_POLL_INTERVAL * 20, kv.range(probe)).await;
            if let Ok(Ok(_)) = answer {
                return channel;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before it served ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve a read within {READY_TIMEOUT:?}:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Keep the directory (data and `server.log`) after the process ends.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
