//! `ballot check --workload sched`: the scheduler under faults. The cluster and its node
//! nemesis are the kv check's; beside them run `ballot worker` processes and a worker nemesis
//! that kills workers, stops the leading one past its lease (the two-leader window), and
//! restarts one with a lease clock running ten times slow (it renews late and acts on a lease
//! the cluster has ended: the two-executor window).
//!
//! Each job is due every second; its command writes `check/JOB/SLOT/TOKEN` with the run's
//! fence. The verdict reads the store's whole history (a watch from revision 1):
//!
//! - no slot's result (a run record reaching succeeded or failed) is written twice;
//! - each slot's fenced writes are accepted in increasing token order;
//! - every slot due before the end has a run record (run, missed or skipped).

use super::args::{CheckArgs, SchedBreak};
use super::cluster::Cluster;
use super::history::{stamp, Clock, Recorder};
use super::monitor::{self, LeaderWatch};
use super::nemesis::Nemesis;
use super::rng::Rng;
use super::{wait_for_health, SetupError};
use crate::cmd::client::connect::Endpoints;
use crate::cmd::sched::run::{self as sched_run, Run, RunState};
use crate::cmd::sched::store::Store;
use crate::cmd::sched::{BREAK_UNFENCED_ENV, CLOCK_RATE_ENV};
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use ballot_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use ballot_proto::mvccpb::event::EventType;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

/// The workers' lease TTL, seconds.
const WORKER_TTL_S: u64 = 3;
/// After the heal, the workers keep going this long (a leader is elected, handed-on runs end).
const RECOVERY: Duration = Duration::from_secs(10);
/// Slots due this close to the end need not have a record yet.
const COVERAGE_SLACK_S: i64 = 3;
/// The slow clock of the skew fault: a second by the worker's clock is five real ones. The
/// worker renews its 3 s lease after 5 s, so in each 5 s it acts on an ended lease for 2 s.
const SLOW_CLOCK_RATE: f64 = 0.2;
/// How long the skew fault lasts: about three such windows.
const SKEW_HOLD: Duration = Duration::from_secs(16);

/// The worker processes.
struct Workers {
    exe: PathBuf,
    dir: PathBuf,
    endpoints: String,
    broken: bool,
    children: Mutex<Vec<Option<Child>>>,
}

impl Workers {
    fn name(index: usize) -> String {
        format!("w{}", index + 1)
    }

