//! What the leader decides, as a pure function of the mirror and the clock: which slots are
//! due, missed or skipped, which worker gets each run, which runs are handed on because their
//! worker went away, which dependent runs follow a success, and which old runs are deleted.
//! Each decision is one transaction whose compares fail if the mirror was stale; `leader.rs`
//! sends them under the leader's fence.

use super::job::{Compiled, Job, Misfire, Overlap, Route, Schedule};
use super::mirror::View;
use super::run::{self, Run, RunState, Worker};
use super::store;
use ballot_proto::etcdserverpb::TxnRequest;
use std::collections::{BTreeMap, HashMap};

/// A slot dispatched this much later than it was due counts as missed (`--misfire`).
pub const MISFIRE_GRACE_MS: i64 = 5_000;
/// Finished runs kept per job; older ones are deleted.
pub const RUNS_KEPT: usize = 100;
/// Slots decided in one transaction (etcd's default limit is 128 operations).
const SLOTS_PER_TXN: usize = 60;

/// One transaction the leader sends, and what it is for (metrics, logs).
#[derive(Debug, Clone)]
pub struct Decision {
    pub what: What,
    pub txn: TxnRequest,
    /// The runs it creates or changes (their due times give the dispatch latency).
    pub runs: Vec<Run>,
}

impl Decision {
    /// `run` written over its stored record, if that is still at `mod_revision`.
    fn rewrite(what: What, run: Run, mod_revision: i64) -> Decision {
        let key = run::run_key(&run.job, &run.slot);
        Decision {
            what,
            txn: store::txn(
                vec![store::unchanged(key.as_bytes(), mod_revision)],
                vec![store::put(&key, run.to_json(), 0)],
            ),
            runs: vec![run],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// Due slots of a scheduled job, and its cursor moved past them.
    Slots,
    /// A queued run handed to a worker.
    Assign,
    /// A run whose worker went away handed to another (or queued).
    HandOver,
    /// A dependent job's run after its upstream jobs succeeded.
    Follow,
    /// Old finished runs deleted.
    Retire,
}

/// The leader's own identity, and the worker the last round-robin pick went to.
pub struct Planner {
    pub leader_name: String,
    pub leader_rev: i64,
    /// Index into the sorted worker names of the last round-robin pick.
    round_robin: usize,
    compiled: HashMap<String, (Schedule, Compiled)>,
}

/// A run as the mirror holds it, with its key's mod revision.
struct Stored {
    run: Run,
    mod_revision: i64,
}

impl Planner {
    pub fn new(leader_name: String, leader_rev: i64) -> Self {
        Planner {
            leader_name,
            leader_rev,
            round_robin: 0,
            compiled: HashMap::new(),
        }
    }

    fn compiled(&mut self, job: &Job) -> Option<&Compiled> {
        let fresh = match self.compiled.get(&job.name) {
            Some((schedule, _)) => *schedule != job.schedule,
            None => true,
        };
        if fresh {
            let compiled = job.schedule.compile().ok()?;
            self.compiled
                .insert(job.name.clone(), (job.schedule.clone(), compiled));
        }
        self.compiled.get(&job.name).map(|(_, compiled)| compiled)
    }

    /// When the next scheduled slot of any job is due (Unix ms), to sleep until then.
    pub fn next_due_ms(&mut self, view: &View) -> Option<i64> {
        let jobs = jobs(view);
        let cursors = cursors(view);
        let mut next: Option<i64> = None;
        for job in jobs.values().filter(|job| !job.paused) {
            let cursor = cursors.get(&job.name).map_or(job.added_s, |c| c.0);
            if let Some(due_s) = self.compiled(job).and_then(|c| c.next_after(cursor)) {
                next = Some(next.map_or(due_s * 1000, |n| n.min(due_s * 1000)));
            }
        }
        next
    }

    /// Every decision the view calls for at `now_ms`.
    pub fn plan(&mut self, view: &View, now_ms: i64) -> Vec<Decision> {
        let jobs = jobs(view);
        let cursors = cursors(view);
        let workers = workers(view);
        let mut runs = runs(view);
        let mut load: BTreeMap<String, u32> =
            workers.keys().map(|name| (name.clone(), 0)).collect();
        for stored in runs.values().flat_map(|slots| slots.values()) {
            let run = &stored.run;
            if matches!(run.state, RunState::Assigned | RunState::Running)
                && workers
                    .get(&run.worker)
                    .is_some_and(|w| w.lease == run.worker_lease)
            {
                *load.entry(run.worker.clone()).or_default() += 1;
            }
        }
        let job_list: Vec<Job> = jobs.values().cloned().collect();
        let schedules: BTreeMap<String, Compiled> = job_list
            .iter()
            .filter_map(|job| Some((job.name.clone(), self.compiled(job)?.clone())))
            .collect();
        let mut decisions = Vec::new();
        let mut executors = Executors {
            workers: &workers,
            load,
            leader_name: &self.leader_name,
            round_robin: &mut self.round_robin,
        };

        // Runs whose worker went away: handed on first, so they get capacity before new ones.
        for (job_name, slots) in &runs {
            for stored in slots.values() {
                let run = &stored.run;
                if !matches!(run.state, RunState::Assigned | RunState::Running) {
                    continue;
                }
                if workers
                    .get(&run.worker)
                    .is_some_and(|w| w.lease == run.worker_lease)
                {
                    continue;
                }
                let route = jobs
                    .get(job_name)
                    .map_or(Route::RoundRobin, |job| job.route);
                let mut next = run.clone();
                next.attempt += 1;
                next.token = 0;
                next.started_ms = 0;
                next.leader_rev = self.leader_rev;
                next.note = format!(
                    "worker {} (lease {:016x}) went away; handed on",
                    run.worker, run.worker_lease
                );
                executors.assign(&mut next, route, None);
                decisions.push(Decision::rewrite(What::HandOver, next, stored.mod_revision));
            }
        }

        // Queued runs, oldest first, while workers have room.
        let mut queued: Vec<&Stored> = runs
            .values()
            .flat_map(|slots| slots.values())
            .filter(|stored| stored.run.state == RunState::Queued)
            .collect();
        queued.sort_by_key(|stored| (stored.run.due_ms, stored.run.slot.clone()));
        let mut busy_jobs: Vec<String> = runs
            .iter()
            .filter(|(_, slots)| {
                slots
                    .values()
                    .any(|s| matches!(s.run.state, RunState::Assigned | RunState::Running))
            })
            .map(|(job, _)| job.clone())
            .collect();
        for stored in queued {
            let Some(job) = jobs.get(&stored.run.job) else {
                continue;
            };
            if job.paused || (job.overlap == Overlap::Queue && busy_jobs.contains(&job.name)) {
                continue;
            }
            let mut next = stored.run.clone();
            if !executors.assign(&mut next, job.route, None) {
                break; // no worker has room
            }
            next.leader_rev = self.leader_rev;
            next.attempt = next.attempt.max(1);
            busy_jobs.push(job.name.clone());
            decisions.push(Decision::rewrite(What::Assign, next, stored.mod_revision));
        }

        // Due slots of scheduled jobs.
        let now_s = now_ms.div_euclid(1000);
        for job in &job_list {
            if job.paused || job.schedule == Schedule::After {
                continue;
            }
            let (cursor, cursor_mod) = cursors.get(&job.name).copied().unwrap_or((job.added_s, 0));
            let Some(compiled) = schedules.get(&job.name) else {
                continue;
            };
            let mut due = Vec::new();
            let mut slot = compiled.next_after(cursor);
            while let Some(due_s) = slot.filter(|due_s| *due_s <= now_s) {
                due.push(due_s);
                if due.len() == SLOTS_PER_TXN {
                    break;
                }
                slot = compiled.next_after(due_s);
            }
            let Some(&last) = due.last() else { continue };
            let latest_late = due
                .iter()
                .copied()
                .filter(|due_s| now_ms - due_s * 1000 > MISFIRE_GRACE_MS)
                .max();
            let any_on_time = due
                .iter()
                .any(|due_s| now_ms - due_s * 1000 <= MISFIRE_GRACE_MS);
            let mut in_flight = runs
                .get(&job.name)
                .is_some_and(|slots| slots.values().any(|s| s.run.state.in_flight()));
            let mut created = Vec::new();
            let mut ops = vec![store::put(
                &run::cursor_key(&job.name),
                last.to_string().into_bytes(),
                0,
            )];
            let mut compares = vec![store::unchanged(
                run::cursor_key(&job.name).as_bytes(),
                cursor_mod,
            )];
            for due_s in due {
                let late = now_ms - due_s * 1000 > MISFIRE_GRACE_MS;
                let mut run = Run::queued(
                    &job.name,
                    run::slot_name(due_s),
                    due_s * 1000,
                    now_ms,
                    self.leader_rev,
                );
                let runs_it = !late
                    || (job.misfire == Misfire::RunOnce
                        && !any_on_time
                        && Some(due_s) == latest_late);
                if !runs_it {
                    run.state = RunState::Missed;
                    run.note = format!(
                        "due {} ms before it could be dispatched (no leader or no quorum); --misfire {}",
                        now_ms - due_s * 1000,
                        match job.misfire {
                            Misfire::Skip => "skip",
                            Misfire::RunOnce => "run-once ran a later slot",
                        }
                    );
                } else if in_flight && job.overlap == Overlap::Skip {
                    run.state = RunState::Skipped;
                    run.note = "the previous run had not finished (--overlap skip)".into();
                } else if in_flight && job.overlap == Overlap::Queue {
                    run.note = "waits for the previous run (--overlap queue)".into();
                } else if executors.assign(&mut run, job.route, None) {
                    run.attempt = 1;
                    in_flight = true;
                } else {
                    run.note = "no worker had a free slot".into();
                    in_flight = true;
                }
                let key = run::run_key(&job.name, &run.slot);
                compares.push(store::absent(&key));
                ops.push(store::put(&key, run.to_json(), 0));
                created.push(run);
            }
            let slots = runs.entry(job.name.clone()).or_default();
            for run in &created {
                slots.insert(
                    run.slot.clone(),
                    Stored {
                        run: run.clone(),
                        mod_revision: 0,
                    },
                );
            }
            decisions.push(Decision {
                what: What::Slots,
                txn: store::txn(compares, ops),
                runs: created,
            });
        }

        // Dependent jobs: a run for each slot every upstream job has succeeded in.
        for job in job_list
            .iter()
            .filter(|job| job.schedule == Schedule::After && !job.paused)
        {
            let Some(first) = job.after.first() else {
                continue;
            };
            let Some(first_runs) = runs.get(first) else {
                continue;
            };
            for (slot, upstream) in first_runs {
                if upstream.run.state != RunState::Succeeded
                    || upstream.run.due_ms < job.added_s * 1000
                    || runs
                        .get(&job.name)
                        .is_some_and(|mine| mine.contains_key(slot))
                {
                    continue;
                }
                let all_succeeded = job.after.iter().all(|name| {
                    runs.get(name)
                        .and_then(|slots| slots.get(slot))
                        .is_some_and(|s| s.run.state == RunState::Succeeded)
                });
                if !all_succeeded {
                    continue;
                }
                let mut run = upstream.run.clone();
                run.job = job.name.clone();
                run.state = RunState::Queued;
                run.attempt = 0;
                run.token = 0;
                run.leader_rev = self.leader_rev;
                run.created_ms = now_ms;
                run.started_ms = 0;
                run.finished_ms = 0;
                run.spawn_us = 0;
                run.exit_code = None;
                run.output_tail.clear();
                run.note = format!("after {}", job.after.join(", "));
                let same_worker = Some(upstream.run.worker.as_str());
                if executors.assign(&mut run, job.route, same_worker) {
                    run.attempt = 1;
                } else {
                    run.worker.clear();
                    run.worker_lease = 0;
                }
                let key = run::run_key(&job.name, slot);
                decisions.push(Decision {
                    what: What::Follow,
                    txn: store::txn(
                        vec![store::absent(&key)],
                        vec![store::put(&key, run.to_json(), 0)],
                    ),
                    runs: vec![run],
                });
            }
        }

        // Old finished runs.
        for (job_name, slots) in &runs {
            let finished: Vec<&String> = slots
                .iter()
                .filter(|(_, s)| !s.run.state.in_flight() && s.mod_revision > 0)
                .map(|(slot, _)| slot)
                .collect();
            if finished.len() > RUNS_KEPT {
                let ops = finished[..finished.len() - RUNS_KEPT]
                    .iter()
                    .take(SLOTS_PER_TXN)
                    .map(|slot| store::delete(&run::run_key(job_name, slot)))
                    .collect();
                decisions.push(Decision {
                    what: What::Retire,
                    txn: store::txn(vec![], ops),
                    runs: vec![],
                });
            }
        }
        decisions
    }
}

/// Picks workers for runs and counts what each has been given.
struct Executors<'a> {
    workers: &'a BTreeMap<String, Worker>,
    load: BTreeMap<String, u32>,
    leader_name: &'a str,
    round_robin: &'a mut usize,
}

impl Executors<'_> {
    /// Sets `run`'s worker (state Assigned), preferring `prefer` when it has room; false (the
    /// run unchanged but for its worker cleared and state Queued) when no worker has room. The
    /// leader executes only when it is the only worker.
    fn assign(&mut self, run: &mut Run, route: Route, prefer: Option<&str>) -> bool {
        let candidates: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| self.workers.len() == 1 || w.name != self.leader_name)
            .filter(|w| self.load.get(&w.name).copied().unwrap_or(0) < w.slots)
            .collect();
        let chosen = match prefer.and_then(|name| candidates.iter().find(|w| w.name == name)) {
            Some(worker) => Some(*worker),
            None if candidates.is_empty() => None,
            None => match route {
                Route::RoundRobin => {
                    *self.round_robin = self.round_robin.wrapping_add(1);
                    Some(candidates[*self.round_robin % candidates.len()])
                }
                Route::LeastLoaded => candidates.iter().copied().min_by(|a, b| {
                    let share = |w: &Worker| {
                        self.load.get(&w.name).copied().unwrap_or(0) as f64 / w.slots.max(1) as f64
                    };
                    share(a).total_cmp(&share(b))
                }),
            },
        };
        match chosen {
            Some(worker) => {
                run.state = RunState::Assigned;
                run.worker = worker.name.clone();
                run.worker_lease = worker.lease;
                *self.load.entry(worker.name.clone()).or_default() += 1;
                true
            }
            None => {
                run.state = RunState::Queued;
                run.worker.clear();
                run.worker_lease = 0;
                false
            }
        }
    }
}

