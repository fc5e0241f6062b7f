//! The client subcommands as a user runs them: against a real three-node cluster of
//! `ballot server` processes on loopback ports (kv, txn, watch, lease, member, status, snapshot,
//! failover), and without any server (help, usage errors, unreachable endpoints).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");

/// Output of one `ballot` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_ballot(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(BALLOT)
        .args(args)
        .env("BALLOT_ENDPOINTS", endpoints)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ballot runs");
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let output = child.wait_with_output().expect("ballot finishes");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[path = "../../server/tests/support/ports.rs"]
mod ports;
use ports::free_ports;

/// A three-node cluster of `ballot server` processes. Dropping it (also on panic) kills them
/// and removes their data directories.
struct Cluster {
    children: Vec<Child>,
    dir: PathBuf,
    client_urls: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn start(test: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("ballot-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(9);
        let client_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[i]))
            .collect();
        let peer_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[3 + i]))
            .collect();
        let initial_cluster: Vec<String> = (0..3)
            .map(|i| format!("n{}={}", i + 1, peer_urls[i]))
            .collect();
        let mut cluster = Cluster {
            children: Vec::new(),
            dir: dir.clone(),
            client_urls: client_urls.clone(),
        };
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            let child = Command::new(BALLOT)
                .args(["server", "--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client_urls[i]])
                .args(["--advertise-client-urls", &client_urls[i]])
                .args(["--listen-peer-urls", &peer_urls[i]])
                .args(["--initial-advertise-peer-urls", &peer_urls[i]])
                .args(["--initial-cluster", &initial_cluster.join(",")])
                .args(["--initial-cluster-token", "t"])
                .args(["--heartbeat-interval", "20", "--election-timeout", "200"])
                .args([
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{}", ports[6 + i]),
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("ballot server starts");
            cluster.children.push(child);
        }
        cluster.wait_until_ready();
        cluster
    }

    fn endpoints(&self) -> String {
        self.client_urls.join(",")
    }

    fn ballot(&self, args: &[&str]) -> Run {
        run_ballot(&self.endpoints(), args, None)
    }

    fn ballot_ok(&self, args: &[&str]) -> String {
        let run = self.ballot(args);
        assert_eq!(run.code, 0, "ballot {args:?}: {run:?}");
        run.stdout
    }

    /// Until every member answers `status`, one of them leads, and a write goes through.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.ballot(&["status"]);
            let leaders = status
                .stdout
                .lines()
                .filter(|row| row.split(", ").nth(4) == Some("true"))
                .count();
            if status.code == 0 && leaders == 1 && self.ballot(&["put", "probe", "1"]).code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready: {status:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for i in 1..=3 {
            let log =
                std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("--- n{i}.log (last lines)\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn revision_of(put_json: &str) -> i64 {
    json(put_json)["header"]["revision"]
        .as_i64()
        .expect("a header revision")
}

// ---------------------------------------------------------------------------------------------
// Against a cluster.
// ---------------------------------------------------------------------------------------------

#[test]
fn put_get_del_against_a_cluster() {
    let cluster = Cluster::start("kv");
    assert_eq!(cluster.ballot_ok(&["put", "foo", "bar"]), "OK\n");
    let first = revision_of(&cluster.ballot_ok(&["put", "foo", "bar", "-w", "json"]));
    assert_eq!(
        cluster.ballot_ok(&["put", "foo", "baz", "--prev-kv"]),
        "OK\nfoo\nbar\n"
    );
    for (key, value) in [("foo1", "bar1"), ("foo2", "bar2"), ("foo3", "bar3")] {
        cluster.ballot_ok(&["put", key, value]);
    }
    assert_eq!(cluster.ballot_ok(&["get", "foo"]), "foo\nbaz\n");
    assert_eq!(
        cluster.ballot_ok(&["get", "foo", "--rev", &first.to_string()]),
        "foo\nbar\n"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "foo1", "foo3"]),
        "foo1\nbar1\nfoo2\nbar2\n"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "--prefix", "foo", "--keys-only"]),
        "foo\n\nfoo1\n\nfoo2\n\nfoo3\n\n"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "--prefix", "foo", "--count-only"]),
        "4\n"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "--from-key", "foo2"]),
        "foo2\nbar2\nfoo3\nbar3\nprobe\n1\n"
    );
    assert_eq!(
        cluster.ballot_ok(&[
            "get",
            "--prefix",
            "foo",
            "--limit",
            "2",
            "--print-value-only"
        ]),
        "baz\nbar1\n"
    );
    assert_eq!(
        cluster.ballot_ok(&[
            "get",
            "--prefix",
            "foo",
            "--sort-by",
            "value",
            "--order",
            "descend",
            "--keys-only"
        ]),
        "foo\n\nfoo3\n\nfoo2\n\nfoo1\n\n"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "--prefix", "foo", "--serializable", "--count-only"]),
        "4\n"
    );
    for level in ["default", "consistent"] {
        assert_eq!(
            cluster.ballot_ok(&["get", "foo", "--level", level]),
            "foo\nbaz\n",
            "{level}"
        );
    }
    let run = cluster.ballot(&["get", "foo", "--level", "fast"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("consistent"), "{run:?}");
    let got = json(&cluster.ballot_ok(&["get", "foo", "-w", "json"]));
    assert_eq!(got["kvs"][0]["key"], "Zm9v", "base64 of foo: {got}");
    assert_eq!(got["kvs"][0]["value"], "YmF6", "base64 of baz: {got}");
    assert_eq!(got["count"], 1);
    let table = cluster.ballot_ok(&["get", "--prefix", "foo", "-w", "table"]);
    assert!(
        table.contains("| KEY  | VALUE | CREATE REVISION |"),
        "{table}"
    );
    assert!(table.contains("|  foo |   baz |"), "{table}");
    assert_eq!(cluster.ballot_ok(&["del", "foo3"]), "1\n");
    assert_eq!(
        cluster.ballot_ok(&["del", "--prefix", "foo", "--prev-kv"]),
        "3\nfoo\nbaz\nfoo1\nbar1\nfoo2\nbar2\n"
    );
    assert_eq!(cluster.ballot_ok(&["get", "--prefix", "foo"]), "");
    assert_eq!(cluster.ballot_ok(&["del", "nothing-here"]), "0\n");

    // A server error: exit 1, etcd's message, the endpoint named.
    let run = cluster.ballot(&["put", "k", "v", "--lease", "123abc"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with(
            "Error: etcdserver: requested lease not found (endpoint http://127.0.0.1:"
        ),
        "{run:?}"
    );
    let run = cluster.ballot(&["get", "foo", "--rev", "999999"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("future revision"), "{run:?}");
}

#[test]
fn txn_watch_and_leases_against_a_cluster() {
    let cluster = Cluster::start("txn");
    cluster.ballot_ok(&["put", "key1", "v1"]);
    let txn = |input: &str| run_ballot(&cluster.endpoints(), &["txn"], Some(input));
    let run = txn("value(\"key1\") = \"v1\"\nmod(\"key1\") > \"0\"\n\nput key1 \"overwrote\"\nget key1\n\nput key2 \"created\"\n\n");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "SUCCESS\n\nOK\n\nkey1\noverwrote\n");
    let run = txn("ver(\"key1\") = \"1\"\n\nput key1 never\n\nput key2 \"some extra\"\ndel key1 --prev-kv\n\n");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "FAILURE\n\nOK\n\n1\nkey1\noverwrote\n");
    assert_eq!(cluster.ballot_ok(&["get", "key2"]), "key2\nsome extra\n");
    let run = txn("mod(\"key1\") >> \"0\"\n\n\n");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("malformed comparison"), "{run:?}");
    let run = run_ballot(
        &cluster.endpoints(),
        &["txn", "-w", "json"],
        Some("\nget key2\n\n\n"),
    );
    let answer = json(&run.stdout);
    assert_eq!(answer["succeeded"], true, "{run:?}");
    assert_eq!(
        answer["responses"][0]["Response"]["response_range"]["count"],
        1
    );

    // watch: history from a revision, then live events, with previous values.
    let start = revision_of(&cluster.ballot_ok(&["put", "w/a", "1", "-w", "json"]));
    let mut watch = Command::new(BALLOT)
        .args([
            "watch",
            "--prefix",
            "w/",
            "--prev-kv",
            "--rev",
            &start.to_string(),
        ])
        .env("BALLOT_ENDPOINTS", cluster.endpoints())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watch_guard = KillOnDrop(&mut watch);
    let lines = read_lines(watch_guard.0.stdout.take().unwrap());
    cluster.ballot_ok(&["put", "w/a", "2"]);
    cluster.ballot_ok(&["del", "w/a"]);
    let expected = [
        "PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2", "w/a", "",
    ];
    let seen = next_lines(&lines, expected.len());
    assert_eq!(seen, expected);
    drop(watch_guard);

    // leases
    let granted = cluster.ballot_ok(&["lease", "grant", "60"]);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{granted}"))
        .to_string();
    assert_eq!(id.len(), 16, "{granted}");
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    cluster.ballot_ok(&["put", "leased", "v", "--lease", &id]);
    let ttl = cluster.ballot_ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with(", attached keys([leased])\n"), "{ttl}");
    assert!(cluster
        .ballot_ok(&["lease", "list"])
        .contains(&format!("\n{id}\n")));
    let kept = cluster.ballot_ok(&["lease", "keep-alive", &id, "--once"]);
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));
    let mut keeper = Command::new(BALLOT)
        .args(["lease", "keep-alive", &id])
        .env("BALLOT_ENDPOINTS", cluster.endpoints())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let keeper = KillOnDrop(&mut keeper);
    let renewals = read_lines(keeper.0.stdout.take().unwrap());
    assert_eq!(
        next_lines(&renewals, 1),
        [format!("lease {id} keepalived with TTL(60)")]
    );
    drop(keeper);
    let grant_json = json(&cluster.ballot_ok(&["lease", "grant", "30", "-w", "json"]));
    assert_eq!(grant_json["TTL"], 30, "{grant_json}");
    assert_eq!(
        cluster.ballot_ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "leased"]),
        "",
        "revoking deletes the keys"
    );
    assert_eq!(
        cluster.ballot_ok(&["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    let run = cluster.ballot(&["lease", "keep-alive", &id, "--once"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("etcdserver: requested lease not found"),
        "{run:?}"
    );
    let run = cluster.ballot(&["lease", "revoke", &id]);
    assert_eq!(run.code, 1, "{run:?}");
}

/// Kills a child process when dropped (also on panic).
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn members_status_snapshot_and_failover_against_a_cluster() {
    let mut cluster = Cluster::start("members");
    let list = cluster.ballot_ok(&["member", "list"]);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split(", ").collect()).collect();
    assert_eq!(rows.len(), 3, "{list}");
    let mut names: Vec<&str> = rows.iter().map(|r| r[2]).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert!(
        rows.iter().all(|r| r[1] == "started" && r[5] == "false"),
        "{list}"
    );
    let listed = json(&cluster.ballot_ok(&["member", "list", "-w", "json"]));
    assert_eq!(listed["members"].as_array().unwrap().len(), 3, "{listed}");
    assert!(listed["members"][0]["peerURLs"].is_array(), "{listed}");

    let new_peer = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let added = cluster.ballot_ok(&["member", "add", "n4", "--peer-urls", &new_peer, "--learner"]);
    let new_id = added
        .strip_prefix("Member ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{added}"))
        .to_string();
    assert!(added.contains("BALLOT_NAME=\"n4\""), "{added}");
    assert!(added.contains(&format!("n4={new_peer}")), "{added}");
    assert!(
        added.contains("BALLOT_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let list = cluster.ballot_ok(&["member", "list", "--linearizable"]);
    assert!(
        list.contains(&format!("{new_id}, unstarted, , {new_peer}, , true")),
        "{list}"
    );
    // Whether a learner that never started may be promoted is the server's call (etcd refuses
    // one that is not in sync); promoting a voter is refused everywhere (etcd: "can only
    // promote a learner member"; ballot answers "member not found" when the voter is the
    // leader itself).
    let voter = rows[0][0];
    let run = cluster.ballot(&["member", "promote", voter]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("Error: etcdserver: "), "{run:?}");
    assert!(
        run.stderr.contains(" (endpoint http://127.0.0.1:"),
        "{run:?}"
    );
    let moved_peer = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let updated = cluster.ballot_ok(&["member", "update", &new_id, "--peer-urls", &moved_peer]);
    assert!(updated.contains("updated in cluster"), "{updated}");
    assert!(cluster
        .ballot_ok(&["member", "list", "--linearizable"])
        .contains(&moved_peer));
    let removed = cluster.ballot_ok(&["member", "remove", &new_id]);
    assert!(removed.contains("removed from cluster"), "{removed}");
    assert_eq!(
        cluster
            .ballot_ok(&["member", "list", "--linearizable"])
            .lines()
            .count(),
        3
    );
    let run = cluster.ballot(&["member", "remove", &new_id]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("etcdserver: member not found"),
        "{run:?}"
    );

    // status: one row per endpoint, exactly one leader.
    let statuses = json(&cluster.ballot_ok(&["status", "-w", "json"]));
    let statuses = statuses.as_array().unwrap();
    assert_eq!(statuses.len(), 3);
    let leaders = statuses
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    assert_eq!(leaders, 1, "{statuses:?}");
    let table = cluster.ballot_ok(&["status", "-w", "table"]);
    assert!(
        table.contains("| IS LEADER | IS LEARNER | RAFT TERM |"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3 + 3 + 1, "{table}");

    // snapshot
    let file = cluster.dir.join("backup.db");
    let saved = cluster.ballot_ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(
        saved.starts_with(&format!("Snapshot saved at {}", file.display())),
        "{saved}"
    );
    assert!(std::fs::metadata(&file).unwrap().len() > 0);

    // failover: a down endpoint first does not fail a command; status reports it and exits 1.
    let down = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let with_down = format!("{down},{}", cluster.endpoints());
    cluster.ballot_ok(&["put", "fail", "over"]);
    let run = run_ballot(&with_down, &["get", "fail"], None);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "fail\nover\n"),
        "{run:?}"
    );
    let run = run_ballot(&with_down, &["put", "fail", "again"], None);
    assert_eq!((run.code, run.stdout.as_str()), (0, "OK\n"), "{run:?}");
    let run = run_ballot(&with_down, &["status"], None);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert!(run.stderr.contains(&down), "{run:?}");

    // A watch whose endpoint dies resumes on the next one from the revision after the last
    // event it printed: nothing is printed twice.
    let start = revision_of(&cluster.ballot_ok(&["put", "r/a", "1", "-w", "json"]));
    let mut watch = Command::new(BALLOT)
        .args(["watch", "--prefix", "r/", "--rev", &start.to_string()])
        .env("BALLOT_ENDPOINTS", cluster.endpoints())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cluster.dir.join("watch.stderr")).unwrap())
        .spawn()
        .unwrap();
    let watch = KillOnDrop(&mut watch);
    let lines = read_lines(watch.0.stdout.take().unwrap());
    assert_eq!(
        next_lines(&lines, 3),
        ["PUT", "r/a", "1"],
        "{}",
        std::fs::read_to_string(cluster.dir.join("watch.stderr")).unwrap_or_default()
    );
    let first = &mut cluster.children[0];
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.ballot(&["put", "r/b", "2"]).code != 0 {
        assert!(Instant::now() < deadline, "no write after losing n1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(next_lines(&lines, 3), ["PUT", "r/b", "2"]);
}

/// The lines a child prints, as they come.
fn read_lines(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    received
}

/// The next `count` lines, waiting at most 10 s for them.
fn next_lines(lines: &mpsc::Receiver<String>, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(error) => panic!("only {seen:?} within 10 s ({error})"),
        }
    }
    seen
}

