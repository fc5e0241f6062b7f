//! `ballot worker`: registers under a lease, campaigns to lead the scheduler (leading is
//! `leader.rs`), and executes the runs handed to it.
//!
//! A run starts with one transaction that takes the run's lock (a key under
//! `sched/running/JOB/SLOT/` on this worker's lease) and marks the run running; the lock's
//! create revision is the run's fencing token. Every later write about the run carries that
//! fence, so a worker that lost its lease (paused past it, cut off) has its result refused by
//! the store: two executions of a slot may overlap in time, one result is accepted. When the
//! lease is lost the worker also kills what it runs (seed 001 §3.7: the holder stops using a
//! lease when it expires) and registers again under a new one.

use super::job::Job;
use super::leader::{self, Stepped};
use super::mirror::Mirror;
use super::run::{self, now_ms, Run, RunState, Worker};
use super::store::{self, Store, StoreError};
use crate::cmd::client::lease::{revoke_lease, Renewals};
use crate::cmd::client::ClientError;
use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

/// Bytes of a command's output kept in its run record.
pub const OUTPUT_TAIL_BYTES: usize = 2048;
/// The longest pause between retries, however many there were.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How one worker process behaves.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub slots: u32,
    pub ttl_s: i64,
    /// Campaign to lead the scheduler (every worker does unless told not to).
    pub campaign: bool,
    /// Send the leader's and the executor's writes with their fences (false only for
    /// `ballot check`'s deliberate bug).
    pub fenced: bool,
    /// How fast this worker's lease clock runs against real time (`ballot check`'s clock-skew
    /// fault; 1.0 otherwise).
    pub clock_rate: f64,
}

/// Environment variables a run's command finds.
pub mod env {
    /// `sched/running/JOB/SLOT:TOKEN`: pass it to `ballot put --fence` so that the command's
    /// own writes are refused once this execution has lost its run.
    pub const FENCE: &str = "BALLOT_FENCE";
    pub const TOKEN: &str = "BALLOT_FENCING_TOKEN";
    pub const JOB: &str = "BALLOT_JOB";
    pub const SLOT: &str = "BALLOT_SLOT";
    pub const WORKER: &str = "BALLOT_WORKER";
    pub const ATTEMPT: &str = "BALLOT_ATTEMPT";
}

