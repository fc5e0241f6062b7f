//! `ballot demo`: a three-node Raft cluster in the deterministic simulator, narrated for a new
//! user: elections, a workload of writes, compare-and-swaps and reads, crashes and a cut-off
//! leader, re-elections, and a summary with the verdict of every checker.
//!
//! The networked server comes with a later milestone; until then the simulator is the honest way
//! to show the protocol at work on one machine in a second, reproducibly.

use ballot::raft_replica;
use ballot_sim::linearizability::Verdict;
use ballot_sim::{FaultSet, SimConfig};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

/// A tick stands for 10 ms, as in the server's defaults.
const TICK_SECONDS: f64 = 0.01;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Tell the story in the deterministic simulator instead of with real processes.
    #[arg(long)]
    simulated: bool,
    /// With --simulated: seed of the run; every seed tells another story, each reproducible.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Ticks of faults before the cluster is healed (a tick is 10 ms of simulated time).
    #[arg(long, default_value_t = 600)]
    steps: u64,
    /// Print every client operation, not a sample.
    #[arg(long)]
    verbose: bool,
}

pub fn run(args: DemoArgs) -> ExitCode {
    if !args.simulated {
        return super::demo_live::run();
    }
    let faults: FaultSet = "crash,isolate-leader,drop,reorder"
        .parse()
        .expect("valid fault list");
    let config = SimConfig {
        nodes: args.nodes,
        seed: args.seed,
        steps: args.steps,
        faults,
        trace: true,
        ..SimConfig::default()
    };
    if let Err(error) = config.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let report = ballot_sim::run(&config, |start| raft_replica::build(start, None));
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!(
        "ballot demo: a {}-node Raft cluster in the deterministic simulator (seed {}), 5 clients \
         writing, compare-and-swapping and reading 3 keys while nodes crash and leaders get cut off.\n",
        config.nodes, config.seed
    )];
    let mut completions = 0u64;
    for line in &report.trace {
        if let Some(story) = narrate(line, &mut completions, args.verbose) {
            lines.push(story);
        }
    }
    lines.push(String::new());
    lines.extend(summary(&report, &config));
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::SUCCESS; // the reader went away (e.g. `| head`)
        }
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Turns one trace line into a sentence for a newcomer, or skips it.
fn narrate(line: &str, completions: &mut u64, verbose: bool) -> Option<String> {
    let (tick, event) = line.trim_start().split_once(' ')?;
    let seconds = tick.parse::<u64>().ok()? as f64 * TICK_SECONDS;
    let at = |text: String| Some(format!("  {seconds:>6.2} s  {text}"));
    if let Some(rest) = event
        .strip_suffix(')')
        .and_then(|e| e.split_once(" is leader in term "))
    {
        let (node, term) = rest;
        let term = term.split_whitespace().next()?;
        return at(format!("{node} is elected leader for term {term}"));
    }
    if let Some(rest) = event.strip_prefix("CRASH ") {
        let node = rest.split_whitespace().next()?;
        return at(format!("{node} crashes: its unsynced writes are lost"));
    }
    if let Some(rest) = event.strip_prefix("FAULT isolate-leader: ") {
        return at(format!("network: {rest} from the others"));
    }
    if event.starts_with("FAULT healed") {
        return at("network: partition healed".into());
    }
    if event.contains(" starts (incarnation ") && !event.contains("incarnation 0") {
        let node = event.split_whitespace().next()?;
        let entries = event.split("incarnation ").nth(1)?.split(", ").nth(1)?;
        return at(format!(
            "{node} restarts from its disk ({entries}) and catches up"
        ));
    }
    if event.starts_with("client ") && event.contains(" completes: ") {
        *completions += 1;
        if verbose || (*completions - 1).is_multiple_of(150) {
            return at(event.to_string());
        }
    }
    None
}

fn summary(report: &ballot_sim::SimReport, config: &SimConfig) -> Vec<String> {
    let linearizable = match &report.linearizability {
        Some(Verdict::Linearizable) => "yes, every operation fits one sequential order".to_string(),
        Some(Verdict::NotLinearizable { explanation, .. }) => format!("NO: {explanation}"),
        Some(Verdict::Inconclusive { .. }) => "inconclusive (search budget exhausted)".to_string(),
        None => "not checked".to_string(),
    };
    let mut lines = vec![
        format!(
            "{} operations completed ({} definitely failed, {} with an unknown outcome after a timeout), \
             {} leader elections, highest term {}, {:.1} s simulated.",
            report.ops_committed,
            report.ops_failed,
            report.ops_unknown,
            report.leader_changes,
            report.max_term,
            report.ticks as f64 * TICK_SECONDS
        ),
        "Checked after every step: one leader per term, matching logs, committed entries in every later leader, the same entry applied at each index.".into(),
        format!("Linearizable: {linearizable}"),
    ];
    if report.violations.is_empty() {
        lines.push("Violations: 0".into());
    } else {
        for violation in &report.violations {
            lines.push(format!("VIOLATION {violation}"));
        }
    }
    lines.push(String::new());
    lines.push("Next: `ballot sim raft --nodes 5 --seeds 1000 --faults all` runs a thousand such runs with every fault;".into());
    lines.push(format!(
        "      `ballot sim raft --nodes {} --steps {} --faults {} --seed {} --trace` replays this run message by message;",
        config.nodes, config.steps, config.faults, config.seed
    ));
    lines.push("      `ballot sim --help` explains every fault and check.".into());
    lines
}