/// `ballot lock ARGS...` started in the background, its stdout as lines.
fn lock_in_background(cluster: &Cluster, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    in_background(cluster, &[&["lock"], args].concat())
}

/// `ballot ARGS...` started in the background, its stdout as lines.
fn in_background(cluster: &Cluster, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BALLOT)
        .args(args)
        .env("BALLOT_ENDPOINTS", cluster.endpoints())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ballot runs");
    let lines = read_lines(child.stdout.take().expect("stdout is piped"));
    (child, lines)
}

/// Waits (at most 10 s) for `child` to exit; its status code and standard error.
fn exit_of(child: &mut Child) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return (status.code().unwrap_or(-1), stderr);
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lock_runs_a_command_with_its_fencing_token_and_kills_it_when_the_lease_is_lost() {
    let cluster = Cluster::start("lock");
    // The command gets the token and the key, writes through the fence, and its exit status
    // is ballot's.
    let script = format!(
        "echo \"$BALLOT_LOCK_KEY $BALLOT_FENCING_TOKEN\"; \
         {BALLOT} put --fence \"jobs:$BALLOT_FENCING_TOKEN\" out first && exit 7"
    );
    let run = cluster.ballot(&["lock", "jobs", "--", "sh", "-c", &script]);
    assert_eq!(run.code, 7, "{run:?}");
    let (key, token) = run
        .stdout
        .lines()
        .next()
        .and_then(|line| line.split_once(' '))
        .unwrap_or_else(|| panic!("{run:?}"));
    assert!(key.starts_with("jobs/"), "{run:?}");
    let token: i64 = token.parse().unwrap_or_else(|_| panic!("{run:?}"));
    assert!(
        run.stdout.contains("OK"),
        "the fenced put went through: {run:?}"
    );
    assert_eq!(
        cluster.ballot_ok(&["get", "out", "--print-value-only"]),
        "first\n"
    );
    // Released on exit: the key is gone, and the old token no longer fences anything.
    assert_eq!(cluster.ballot_ok(&["get", "jobs/", "--prefix"]), "");
    let stale = cluster.ballot(&["put", "out", "late", "--fence", &format!("jobs:{token}")]);
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(
        stale.stderr.contains("the fence does not hold"),
        "{stale:?}"
    );

    // A holder without a command prints its key and token and holds until interrupted; a
    // second contender waits for it.
    let (mut holder, holder_lines) = lock_in_background(&cluster, &["jobs"]);
    let printed = next_lines(&holder_lines, 2);
    let holder_token: i64 = printed[1].parse().unwrap_or_else(|_| panic!("{printed:?}"));
    assert!(holder_token > token, "tokens only grow: {printed:?}");
    let (mut waiter, waiter_lines) =
        lock_in_background(&cluster, &["jobs", "--", "echo", "got it"]);
    assert!(
        waiter_lines
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "the waiter ran while the holder held the lock"
    );
    interrupt(&holder);
    assert_eq!(exit_of(&mut holder).0, 0);
    assert_eq!(next_lines(&waiter_lines, 1), ["got it"]);
    assert_eq!(exit_of(&mut waiter).0, 0);

    // The lease behind a running command is revoked from outside: the command is killed and
    // ballot exits 1, naming what happened.
    let (mut doomed, doomed_lines) = lock_in_background(
        &cluster,
        &[
            "jobs",
            "--ttl",
            "3",
            "--",
            "sh",
            "-c",
            "echo $BALLOT_LOCK_KEY; exec sleep 60",
        ],
    );
    let key = next_lines(&doomed_lines, 1).remove(0);
    let lease = key.strip_prefix("jobs/").expect("the key is under jobs/");
    cluster.ballot_ok(&["lease", "revoke", lease]);
    let (code, stderr) = exit_of(&mut doomed);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("lost lock jobs") && stderr.contains("killed sh"),
        "{stderr}"
    );
}

