//! `ballot server`'s automatic compaction as an operator sets it, on real processes: given by
//! `BALLOT_AUTO_COMPACTION_*` variables, a one-member server compacts its history by itself
//! (reads below the compacted revision are refused, and each compaction is logged); bad values
//! of either flag are refused at start, naming the flag, before the data directory is touched.

use ballot_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");

/// How long the server may take to start and elect itself.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a compaction may take to show up with a one-second retention (a retention, a check
/// interval, and room for a busy machine).
const COMPACTION_DEADLINE: Duration = Duration::from_secs(20);

/// Time between two polls (each also writes a key).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[path = "../../server/tests/support/ports.rs"]
mod ports;
use ports::free_port;

fn test_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ballot-auto-compaction-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ballot server` on `data_dir` with no `BALLOT_*` variable inherited from the caller.
fn server(data_dir: &Path) -> Command {
    let mut command = Command::new(BALLOT);
    for (name, _) in std::env::vars() {
        if name.starts_with("BALLOT_") {
            command.env_remove(name);
        }
    }
    command.arg("server").arg("--data-dir").arg(data_dir);
    command
}

#[test]
fn bad_values_are_refused_at_start_naming_the_flag() {
    let dir = test_dir("refused");
    let data_dir = dir.join("never-created");
    // (flags, environment, what the error names)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &[
                "--auto-compaction-mode",
                "hourly",
                "--auto-compaction-retention",
                "1",
            ],
            &[],
            "error: --auto-compaction-mode: 'hourly' is neither 'periodic' nor 'revision'",
        ),
        (
            &[],
            &[("BALLOT_AUTO_COMPACTION_MODE", "hourly")],
            "error: --auto-compaction-mode: 'hourly' is neither 'periodic' nor 'revision'",
        ),
        (
            &["--auto-compaction-retention", "abc"],
            &[],
            "error: --auto-compaction-retention: 'abc' is neither a whole number nor a duration",
        ),
        (
            &["--auto-compaction-retention=-1"],
            &[],
            "error: --auto-compaction-retention: '-1' is neither a whole number nor a duration",
        ),
        (
            &[],
            &[("BALLOT_AUTO_COMPACTION_RETENTION", "-1h")],
            "error: --auto-compaction-retention: '-1h' is negative",
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            &[],
            "error: --auto-compaction-retention: '1h' is a duration, but \
             --auto-compaction-mode revision takes a number of revisions",
        ),
    ];
    for (args, variables, expected) in cases {
        let output = server(&data_dir)
            .args(args)
            .envs(variables.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} {variables:?}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?} {variables:?}: expected {expected:?}, got:\n{stderr}"
        );
        assert!(
            !data_dir.exists(),
            "{args:?}: the data directory was created"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(url: &str, log: &Path) -> KvClient<Channel> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(channel) = Channel::from_shared(url.to_string())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
        {
            let mut kv = KvClient::new(channel);
            if kv.put(put("ready")).await.is_ok() {
                return kv;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server did not take a write within {START_DEADLINE:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn put(key: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_string().into(),
        value: "v".into(),
        ..Default::default()
    }
}

#[test]
fn a_server_given_a_one_second_periodic_retention_compacts_by_itself() {
    let dir = test_dir("periodic");
    let log = dir.join("server.log");
    let client_url = format!("http://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let _server = Server(
        server(&dir.join("n1"))
            .args(["--name", "n1"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .args(["--worker-threads", "1"])
            .env("BALLOT_AUTO_COMPACTION_MODE", "periodic")
            .env("BALLOT_AUTO_COMPACTION_RETENTION", "1s")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("ballot server starts"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut kv = connect(&client_url, &log).await;
        let mut mark = 0;
        for i in 0..5 {
            mark = kv
                .put(put(&format!("k/{i}")))
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .revision;
        }
        // Nobody compacts: once a read at `mark - 1` is refused, the server compacted past it.
        let deadline = Instant::now() + COMPACTION_DEADLINE;
        let mut written = 0;
        loop {
            let read = kv
                .range(pb::RangeRequest {
                    key: "k/0".into(),
                    revision: mark - 1,
                    ..Default::default()
                })
                .await;
            match read {
                Err(status)
                    if status.message()
                        == "etcdserver: mvcc: required revision has been compacted" =>
                {
                    break
                }
                Err(status) => panic!("unexpected error: {status:?}"),
                Ok(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "no compaction past revision {} within {COMPACTION_DEADLINE:?} ({written} keys \
                 written meanwhile):\n{}",
                mark - 1,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            kv.put(put(&format!("more/{written}"))).await.unwrap();
            written += 1;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let compactions: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("automatic compaction: compacted"))
        .collect();
    assert!(!compactions.is_empty(), "no compaction logged:\n{text}");
    for line in compactions {
        for field in ["INFO", "mode=periodic", "retention=1s", "revision="] {
            assert!(line.contains(field), "{field} missing from {line:?}");
        }
    }
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
}
