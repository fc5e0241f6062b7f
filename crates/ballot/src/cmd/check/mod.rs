//! `ballot check`: a Jepsen-style test of a real local cluster. Starts `ballot server`
//! processes whose peer traffic passes through fault-injecting proxies, runs concurrent clients
//! while a nemesis injects faults, heals, reads every key one last time, and checks the history.
//!
//! One module per part, each owning one thing:
//!
//! - `args`: flags, the fault vocabulary, `--help`.
//! - `cluster`: the processes, their proxies and member ids, the admin calls.
//! - `proxy`: the peer proxies and the table of cut links.
//! - `nemesis`: the seeded fault schedule, injection and heal (its fault model is written there).
//! - `monitor`: who leads, and nodes that die on their own.
//! - `workload`: the clients and the final read; how an answer becomes an outcome.
//! - `history`: the record of the run and `history.json`.
//! - `verdict`: linearizability per key and lost acknowledged writes.
//! - `report`: `report.html`.
//!
//! This file runs the phases in order and decides the exit status.

mod args;
mod cluster;
mod history;
mod monitor;
mod nemesis;
mod proxy;
mod report;
mod rng;
mod sched;
mod verdict;
mod workload;

pub use args::CheckArgs;

use ballot_sim::linearizability::Verdict;
use cluster::Cluster;
use history::{stamp, Clock, Counts, HistoryFile, Meta, Recorder};
use monitor::LeaderWatch;
use nemesis::Nemesis;
use rng::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verdict::Judgement;
use workload::Workload;

/// After the heal, the clients keep working this long before the final read.
const RECOVERY: Duration = Duration::from_secs(5);
/// Every node must report a leader this soon after the heal.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Keys listed one per line in the summary; more are summed up (report.html lists all).
const KEYS_LISTED_MAX: usize = 12;

/// Why a run could not be judged: bad flags or a cluster that would not start. Exit 2.
struct SetupError(String);

impl<T: Into<String>> From<T> for SetupError {
    fn from(text: T) -> Self {
        SetupError(text.into())
    }
}

pub fn run(args: CheckArgs) -> ExitCode {
    if let Err(error) = args.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("ballot-check").join(format!("{}-seed-{seed}", unix_seconds()))
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = check(&args, seed, &out), if args.workload == args::WorkloadKind::Kv => Some(outcome),
            outcome = sched::check(&args, seed, &out, sched_command(&args, seed)), if args.workload == args::WorkloadKind::Sched => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the runtime drops every task and with them the cluster, which continues paused
    // nodes and stops every node.
    drop(runtime);
    match outcome {
        Some(Ok(true)) => ExitCode::SUCCESS,
        Some(Ok(false)) => ExitCode::from(1),
        Some(Err(SetupError(error))) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        None => {
            eprintln!(
                "interrupted; the cluster is stopped, its logs are in {}",
                out.display()
            );
            ExitCode::from(130)
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64 % 1_000_000)
}

/// The command that repeats this run's schedule, every flag spelled out.
fn canonical_command(args: &CheckArgs, seed: u64) -> String {
    format!(
        "ballot check --nodes {} --duration {} --faults {}{} --keys {} --clients {} --rate {} --seed {seed}{}",
        args.nodes,
        duration_text(args.duration),
        args.faults,
        match args.groups {
            1 => String::new(),
            groups => format!(" --groups {groups}"),
        },
        args.keys(),
        args.clients(),
        args.rate,
        if args.serializable {
            " --serializable"
        } else {
            ""
        }
    )
}

/// The command that repeats a `--workload sched` run's schedule.
fn sched_command(args: &CheckArgs, seed: u64) -> String {
    format!(
        "ballot check --workload sched --nodes {} --duration {} --faults {} --workers {} --jobs {} --seed {seed}{}",
        args.nodes,
        duration_text(args.duration),
        args.faults,
        args.workers,
        args.jobs,
        if args.broken.is_some() { " --break unfenced" } else { "" }
    )
}

fn duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 60 && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{:.0}s", duration.as_secs_f64())
    }
}