/// SIGINT, as Ctrl-C sends.
fn interrupt(child: &Child) {
    // SAFETY: kill(2) on a child of ours that has not been reaped.
    let sent = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT {}", child.id());
}

#[test]
fn elect_campaigns_holds_until_interrupted_and_observes() {
    let cluster = Cluster::start("elect");
    let (mut observer, observed) = in_background(&cluster, &["elect", "chief", "--observe"]);
    let (mut alice, alice_lines) = in_background(&cluster, &["elect", "chief", "alice"]);
    let won = next_lines(&alice_lines, 3);
    assert!(won[0].starts_with("chief/") && won[1] == "alice", "{won:?}");
    let alice_token: i64 = won[2].parse().unwrap_or_else(|_| panic!("{won:?}"));
    assert_eq!(next_lines(&observed, 1), ["alice"]);
    // A won campaign's rev fences writes as a lock's token does.
    let alice_fence = format!("chief:{alice_token}");
    cluster.ballot_ok(&["put", "out", "by alice", "--fence", &alice_fence]);

    let (mut bob, bob_lines) = in_background(&cluster, &["elect", "chief", "bob"]);
    assert!(
        bob_lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "bob was elected while alice led"
    );
    interrupt(&alice);
    assert_eq!(exit_of(&mut alice).0, 0, "alice resigns on Ctrl-C");
    let won = next_lines(&bob_lines, 3);
    assert_eq!(won[1], "bob", "{won:?}");
    let bob_token: i64 = won[2].parse().unwrap_or_else(|_| panic!("{won:?}"));
    assert!(
        bob_token > alice_token,
        "leadership tokens only grow: {won:?}"
    );
    assert_eq!(next_lines(&observed, 1), ["bob"]);
    let stale = cluster.ballot(&["put", "out", "late", "--fence", &alice_fence]);
    assert!(
        stale.code == 1
            && stale
                .stderr
                .contains(&format!("held with token {bob_token}")),
        "{stale:?}"
    );
    interrupt(&bob);
    assert_eq!(exit_of(&mut bob).0, 0);
    interrupt(&observer);
    assert_eq!(exit_of(&mut observer).0, 0);

    let usage = cluster.ballot(&["elect", "chief"]);
    assert_eq!(usage.code, 2, "neither a value nor --observe: {usage:?}");
}

