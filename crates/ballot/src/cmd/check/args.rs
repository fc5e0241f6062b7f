//! `ballot check` flags, the fault vocabulary and the help text. Owns parsing and validation
//! only: nothing here starts a process or opens a socket.

use crate::cmd::client::connect::parse_duration;
use clap::Args;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub const NODES_MIN: usize = 3;
pub const NODES_MAX: usize = 7;
pub const KEYS_MAX: usize = 64;
pub const CLIENTS_MAX: usize = 64;
pub const GROUPS_MAX: u32 = 16;
pub const DURATION_MIN: Duration = Duration::from_secs(5);
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

#[derive(Args, Debug, Clone)]
#[command(after_long_help = help_text())]
pub struct CheckArgs {
    /// Cluster size: 3 to 7 `ballot server` processes on loopback.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long faults are injected while clients work (e.g. 60s, 10m); the heal, a recovery
    /// period and the final read follow.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Faults to inject: `all`, `none`, or a comma list (see below).
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    pub faults: FaultSet,
    /// Keys in use at a time [default: 3, or one per group with --groups]. Each key is retired
    /// after 200 operations and a fresh one takes its place, so that every key's history stays
    /// small enough to check.
    #[arg(long)]
    pub keys: Option<usize>,
    /// Replicated groups the keys are spread over (key k in group k mod G): group 0 and G-1
    /// groups created at the start with 3 replicas each (`ballot group create`). Every fault
    /// hits every group on the nodes it hits; linearizability is judged per key, so per group.
    #[arg(long, default_value_t = 1)]
    pub groups: u32,
    /// Concurrent clients, pinned round-robin to the nodes [default: 2 per node].
    #[arg(long)]
    pub clients: Option<usize>,
    /// Operations per second, all clients together (each client paces itself to its share);
    /// 0: as fast as the cluster answers.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seed of the nemesis schedule (which fault, which node, how long) and of the clients'
    /// choices of operation and key [default: from the clock, printed]. The timing of a real
    /// cluster is not deterministic, so a seed repeats the schedule, not the run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for history.json, report.html and the nodes' logs
    /// [default: ballot-check/<unix-time>-seed-<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read with `serializable = true`: served from the local replica at once, without a quorum
    /// round. Unsafe on purpose: under partitions such reads are stale, and the check must
    /// report them as not linearizable (exit 1). The proof that the check bites.
    #[arg(long)]
    pub serializable: bool,
    /// What the clients do: `kv` (reads, writes and compare-and-swaps, checked for
    /// linearizability) or `sched` (`ballot worker` processes running jobs every second,
    /// checked for duplicate results; see below).
    #[arg(long, value_enum, default_value_t = WorkloadKind::Kv)]
    pub workload: WorkloadKind,
    /// With --workload sched: worker processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub workers: u32,
    /// With --workload sched: jobs, each due every second.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// With --workload sched, a deliberate bug the check must catch: `unfenced` has the
    /// workers' leader and executors write without their fences.
    #[arg(long = "break", value_enum)]
    pub broken: Option<SchedBreak>,
}

/// What `ballot check` runs against the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    Kv,
    Sched,
}

/// Deliberate bugs of `--workload sched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedBreak {
    Unfenced,
}