/// Runs every phase; `Ok(true)` when the history passed every check.
async fn check(args: &CheckArgs, seed: u64, out: &Path) -> Result<bool, SetupError> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ballot binary: {e}"))?;
    let command = canonical_command(args, seed);
    println!("{command}");
    println!("  output in {}", out.display());
    let cluster = Arc::new(Cluster::start(&exe, args.nodes, &out.join("cluster")).await?);
    println!(
        "  {} nodes up, each behind a peer proxy; {} clients pinned round-robin; reads {}",
        cluster.len(),
        args.clients(),
        if args.serializable {
            "SERIALIZABLE (unsafe on purpose)"
        } else {
            "linearizable"
        }
    );
    let recorder = Arc::new(Recorder::new(Clock::start()));
    let leaders = Arc::new(LeaderWatch::default());
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(monitor::run(
        cluster.clone(),
        recorder.clone(),
        leaders.clone(),
        monitor_stop.clone(),
    ));
    if args.groups > 1 {
        cluster::create_groups(&cluster, args.groups - 1, args.group_replicas()).await?;
        println!(
            "  {} groups: group 0 and {} created with {} replicas each; key k in group k mod {}",
            args.groups,
            args.groups - 1,
            args.group_replicas(),
            args.groups
        );
    }
    let workload = Arc::new(Workload::new(
        recorder.clone(),
        args.keys(),
        args.groups,
        args.serializable,
        args.client_interval(),
    ));
    let workers: Vec<_> = (0..args.clients())
        .map(|worker| {
            tokio::spawn(workload::worker(
                workload.clone(),
                cluster.clone(),
                worker,
                worker % cluster.len(),
                Rng::fork(seed, 1 + worker as u64),
            ))
        })
        .collect();
    let (stop_nemesis, nemesis_stopped) = tokio::sync::watch::channel(false);
    let nemesis = tokio::spawn(
        Nemesis::new(
            cluster.clone(),
            recorder.clone(),
            leaders.clone(),
            Rng::fork(seed, 0),
            args.faults.kinds(),
        )
        .run(nemesis_stopped),
    );

    chaos(args.duration, &recorder, &leaders, &cluster).await;
    let _ = stop_nemesis.send(true);
    let mut anomalies: Vec<String> = nemesis
        .await
        .unwrap_or_else(|e| vec![format!("the nemesis failed: {e}")])
        .into_iter()
        .map(|failure| format!("did not recover: {failure}"))
        .collect();
    let heal_ns = recorder.now_ns();
    println!("{} heal: every fault undone", stamp(heal_ns));
    anomalies.extend(wait_for_health(&cluster).await);
    tokio::time::sleep(RECOVERY).await;
    workload.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    match workload::final_read(&workload, &cluster).await {
        Ok((nodes, values)) => println!(
            "{} final read of {} keys from {}",
            stamp(recorder.now_ns()),
            values.len(),
            nodes.join(", ")
        ),
        Err(error) => anomalies.push(format!("did not recover: {error}")),
    }
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = monitor.await;
    for node in 0..cluster.len() {
        for panic in cluster.panics_logged(node) {
            recorder.incident(
                cluster.name(node),
                &format!("its log shows a panic: {panic}"),
            );
        }
    }
    let meta = Meta {
        command,
        seed,
        nodes: args.nodes,
        clients: args.clients(),
        keys: args.keys(),
        groups: args.groups,
        duration_s: args.duration.as_secs_f64(),
        faults: args.faults.to_string(),
        serializable: args.serializable,
        heal_ns,
        end_ns: recorder.now_ns(),
    };
    let history = recorder.finish(meta);
    let stop_cluster = cluster.clone();
    let stopped = tokio::task::spawn_blocking(move || stop_cluster.stop());
    println!("checking {} operations...", history.operations.len());
    let started = Instant::now();
    let history = Arc::new(history);
    let judged = history.clone();
    let judgement = tokio::task::spawn_blocking(move || verdict::judge(&judged))
        .await
        .map_err(|e| format!("the checker failed: {e}"))??;
    let check_seconds = started.elapsed().as_secs_f64();
    let _ = stopped.await;
    anomalies.extend(judgement_anomalies(&history, &judgement));
    let history_path = out.join("history.json");
    let report_path = out.join("report.html");
    history.write(&history_path)?;
    std::fs::write(
        &report_path,
        report::render(&history, &judgement, &anomalies),
    )
    .map_err(|e| format!("{}: {e}", report_path.display()))?;
    print_summary(&history, &judgement, &anomalies, check_seconds);
    println!("  history        {}", history_path.display());
    println!("  report         {}", report_path.display());
    println!(
        "  node logs      {}",
        out.join("cluster").join("n*").join("server.log").display()
    );
    if anomalies.is_empty() {
        cluster.remove_data();
    }
    Ok(anomalies.is_empty())
}

/// Waits out the chaos phase, printing the operation counts every [`PROGRESS_INTERVAL`].
async fn chaos(duration: Duration, recorder: &Recorder, leaders: &LeaderWatch, cluster: &Cluster) {
    let end = tokio::time::Instant::now() + duration;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(PROGRESS_INTERVAL)).await;
        let counts = recorder.counts();
        let leader = match leaders.leader() {
            Some(node) => format!("{} leads (term {})", cluster.name(node), leaders.term()),
            None => "no leader known".to_string(),
        };
        println!(
            "{} operations {}; {leader}",
            stamp(recorder.now_ns()),
            counts_text(&counts)
        );
    }
}

fn counts_text(counts: &Counts) -> String {
    format!(
        "{}: {} ok, {} failed, {} indeterminate",
        grouped(counts.total()),
        grouped(counts.ok),
        grouped(counts.failed),
        grouped(counts.unknown)
    )
}

