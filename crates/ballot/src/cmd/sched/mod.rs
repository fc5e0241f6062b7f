//! `ballot sched` and `ballot worker`: the distributed job scheduler of seed 000 §2.3, built on
//! the store's leases, its Election service and fenced writes, and nothing else.
//!
//! Workers register under leases and elect a leader; the leader decides which slots are due
//! and hands each run to a worker; the worker takes the run's lock and runs the command. Every
//! write either makes is fenced (the leader's by its election, the worker's by the run's lock),
//! so the two-leader and two-executor windows that make other schedulers run jobs twice cannot
//! get a second result accepted. docs/design/scheduler.md has the keys, the states of a run and
//! what happens when each party dies.

pub mod job;
pub mod leader;
pub mod mirror;
pub mod plan;
pub mod run;
pub mod store;
pub mod worker;

use crate::cmd::client::connect::{parse_duration, ConnectArgs, Endpoints};
use crate::cmd::client::output::{self, OutputFormat};
use crate::cmd::client::ClientError;
use clap::{Args, Subcommand};
use job::{Job, Misfire, Overlap, Route, Schedule};
use run::{now_ms, Run, RunState, Worker};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use store::{Store, StoreError};

#[derive(Args, Debug)]
pub struct SchedArgs {
    #[command(subcommand)]
    pub command: SchedCommand,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum SchedCommand {
    /// Jobs: add, list, show, pause, resume, rm, run-now.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// The leader, the workers and their load, and each job's next slot.
    Status,
    /// Runs, newest last: slot, state, worker, attempt, fencing token, exit, duration.
    Runs {
        /// Only this job's runs.
        job: Option<String>,
        /// Only runs in this state (queued, assigned, running, succeeded, failed, missed,
        /// skipped).
        #[arg(long)]
        state: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Add a job: when it is due, what it runs, and its policies.
    #[command(after_help = "Examples:\n  \
        ballot sched job add backup --cron '0 30 2 * * *' --tz Europe/Berlin --command 'backup.sh'\n  \
        ballot sched job add ping --every 10s --command 'curl -fsS http://svc/health' --timeout 5s\n  \
        ballot sched job add report --after backup --command 'report.sh' --retries 3 --backoff 30s\n\n\
        The command runs with sh -c on the worker it is handed to, with BALLOT_JOB, BALLOT_SLOT,\n\
        BALLOT_ATTEMPT, BALLOT_WORKER, BALLOT_FENCING_TOKEN and BALLOT_FENCE in its environment;\n\
        `ballot put --fence \"$BALLOT_FENCE\" KEY VALUE` writes only while the run is still its.")]
    Add(AddArgs),
    /// List the jobs.
    List,
    /// Show one job as stored.
    Show { name: String },
    /// Stop dispatching a job's slots (runs in flight finish).
    Pause { name: String },
    /// Dispatch a job's slots again, from the next one due (slots due while it was paused are
    /// not run).
    Resume { name: String },
    /// Remove a job and its runs' history (refused while other jobs run after it).
    Rm { name: String },
    /// Run a job once now, beside its schedule.
    RunNow { name: String },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The job's name: letters, digits, '.', '_' and '-'.
    pub name: String,
    /// A cron expression: 6 fields (second minute hour day-of-month month day-of-week) or 5
    /// (minute first, second 0); L, W and # as croner reads them.
    #[arg(long, group = "when")]
    pub cron: Option<String>,
    /// The time zone --cron is read in (an IANA name).
    #[arg(long, default_value = "UTC", requires = "cron")]
    pub tz: String,
    /// A fixed period (whole seconds: 1s, 30s, 5m, 1h); slots are its multiples since the epoch.
    #[arg(long, group = "when", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Run after these jobs succeed, for the same slot, on the same worker.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub after: Vec<String>,
    /// The command, run with sh -c.
    #[arg(long)]
    pub command: String,
    /// Kill a run still going after this long (it counts as failed); none by default.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Try a failed run again this many times, on the same worker.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// The pause before the first retry; it doubles for each one after (at most 5m).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub backoff: Duration,
    /// Which worker gets each run.
    #[arg(long, value_enum, default_value_t = Route::RoundRobin)]
    pub route: Route,
    /// Slots that passed while nobody could dispatch them: skip records each as missed,
    /// run-once runs the latest.
    #[arg(long, value_enum, default_value_t = Misfire::Skip)]
    pub misfire: Misfire,
    /// A slot due while the previous run is still going: skip it, queue it, or allow both.
    #[arg(long, value_enum, default_value_t = Overlap::Skip)]
    pub overlap: Overlap,
    /// Add it paused.
    #[arg(long)]
    pub paused: bool,
}

/// `ballot worker`: executes runs and campaigns to lead the scheduler.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot worker --name w1 --slots 4 --endpoints http://127.0.0.1:2379,http://127.0.0.1:22379\n\n\
    Every worker campaigns to lead; the leader dispatches and the others execute (a leader\n\
    that is the only worker executes too). Ctrl-C revokes the worker's lease, so its runs are\n\
    handed on at once; a worker that dies is noticed when its lease expires (--ttl).")]
pub struct WorkerArgs {
    /// This worker's name, unique among the workers (a second process with the same name
    /// waits until the first one's lease is gone).
    #[arg(long)]
    pub name: String,
    /// How many runs it executes at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub slots: u32,
    /// The TTL of the worker's lease, in seconds: how long after it dies its runs are handed
    /// on, and how long a leader that cannot reach the cluster keeps leading.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    /// Only execute; never lead.
    #[arg(long)]
    pub no_campaign: bool,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

/// Set (to anything) in a worker's environment: its leader and executors write without their
/// fences. `ballot check --break unfenced` only; the check must catch it.
pub const BREAK_UNFENCED_ENV: &str = "BALLOT_SCHED_BREAK_UNFENCED";
/// A worker's lease clock rate against real time (`ballot check`'s clock-skew fault): 0.1
/// renews ten times too late and believes in a lease the cluster has ended.
pub const CLOCK_RATE_ENV: &str = "BALLOT_CLOCK_RATE";

fn clock_rate() -> Result<f64, ClientError> {
    match std::env::var(CLOCK_RATE_ENV) {
        Err(_) => Ok(1.0),
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .filter(|rate| *rate > 0.0 && rate.is_finite())
            .ok_or_else(|| {
                ClientError::Usage(format!("{CLOCK_RATE_ENV}={text}: give a positive number"))
            }),
    }
}

pub async fn run_worker(args: WorkerArgs) -> Result<(), ClientError> {
    job::check_name(&args.name).map_err(|error| {
        ClientError::Usage(error.to_string().replace("job name", "worker name"))
    })?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let config = worker::Config {
        name: args.name,
        slots: args.slots,
        ttl_s: args.ttl,
        campaign: !args.no_campaign,
        fenced: std::env::var_os(BREAK_UNFENCED_ENV).is_none(),
        clock_rate: clock_rate()?,
    };
    worker::run(config, Store::new(endpoints)).await
}

pub async fn run(args: SchedArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    let store = Store::new(Endpoints::from_args(&args.connection)?);
    match args.command {
        SchedCommand::Job { command } => job_command(&store, command, format).await,
        SchedCommand::Status => status(&store, format).await,
        SchedCommand::Runs { job, state, limit } => runs(&store, job, state, limit, format).await,
    }
}

fn store_error(error: StoreError) -> ClientError {
    ClientError::Local(error.to_string())
}

/// The jobs as stored, with each key's mod revision, and the revision they were read at.
async fn read_jobs(store: &Store) -> Result<(i64, BTreeMap<String, (Job, i64)>), ClientError> {
    let (revision, kvs) = store.range_prefix(run::JOBS).await.map_err(store_error)?;
    let mut jobs = BTreeMap::new();
    for kv in kvs {
        let name = String::from_utf8_lossy(&kv.key[run::JOBS.len()..]).into_owned();
        let job: Job = serde_json::from_slice(&kv.value).map_err(|error| {
            ClientError::Local(format!("the stored job {name} does not parse: {error}"))
        })?;
        jobs.insert(name, (job, kv.mod_revision));
    }
    Ok((revision, jobs))
}

fn unknown_job(name: &str) -> ClientError {
    ClientError::Local(format!(
        "no job named {name} (ballot sched job list shows them)"
    ))
}

/// A write that lost a race with another change: the caller says what to do.
fn raced(what: &str) -> ClientError {
    ClientError::Local(format!(
        "{what}: the jobs changed while this command ran; nothing was written, run it again"
    ))
}

async fn job_command(
    store: &Store,
    command: JobCommand,
    format: OutputFormat,
) -> Result<(), ClientError> {
    match command {
        JobCommand::Add(args) => add(store, args).await,
        JobCommand::List => {
            let (_, jobs) = read_jobs(store).await?;
            let jobs: Vec<&Job> = jobs.values().map(|(job, _)| job).collect();
            if format == OutputFormat::Json {
                return print_json(&jobs);
            }
            let mut text = String::new();
            for job in jobs {
                let _ = writeln!(
                    text,
                    "{}\t{}{}\t{}",
                    job.name,
                    describe_schedule(job),
                    if job.paused { " (paused)" } else { "" },
                    job.command
                );
            }
            output::write_stdout(text.as_bytes())
        }
        JobCommand::Show { name } => {
            let (_, jobs) = read_jobs(store).await?;
            let (job, _) = jobs.get(&name).ok_or_else(|| unknown_job(&name))?;
            print_json(job)
        }
        JobCommand::Pause { name } => set_paused(store, &name, true).await,
        JobCommand::Resume { name } => set_paused(store, &name, false).await,
        JobCommand::Rm { name } => remove(store, &name).await,
        JobCommand::RunNow { name } => run_now(store, &name).await,
    }
}

fn describe_schedule(job: &Job) -> String {
    match &job.schedule {
        Schedule::After => format!("after {}", job.after.join(",")),
        schedule => schedule.to_string(),
    }
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), ClientError> {
    let mut text = serde_json::to_string_pretty(value).expect("serialises");
    text.push('\n');
    output::write_stdout(text.as_bytes())
}

async fn add(store: &Store, args: AddArgs) -> Result<(), ClientError> {
    let schedule = match (&args.cron, args.every) {
        (Some(expression), None) => Schedule::Cron {
            expression: expression.clone(),
            zone: args.tz.clone(),
        },
        (None, Some(every)) => {
            if every.subsec_nanos() != 0 || every.is_zero() {
                return Err(ClientError::Usage(format!(
                    "--every {every:?}: give whole seconds, at least 1s"
                )));
            }
            Schedule::Every {
                seconds: every.as_secs(),
            }
        }
        _ => Schedule::After,
    };
    let job = Job {
        name: args.name.clone(),
        schedule,
        command: args.command,
        timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
        retries: args.retries,
        backoff_ms: args.backoff.as_millis() as u64,
        after: args.after,
        route: args.route,
        misfire: args.misfire,
        overlap: args.overlap,
        paused: args.paused,
        added_s: now_ms().div_euclid(1000),
    };
    let (revision, stored) = read_jobs(store).await?;
    if stored.contains_key(&job.name) {
        return Err(ClientError::Local(format!(
            "a job named {} exists; remove it first (ballot sched job rm {})",
            job.name, job.name
        )));
    }
    let existing: BTreeMap<String, Job> = stored
        .iter()
        .map(|(n, (j, _))| (n.clone(), j.clone()))
        .collect();
    job.check(&existing)
        .map_err(|error| ClientError::Usage(error.to_string()))?;
    let key = run::job_key(&job.name);
    let mut compares = vec![store::absent(&key), jobs_unchanged_since(revision)];
    for upstream in &job.after {
        compares.push(store::unchanged(
            run::job_key(upstream).as_bytes(),
            stored[upstream].1,
        ));
    }
    let txn = store::txn(
        compares,
        vec![store::put(
            &key,
            serde_json::to_vec(&job).expect("serialises"),
            0,
        )],
    );
    if !store.txn(txn, None).await.map_err(store_error)?.succeeded {
        return Err(raced(&format!("adding {}", job.name)));
    }
    println!("job {} added: {}", job.name, describe_schedule(&job));
    Ok(())
}

/// A compare that no job was added or changed after `revision`.
fn jobs_unchanged_since(revision: i64) -> ballot_proto::etcdserverpb::Compare {
    let mut compare = store::unchanged(run::JOBS.as_bytes(), revision + 1);
    compare.result = ballot_proto::etcdserverpb::compare::CompareResult::Less as i32;
    compare.range_end = ballot_storage::mvcc::types::prefix_end(run::JOBS.as_bytes());
    compare
}

async fn set_paused(store: &Store, name: &str, paused: bool) -> Result<(), ClientError> {
    let (_, jobs) = read_jobs(store).await?;
    let (job, revision) = jobs.get(name).ok_or_else(|| unknown_job(name))?;
    let mut job = job.clone();
    job.paused = paused;
    let key = run::job_key(name);
    let mut ops = vec![store::put(
        &key,
        serde_json::to_vec(&job).expect("serialises"),
        0,
    )];
    if !paused {
        // From the next slot due: the ones that passed while it was paused are not run.
        ops.push(store::put(
            &run::cursor_key(name),
            now_ms().div_euclid(1000).to_string().into_bytes(),
            0,
        ));
    }
    let txn = store::txn(vec![store::unchanged(key.as_bytes(), *revision)], ops);
    if !store.txn(txn, None).await.map_err(store_error)?.succeeded {
        return Err(raced(&format!("changing {name}")));
    }
    println!("job {name} {}", if paused { "paused" } else { "resumed" });
    Ok(())
}

async fn remove(store: &Store, name: &str) -> Result<(), ClientError> {
    let (revision, jobs) = read_jobs(store).await?;
    let (_, job_revision) = jobs.get(name).ok_or_else(|| unknown_job(name))?;
    let dependents: Vec<&str> = jobs
        .values()
        .filter(|(job, _)| job.after.iter().any(|upstream| upstream == name))
        .map(|(job, _)| job.name.as_str())
        .collect();
    if !dependents.is_empty() {
        return Err(ClientError::Local(format!(
            "jobs run after {name}: {}; remove them first",
            dependents.join(", ")
        )));
    }
    let key = run::job_key(name);
    let txn = store::txn(
        vec![
            store::unchanged(key.as_bytes(), *job_revision),
            jobs_unchanged_since(revision),
        ],
        vec![
            store::delete(&key),
            store::delete(&run::cursor_key(name)),
            store::delete_prefix(&run::runs_prefix(name)),
        ],
    );
    if !store.txn(txn, None).await.map_err(store_error)?.succeeded {
        return Err(raced(&format!("removing {name}")));
    }
    println!("job {name} removed");
    Ok(())
}

async fn run_now(store: &Store, name: &str) -> Result<(), ClientError> {
    let (_, jobs) = read_jobs(store).await?;
    let (job, job_revision) = jobs.get(name).ok_or_else(|| unknown_job(name))?;
    let now = now_ms();
    for counter in 1..=100 {
        let slot = run::manual_slot_name(now.div_euclid(1000), counter);
        let run = Run {
            note: "ballot sched job run-now".into(),
            ..Run::queued(&job.name, slot.clone(), now, now, 0)
        };
        let key = run::run_key(name, &slot);
        let txn = store::txn(
            vec![
                store::absent(&key),
                store::unchanged(run::job_key(name).as_bytes(), *job_revision),
            ],
            vec![store::put(&key, run.to_json(), 0)],
        );
        if store.txn(txn, None).await.map_err(store_error)?.succeeded {
            println!("run {name}/{slot} queued");
            return Ok(());
        }
    }
    Err(raced(&format!("queueing a run of {name}")))
}

/// Every run under `prefix`, in key order.
async fn read_runs(store: &Store, prefix: &str) -> Result<Vec<(Run, i64)>, ClientError> {
    let (_, kvs) = store.range_prefix(prefix).await.map_err(store_error)?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| Some((serde_json::from_slice(&kv.value).ok()?, kv.mod_revision)))
        .collect())
}

async fn status(store: &Store, format: OutputFormat) -> Result<(), ClientError> {
    let leader = store
        .leader(run::LEADER_ELECTION)
        .await
        .map_err(store_error)?;
    let (_, worker_kvs) = store
        .range_prefix(run::WORKERS)
        .await
        .map_err(store_error)?;
    let workers: Vec<Worker> = worker_kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let runs = read_runs(store, run::RUNS).await?;
    let (_, jobs) = read_jobs(store).await?;
    let (_, cursor_kvs) = store
        .range_prefix(run::CURSORS)
        .await
        .map_err(store_error)?;
    let cursors: BTreeMap<String, i64> = cursor_kvs
        .iter()
        .filter_map(|kv| {
            let name = String::from_utf8_lossy(&kv.key[run::CURSORS.len()..]).into_owned();
            Some((name, std::str::from_utf8(&kv.value).ok()?.parse().ok()?))
        })
        .collect();
    let load = |worker: &Worker| {
        runs.iter()
            .filter(|(run, _)| {
                matches!(run.state, RunState::Assigned | RunState::Running)
                    && run.worker == worker.name
                    && run.worker_lease == worker.lease
            })
            .count()
    };
    let mut by_state: BTreeMap<&str, usize> = RunState::ALL.iter().map(|s| (s.name(), 0)).collect();
    for (run, _) in &runs {
        *by_state.entry(run.state.name()).or_default() += 1;
    }
    let next_due: BTreeMap<&str, Option<i64>> = jobs
        .values()
        .map(|(job, _)| {
            let cursor = cursors.get(&job.name).copied().unwrap_or(job.added_s);
            let next = (!job.paused)
                .then(|| job.schedule.compile().ok()?.next_after(cursor))
                .flatten();
            (job.name.as_str(), next)
        })
        .collect();
    if format == OutputFormat::Json {
        let value = serde_json::json!({
            "leader": leader.as_ref().map(|(name, rev)| serde_json::json!({"worker": name, "rev": rev})),
            "workers": workers.iter().map(|w| serde_json::json!({
                "name": w.name, "slots": w.slots, "running": load(w), "lease": format!("{:016x}", w.lease),
                "version": w.version,
            })).collect::<Vec<_>>(),
            "runs_by_state": by_state,
            "next_due": next_due.iter().map(|(job, due)| serde_json::json!({"job": job, "due_s": due})).collect::<Vec<_>>(),
        });
        return print_json(&value);
    }
    let mut text = String::new();
    match &leader {
        Some((name, rev)) => {
            let _ = writeln!(text, "leader: {name} (rev {rev})");
        }
        None => text.push_str("leader: none (no worker is running)\n"),
    }
    let _ = writeln!(text, "workers: {}", workers.len());
    for worker in &workers {
        let _ = writeln!(
            text,
            "  {}\t{}/{} slots in use\tlease {:016x}\t{}",
            worker.name,
            load(worker),
            worker.slots,
            worker.lease,
            worker.version
        );
    }
    let states: Vec<String> = by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let _ = writeln!(
        text,
        "runs: {}",
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        }
    );
    let _ = writeln!(text, "jobs: {}", jobs.len());
    for (name, due) in &next_due {
        let _ = writeln!(
            text,
            "  {name}\tnext {}",
            due.map_or("-".to_string(), |s| format_ms(s * 1000))
        );
    }
    output::write_stdout(text.as_bytes())
}

