//! A job as `ballot sched job add` defines it: when it is due (cron with seconds and a time
//! zone, a fixed period, or after other jobs), what it runs, and its policies. Stored as JSON at
//! `sched/jobs/NAME`; everything here is checked before anything is written.

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Longest job name accepted: it is part of every key the job's runs use.
pub const NAME_LEN_MAX: usize = 128;

/// When a job is due.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// A cron expression (5 fields, or 6 with seconds first) read in an IANA time zone.
    Cron { expression: String, zone: String },
    /// Every `seconds`, at the multiples of it since the Unix epoch, so that any leader computes
    /// the same slots.
    Every { seconds: u64 },
    /// Each time every job in `Job::after` has succeeded for a slot, with that slot.
    After,
}

/// Which worker gets a run (a job that runs after others goes where its first one went).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// Each run to the next worker in name order.
    RoundRobin,
    /// Each run to the worker with the smallest share of its slots in use.
    LeastLoaded,
}

/// What happens to slots that passed while nobody could dispatch them (no leader, no quorum).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Misfire {
    /// Every late slot is recorded as missed.
    Skip,
    /// The latest late slot runs; the earlier ones are recorded as missed.
    RunOnce,
}

/// What happens when a slot is due while the job's previous run has not finished.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// The new slot is recorded as skipped.
    Skip,
    /// The new slot waits until the previous run has finished.
    Queue,
    /// The new slot runs beside the previous one.
    Allow,
}

/// A job, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub schedule: Schedule,
    /// Run with `sh -c`.
    pub command: String,
    /// A run still going after this long is killed and counts as failed; 0: no limit.
    pub timeout_ms: u64,
    /// How many times a failed run is tried again on the same worker.
    pub retries: u32,
    /// The pause before the first retry; it doubles for each one after.
    pub backoff_ms: u64,
    /// The jobs this one runs after (`Schedule::After`).
    pub after: Vec<String>,
    pub route: Route,
    pub misfire: Misfire,
    pub overlap: Overlap,
    pub paused: bool,
    /// Unix seconds when the job was added: its first slot is the first one after this.
    pub added_s: i64,
}

/// Why a job definition was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    Name(String),
    Cron {
        expression: String,
        why: String,
    },
    Zone {
        zone: String,
        why: String,
    },
    Every(String),
    NoSchedule,
    ScheduleAndAfter,
    EmptyCommand,
    UnknownAfter(Vec<String>),
    Cycle(Vec<String>),
    SeveralRoots {
        after: Vec<String>,
        roots: Vec<String>,
    },
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Name(why) => write!(f, "{why}"),
            JobError::Cron { expression, why } => {
                write!(f, "--cron {expression:?} is not a cron expression: {why}")
            }
            JobError::Zone { zone, why } => {
                write!(
                    f,
                    "--tz {zone:?} is not a time zone this machine knows: {why}"
                )
            }
            JobError::Every(why) => write!(f, "--every: {why}"),
            JobError::NoSchedule => write!(
                f,
                "give the job --cron EXPR, --every DURATION or --after JOB"
            ),
            JobError::ScheduleAndAfter => write!(
                f,
                "a job with --after runs when the jobs it follows succeed, with their slot; it \
                 takes no --cron or --every of its own"
            ),
            JobError::EmptyCommand => write!(f, "--command is empty"),
            JobError::UnknownAfter(names) => {
                write!(
                    f,
                    "--after names jobs that do not exist: {}",
                    names.join(", ")
                )
            }
            JobError::Cycle(path) => write!(f, "--after would make a cycle: {}", path.join(" -> ")),
            JobError::SeveralRoots { after, roots } => write!(
                f,
                "--after {}: those jobs are scheduled by different jobs ({}); the jobs one job \
                 follows must share one schedule, so that they have the same slots",
                after.join(" "),
                roots.join(", ")
            ),
        }
    }
}

