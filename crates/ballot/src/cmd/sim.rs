//! `ballot sim raft`: many seeded simulations with a one-line verdict, one seed replayed with its
//! trace, or a deliberately broken Raft run until the checkers catch it.

use ballot::raft_replica;
use ballot_raft::Break;
use ballot_sim::{run_many, DriverBreak, FaultKind, FaultSet, SimConfig, SimReport};
use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Protocol {
    /// Raft with PreVote, CheckQuorum, pipelining, ReadIndex and lease reads, snapshots,
    /// membership changes and leadership transfer.
    Raft,
}

#[derive(Args, Debug)]
#[command(after_long_help = help_text())]
pub struct SimArgs {
    /// The protocol to simulate.
    protocol: Protocol,
    /// Cluster size (1 to 9). Node ids are 1..=N, all voters at the start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Replicated groups (1 to 64), each with a replica on every node. They share the nodes (a
    /// crash takes every group's replica on a node down) and the network (a partition cuts
    /// every group); each has its own clients and keys, and every check runs per group.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// How many seeds to run, starting at --first-seed [default: 100; with --break, 5000, stopping
    /// at the first violation].
    #[arg(long)]
    seeds: Option<u64>,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this seed (replay). Same seed, same flags: same run, event for event.
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Ticks of the chaos phase per run (a tick stands for 10 ms).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Faults to inject: `all`, `none`, or a comma list (see below).
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    faults: FaultSet,
    /// Concurrent simulated clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Keys the clients read, write and compare-and-swap.
    #[arg(long, default_value_t = 3)]
    keys: u64,
    /// Print the event trace of the run (with --seed), or of the first failing seed.
    #[arg(long)]
    trace: bool,
    /// Run a deliberately broken Raft, or a broken driver around it (see below); the run
    /// succeeds only if nothing is caught, so a break is expected to exit 1 with the seed and
    /// trace that show the violation.
    #[arg(long = "break", value_parser = parse_break)]
    broken: Option<AnyBreak>,
}

/// A break of the protocol itself, or of the driver that persists and restarts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnyBreak {
    Raft(Break),
    Driver(DriverBreak),
}

impl AnyBreak {
    fn raft(self) -> Option<Break> {
        match self {
            AnyBreak::Raft(broken) => Some(broken),
            AnyBreak::Driver(_) => None,
        }
    }

    fn driver(self) -> Option<DriverBreak> {
        match self {
            AnyBreak::Driver(broken) => Some(broken),
            AnyBreak::Raft(_) => None,
        }
    }
}

impl std::fmt::Display for AnyBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyBreak::Raft(broken) => broken.fmt(f),
            AnyBreak::Driver(broken) => broken.fmt(f),
        }
    }
}

fn parse_faults(text: &str) -> Result<FaultSet, String> {
    text.parse()
}

fn parse_break(text: &str) -> Result<AnyBreak, String> {
    if let Some(broken) = DriverBreak::ALL.into_iter().find(|b| b.name() == text) {
        return Ok(AnyBreak::Driver(broken));
    }
    text.parse::<Break>().map(AnyBreak::Raft).map_err(|_| {
        let names: Vec<&str> = Break::ALL
            .iter()
            .map(|b| b.name())
            .chain(DriverBreak::ALL.iter().map(|b| b.name()))
            .collect();
        format!(
            "unknown break '{text}'; expected one of: {}",
            names.join(", ")
        )
    })
}

fn help_text() -> String {
    let mut text = String::from(
        "Each run has a chaos phase (--steps ticks of faults while clients work), then a heal \
         (faults undone, crashed nodes restarted), a leader-stability check, and a final probe write.\n\n\
         With --groups G, G replicated groups share the nodes and the network: a crash or a \
         partition hits every group on the node; membership changes and leadership transfers hit \
         one group at a time; each group has its own clients and keys, and every check below runs \
         per group.\n\n\
         Checked after every step: Raft's own properties, which ballot-raft brings with it \
         (Election Safety, Log Matching, Leader Completeness: Raft figure 3), and the simulator's \
         own for every engine (State Machine Safety, entries applied in order). Checked at the end: liveness (a leader and every pending operation \
         decided within a bound after the heal) and linearizability of every client operation \
         (Wing & Gong / Lowe, per key).\n\nFaults:\n",
    );
    for kind in FaultKind::ALL {
        text.push_str(&format!("  {:<15} {}\n", kind.name(), kind.description()));
    }
    text.push_str("\nBreaks (--break NAME), each caught by a checker:\n");
    for broken in Break::ALL {
        text.push_str(&format!(
            "  {:<25} {}\n",
            broken.name(),
            broken.description()
        ));
    }
    text.push_str(
        "\nBreaks of the driver (what persists and restarts the replica), caught the same way:\n",
    );
    for broken in DriverBreak::ALL {
        text.push_str(&format!(
            "  {:<25} {}\n",
            broken.name(),
            broken.description()
        ));
    }
    text.push_str(
        "\nExit status: 0 when every run finished with zero violations, 1 otherwise, 2 on bad flags.\n\n\
         Examples:\n  ballot sim raft --nodes 5 --seeds 1000 --faults all\n  \
         ballot sim raft --groups 8 --seeds 1000 --faults all\n  \
         ballot sim raft --seed 42 --trace\n  ballot sim raft --break commit-old-term --seeds 2000\n  \
         ballot sim raft --break forget-bootstrap --faults crash-all\n",
    );
    text
}