impl CheckArgs {
    /// Checks the flags together; the message names the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(NODES_MIN..=NODES_MAX).contains(&self.nodes) {
            return Err(format!(
                "--nodes must be between {NODES_MIN} and {NODES_MAX}, got {}",
                self.nodes
            ));
        }
        let keys = self.keys();
        if keys == 0 || keys > KEYS_MAX {
            return Err(format!(
                "--keys must be between 1 and {KEYS_MAX}, got {keys}"
            ));
        }
        if self.groups == 0 || self.groups > GROUPS_MAX {
            return Err(format!(
                "--groups must be between 1 and {GROUPS_MAX}, got {}",
                self.groups
            ));
        }
        let clients = self.clients();
        if clients == 0 || clients > CLIENTS_MAX {
            return Err(format!(
                "--clients must be between 1 and {CLIENTS_MAX}, got {clients}"
            ));
        }
        if self.duration < DURATION_MIN || self.duration > DURATION_MAX {
            return Err(format!(
                "--duration must be between {}s and {}h, got {:?}",
                DURATION_MIN.as_secs(),
                DURATION_MAX.as_secs() / 3600,
                self.duration
            ));
        }
        if self.broken.is_some() && self.workload != WorkloadKind::Sched {
            return Err("--break applies to --workload sched (use --serializable for kv)".into());
        }
        if self.workload == WorkloadKind::Sched && (self.serializable || self.groups > 1) {
            return Err("--serializable and --groups apply to --workload kv".into());
        }
        Ok(())
    }

    pub fn keys(&self) -> usize {
        self.keys.unwrap_or(3.max(self.groups as usize))
    }

    /// Replicas of each group beyond 0.
    pub fn group_replicas(&self) -> usize {
        3.min(self.nodes)
    }

    pub fn clients(&self) -> usize {
        self.clients.unwrap_or(2 * self.nodes)
    }

    /// Time between two operations of one client (`None`: no pacing).
    pub fn client_interval(&self) -> Option<std::time::Duration> {
        (self.rate > 0)
            .then(|| std::time::Duration::from_secs_f64(self.clients() as f64 / self.rate as f64))
    }
}

fn parse_faults(text: &str) -> Result<FaultSet, String> {
    text.parse()
}

/// What the nemesis can do to the cluster. Names follow `ballot sim` where the fault is the
/// same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Partition,
    Asymmetric,
    Majority,
    Bridge,
    IsolateLeader,
    Crash,
    Pause,
    Transfer,
    Membership,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Partition,
        FaultKind::Asymmetric,
        FaultKind::Majority,
        FaultKind::Bridge,
        FaultKind::IsolateLeader,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Transfer,
        FaultKind::Membership,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::Majority => "majority",
            FaultKind::Bridge => "bridge",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Transfer => "transfer",
            FaultKind::Membership => "membership",
        }
    }

    /// One line for `--help`.
    pub fn description(self) -> &'static str {
        match self {
            FaultKind::Partition => "one node cut off from all others, both directions",
            FaultKind::Asymmetric => {
                "one-way: one node can send but not receive, or receive but not send"
            }
            FaultKind::Majority => "the cluster splits into a majority and a minority",
            FaultKind::Bridge => "two halves that only one bridge node connects",
            FaultKind::IsolateLeader => "the current leader is cut off from all others",
            FaultKind::Crash => "SIGKILL a node, restart it from its data directory later",
            FaultKind::Pause => "SIGSTOP a node, SIGCONT it later (a long GC pause, a VM stall)",
            FaultKind::Transfer => "MoveLeader: the leader hands leadership to another voter",
            FaultKind::Membership => {
                "member remove of a follower, its data wiped; later member add (learner), a \
                 fresh process with --initial-cluster-state existing, promote"
            }
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault '{text}'; expected `all`, `none` or a comma list of: {}",
                    names.join(", ")
                )
            })
    }
}

/// The enabled fault kinds, in [`FaultKind::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultSet {
    kinds: Vec<FaultKind>,
}

impl FaultSet {
    pub fn kinds(&self) -> &[FaultKind] {
        &self.kinds
    }
}

impl FromStr for FaultSet {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let mut kinds = match text {
            "all" => FaultKind::ALL.to_vec(),
            "none" | "" => Vec::new(),
            list => list
                .split(',')
                .map(|name| name.trim().parse())
                .collect::<Result<Vec<FaultKind>, String>>()?,
        };
        kinds.sort();
        kinds.dedup();
        Ok(FaultSet { kinds })
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kinds.is_empty() {
            return formatter.write_str("none");
        }
        if self.kinds.len() == FaultKind::ALL.len() {
            return formatter.write_str("all");
        }
        let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        formatter.write_str(&names.join(","))
    }
}