/// A job name: letters, digits, `.`, `_` and `-`, at most [`NAME_LEN_MAX`] bytes.
pub fn check_name(name: &str) -> Result<(), JobError> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(JobError::Name(format!(
            "job name {name:?}: give 1 to {NAME_LEN_MAX} characters"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(JobError::Name(format!(
            "job name {name:?}: {bad:?} is not allowed (use letters, digits, '.', '_' and '-')"
        )));
    }
    Ok(())
}

/// A schedule ready to compute slots.
#[derive(Clone, Debug)]
pub enum Compiled {
    Cron(Box<Cron>, TimeZone),
    Every(u64),
    After,
}

impl Schedule {
    pub fn compile(&self) -> Result<Compiled, JobError> {
        match self {
            Schedule::Every { seconds: 0 } => {
                Err(JobError::Every("the period must be at least 1s".into()))
            }
            Schedule::Every { seconds } => Ok(Compiled::Every(*seconds)),
            Schedule::After => Ok(Compiled::After),
            Schedule::Cron { expression, zone } => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(expression)
                    .map_err(|error| JobError::Cron {
                        expression: expression.clone(),
                        why: error.to_string(),
                    })?;
                let zone_found = TimeZone::get(zone).map_err(|error| JobError::Zone {
                    zone: zone.clone(),
                    why: error.to_string(),
                })?;
                let compiled = Compiled::Cron(Box::new(cron), zone_found);
                // "0 0 30 2 *" parses but is never due: refuse it rather than wait forever.
                if compiled.next_after(Timestamp::now().as_second()).is_none() {
                    return Err(JobError::Cron {
                        expression: expression.clone(),
                        why: "it matches no time in the future".into(),
                    });
                }
                Ok(compiled)
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { expression, zone } => write!(f, "cron {expression:?} {zone}"),
            Schedule::Every { seconds } => write!(f, "every {seconds}s"),
            Schedule::After => write!(f, "after"),
        }
    }
}

impl Compiled {
    /// The first slot (Unix seconds) strictly after `after_s`; `None` for a job that runs
    /// after others, or a cron expression that never matches again.
    pub fn next_after(&self, after_s: i64) -> Option<i64> {
        match self {
            Compiled::Every(period) => {
                let period = i64::try_from(*period).ok()?;
                Some((after_s.div_euclid(period) + 1) * period)
            }
            Compiled::After => None,
            Compiled::Cron(cron, zone) => {
                let from = Zoned::new(Timestamp::from_second(after_s).ok()?, zone.clone());
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(next.timestamp().as_second())
            }
        }
    }
}

impl Job {
    /// Checks this definition against the jobs that exist (by name): the schedule compiles,
    /// `after` names existing jobs, makes no cycle and leads back to one scheduled job.
    pub fn check(&self, jobs: &BTreeMap<String, Job>) -> Result<(), JobError> {
        check_name(&self.name)?;
        if self.command.trim().is_empty() {
            return Err(JobError::EmptyCommand);
        }
        self.schedule.compile()?;
        match (&self.schedule, self.after.is_empty()) {
            (Schedule::After, true) => return Err(JobError::NoSchedule),
            (Schedule::After, false) => {}
            (_, false) => return Err(JobError::ScheduleAndAfter),
            (_, true) => return Ok(()),
        }
        let unknown: Vec<String> = self
            .after
            .iter()
            .filter(|name| !jobs.contains_key(*name) && **name != self.name)
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(JobError::UnknownAfter(unknown));
        }
        let mut with_self = jobs.clone();
        with_self.insert(self.name.clone(), self.clone());
        if let Some(cycle) = find_cycle(&with_self, &self.name) {
            return Err(JobError::Cycle(cycle));
        }
        let roots = roots_of(&with_self, &self.name);
        if roots.len() > 1 {
            return Err(JobError::SeveralRoots {
                after: self.after.clone(),
                roots: roots.into_iter().collect(),
            });
        }
        Ok(())
    }
}

