//! `ballot dev` as people who break things on purpose run it: real processes, commands on its
//! standard input and control port, a node killed from outside while the others serve,
//! `--restart-dead`, `ballot dev` itself SIGKILLed (its servers must go too), and a directory
//! still in use refused with a non-zero exit. Every wait is for an event, with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");
/// A cluster of three on a busy two-core machine: generous, and only ever waited up to.
const STARTUP: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// One node's row of `status`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    pid: Option<u32>,
    up: bool,
    role: String,
    metrics_port: u16,
    note: String,
}

/// A running `ballot dev`, its output read line by line on two threads.
struct Dev {
    child: Child,
    stdin: Option<ChildStdin>,
    received: Receiver<(Stream, String)>,
    /// Lines read and not yet matched by an expectation.
    pending: Vec<(Stream, String)>,
    /// Everything read, for failure messages.
    transcript: Vec<String>,
}

impl Dev {
    fn spawn(dir: &Path, extra: &[&str]) -> Dev {
        let mut child = Command::new(BALLOT)
            .arg("dev")
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ballot dev starts");
        let (sender, received) = mpsc::channel();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pipe: Box<dyn Read + Send> = match stream {
                Stream::Stdout => Box::new(child.stdout.take().unwrap()),
                Stream::Stderr => Box::new(child.stderr.take().unwrap()),
            };
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if sender.send((stream, line)).is_err() {
                        return;
                    }
                }
            });
        }
        Dev {
            stdin: child.stdin.take(),
            child,
            received,
            pending: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// A fresh three-node `ballot dev` in `dir`, up.
    fn start(dir: &Path, extra: &[&str]) -> Dev {
        let mut args = vec!["--fresh"];
        args.extend_from_slice(extra);
        let mut dev = Dev::spawn(dir, &args);
        dev.expect(Stream::Stdout, "3 nodes up", STARTUP);
        dev
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("ballot dev reads its stdin");
    }

    fn receive_until(&mut self, deadline: Instant, what: &str) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.received.recv_timeout(left) {
            Ok((stream, line)) => {
                self.transcript.push(format!("{stream:?}: {line}"));
                self.pending.push((stream, line));
            }
            Err(_) => panic!(
                "no {what} within the deadline; ballot dev said:\n{}",
                self.transcript.join("\n")
            ),
        }
    }

    /// The first unmatched line on `stream` containing `text`, waiting for it.
    fn expect(&mut self, stream: Stream, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(index) = self
                .pending
                .iter()
                .position(|(s, line)| *s == stream && line.contains(text))
            {
                return self.pending.remove(index).1;
            }
            self.receive_until(deadline, &format!("{stream:?} line with '{text}'"));
        }
    }

    /// Sends `status` and parses its table.
    fn status(&mut self) -> (Vec<Row>, String) {
        self.send("status");
        let deadline = Instant::now() + EVENT;
        loop {
            let stdout: Vec<usize> = (0..self.pending.len())
                .filter(|&i| self.pending[i].0 == Stream::Stdout)
                .collect();
            let header = stdout
                .iter()
                .position(|&i| self.pending[i].1.starts_with("node "));
            let end = header.and_then(|h| {
                stdout[h..]
                    .iter()
                    .position(|&i| self.pending[i].1.starts_with("leader:"))
                    .map(|offset| h + offset)
            });
            if let (Some(header), Some(end)) = (header, end) {
                let block: Vec<String> = stdout[header..=end]
                    .iter()
                    .map(|&i| self.pending[i].1.clone())
                    .collect();
                for &i in stdout[header..=end].iter().rev() {
                    self.pending.remove(i);
                }
                let rows = block[1..block.len() - 1]
                    .iter()
                    .map(|line| parse_row(line))
                    .collect();
                return (rows, block.last().unwrap().clone());
            }
            self.receive_until(deadline, "status table");
        }
    }

    fn sigterm(&mut self) -> i32 {
        signal(self.child.id(), libc::SIGTERM);
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + EVENT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Drain what is left, for the caller's checks.
                while let Ok((stream, line)) = self.received.recv_timeout(Duration::from_secs(5)) {
                    self.transcript.push(format!("{stream:?}: {line}"));
                    self.pending.push((stream, line));
                }
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "ballot dev did not exit:\n{}",
                self.transcript.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // The servers follow `ballot dev` down by themselves (tested below).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process this test started, SIGKILLed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "../../server/tests/support/ports.rs"]
mod ports;
use ports::free_port;

fn parse_row(line: &str) -> Row {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() >= 8, "a status row: {line}");
    Row {
        name: words[0].to_string(),
        pid: words[1].parse().ok(),
        up: words[2] == "up",
        role: words[3].to_string(),
        metrics_port: words[7].rsplit_once(':').unwrap().1.parse().unwrap(),
        note: words[8..].join(" "),
    }
}

fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.name == name)
        .expect("a row per node")
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects.
    assert_eq!(
        unsafe { libc::kill(pid as libc::pid_t, signal) },
        0,
        "kill {pid}"
    );
}

/// The process is gone: no such pid, a zombie (its command line reads empty), or a pid reused
/// by something that is not a `ballot server`.
fn server_gone(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |cmdline| {
        let words: Vec<&[u8]> = cmdline.split(|&byte| byte == 0).collect();
        words.get(1) != Some(&&b"server"[..])
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballot-dev-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An HTTP/1.1 exchange with a node's native API; `None` when the node does not answer.
fn http(port: u16, method: &str, target: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(EVENT)).ok()?;
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

/// Writes through `port` until it is accepted (an election may be under way).
fn put_until_accepted(port: u16, key: &str, value: &str) {
    let deadline = Instant::now() + EVENT;
    loop {
        match http(port, "PUT", &format!("/v1/kv/{key}"), value) {
            Some((200, _)) => return,
            other => assert!(
                Instant::now() < deadline,
                "the write was never accepted: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_killed_from_outside_is_reported_and_the_others_keep_serving() {
    let dir = scratch("killed");
    let mut dev = Dev::start(&dir, &[]);
    let (rows, _) = dev.status();
    let leader = rows
        .iter()
        .find(|r| r.role == "leader")
        .expect("a leader")
        .clone();
    signal(leader.pid.unwrap(), libc::SIGKILL);

    let report = dev.expect(Stream::Stderr, &format!("{} died", leader.name), EVENT);
    assert!(report.contains("signal: 9"), "{report}");
    assert!(report.contains("keep serving"), "{report}");
    dev.expect(Stream::Stderr, "server.log:", EVENT);
    dev.expect(Stream::Stderr, "  | ", EVENT);

    let survivor = rows.iter().find(|r| r.name != leader.name).unwrap();
    put_until_accepted(survivor.metrics_port, "after-the-crash", "still-here");
    let (status, body) = http(
        survivor.metrics_port,
        "GET",
        "/v1/kv/after-the-crash?level=consistent",
        "",
    )
    .expect("the survivor answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("still-here"), "{body}");

    let (rows, summary) = dev.status();
    let dead = row(&rows, &leader.name);
    assert!(!dead.up && dead.pid.is_none(), "{dead:?}");
    assert!(dead.note.starts_with("died (signal: 9"), "{dead:?}");
    assert!(summary.contains("2 of 3 nodes up"), "{summary}");
    assert!(
        rows.iter()
            .any(|r| r.up && r.role == "leader" && r.name != leader.name),
        "a new leader among the others: {rows:?}"
    );

    dev.send(&format!("start {}", leader.name));
    dev.expect(
        Stream::Stdout,
        &format!("{} is serving", leader.name),
        EVENT,
    );
    assert_eq!(
        dev.sigterm(),
        0,
        "a node killed on purpose is no failure of ballot dev"
    );
    dev.expect(Stream::Stdout, "stopped", EVENT);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn commands_on_stdin_and_on_the_control_port_with_errors_by_name() {
    let dir = scratch("commands");
    let mut dev = Dev::start(&dir, &[]);
    let control_line = dev.expect(Stream::Stdout, "nc -N 127.0.0.1", EVENT);
    let control_port: u16 = control_line
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("the control port");

    dev.send("frobnicate n1");
    dev.expect(
        Stream::Stderr,
        "error: unknown command 'frobnicate'; commands: kill, stop, start, restart, status, help, quit",
        EVENT,
    );
    dev.send("kill n9");
    dev.expect(
        Stream::Stderr,
        "error: no node 'n9'; nodes: n1, n2, n3",
        EVENT,
    );
    dev.send("kill");
    dev.expect(
        Stream::Stderr,
        "error: kill needs one or more node names",
        EVENT,
    );
    dev.send("start n1");
    dev.expect(Stream::Stderr, "error: n1 is already running (pid ", EVENT);
    dev.send("help");
    dev.expect(Stream::Stdout, "restart NODE...", EVENT);

    dev.send("kill n2");
    let killed = dev.expect(Stream::Stdout, "n2 killed", EVENT);
    assert!(killed.contains("signal: 9"), "{killed}");
    dev.send("kill n2");
    dev.expect(Stream::Stderr, "error: n2 is not running", EVENT);
    dev.send("stop n3");
    let stopped = dev.expect(Stream::Stdout, "n3 stopped", EVENT);
    assert!(stopped.contains("(exit status: 0)"), "{stopped}");
    assert!(
        stopped.contains("only 1 of 3 nodes up: no quorum"),
        "{stopped}"
    );
    let (rows, summary) = dev.status();
    assert_eq!(row(&rows, "n2").note, "killed");
    assert_eq!(row(&rows, "n3").note, "stopped");
    assert!(row(&rows, "n1").up, "{rows:?}");
    assert!(summary.contains("1 of 3 nodes up"), "{summary}");

    dev.send("start n2 n3");
    dev.expect(Stream::Stdout, "n2 started (pid ", EVENT);
    dev.expect(Stream::Stdout, "n3 started (pid ", EVENT);
    dev.expect(Stream::Stdout, "n2 is serving", EVENT);
    dev.expect(Stream::Stdout, "n3 is serving", EVENT);
    let old_pid = row(&dev.status().0, "n1").pid.unwrap();
    dev.send("restart n1");
    dev.expect(Stream::Stdout, "n1 stopped (exit status: 0)", EVENT);
    let started = dev.expect(Stream::Stdout, "n1 started (pid ", EVENT);
    assert!(!started.contains(&format!("pid {old_pid})")), "{started}");
    dev.expect(Stream::Stdout, "n1 is serving", EVENT);

    // Without its standard input, ballot dev goes on, and takes commands on the control port.
    dev.stdin = None;
    dev.expect(
        Stream::Stdout,
        "standard input closed; ballot dev goes on",
        EVENT,
    );
    let control = TcpStream::connect(("127.0.0.1", control_port)).expect("control port");
    control.set_read_timeout(Some(EVENT)).unwrap();
    let mut answers = BufReader::new(control.try_clone().unwrap());
    let mut ask = |line: &str| -> Vec<String> {
        (&control)
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut answer = Vec::new();
        loop {
            let mut text = String::new();
            assert!(
                answers.read_line(&mut text).unwrap() > 0,
                "answer cut short"
            );
            if text.trim_end().is_empty() {
                return answer;
            }
            answer.push(text.trim_end().to_string());
        }
    };
    let status = ask("status");
    assert_eq!(status.len(), 5, "header, three nodes, leader: {status:?}");
    assert!(status[4].contains("3 of 3 nodes up"), "{status:?}");
    assert_eq!(
        ask("stop n4"),
        vec!["error: no node 'n4'; nodes: n1, n2, n3".to_string()]
    );
    assert_eq!(ask("quit"), vec!["stopping the cluster".to_string()]);
    assert_eq!(dev.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_dead_brings_a_dead_node_back_with_a_growing_back_off() {
    let dir = scratch("restart-dead");
    let mut dev = Dev::start(&dir, &["--restart-dead"]);
    let first_pid = row(&dev.status().0, "n2").pid.unwrap();
    signal(first_pid, libc::SIGKILL);
    let report = dev.expect(Stream::Stderr, "n2 died", EVENT);
    assert!(
        report.contains("--restart-dead starts it again in 1s"),
        "{report}"
    );
    let restarted = dev.expect(Stream::Stdout, "--restart-dead: n2 started (pid ", EVENT);
    dev.expect(Stream::Stdout, "n2 is serving", EVENT);
    let second_pid = row(&dev.status().0, "n2").pid.expect("n2 is up again");
    assert_ne!(second_pid, first_pid, "{restarted}");

    // Dying again soon after its start doubles the wait; `kill` counts as a crash.
    dev.send("kill n2");
    let killed = dev.expect(Stream::Stdout, "n2 killed", EVENT);
    assert!(
        killed.contains("--restart-dead starts it again in 2s"),
        "{killed}"
    );
    dev.expect(Stream::Stdout, "--restart-dead: n2 started (pid ", EVENT);
    dev.expect(Stream::Stdout, "n2 is serving", EVENT);

    // `stop` keeps a node down: no restart is scheduled.
    dev.send("stop n2");
    dev.expect(Stream::Stdout, "n2 stopped", EVENT);
    let (rows, _) = dev.status();
    assert_eq!(row(&rows, "n2").note, "stopped", "{rows:?}");
    assert_eq!(dev.sigterm(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigkilled_ballot_dev_takes_its_servers_with_it() {
    let dir = scratch("sigkilled");
    let mut dev = Dev::spawn(&dir, &["--fresh"]);
    let mut pids = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let line = dev.expect(Stream::Stdout, &format!("  {name}  pid "), STARTUP);
        let pid: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        pids.push(pid);
    }
    dev.expect(Stream::Stdout, "Ctrl-C stops the cluster", EVENT);
    assert!(pids.iter().all(|&pid| !server_gone(pid)), "servers up");

    dev.child.kill().unwrap(); // SIGKILL: no handler, no cleanup in ballot dev
    dev.child.wait().unwrap();
    let deadline = Instant::now() + EVENT;
    while !pids.iter().all(|&pid| server_gone(pid)) {
        assert!(
            Instant::now() < deadline,
            "servers outlived ballot dev: {:?}",
            pids.iter()
                .filter(|&&pid| !server_gone(pid))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.join("n1").join("server.log")).unwrap();
    assert!(
        log.contains("standard input closed"),
        "n1 shut down because its starter was gone:\n{log}"
    );

    // The directory, its locks and ports are free again: the same cluster comes back.
    let mut again = Dev::spawn(&dir, &[]);
    again.expect(Stream::Stdout, "3 nodes up", STARTUP);
    again.send("quit");
    assert_eq!(again.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_in_use_is_refused_with_a_non_zero_exit_naming_the_holder() {
    let dir = scratch("in-use");
    let mut first = Dev::start(&dir, &[]);
    let second = |extra: &[&str]| {
        let output = Command::new(BALLOT)
            .arg("dev")
            .arg("--data-dir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for extra in [&[][..], &["--fresh"][..]] {
        let (code, stdout, stderr) = second(extra);
        assert_eq!(code, Some(1), "{extra:?}: {stdout}{stderr}");
        assert!(!stdout.contains("nodes up"), "{stdout}");
        assert!(
            stderr.contains(&format!(
                "is in use by another cluster (process {})",
                first.child.id()
            )),
            "{extra:?}: {stderr}"
        );
    }
    let (rows, _) = first.status();
    assert!(
        rows.iter().all(|r| r.up),
        "the first cluster is untouched: {rows:?}"
    );
    let n2_client_port: u16 = {
        let plan = std::fs::read_to_string(dir.join("cluster.toml")).unwrap();
        let n2 = plan.split("[[nodes]]").nth(2).expect("n2 in the plan");
        n2.lines()
            .find_map(|l| l.strip_prefix("client_port = "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    first.send("quit");
    assert_eq!(first.wait_exit(), 0);

    // A server left from an earlier run (here started by hand) holds n1's data directory.
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let peer = url(free_port());
    std::fs::remove_dir_all(dir.join("n1").join("data")).unwrap();
    let leftover = KillOnDrop(
        Command::new(BALLOT)
            .arg("server")
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.join("n1").join("data"))
            .args(["--listen-client-urls", &url(free_port())])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .args(["--listen-metrics-urls", &url(free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lock = dir.join("n1").join("data").join("LOCK");
    let deadline = Instant::now() + EVENT;
    while std::fs::read_to_string(&lock)
        .ok()
        .map(|t| t.trim().to_string())
        != Some(leftover.0.id().to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the leftover never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stdout, stderr) = second(&[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "n1's data directory {} is locked by process {}",
            dir.join("n1").join("data").display(),
            leftover.0.id()
        )),
        "{stderr}"
    );
    drop(leftover);

    // Something else on n2's client port is named too.
    let squatter = TcpListener::bind(("127.0.0.1", n2_client_port)).unwrap();
    let (code, _, stderr) = second(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "n2's client port 127.0.0.1:{n2_client_port} is in use by process {}",
            std::process::id()
        )),
        "{stderr}"
    );
    drop(squatter);
    let _ = std::fs::remove_dir_all(&dir);
}