async fn runs(
    store: &Store,
    job: Option<String>,
    state: Option<String>,
    limit: usize,
    format: OutputFormat,
) -> Result<(), ClientError> {
    if let Some(state) = &state {
        if !RunState::ALL.iter().any(|s| s.name() == state) {
            let names: Vec<&str> = RunState::ALL.iter().map(|s| s.name()).collect();
            return Err(ClientError::Usage(format!(
                "--state {state}: not a run state (one of {})",
                names.join(", ")
            )));
        }
    }
    let prefix = match &job {
        Some(name) => run::runs_prefix(name),
        None => run::RUNS.to_string(),
    };
    let mut runs: Vec<(Run, i64)> = read_runs(store, &prefix)
        .await?
        .into_iter()
        .filter(|(run, _)| state.as_deref().is_none_or(|s| run.state.name() == s))
        .collect();
    runs.sort_by(|a, b| (a.0.due_ms, &a.0.slot, &a.0.job).cmp(&(b.0.due_ms, &b.0.slot, &b.0.job)));
    let runs = &runs[runs.len().saturating_sub(limit)..];
    if format == OutputFormat::Json {
        let list: Vec<&Run> = runs.iter().map(|(run, _)| run).collect();
        return print_json(&list);
    }
    let mut text = String::from(
        "JOB\tSLOT\tDUE\tSTATE\tWORKER\tATTEMPT\tTOKEN\tEXIT\tDURATION\tDISPATCHED\tNOTE\n",
    );
    for (run, revision) in runs {
        // A running run's token is the revision its start wrote (the lock's create revision).
        let token = if run.state == RunState::Running && run.token == 0 {
            *revision
        } else {
            run.token
        };
        let _ = writeln!(
            text,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t+{}ms\t{}",
            run.job,
            run.slot,
            format_ms(run.due_ms),
            run.state,
            if run.worker.is_empty() {
                "-"
            } else {
                &run.worker
            },
            run.attempt,
            if token > 0 {
                token.to_string()
            } else {
                "-".into()
            },
            run.exit_code.map_or("-".into(), |c| c.to_string()),
            run.duration_ms().map_or("-".into(), |ms| format!("{ms}ms")),
            run.created_ms - run.due_ms,
            run.note
        );
    }
    output::write_stdout(text.as_bytes())
}

/// Unix milliseconds as an RFC 3339 time in UTC, to the second.
fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}