    /// Starts worker `index`; a slow-clock one (`clock_rate` < 1) only executes, so that the
    /// window it opens is always two executors' (the pause of the leader opens two leaders').
    fn start(&self, index: usize, clock_rate: f64) -> Result<(), String> {
        let name = Workers::name(index);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("{name}.log: {e}"))?;
        let bin_dir = self.exe.parent().unwrap_or(Path::new("."));
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(&self.exe);
        command
            .args(["worker", "--name", &name, "--slots", "8"])
            .args(["--ttl", &WORKER_TTL_S.to_string()])
            .env("BALLOT_ENDPOINTS", &self.endpoints)
            .env("PATH", path)
            .env(CLOCK_RATE_ENV, clock_rate.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.broken {
            command.env(BREAK_UNFENCED_ENV, "1");
        }
        if clock_rate < 1.0 {
            command.arg("--no-campaign");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start worker {name}: {e}"))?;
        self.children.lock().expect("not poisoned")[index] = Some(child);
        Ok(())
    }

    fn signal(&self, index: usize, signal: i32) {
        if let Some(child) = &self.children.lock().expect("not poisoned")[index] {
            // SAFETY: kill(2) on our own child's pid; it touches no memory.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    fn kill(&self, index: usize) {
        let mut children = self.children.lock().expect("not poisoned");
        if let Some(mut child) = children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGINT: the worker revokes its lease and exits, so its name is free at once; killed if
    /// it has not exited within 3 s.
    async fn interrupt(&self, index: usize) {
        self.signal(index, libc::SIGINT);
        for _ in 0..30 {
            let exited = match &mut self.children.lock().expect("not poisoned")[index] {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill(index);
    }

    fn stop_all(&self) {
        let count = self.children.lock().expect("not poisoned").len();
        for index in 0..count {
            self.signal(index, libc::SIGCONT);
            self.kill(index);
        }
    }

    /// Lines of the workers' logs that contain `needle`.
    fn count_in_logs(&self, needle: &str) -> usize {
        let count = self.children.lock().expect("not poisoned").len();
        (0..count)
            .map(|index| {
                std::fs::read_to_string(self.dir.join(format!("{}.log", Workers::name(index))))
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.contains(needle))
                    .count()
            })
            .sum()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The command each job runs: the slot's fenced write, which the verdict reads back.
const JOB_COMMAND: &str = "sleep 1.5; ballot put --fence \"$BALLOT_FENCE\" \
    \"check/$BALLOT_JOB/$BALLOT_SLOT/$BALLOT_FENCING_TOKEN\" \"$BALLOT_WORKER\" >/dev/null";

pub(super) async fn check(
    args: &CheckArgs,
    seed: u64,
    out: &Path,
    command: String,
) -> Result<bool, SetupError> {
    std::fs::create_dir_all(out.join("workers")).map_err(|e| format!("{}: {e}", out.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ballot binary: {e}"))?;
    println!("{command}");
    println!("  output in {}", out.display());
    let cluster = Arc::new(Cluster::start(&exe, args.nodes, &out.join("cluster")).await?);
    let endpoints = cluster.client_urls.join(",");
    let store = Store::new(Endpoints {
        list: cluster.client_urls.clone(),
        dial_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(5),
        group: 0,
    });
    for job in 0..args.jobs {
        let name = format!("j{}", job + 1);
        let added = Command::new(&exe)
            .args([
                "sched",
                "job",
                "add",
                &name,
                "--every",
                "1s",
                "--overlap",
                "allow",
            ])
            .args(["--command", JOB_COMMAND])
            .env("BALLOT_ENDPOINTS", &endpoints)
            .output()
            .map_err(|e| format!("ballot sched job add: {e}"))?;
        if !added.status.success() {
            return Err(format!(
                "ballot sched job add {name}: {}",
                String::from_utf8_lossy(&added.stderr)
            )
            .into());
        }
    }
    let workers = Arc::new(Workers {
        exe: exe.clone(),
        dir: out.join("workers"),
        endpoints: endpoints.clone(),
        broken: args.broken == Some(SchedBreak::Unfenced),
        children: Mutex::new((0..args.workers).map(|_| None).collect()),
    });
    for index in 0..args.workers as usize {
        workers.start(index, 1.0)?;
    }
    println!(
        "  {} nodes up; {} jobs due every second; {} workers (lease TTL {WORKER_TTL_S}s){}",
        cluster.len(),
        args.jobs,
        args.workers,
        if workers.broken {
            "; writing WITHOUT fences (broken on purpose)"
        } else {
            ""
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
    let (stop, stopped) = watch::channel(false);
    let node_nemesis = tokio::spawn(
        Nemesis::new(
            cluster.clone(),
            recorder.clone(),
            leaders.clone(),
            Rng::fork(seed, 0),
            args.faults.kinds(),
        )
        .run(stopped.clone()),
    );
    let worker_nemesis = tokio::spawn(worker_faults(
        workers.clone(),
        store.clone(),
        recorder.clone(),
        Rng::fork(seed, 1),
        stopped,
    ));
    tokio::time::sleep(args.duration).await;
    let _ = stop.send(true);
    let mut anomalies: Vec<String> = node_nemesis
        .await
        .unwrap_or_else(|e| vec![format!("the nemesis failed: {e}")])
        .into_iter()
        .map(|failure| format!("did not recover: {failure}"))
        .collect();
    let _ = worker_nemesis.await;
    println!("{} heal: every fault undone", stamp(recorder.now_ns()));
    anomalies.extend(wait_for_health(&cluster).await);
    tokio::time::sleep(RECOVERY).await;
    let end_s = sched_run::now_ms().div_euclid(1000);
    workers.stop_all();
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = monitor.await;

    let events = match replay(&store, &cluster.client_urls).await {
        Ok(events) => events,
        Err(error) => {
            anomalies.push(format!("did not recover: reading the history: {error}"));
            Vec::new()
        }
    };
    let verdict = judge(&events, end_s - COVERAGE_SLACK_S);
    let refused = workers.count_in_logs("the store refused this execution's write");
    let fenced_off = workers.count_in_logs("no longer leads");
    println!(
        "verdict, from {} events of the store's history:",
        events.len()
    );
    println!("  slots decided  {}", verdict.slots);
    for (state, count) in &verdict.final_states {
        println!("    {state:<11}  {count}");
    }
    println!("  hand-overs     {}", verdict.handed_on);
    println!("  refused        {refused} stale executor writes, {fenced_off} leaders fenced off");
    anomalies.extend(verdict.violations.iter().cloned());
    for anomaly in anomalies.iter().take(20) {
        println!("  ANOMALY: {anomaly}");
    }
    if anomalies.len() > 20 {
        println!("  ... and {} more", anomalies.len() - 20);
    }
    let stop_cluster = cluster.clone();
    let _ = tokio::task::spawn_blocking(move || stop_cluster.stop()).await;
    println!(
        "{}",
        if anomalies.is_empty() {
            "PASS: no slot's result accepted twice, tokens in order, every slot decided"
        } else {
            "FAIL"
        }
    );
    println!(
        "  worker logs    {}",
        out.join("workers").join("w*.log").display()
    );
    if anomalies.is_empty() {
        cluster.remove_data();
    }
    Ok(anomalies.is_empty())
}

/// The worker faults, each once per round in a seeded order.
#[derive(Clone, Copy, Debug)]
enum WorkerFault {
    Kill,
    PauseLeader,
    SlowClock,
}

/// One worker fault at a time: a quiet 1-3 s, then a fault held 4-8 s (the slow clock
/// [`SKEW_HOLD`]).
async fn worker_faults(
    workers: Arc<Workers>,
    store: Store,
    recorder: Arc<Recorder>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) {
    let count = workers.children.lock().expect("not poisoned").len();
    let mut deck: Vec<WorkerFault> = Vec::new();
    loop {
        let quiet = rng.duration(Duration::from_secs(1), Duration::from_secs(3));
        if tokio::time::timeout(quiet, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
        if deck.is_empty() {
            deck = vec![
                WorkerFault::Kill,
                WorkerFault::PauseLeader,
                WorkerFault::SlowClock,
            ];
            rng.shuffle(&mut deck);
        }
        let fault = deck.pop().expect("refilled");
        let hold = rng.duration(Duration::from_secs(4), Duration::from_secs(8));
        let leader = store
            .leader(sched_run::LEADER_ELECTION)
            .await
            .ok()
            .flatten()
            .and_then(|(name, _)| name.strip_prefix('w')?.parse::<usize>().ok())
            .map(|number| number.saturating_sub(1).min(count - 1));
        let now = || stamp(recorder.now_ns());
        match fault {
            WorkerFault::Kill => {
                let index = rng.index(count);
                let name = Workers::name(index);
                println!("{} worker fault: SIGKILL {name}", now());
                workers.kill(index);
                let _ = tokio::time::timeout(hold, stop.wait_for(|s| *s)).await;
                println!("{} worker heal: {name} started again", now());
                let _ = workers.start(index, 1.0);
            }
            WorkerFault::PauseLeader => {
                let index = leader.unwrap_or_else(|| rng.index(count));
                let name = Workers::name(index);
                println!(
                    "{} worker fault: SIGSTOP {name} (the leading worker) for {hold:?}",
                    now()
                );
                workers.signal(index, libc::SIGSTOP);
                let _ = tokio::time::timeout(hold, stop.wait_for(|s| *s)).await;
                println!("{} worker heal: SIGCONT {name}", now());
                workers.signal(index, libc::SIGCONT);
            }
            WorkerFault::SlowClock => {
                // An executor, not the leader: the window this opens is two executors'.
                let others: Vec<usize> = (0..count).filter(|i| Some(*i) != leader).collect();
                let index = others[rng.index(others.len())];
                let name = Workers::name(index);
                println!(
                    "{} worker fault: {name} restarted with its lease clock {}x slow, for {SKEW_HOLD:?}",
                    now(),
                    (1.0 / SLOW_CLOCK_RATE).round() as u32
                );
                workers.interrupt(index).await;
                let _ = workers.start(index, SLOW_CLOCK_RATE);
                let _ = tokio::time::timeout(SKEW_HOLD, stop.wait_for(|s| *s)).await;
                println!("{} worker heal: {name} restarted with a true clock", now());
                workers.interrupt(index).await;
                let _ = workers.start(index, 1.0);
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One PUT or DELETE of the history.
struct Event {
    revision: i64,
    key: String,
    value: Vec<u8>,
    put: bool,
}

/// Every event under `sched/runs/` and `check/` from revision 1 to now, in revision order.
async fn replay(store: &Store, urls: &[String]) -> Result<Vec<Event>, String> {
    let (now, _) = store
        .range_prefix("check/")
        .await
        .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for prefix in [sched_run::RUNS, "check/"] {
        let mut last_error = String::new();
        let mut done = false;
        for url in urls {
            match replay_prefix(url, prefix, now).await {
                Ok(mut found) => {
                    events.append(&mut found);
                    done = true;
                    break;
                }
                Err(error) => last_error = format!("{url}: {error}"),
            }
        }
        if !done {
            return Err(last_error);
        }
    }
    events.sort_by_key(|event| event.revision);
    Ok(events)
}

/// The events under `prefix` from revision 1 until the watch reports progress at `until` or
/// later (a progress answer comes only once every earlier event was sent).
async fn replay_prefix(url: &str, prefix: &str, until: i64) -> Result<Vec<Event>, String> {
    let channel = super::cluster::dial(url).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let create = WatchCreateRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: ballot_storage::mvcc::types::prefix_end(prefix.as_bytes()),
        start_revision: 1,
        ..Default::default()
    };
    for request in [
        watch_request::RequestUnion::CreateRequest(create),
        watch_request::RequestUnion::ProgressRequest(Default::default()),
    ] {
        sender
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut stream = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let mut events = Vec::new();
    let read = async {
        loop {
            let Some(response) = stream
                .message()
                .await
                .map_err(|s| s.message().to_string())?
            else {
                return Err("the watch ended".to_string());
            };
            if response.canceled {
                return Err(format!(
                    "the watch was cancelled: {}",
                    response.cancel_reason
                ));
            }
            let progress = response.events.is_empty() && !response.created;
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                events.push(Event {
                    revision: kv.mod_revision,
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: kv.value.to_vec(),
                    put: event.r#type == EventType::Put as i32,
                });
            }
            if progress {
                if response.header.is_some_and(|h| h.revision >= until) {
                    return Ok(());
                }
                let request = watch_request::RequestUnion::ProgressRequest(Default::default());
                let _ = sender
                    .send(WatchRequest {
                        request_union: Some(request),
                    })
                    .await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| "the history did not arrive within 60 s".to_string())??;
    Ok(events)
}

/// A run: its job and slot.
type RunId = (String, String);
/// A result accepted: at which revision, from which worker, with which token.
type Accepted = (i64, String, i64);

/// What the history shows.
#[derive(Debug, Default)]
struct Verdict {
    /// Slots that got a run record.
    slots: usize,
    /// Each slot's last recorded state, counted.
    final_states: BTreeMap<&'static str, usize>,
    /// Runs handed from one worker to another.
    handed_on: usize,
    violations: Vec<String>,
}

/// Judges the history: results written once per slot, tokens in order, every slot due up to
/// `due_until_s` recorded.
fn judge(events: &[Event], due_until_s: i64) -> Verdict {
    let mut verdict = Verdict::default();
    let mut results: BTreeMap<RunId, Vec<Accepted>> = BTreeMap::new();
    let mut last_state: BTreeMap<(String, String), (RunState, u32)> = BTreeMap::new();
    let mut tokens: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut seen_slots: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for event in events.iter().filter(|event| event.put) {
        if let Some(rest) = event.key.strip_prefix(sched_run::RUNS) {
            let Ok(run) = serde_json::from_slice::<Run>(&event.value) else {
                verdict
                    .violations
                    .push(format!("{} holds a run that does not parse", event.key));
                continue;
            };
            let Some((job, slot)) = rest.split_once('/') else {
                continue;
            };
            let id = (job.to_string(), slot.to_string());
            if let Ok(due_s) = slot.parse::<i64>() {
                seen_slots.entry(job.to_string()).or_default().insert(due_s);
            }
            if matches!(run.state, RunState::Succeeded | RunState::Failed) {
                results.entry(id.clone()).or_default().push((
                    event.revision,
                    run.worker.clone(),
                    run.token,
                ));
            }
            if let Some((_, attempt)) = last_state.get(&id) {
                if *attempt >= 1 && run.attempt > *attempt && run.state == RunState::Assigned {
                    verdict.handed_on += 1;
                }
            }
            last_state.insert(id, (run.state, run.attempt));
        } else if let Some(rest) = event.key.strip_prefix("check/") {
            // check/JOB/SLOT/TOKEN
            let mut parts = rest.rsplitn(2, '/');
            let (Some(token), Some(slot_path)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(token) = token.parse::<i64>() else {
                continue;
            };
            let Some((job, slot)) = slot_path.split_once('/') else {
                continue;
            };
            let id = (job.to_string(), slot.to_string());
            let highest = tokens.entry(id).or_insert(token);
            if token < *highest {
                verdict.violations.push(format!(
                    "{job}/{slot}: a write with token {token} was accepted at revision {} after one with token {highest}: an execution that had lost the run still wrote",
                    event.revision
                ));
            }
            *highest = (*highest).max(token);
        }
    }
    for ((job, slot), written) in &results {
        if written.len() > 1 {
            let list: Vec<String> = written
                .iter()
                .map(|(revision, worker, token)| {
                    format!("{worker} (token {token}) at revision {revision}")
                })
                .collect();
            verdict.violations.push(format!(
                "{job}/{slot}: its result was accepted {} times: {}",
                written.len(),
                list.join(", ")
            ));
        }
    }
    verdict.slots = last_state.len();
    for (state, _) in last_state.values() {
        *verdict.final_states.entry(state.name()).or_default() += 1;
    }
    for (job, slots) in &seen_slots {
        let (Some(first), Some(_)) = (slots.first(), slots.last()) else {
            continue;
        };
        let missing: Vec<i64> = (*first..=due_until_s)
            .filter(|s| !slots.contains(s))
            .collect();
        if !missing.is_empty() {
            verdict.violations.push(format!(
                "{job}: {} slots due before the end were neither run nor recorded as missed or \
                 skipped (first {})",
                missing.len(),
                missing[0]
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_event(
        revision: i64,
        job: &str,
        slot: i64,
        state: RunState,
        worker: &str,
        attempt: u32,
        token: i64,
    ) -> Event {
        let run = Run {
            state,
            worker: worker.into(),
            worker_lease: 1,
            attempt,
            token,
            ..Run::queued(job, sched_run::slot_name(slot), slot * 1000, 0, 1)
        };
        Event {
            revision,
            key: sched_run::run_key(job, &run.slot),
            value: run.to_json(),
            put: true,
        }
    }

    fn write_event(revision: i64, job: &str, slot: i64, token: i64) -> Event {
        Event {
            revision,
            key: format!("check/{job}/{}/{token}", sched_run::slot_name(slot)),
            value: b"w".to_vec(),
            put: true,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let events = vec![
            run_event(1, "j", 10, RunState::Assigned, "w1", 1, 0),
            run_event(2, "j", 10, RunState::Running, "w1", 1, 0),
            write_event(3, "j", 10, 2),
            run_event(4, "j", 10, RunState::Succeeded, "w1", 1, 2),
            run_event(5, "j", 11, RunState::Missed, "", 0, 0),
        ];
        let verdict = judge(&events, 11);
        assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
        assert_eq!(verdict.slots, 2);
    }

    #[test]
    fn a_second_result_a_stale_token_and_a_missing_slot_are_caught() {
        let events = vec![
            run_event(1, "j", 10, RunState::Running, "w1", 1, 0),
            run_event(2, "j", 10, RunState::Assigned, "w2", 2, 0),
            write_event(3, "j", 10, 5),
            write_event(4, "j", 10, 3),
            run_event(5, "j", 10, RunState::Succeeded, "w2", 2, 5),
            run_event(6, "j", 10, RunState::Succeeded, "w1", 1, 3),
            run_event(7, "j", 12, RunState::Missed, "", 0, 0),
        ];
        let verdict = judge(&events, 12);
        let text = verdict.violations.join("\n");
        assert!(text.contains("accepted 2 times"), "{text}");
        assert!(
            text.contains("token 3 was accepted at revision 4 after one with token 5"),
            "{text}"
        );
        assert!(text.contains("1 slots due before the end"), "{text}");
        assert_eq!(verdict.handed_on, 1);
    }
}