fn help_text() -> String {
    let mut text = String::from(
        "Starts a fresh cluster of real `ballot server` processes on loopback whose peer (Raft) \
         traffic passes through fault-injecting proxies, runs concurrent clients doing reads, \
         writes and compare-and-swaps on a few keys while a nemesis injects faults, heals \
         everything, and checks the recorded history for linearizability (Wing & Gong / Lowe, \
         per key, the same checker as `ballot sim`).\n\n\
         A run: chaos (--duration: a quiet 1-3 s, then one fault held 2-7 s, in turn; the \
         kinds are drawn from a seeded shuffle so each enabled kind comes once per round), the \
         heal (partitions lifted, paused nodes continued, crashed nodes restarted, a removed \
         member re-added), a 5 s recovery with the clients still working, then a final \
         linearizable read of every key.\n\n\
         Clients: each is pinned to one node (so a stale read from a cut-off node shows). Every \
         operation's invoke and completion are recorded. An operation that times out (3 s), or \
         fails in a way that does not prove it was not applied, is indeterminate: it may take \
         effect at any later time or never, and its client is retired and replaced by a new one. \
         Partitions cut peer traffic only: a follower still forwards client requests to the \
         leader over the client API.\n\n\
         Lost acknowledged write: a put or a swapped compare-and-swap that the cluster \
         acknowledged, whose key's final read (after the heal, when every operation has ended) \
         returns nothing, or a value written by an operation that had completed before the \
         acknowledged one began. Every value is written once, so that value cannot have come \
         back later: the acknowledged write was lost. Reported apart from other violations.\n\n\
         Faults:\n",
    );
    for kind in FaultKind::ALL {
        text.push_str(&format!("  {:<15} {}\n", kind.name(), kind.description()));
    }
    text.push_str(
        "\nOutput: a line per fault injected and healed and an operations count every 10 s; then \
         a summary (operations ok / failed / indeterminate, faults by kind, leader changes, the \
         verdict per key) and the paths of history.json (every operation, fault and leader \
         change) and report.html (a timeline: a lane per client worker, operations coloured by \
         outcome, fault intervals and leader changes marked).\n\n\
         Exit status: 0 when the history is linearizable and no acknowledged write was lost; 1 \
         on an anomaly (not linearizable, a lost write, an inconclusive check, a node that died \
         on its own or did not recover); 2 on bad flags or a cluster that could not start.\n\n\
         Examples:\n  ballot check --nodes 3 --duration 60s --faults all\n  \
         ballot check --nodes 5 --duration 10m --faults all --seed 7\n  \
         ballot check --faults partition --serializable    # must fail: stale reads\n\n\
         --workload sched: the same cluster and node faults, plus --workers `ballot worker` \
         processes (lease TTL 3 s) running --jobs jobs due every second, whose command writes \
         check/JOB/SLOT/TOKEN with the run's fence. Worker faults, one at a time: SIGKILL a \
         worker (restarted later), SIGSTOP the leading worker past its lease (the two-leader \
         window), and revoke a busy worker's lease behind its back (what a worker whose clock \
         runs slow sees: its lease ends on the cluster before it thinks so). Verdict, from the \
         store's whole history: no slot's result recorded twice, each slot's fenced writes \
         accepted in increasing token order, and every slot due before the end either run or \
         recorded as missed or skipped.\n  \
         ballot check --workload sched --duration 60s\n  \
         ballot check --workload sched --break unfenced    # must fail: duplicate results\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_parse_and_print() {
        let all: FaultSet = "all".parse().unwrap();
        assert_eq!(all.kinds().len(), FaultKind::ALL.len());
        assert_eq!(all.to_string(), "all");
        let some: FaultSet = "crash, partition,crash".parse().unwrap();
        assert_eq!(some.kinds(), [FaultKind::Partition, FaultKind::Crash]);
        assert_eq!(some.to_string(), "partition,crash");
        assert!("none".parse::<FaultSet>().unwrap().kinds().is_empty());
        let error = "partition,earthquake".parse::<FaultSet>().unwrap_err();
        assert!(error.contains("unknown fault 'earthquake'"), "{error}");
        assert!(error.contains("isolate-leader"), "{error}");
    }
}