/// The jobs in the view that parse (a job that does not is left alone and logged by whoever
/// reads it).
pub fn jobs(view: &View) -> BTreeMap<String, Job> {
    view.under(run::JOBS)
        .filter_map(|(name, entry)| {
            Some((name.to_string(), serde_json::from_slice(&entry.value).ok()?))
        })
        .collect()
}

pub fn workers(view: &View) -> BTreeMap<String, Worker> {
    view.under(run::WORKERS)
        .filter_map(|(name, entry)| {
            Some((name.to_string(), serde_json::from_slice(&entry.value).ok()?))
        })
        .collect()
}

/// Per job, its cursor (the last slot decided) and the cursor key's mod revision.
fn cursors(view: &View) -> BTreeMap<String, (i64, i64)> {
    view.under(run::CURSORS)
        .filter_map(|(name, entry)| {
            let slot = std::str::from_utf8(&entry.value).ok()?.parse().ok()?;
            Some((name.to_string(), (slot, entry.mod_revision)))
        })
        .collect()
}

/// Per job, its runs by slot.
fn runs(view: &View) -> BTreeMap<String, BTreeMap<String, Stored>> {
    let mut all: BTreeMap<String, BTreeMap<String, Stored>> = BTreeMap::new();
    for (rest, entry) in view.under(run::RUNS) {
        let Some((job, slot)) = rest.split_once('/') else {
            continue;
        };
        let Ok(run) = serde_json::from_slice::<Run>(&entry.value) else {
            continue;
        };
        all.entry(job.to_string()).or_default().insert(
            slot.to_string(),
            Stored {
                run,
                mod_revision: entry.mod_revision,
            },
        );
    }
    all
}

/// Every run in the view, by job then slot (for `ballot sched runs` and the checker).
pub fn all_runs(view: &View) -> Vec<(Run, i64)> {
    runs(view)
        .into_values()
        .flat_map(|slots| slots.into_values().map(|s| (s.run, s.mod_revision)))
        .collect()
}