// ---------------------------------------------------------------------------------------------
// Without a server.
// ---------------------------------------------------------------------------------------------

fn nobody_listens() -> String {
    format!("http://127.0.0.1:{}", free_ports(1)[0])
}

#[test]
fn every_subcommand_explains_itself_with_an_example() {
    for command in [
        &["put"][..],
        &["get"],
        &["del"],
        &["txn"],
        &["watch"],
        &["lease", "grant"],
        &["lease", "revoke"],
        &["lease", "keep-alive"],
        &["lease", "timetolive"],
        &["lease", "list"],
        &["member", "list"],
        &["member", "add"],
        &["member", "remove"],
        &["member", "promote"],
        &["member", "update"],
        &["status"],
        &["snapshot", "save"],
        &["lock"],
        &["elect"],
        &["sched", "job", "add"],
        &["worker"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = run_ballot("", &args, None);
        assert_eq!(run.code, 0, "{command:?}: {run:?}");
        assert!(
            run.stdout.contains("Example"),
            "{command:?} has an example: {run:?}"
        );
        assert!(run.stdout.contains("--endpoints"), "{command:?}: {run:?}");
        assert!(
            run.stdout
                .contains(&format!("ballot {}", command.join(" "))),
            "{run:?}"
        );
    }
}

#[test]
fn bad_usage_exits_two_before_contacting_anyone() {
    let endpoint = nobody_listens();
    for (args, stdin, expected) in [
        (&["get"][..], None, "required"),
        (
            &["get", "a", "--prefix", "--from-key"],
            None,
            "cannot be used with",
        ),
        (&["get", "a", "b", "--prefix"], None, "cannot be used with"),
        (
            &["get", "a", "--sort-by", "size"],
            None,
            "invalid value 'size'",
        ),
        (
            &["put", "k", "v", "-w", "table"],
            None,
            "--write-out=table is not supported by `put`",
        ),
        (
            &["put", "k", "v", "--lease", "zz"],
            None,
            "expecting the ID in hex",
        ),
        (&["lease", "revoke", "xyz"], None, "hex"),
        (&["member", "add", "n4"], None, "--peer-urls"),
        (
            &["member", "add", "n4", "--peer-urls", "10.0.0.1:2380"],
            None,
            "needs a scheme",
        ),
        (&["txn"], Some("mod(\"k\") ~ \"1\"\n"), "unknown operator"),
        (
            &["txn"],
            Some("\nput onlykey\n"),
            "put needs a key and a value",
        ),
        (
            &["get", "k", "--dial-timeout", "soon"],
            None,
            "invalid duration",
        ),
    ] {
        let run = run_ballot(&endpoint, args, stdin);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {run:?}");
    }
}

#[test]
fn unreachable_endpoints_are_named_and_exit_one() {
    let first = nobody_listens();
    let second = nobody_listens();
    let endpoints = format!("{first},{}", second.trim_start_matches("http://"));
    let run = run_ballot(&endpoints, &["get", "k", "--dial-timeout", "500ms"], None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("Error: no endpoint answered:"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&first) && run.stderr.contains(&second),
        "{run:?}"
    );
    let run = run_ballot(&endpoints, &["status"], None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("2 of 2 endpoints did not answer"),
        "{run:?}"
    );
}