pub fn run(args: SimArgs) -> ExitCode {
    let config = SimConfig {
        nodes: args.nodes,
        groups: args.groups,
        steps: args.steps,
        faults: args.faults,
        clients: args.clients,
        keys: args.keys,
        driver_break: args.broken.and_then(AnyBreak::driver),
        ..SimConfig::default()
    };
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let broken = args.broken.and_then(AnyBreak::raft);
    let reports = match args.seed {
        Some(seed) => {
            let config = SimConfig {
                seed,
                trace: args.trace,
                ..config.clone()
            };
            let report = ballot_sim::run(&config, |start| raft_replica::build(start, broken));
            if args.trace && print_lines(&report.trace).is_err() {
                return ExitCode::SUCCESS; // the reader went away (e.g. `| head`)
            }
            vec![report]
        }
        None => {
            let seeds = args
                .seeds
                .unwrap_or(if args.broken.is_some() { 5000 } else { 100 });
            let stop_at_first = args.broken.is_some();
            run_seeds(
                &config,
                args.first_seed..args.first_seed + seeds,
                broken,
                stop_at_first,
            )
        }
    };
    let failing: Vec<&SimReport> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    // A break is run until it is caught: the first failing seed says all there is to say (the
    // seeds of its chunk that ran beside it mostly fail the same way).
    let shown = if args.broken.is_some() {
        &failing[..failing.len().min(1)]
    } else {
        &failing[..]
    };
    for report in shown {
        for violation in &report.violations {
            println!(
                "seed {}: [{}] at tick {}: {}",
                report.seed, violation.checker, violation.time, violation.description
            );
        }
    }
    if failing.len() > shown.len() {
        println!(
            "({} more of the {} seeds run failed; the first is shown)",
            failing.len() - shown.len(),
            reports.len()
        );
    }
    if let Some(first) = failing.first() {
        explain_failure(&config, &args, first.seed);
    }
    print_summary(&config, &args, &reports, started);
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs seeds in chunks on all cores; with `stop_at_first` (a break) it stops at the first chunk
/// that fails.
fn run_seeds(
    config: &SimConfig,
    seeds: std::ops::Range<u64>,
    broken: Option<Break>,
    stop_at_first: bool,
) -> Vec<SimReport> {
    let total = seeds.end - seeds.start;
    let done = AtomicU64::new(0);
    let show_progress = std::io::stderr().is_terminal();
    let progress = |_: &SimReport| {
        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
        if show_progress && (finished.is_multiple_of(10) || finished == total) {
            eprint!("\r  {finished}/{total} seeds");
        }
    };
    let chunk = if stop_at_first { 64 } else { total.max(1) };
    let mut reports = Vec::new();
    let mut start = seeds.start;
    while start < seeds.end {
        let end = (start + chunk).min(seeds.end);
        let batch = run_many(
            config,
            start..end,
            |node| raft_replica::build(node, broken),
            Some(&progress),
        );
        let failed = batch.iter().any(|r| !r.violations.is_empty());
        reports.extend(batch);
        if failed && stop_at_first {
            break;
        }
        start = end;
    }
    if show_progress {
        eprint!("\r");
    }
    reports
}

/// Replays the first failing seed with the trace on and shows how it ended.
fn explain_failure(config: &SimConfig, args: &SimArgs, seed: u64) {
    const TAIL_LINES: usize = 60;
    let config = SimConfig {
        seed,
        trace: true,
        ..config.clone()
    };
    let broken = args.broken.and_then(AnyBreak::raft);
    let report = ballot_sim::run(&config, |start| raft_replica::build(start, broken));
    if args.trace && args.seed.is_none() {
        let _ = print_lines(&report.trace);
    } else if args.seed.is_none() {
        let skip = report.trace.len().saturating_sub(TAIL_LINES);
        println!(
            "--- last {} events of seed {seed} ---",
            report.trace.len() - skip
        );
        for line in &report.trace[skip..] {
            println!("{line}");
        }
        println!("--- end of trace ---");
    }
    let mut replay = format!(
        "ballot sim raft --nodes {} --steps {} --faults {} --clients {} --keys {} --seed {seed} --trace",
        config.nodes, config.steps, config.faults, config.clients, config.keys
    );
    if config.groups > 1 {
        replay.push_str(&format!(" --groups {}", config.groups));
    }
    if let Some(broken) = args.broken {
        replay.push_str(&format!(" --break {broken}"));
    }
    println!("replay: {replay}");
}

fn print_summary(config: &SimConfig, args: &SimArgs, reports: &[SimReport], started: Instant) {
    let committed: u64 = reports.iter().map(|r| r.ops_committed).sum();
    let failed: u64 = reports.iter().map(|r| r.ops_failed).sum();
    let unknown: u64 = reports.iter().map(|r| r.ops_unknown).sum();
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let seeds = match (reports.first(), reports.last()) {
        (Some(first), Some(last)) if reports.len() > 1 => {
            format!("{} seeds ({}..={})", reports.len(), first.seed, last.seed)
        }
        (Some(only), _) => format!("1 seed ({})", only.seed),
        _ => "0 seeds".into(),
    };
    let broken = args
        .broken
        .map(|b| format!(", break {b}"))
        .unwrap_or_default();
    let groups = if config.groups > 1 {
        format!(", {} groups", config.groups)
    } else {
        String::new()
    };
    println!(
        "sim raft: {seeds}, {} nodes{groups}, faults {}{broken}: {committed} operations committed ({failed} failed, {unknown} indeterminate), {violations} violations, {:.1} s",
        config.nodes,
        config.faults,
        started.elapsed().as_secs_f64()
    );
}

/// Prints lines, stopping quietly when the reader closes the pipe.
fn print_lines(lines: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}
