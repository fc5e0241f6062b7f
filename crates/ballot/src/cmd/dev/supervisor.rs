//! The loop at the heart of `ballot dev`: it owns the running cluster, reports a node that dies
//! (and keeps the others serving), runs the commands that arrive (`input`), restarts dead nodes
//! with a back-off under `--restart-dead`, and at the end stops every node and decides the exit
//! status.
//!
//! Only this loop starts, signals and reaps the servers, so a pid it signals is always one it
//! has not reaped (see `ballot::dev_cluster`).

use super::command::{self, Command};
use super::input::{Event, Reply};
use ballot::dev_cluster::{health, node_view, RunningCluster, Stopped, STOP_GRACE};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{ExitCode, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often dead nodes, due restarts and nodes awaiting a leader are looked at.
const TICK: Duration = Duration::from_millis(200);
/// A node's first restart under `--restart-dead` waits this long; each quick death doubles it.
const RESTART_DELAY_FIRST: Duration = Duration::from_secs(1);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// A node that stayed up this long before dying starts its back-off afresh.
const STABLE_UPTIME: Duration = Duration::from_secs(60);
/// How long a started node may take to report a leader before a warning.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// The wait before restarting a node that has died `quick_deaths` times in a row, each within
/// [`STABLE_UPTIME`] of its start: 1 s, 2 s, 4 s, ... up to [`RESTART_DELAY_MAX`].
pub fn restart_delay(quick_deaths: u32) -> Duration {
    let doublings = quick_deaths.saturating_sub(1).min(16);
    (RESTART_DELAY_FIRST * 2u32.pow(doublings)).min(RESTART_DELAY_MAX)
}

/// Why a node is down.
#[derive(Debug, Clone)]
enum Down {
    /// By the `kill` command.
    Killed,
    /// By the `stop` command: it stays down until `start`.
    Stopped,
    /// On its own, or by a signal from outside.
    Died(ExitStatus),
    /// `--restart-dead` could not start it.
    StartFailed,
}

impl Down {
    fn describe(&self) -> String {
        match self {
            Down::Killed => "killed".into(),
            Down::Stopped => "stopped".into(),
            Down::Died(status) => format!("died ({status})"),
            Down::StartFailed => "failed to start".into(),
        }
    }
}

struct Tracked {
    started_at: Instant,
    /// Deaths in a row, each within [`STABLE_UPTIME`] of the node's start.
    quick_deaths: u32,
    down: Option<Down>,
    /// Under `--restart-dead`: when the dead node starts again.
    restart_at: Option<Instant>,
    /// After a start: until when it may take to report a leader.
    awaiting_leader: Option<Instant>,
}

pub struct Supervisor {
    cluster: RunningCluster,
    restart_dead: bool,
    control: SocketAddr,
    names: Vec<String>,
    nodes: HashMap<String, Tracked>,
    /// What went wrong during the session; any: exit status 1.
    failures: Vec<String>,
}

/// One line of an answer: printed on stdout, or on stderr after `error: `.
type Line = Result<String, String>;

impl Supervisor {
    /// `cluster` has every node up.
    pub fn new(cluster: RunningCluster, restart_dead: bool, control: SocketAddr) -> Supervisor {
        let names: Vec<String> = cluster.plan.nodes.iter().map(|n| n.name.clone()).collect();
        let now = Instant::now();
        let nodes = names
            .iter()
            .map(|name| {
                let tracked = Tracked {
                    started_at: now,
                    quick_deaths: 0,
                    down: None,
                    restart_at: None,
                    awaiting_leader: None,
                };
                (name.clone(), tracked)
            })
            .collect();
        Supervisor {
            cluster,
            restart_dead,
            control,
            names,
            nodes,
            failures: Vec::new(),
        }
    }

    /// Serves events until a signal or `quit`, then stops the cluster.
    pub fn run(mut self, events: Receiver<Event>) -> ExitCode {
        let reason = loop {
            match events.recv_timeout(TICK) {
                Ok(Event::Line { text, reply }) => {
                    let (answer, quit) = self.handle(&text);
                    deliver(reply, answer);
                    if quit {
                        break "quit".to_string();
                    }
                }
                Ok(Event::StdinClosed) => say(&format!(
                    "standard input closed; ballot dev goes on (commands on the control port \
                     {}; Ctrl-C or SIGTERM stops it)",
                    self.control
                )),
                Ok(Event::Signal(name)) => break name.to_string(),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break "no more input".to_string(),
            }
            self.tick();
        };
        self.shutdown(&reason)
    }

    fn tick(&mut self) {
        self.reap_deaths();
        let now = Instant::now();
        let due: Vec<String> = self
            .names
            .iter()
            .filter(|name| self.nodes[*name].restart_at.is_some_and(|at| at <= now))
            .cloned()
            .collect();
        for name in due {
            self.restart_dead_node(&name);
        }
        self.watch_starting_nodes();
    }

    fn reap_deaths(&mut self) {
        for (name, status) in self.cluster.reap_exited() {
            let now = Instant::now();
            let tracked = self.nodes.get_mut(&name).expect("a planned node");
            tracked.down = Some(Down::Died(status));
            tracked.awaiting_leader = None;
            if status.code().is_some_and(|code| code != 0) {
                self.failures
                    .push(format!("{name} exited with an error ({status})"));
            }
            let mut report = format!("{name} died ({status}); {}", self.survivors());
            if let Some(delay) = self.schedule_restart(&name, now) {
                report += &format!("; --restart-dead starts it again in {delay:?}");
            }
            let log = self.cluster.data_dir.join(&name).join("server.log");
            report += &format!("\nthe end of {}:", log.display());
            for line in self.cluster.log_tail(&name).lines() {
                report += &format!("\n  | {line}");
            }
            warn(&report);
        }
    }

    /// Under `--restart-dead`, when the node that just went down starts again.
    fn schedule_restart(&mut self, name: &str, now: Instant) -> Option<Duration> {
        let tracked = self.nodes.get_mut(name).expect("a planned node");
        tracked.quick_deaths = if now.duration_since(tracked.started_at) < STABLE_UPTIME {
            tracked.quick_deaths + 1
        } else {
            1
        };
        if !self.restart_dead {
            return None;
        }
        let delay = restart_delay(tracked.quick_deaths);
        tracked.restart_at = Some(now + delay);
        Some(delay)
    }

    fn restart_dead_node(&mut self, name: &str) {
        match self.start_one(name) {
            Ok(line) => say(&format!("--restart-dead: {line}")),
            Err(error) => {
                let tracked = self.nodes.get_mut(name).expect("a planned node");
                tracked.down = Some(Down::StartFailed);
                tracked.started_at = Instant::now();
                let delay = self.schedule_restart(name, Instant::now());
                warn(&format!(
                    "--restart-dead cannot start {name}: {error}; trying again in {:?}",
                    delay.unwrap_or_default()
                ));
            }
        }
    }

    fn watch_starting_nodes(&mut self) {
        let now = Instant::now();
        for node in self.cluster.plan.nodes.clone() {
            let tracked = self.nodes.get_mut(&node.name).expect("a planned node");
            let Some(deadline) = tracked.awaiting_leader else {
                continue;
            };
            if health(node.metrics_port) {
                tracked.awaiting_leader = None;
                let role = node_view(node.metrics_port)
                    .map(|view| format!("{}, term {}", view.role(), view.term))
                    .unwrap_or_else(|| "role unknown".into());
                say(&format!("{} is serving ({role})", node.name));
            } else if now > deadline {
                tracked.awaiting_leader = None;
                warn(&format!(
                    "{} has reported no leader {LEADER_WAIT:?} after its start; see {}",
                    node.name,
                    self.cluster
                        .data_dir
                        .join(&node.name)
                        .join("server.log")
                        .display()
                ));
            }
        }
    }

    /// The answer to one command line, and whether it asks to quit.
    fn handle(&mut self, text: &str) -> (Vec<Line>, bool) {
        // A node that died since the last tick is reported as dead, not as killed.
        self.reap_deaths();
        let command = match command::parse(text, &self.names) {
            Ok(Some(command)) => command,
            Ok(None) => return (Vec::new(), false),
            Err(error) => return (vec![Err(error.to_string())], false),
        };
        let each = |this: &mut Self, names: Vec<String>, run: fn(&mut Self, &str) -> Line| {
            names.iter().map(|name| run(this, name)).collect()
        };
        let answer = match command {
            Command::Kill(names) => each(self, names, Self::kill_one),
            Command::Stop(names) => each(self, names, Self::stop_one),
            Command::Start(names) => each(self, names, Self::start_one),
            Command::Restart(names) => each(self, names, Self::restart_one),
            Command::Status => vec![Ok(self.status())],
            Command::Help => vec![Ok(command::HELP.to_string())],
            Command::Quit => return (vec![Ok("stopping the cluster".into())], true),
        };
        (answer, false)
    }

    fn kill_one(&mut self, name: &str) -> Line {
        let status = self.cluster.kill_node(name)?;
        let tracked = self.nodes.get_mut(name).expect("a planned node");
        tracked.down = Some(Down::Killed);
        tracked.awaiting_leader = None;
        let mut line = format!("{name} killed ({status})");
        if let Some(delay) = self.schedule_restart(name, Instant::now()) {
            line += &format!("; --restart-dead starts it again in {delay:?}");
        }
        Ok(line + &self.quorum_note())
    }

    fn stop_one(&mut self, name: &str) -> Line {
        let tracked = self.nodes.get_mut(name).expect("a planned node");
        if !self.cluster.is_running(name) && tracked.restart_at.is_some() {
            tracked.restart_at = None;
            tracked.down = Some(Down::Stopped);
            return Ok(format!("{name} was down; its restart is cancelled"));
        }
        let stopped = self.cluster.stop_node(name, STOP_GRACE)?;
        let tracked = self.nodes.get_mut(name).expect("a planned node");
        tracked.down = Some(Down::Stopped);
        tracked.restart_at = None;
        tracked.awaiting_leader = None;
        if !stopped.is_clean() {
            self.failures
                .push(format!("{name} did not stop cleanly: {stopped}"));
        }
        Ok(format!("{name} stopped ({stopped}){}", self.quorum_note()))
    }

    fn start_one(&mut self, name: &str) -> Line {
        let pid = self.cluster.start_node(name)?;
        let tracked = self.nodes.get_mut(name).expect("a planned node");
        tracked.started_at = Instant::now();
        tracked.down = None;
        tracked.restart_at = None;
        tracked.awaiting_leader = Some(Instant::now() + LEADER_WAIT);
        Ok(format!("{name} started (pid {pid})"))
    }

    fn restart_one(&mut self, name: &str) -> Line {
        if !self.cluster.is_running(name) {
            return self.start_one(name);
        }
        let stopped = self.stop_one(name)?;
        Ok(format!("{stopped}\n{}", self.start_one(name)?))
    }

    /// Who is still up after a node went down, and whether they can serve.
    fn survivors(&self) -> String {
        let up: Vec<&str> = self
            .names
            .iter()
            .filter(|name| self.cluster.is_running(name))
            .map(String::as_str)
            .collect();
        if up.is_empty() {
            return "no node is running".into();
        }
        let verb = if up.len() == 1 { "keeps" } else { "keep" };
        format!("{} {verb} serving{}", up.join(", "), self.quorum_note())
    }

    /// Empty while a majority runs; else says that the cluster cannot serve.
    fn quorum_note(&self) -> String {
        let up = self.up_count();
        let quorum = self.names.len() / 2 + 1;
        if up >= quorum {
            return String::new();
        }
        format!(
            " (only {up} of {} nodes up: no quorum, so writes and linearizable reads wait until \
             {} more {} back)",
            self.names.len(),
            quorum - up,
            if quorum - up == 1 { "is" } else { "are" }
        )
    }

    fn up_count(&self) -> usize {
        self.names
            .iter()
            .filter(|name| self.cluster.is_running(name))
            .count()
    }

    /// A table of the nodes, then the leader and how many are up.
    fn status(&mut self) -> String {
        let mut out = format!(
            "{:<5} {:<8} {:<5} {:<10} {:<5} {:<16} {:<16} {:<16} note",
            "node", "pid", "state", "role", "term", "client", "peer", "metrics"
        );
        let mut leader: Option<(u64, &str)> = None;
        let now = Instant::now();
        for node in &self.cluster.plan.nodes {
            let tracked = &self.nodes[&node.name];
            let pid = self.cluster.pid(&node.name);
            let view = pid.and(node_view(node.metrics_port));
            if let Some(view) = view.filter(|view| view.is_leader) {
                if leader.is_none_or(|(term, _)| view.term > term) {
                    leader = Some((view.term, &node.name));
                }
            }
            let note = match (&tracked.down, tracked.restart_at) {
                (Some(down), Some(at)) => format!(
                    "{}; restarts in {:.1}s",
                    down.describe(),
                    at.saturating_duration_since(now).as_secs_f64()
                ),
                (Some(down), None) => down.describe(),
                (None, _) => String::new(),
            };
            let address = |port: u16| format!("127.0.0.1:{port}");
            out += format!(
                "\n{:<5} {:<8} {:<5} {:<10} {:<5} {:<16} {:<16} {:<16} {note}",
                node.name,
                pid.map_or("-".into(), |pid| pid.to_string()),
                if pid.is_some() { "up" } else { "down" },
                match (pid, view) {
                    (None, _) => "-",
                    (Some(_), None) => "starting",
                    (Some(_), Some(view)) => view.role(),
                },
                view.map_or("-".into(), |view| view.term.to_string()),
                address(node.client_port),
                address(node.peer_port),
                address(node.metrics_port),
            )
            .trim_end();
        }
        let up = format!("{} of {} nodes up", self.up_count(), self.names.len());
        out += &match leader {
            Some((term, name)) => format!("\nleader: {name} (term {term}); {up}"),
            None => format!("\nleader: none; {up}"),
        };
        out.trim_end().to_string()
    }

    fn shutdown(mut self, reason: &str) -> ExitCode {
        self.reap_deaths();
        say(&format!(
            "stopping {} running nodes ({reason})",
            self.up_count()
        ));
        for (name, stopped) in self.cluster.stop_all() {
            if !stopped.is_clean() {
                let how = match stopped {
                    Stopped::Killed(_) => format!("did not exit within {STOP_GRACE:?} of SIGTERM"),
                    Stopped::Exited(status) => format!("exited with {status} on SIGTERM"),
                };
                self.failures.push(format!("{name} {how}"));
            }
        }
        if self.failures.is_empty() {
            say("stopped");
            return ExitCode::SUCCESS;
        }
        warn(&format!(
            "ballot dev exits with status 1:\n  {}",
            self.failures.join("\n  ")
        ));
        ExitCode::FAILURE
    }
}

fn deliver(reply: Reply, answer: Vec<Line>) {
    match reply {
        Reply::Console => {
            for line in answer {
                match line {
                    Ok(text) => say(&text),
                    Err(error) => warn(&format!("error: {error}")),
                }
            }
        }
        Reply::Control(sender) => {
            let text: Vec<String> = answer
                .into_iter()
                .map(|line| line.unwrap_or_else(|error| format!("error: {error}")))
                .collect();
            let _ = sender.send(Ok(text.join("\n")));
        }
    }
}

/// Printed on stdout; a closed stdout is not a reason to stop the cluster.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Printed on stderr, as `say`.
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_from_one_second_up_to_thirty() {
        let delays: Vec<u64> = (1..=7).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(restart_delay(0), RESTART_DELAY_FIRST);
        assert_eq!(restart_delay(u32::MAX), RESTART_DELAY_MAX);
    }
}