/// Runs the worker until interrupted (Ok) or until it cannot start (Err).
pub async fn run(config: Config, store: Store) -> Result<(), ClientError> {
    let mirror = Mirror::follow(store.clone(), run::ROOT)
        .await
        .map_err(|error| ClientError::Local(format!("worker {}: {error}", config.name)))?;
    loop {
        match session(&config, &store, &mirror).await {
            Ok(SessionEnd::Interrupted) => return Ok(()),
            Ok(SessionEnd::Lost(why)) => eprintln!(
                "worker {}: lost its lease ({why}); stopped its runs; registering again",
                config.name
            ),
            Err(error) => eprintln!("worker {}: {error}; trying again", config.name),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

enum SessionEnd {
    /// Ctrl-C: the lease was revoked, so the registration, the run locks and the candidacy
    /// went at once rather than after the TTL.
    Interrupted,
    /// The lease was lost, for this reason.
    Lost(String),
}

/// One lease: registered, campaigning and executing until the lease is lost or the worker is
/// interrupted. Returning drops the executions, which kills the commands they run.
async fn session(
    config: &Config,
    store: &Store,
    mirror: &Mirror,
) -> Result<SessionEnd, ClientError> {
    let endpoints = store.endpoints().clone();
    let (lease, renewals) = Renewals::grant(&endpoints, config.ttl_s).await?;
    let mut renewals = renewals.with_clock_rate(config.clock_rate);
    tokio::select! {
        registered = register(config, store, mirror.clone(), lease) => registered?,
        _ = tokio::signal::ctrl_c() => {
            revoke_lease(&endpoints, lease).await;
            return Ok(SessionEnd::Interrupted);
        }
    }
    eprintln!(
        "worker {}: registered with {} slots (lease {lease:016x}, TTL {}s)",
        config.name, config.slots, config.ttl_s
    );
    let end = tokio::select! {
        why = renewals.until_lost(&endpoints) => SessionEnd::Lost(why),
        why = execute_assigned(config, store, mirror.clone(), lease) => SessionEnd::Lost(why),
        why = campaign(config, store, mirror.clone(), lease) => SessionEnd::Lost(why),
        _ = tokio::signal::ctrl_c() => SessionEnd::Interrupted,
    };
    if let SessionEnd::Interrupted = end {
        revoke_lease(&endpoints, lease).await;
    }
    Ok(end)
}

/// Creates `sched/workers/NAME` on `lease`, waiting while another process holds the name
/// (a worker that died keeps it until its lease expires).
async fn register(
    config: &Config,
    store: &Store,
    mut mirror: Mirror,
    lease: i64,
) -> Result<(), ClientError> {
    let key = run::worker_key(&config.name);
    let me = Worker {
        name: config.name.clone(),
        slots: config.slots,
        lease,
        started_ms: now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut told = false;
    loop {
        let txn = store::txn(
            vec![store::absent(&key)],
            vec![store::put(
                &key,
                serde_json::to_vec(&me).expect("serialises"),
                lease,
            )],
        );
        match store.txn(txn, None).await {
            Ok(answer) if answer.succeeded => return Ok(()),
            Ok(_) => {
                if !told {
                    eprintln!(
                        "worker {}: the name is registered by another process; waiting for it to \
                         go (its lease expires within its TTL if it died)",
                        config.name
                    );
                    told = true;
                }
                mirror.changed(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(ClientError::Local(format!("registering: {error}"))),
        }
    }
}

/// Campaigns, leads while elected, and campaigns again after stepping down; returns only when
/// the store refused this worker's fence (its lease, and with it the candidacy, is gone).
async fn campaign(config: &Config, store: &Store, mut mirror: Mirror, lease: i64) -> String {
    if !config.campaign {
        return std::future::pending().await;
    }
    let ttl = Duration::from_secs(config.ttl_s as u64);
    loop {
        let leader = match store
            .campaign(run::LEADER_ELECTION, lease, &config.name)
            .await
        {
            Ok(leader) => leader,
            // The candidacy went with the lease (revoked, or expired while this process
            // could not tell): the session is over, whatever the next renewal would say.
            Err(error @ StoreError::Refused(_))
                if error.to_string().contains("lease not found")
                    || error.to_string().contains("election: not leader") =>
            {
                return format!("its candidacy is gone: {error}");
            }
            Err(error) => {
                eprintln!("worker {}: campaign failed: {error}", config.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        eprintln!(
            "worker {}: leads the scheduler (rev {})",
            config.name, leader.rev
        );
        match leader::lead(
            store,
            &mut mirror,
            &leader,
            &config.name,
            ttl,
            config.fenced,
        )
        .await
        {
            Stepped::FenceLost(why) => {
                eprintln!("worker {}: no longer leads: {why}", config.name);
                return format!("its leadership was fenced off: {why}");
            }
            Stepped::Unreachable(why) => {
                eprintln!(
                    "worker {}: resigned: the store was unreachable for a lease period ({why})",
                    config.name
                );
            }
        }
    }
}

/// Starts each run handed to this worker (`lease`), as the mirror shows them; never returns
/// on its own. Dropping it kills every command it started.
async fn execute_assigned(
    config: &Config,
    store: &Store,
    mut mirror: Mirror,
    lease: i64,
) -> String {
    let mut started: HashSet<String> = HashSet::new();
    let mut executions: JoinSet<String> = JoinSet::new();
    loop {
        while let Some(done) = executions.try_join_next() {
            if let Ok(key) = done {
                started.remove(&key);
            }
        }
        let mine: Vec<(Run, i64, Option<Job>)> = {
            let view = mirror.view();
            let jobs = super::plan::jobs(&view);
            super::plan::all_runs(&view)
                .into_iter()
                .filter(|(run, _)| {
                    run.state == RunState::Assigned
                        && run.worker == config.name
                        && run.worker_lease == lease
                })
                .map(|(run, revision)| {
                    let job = jobs.get(&run.job).cloned();
                    (run, revision, job)
                })
                .collect()
        };
        for (run, revision, job) in mine {
            let key = run::run_key(&run.job, &run.slot);
            if started.insert(key.clone()) {
                let execution = Execution {
                    store: store.clone(),
                    worker: config.name.clone(),
                    lease,
                    fenced: config.fenced,
                };
                executions.spawn(async move {
                    execution.execute(run, revision, job).await;
                    key
                });
            }
        }
        tokio::select! {
            _ = mirror.changed(Duration::from_secs(1)) => {}
            Some(done) = executions.join_next() => {
                if let Ok(key) = done {
                    started.remove(&key);
                }
            }
        }
    }
}

struct Execution {
    store: Store,
    worker: String,
    lease: i64,
    fenced: bool,
}

impl Execution {
    /// Takes the run's lock, runs the command (with its retries) and records the outcome.
    async fn execute(&self, mut run: Run, revision: i64, job: Option<Job>) {
        let key = run::run_key(&run.job, &run.slot);
        let lock = run::run_lock(&run.job, &run.slot);
        let lock_prefix = format!("{lock}/");
        let lock_key = format!("{lock_prefix}{:x}", self.lease);
        run.state = RunState::Running;
        run.started_ms = now_ms();
        run.note.clear();
        let start = store::txn(
            vec![
                store::unchanged(key.as_bytes(), revision),
                store::none_under(&lock_prefix),
            ],
            vec![
                store::put(&lock_key, Vec::new(), self.lease),
                store::put(&key, run.to_json(), 0),
            ],
        );
        let token = match self.store.txn(start, None).await {
            Ok(answer) if answer.succeeded => answer.header.map_or(0, |h| h.revision),
            // Stale (handed on meanwhile) or the store is away: the mirror will say what next.
            Ok(_) | Err(_) => return,
        };
        run.token = token;
        let fence = format!("{lock}:{token}");
        let Some(job) = job else {
            run.state = RunState::Failed;
            run.note = "the job was removed before its run started".into();
            self.finish(&key, &lock_key, &run, &fence).await;
            return;
        };
        loop {
            let outcome = self.run_command(&job, &run, &fence).await;
            run.finished_ms = now_ms();
            run.spawn_us = outcome.spawn_us;
            run.exit_code = outcome.exit_code;
            run.output_tail = outcome.output_tail;
            run.note = outcome.note;
            let succeeded = outcome.exit_code == Some(0);
            let retries_used = run.attempt.saturating_sub(1);
            if succeeded || retries_used >= job.retries {
                run.state = if succeeded {
                    RunState::Succeeded
                } else {
                    RunState::Failed
                };
                self.finish(&key, &lock_key, &run, &fence).await;
                return;
            }
            let backoff = Duration::from_millis(job.backoff_ms)
                .saturating_mul(1 << retries_used.min(16))
                .min(BACKOFF_MAX);
            run.note = format!(
                "attempt {} failed ({}); retrying in {backoff:?}",
                run.attempt,
                run.exit_code
                    .map_or("no exit code".to_string(), |code| format!("exit {code}"))
            );
            if !self.record(&key, &run, &fence).await {
                return;
            }
            tokio::time::sleep(backoff).await;
            run.attempt += 1;
            run.started_ms = now_ms();
            run.finished_ms = 0;
            if !self.record(&key, &run, &fence).await {
                return;
            }
        }
    }

    /// Writes the run's record under the run's fence; false when the fence no longer holds
    /// (this execution lost the run: it stops).
    async fn record(&self, key: &str, run: &Run, fence: &str) -> bool {
        let txn = store::txn(vec![], vec![store::put(key, run.to_json(), 0)]);
        self.send(txn, run, fence).await
    }

    /// The outcome, and the run's lock released, in one fenced write.
    async fn finish(&self, key: &str, lock_key: &str, run: &Run, fence: &str) {
        let txn = store::txn(
            vec![],
            vec![store::put(key, run.to_json(), 0), store::delete(lock_key)],
        );
        if self.send(txn, run, fence).await {
            eprintln!(
                "worker {}: {}/{} {} (attempt {}, token {})",
                self.worker, run.job, run.slot, run.state, run.attempt, run.token
            );
        }
    }

    async fn send(
        &self,
        txn: ballot_proto::etcdserverpb::TxnRequest,
        run: &Run,
        fence: &str,
    ) -> bool {
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .store
                .txn(txn.clone(), self.fenced.then_some(fence))
                .await
            {
                Ok(_) => return true,
                Err(StoreError::FenceLost(why)) => {
                    eprintln!(
                        "worker {}: {}/{}: the store refused this execution's write: {why}",
                        self.worker, run.job, run.slot
                    );
                    return false;
                }
                // An answer that retrying will not change (it names why): stop, as above; the
                // run is handed on once this worker's lease goes.
                Err(StoreError::Refused(why)) => {
                    eprintln!(
                        "worker {}: {}/{}: the store refused this execution's record: {why}",
                        self.worker, run.job, run.slot
                    );
                    return false;
                }
                // Keep trying while the lease may still hold; the session ends the task once
                // it is lost.
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn run_command(&self, job: &Job, run: &Run, fence: &str) -> Outcome {
        let spawn_started = std::time::Instant::now();
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&job.command)
            .env(env::FENCE, fence)
            .env(env::TOKEN, run.token.to_string())
            .env(env::JOB, &run.job)
            .env(env::SLOT, &run.slot)
            .env(env::WORKER, &self.worker)
            .env(env::ATTEMPT, run.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a timeout or a lost lease kills what it started
            // too, not only the shell.
            .process_group(0)
            .spawn();
        let spawn_us = spawn_started.elapsed().as_micros() as i64;
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                return Outcome {
                    spawn_us,
                    exit_code: None,
                    output_tail: String::new(),
                    note: format!("cannot run sh -c: {error}"),
                }
            }
        };
        let _group = child.id().map(GroupKill);
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            out.extend_from_slice(&err);
            out
        };
        let limit = (job.timeout_ms > 0).then(|| Duration::from_millis(job.timeout_ms));
        let waited = async {
            let (output, status) = tokio::join!(collect, child.wait());
            (output, status)
        };
        let (output, status, note) = match limit {
            Some(limit) => match tokio::time::timeout(limit, waited).await {
                Ok((output, status)) => (output, status.ok(), String::new()),
                Err(_) => (
                    Vec::new(),
                    None,
                    format!("killed at its timeout of {limit:?}"),
                ),
            },
            None => {
                let (output, status) = waited.await;
                (output, status.ok(), String::new())
            }
        };
        let exit_code = status.map(|status| {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        });
        Outcome {
            spawn_us,
            exit_code: if note.is_empty() { exit_code } else { None },
            output_tail: tail(&output),
            note,
        }
    }
}

/// Kills a command's process group when its execution ends for any reason (finished, timed
/// out, or dropped because the worker lost its lease).
struct GroupKill(u32);

impl Drop for GroupKill {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals that process group; it touches no memory.
        unsafe {
            libc::kill(-(self.0 as i32), libc::SIGKILL);
        }
    }
}

struct Outcome {
    spawn_us: i64,
    exit_code: Option<i32>,
    output_tail: String,
    note: String,
}

/// The last [`OUTPUT_TAIL_BYTES`] of `output`, cut at a character boundary.
fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let mut start = text.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