/// Every node must be running and know a leader; one line per node that does not.
async fn wait_for_health(cluster: &Cluster) -> Vec<String> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let mut problems = Vec::new();
    for node in 0..cluster.len() {
        loop {
            if cluster.healthy(node).await {
                break;
            }
            if Instant::now() >= deadline {
                let state = if cluster.is_running(node) {
                    "runs but reports no leader"
                } else {
                    "is not running"
                };
                problems.push(format!(
                    "did not recover: {} {state} {HEALTH_DEADLINE:?} after the heal; its log ends with:\n{}",
                    cluster.name(node),
                    cluster.log_tail(node)
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    problems
}

/// `k1, k4, k9` or `k1, k4, ... and 40 more`.
fn key_list<'a>(keys: impl Iterator<Item = &'a verdict::KeyVerdict>) -> (usize, String) {
    let names: Vec<String> = keys.map(|k| format!("k{}", k.key)).collect();
    let mut text = names
        .iter()
        .take(KEYS_LISTED_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > KEYS_LISTED_MAX {
        text.push_str(&format!(" and {} more", names.len() - KEYS_LISTED_MAX));
    }
    (names.len(), text)
}

fn judgement_anomalies(history: &HistoryFile, judgement: &Judgement) -> Vec<String> {
    let mut anomalies = Vec::new();
    let (count, keys) = key_list(judgement.not_linearizable());
    if count > 0 {
        anomalies.push(format!("not linearizable: {count} keys ({keys})"));
    }
    let (count, keys) = key_list(judgement.inconclusive());
    if count > 0 {
        anomalies.push(format!(
            "inconclusive: {count} keys ({keys}); the search spent its budget"
        ));
    }
    if let Some(first) = judgement.lost_writes.first() {
        anomalies.push(format!(
            "{} lost acknowledged writes; the first: {}",
            judgement.lost_writes.len(),
            first.describe()
        ));
    }
    for incident in &history.incidents {
        let first_line = incident.description.lines().next().unwrap_or_default();
        anomalies.push(format!(
            "incident at {:.1} s: {} {first_line}",
            incident.time_ns as f64 / 1e9,
            incident.node
        ));
    }
    anomalies
}

fn print_summary(
    history: &HistoryFile,
    judgement: &Judgement,
    anomalies: &[String],
    check_seconds: f64,
) {
    let mut counts = Counts::default();
    for op in &history.operations {
        counts.add(op.outcome);
    }
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    for fault in &history.faults {
        *faults.entry(&fault.kind).or_default() += 1;
    }
    let fault_list: Vec<String> = faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("\nsummary (seed {})", history.meta.seed);
    println!("  operations     {}", counts_text(&counts));
    println!(
        "  faults         {} injected{}{}",
        history.faults.len(),
        if fault_list.is_empty() { "" } else { ": " },
        fault_list.join(", ")
    );
    println!("  leader changes {}", history.leaders.len());
    let linearizable = judgement
        .keys
        .iter()
        .filter(|k| k.verdict == Verdict::Linearizable)
        .count();
    println!(
        "  keys           {} checked in {check_seconds:.1} s: {linearizable} linearizable",
        judgement.keys.len()
    );
    let listed = judgement.keys.len() <= KEYS_LISTED_MAX;
    let mut explained = false;
    for key in &judgement.keys {
        match &key.verdict {
            Verdict::Linearizable if listed => {
                println!(
                    "    k{}: linearizable ({} operations)",
                    key.key, key.operations
                )
            }
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation, .. } => {
                println!(
                    "    k{}: NOT LINEARIZABLE ({} operations)",
                    key.key, key.operations
                );
                // The first explanation in full (times in ns since the run began); the others
                // are in report.html.
                if !explained {
                    explained = true;
                    for line in explanation.lines() {
                        println!("      {line}");
                    }
                }
            }
            Verdict::Inconclusive { explored, .. } => println!(
                "    k{}: INCONCLUSIVE after {explored} configurations ({} operations)",
                key.key, key.operations
            ),
        }
    }
    println!("  lost writes    {}", judgement.lost_writes.len());
    for lost in judgement.lost_writes.iter().take(KEYS_LISTED_MAX) {
        println!("    {}", lost.describe());
    }
    println!("  incidents      {}", history.incidents.len());
    if anomalies.is_empty() {
        println!("  verdict        PASS: linearizable, no acknowledged write lost");
    } else {
        println!("  verdict        FAIL: {} anomalies", anomalies.len());
        for anomaly in anomalies {
            println!("    {}", anomaly.lines().next().unwrap_or_default());
        }
    }
}

/// `12345` as `12,345`.
fn grouped(number: u64) -> String {
    let digits = number.to_string();
    let mut text = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_print_as_people_write_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(duration_text(Duration::from_secs(600)), "10m");
        assert_eq!(duration_text(Duration::from_secs(45)), "45s");
    }
}