/// A path from `start` back to itself through `after` edges, if there is one.
fn find_cycle(jobs: &BTreeMap<String, Job>, start: &str) -> Option<Vec<String>> {
    fn visit(
        jobs: &BTreeMap<String, Job>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let current = path.last().cloned().expect("the path starts non-empty");
        let Some(job) = jobs.get(&current) else {
            return false;
        };
        for next in &job.after {
            path.push(next.clone());
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) && visit(jobs, start, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    visit(jobs, start, &mut path, &mut seen).then_some(path)
}

/// The scheduled jobs (cron or every) that `name` runs after, directly or not.
pub fn roots_of(jobs: &BTreeMap<String, Job>, name: &str) -> BTreeSet<String> {
    let mut roots = BTreeSet::new();
    let mut stack = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(current) = stack.pop() {
        if !seen.insert(current.clone()) {
            continue;
        }
        match jobs.get(&current) {
            Some(job) if job.schedule == Schedule::After => stack.extend(job.after.iter().cloned()),
            Some(_) => {
                roots.insert(current);
            }
            None => {}
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, schedule: Schedule, after: &[&str]) -> Job {
        Job {
            name: name.into(),
            schedule,
            command: "true".into(),
            timeout_ms: 0,
            retries: 0,
            backoff_ms: 0,
            after: after.iter().map(|s| s.to_string()).collect(),
            route: Route::RoundRobin,
            misfire: Misfire::Skip,
            overlap: Overlap::Skip,
            paused: false,
            added_s: 0,
        }
    }

    fn cron(expression: &str, zone: &str) -> Schedule {
        Schedule::Cron {
            expression: expression.into(),
            zone: zone.into(),
        }
    }

    #[test]
    fn periods_are_aligned_to_the_epoch() {
        let every = Schedule::Every { seconds: 10 }.compile().unwrap();
        assert_eq!(every.next_after(100), Some(110));
        assert_eq!(every.next_after(105), Some(110));
        assert_eq!(every.next_after(109), Some(110));
        assert!(Schedule::Every { seconds: 0 }.compile().is_err());
    }

    #[test]
    fn cron_has_seconds_and_time_zones() {
        // 2026-12-08T00:00:00Z
        let midnight_utc = 1_796_688_000;
        let every_15s = cron("*/15 * * * * *", "UTC").compile().unwrap();
        assert_eq!(every_15s.next_after(midnight_utc), Some(midnight_utc + 15));
        let five_fields = cron("30 2 * * *", "UTC").compile().unwrap();
        assert_eq!(
            five_fields.next_after(midnight_utc),
            Some(midnight_utc + 2 * 3600 + 30 * 60),
            "five fields: minute first, second 0"
        );
        // 09:00 in Berlin is 08:00 UTC in December.
        let berlin = cron("0 0 9 * * *", "Europe/Berlin").compile().unwrap();
        assert_eq!(
            berlin.next_after(midnight_utc),
            Some(midnight_utc + 8 * 3600)
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        let error = cron("61 * * * * *", "UTC").compile().unwrap_err();
        assert!(matches!(error, JobError::Cron { .. }), "{error}");
        assert!(error.to_string().contains("61 * * * * *"), "{error}");
        let error = cron("* * * * *", "Mars/Olympus").compile().unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
        let never = cron("0 0 0 30 2 *", "UTC").compile().unwrap_err();
        assert!(
            never.to_string().contains("no time in the future"),
            "{never}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("nightly-backup.v2_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").unwrap_err().to_string().contains("'/'"));
        assert!(check_name(&"x".repeat(NAME_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn after_must_name_existing_jobs_without_cycles_and_with_one_root() {
        let mut jobs = BTreeMap::new();
        jobs.insert("a".into(), job("a", Schedule::Every { seconds: 60 }, &[]));
        jobs.insert("b".into(), job("b", Schedule::After, &["a"]));
        jobs.insert("z".into(), job("z", Schedule::Every { seconds: 5 }, &[]));

        assert!(job("c", Schedule::After, &["a", "b"]).check(&jobs).is_ok());
        assert_eq!(
            job("c", Schedule::After, &["nope"]).check(&jobs),
            Err(JobError::UnknownAfter(vec!["nope".into()]))
        );
        assert!(matches!(
            job("c", Schedule::After, &["c"]).check(&jobs),
            Err(JobError::Cycle(_))
        ));
        // Replacing a with a job that runs after b closes a -> b -> a.
        let error = job("a", Schedule::After, &["b"]).check(&jobs).unwrap_err();
        assert_eq!(
            error,
            JobError::Cycle(vec!["a".into(), "b".into(), "a".into()])
        );
        assert!(matches!(
            job("c", Schedule::After, &["b", "z"]).check(&jobs),
            Err(JobError::SeveralRoots { .. })
        ));
        assert_eq!(
            job("c", Schedule::Every { seconds: 1 }, &["a"]).check(&jobs),
            Err(JobError::ScheduleAndAfter)
        );
        assert_eq!(
            job("c", Schedule::After, &[]).check(&jobs),
            Err(JobError::NoSchedule)
        );
    }
}
