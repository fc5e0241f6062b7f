//! One run of a job for one slot, as stored at `sched/runs/JOB/SLOT`, and the keys the
//! scheduler uses. Every change of a run's state is one fenced transaction (`leader.rs`,
//! `worker.rs`); docs/design/scheduler.md draws the state machine.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything the scheduler stores lives under this prefix of group 0.
pub const ROOT: &str = "sched/";
pub const JOBS: &str = "sched/jobs/";
pub const WORKERS: &str = "sched/workers/";
pub const RUNS: &str = "sched/runs/";
/// Per job, the last slot the leader has decided about (dispatched, missed or skipped).
pub const CURSORS: &str = "sched/cursors/";
/// The election the workers campaign in; its rev fences every write the leader makes.
pub const LEADER_ELECTION: &str = "sched/leader";
/// Per run, the lock its executing worker holds; its token fences the worker's writes.
pub const RUNNING: &str = "sched/running/";

pub fn job_key(job: &str) -> String {
    format!("{JOBS}{job}")
}

pub fn worker_key(worker: &str) -> String {
    format!("{WORKERS}{worker}")
}

pub fn cursor_key(job: &str) -> String {
    format!("{CURSORS}{job}")
}

pub fn runs_prefix(job: &str) -> String {
    format!("{RUNS}{job}/")
}

pub fn run_key(job: &str, slot: &str) -> String {
    format!("{RUNS}{job}/{slot}")
}

/// The lock name a run's executor holds (`ballot-fence: NAME:TOKEN` refers to it).
pub fn run_lock(job: &str, slot: &str) -> String {
    format!("{RUNNING}{job}/{slot}")
}

/// A scheduled slot's name: its Unix second, zero-padded so that runs list in time order.
pub fn slot_name(due_s: i64) -> String {
    format!("{due_s:012}")
}

/// A `run-now` slot: its second and a counter, after that second's scheduled slot.
pub fn manual_slot_name(due_s: i64, counter: u32) -> String {
    format!("{due_s:012}.now{counter}")
}

/// Where a run is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Due, waiting for a free worker (or, with `--overlap queue`, for the previous run).
    Queued,
    /// Handed to a worker that has not started it yet.
    Assigned,
    /// Its worker holds the run's lock and runs the command.
    Running,
    Succeeded,
    /// The command failed (non-zero exit, or killed at its timeout) on its last attempt.
    Failed,
    /// Its time passed while nobody could dispatch it (`--misfire`).
    Missed,
    /// Due while the previous run was still going (`--overlap skip`), or the job was paused.
    Skipped,
}

impl RunState {
    /// Queued, assigned or running: the run still has something to do.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            RunState::Queued | RunState::Assigned | RunState::Running
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Assigned => "assigned",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Missed => "missed",
            RunState::Skipped => "skipped",
        }
    }

    pub const ALL: [RunState; 7] = [
        RunState::Queued,
        RunState::Assigned,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Missed,
        RunState::Skipped,
    ];
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A run, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub job: String,
    pub slot: String,
    /// When the slot was due, Unix milliseconds.
    pub due_ms: i64,
    pub state: RunState,
    /// The worker it is handed to, and that worker's lease (a worker that restarts under the
    /// same name has a new lease, and its old runs are handed on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worker: String,
    #[serde(default)]
    pub worker_lease: i64,
    /// Attempts started, counting retries and hand-overs.
    pub attempt: u32,
    /// The rev of the leader that last dispatched it (its fence).
    pub leader_rev: i64,
    /// The executing worker's token for the run's lock; 0 before it started.
    #[serde(default)]
    pub token: i64,
    /// When the leader's record of the run committed, Unix milliseconds.
    pub created_ms: i64,
    #[serde(default)]
    pub started_ms: i64,
    #[serde(default)]
    pub finished_ms: i64,
    /// How long the command's last attempt took to spawn, microseconds.
    #[serde(default)]
    pub spawn_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last bytes of the command's standard output and error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
    /// Why it was missed, skipped, handed over or failed without an exit code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Run {
    /// A run of `job` for `slot`, due at `due_ms`, recorded at `created_ms` as queued: no
    /// worker, no attempt, no outcome yet.
    pub fn queued(job: &str, slot: String, due_ms: i64, created_ms: i64, leader_rev: i64) -> Run {
        Run {
            job: job.to_string(),
            slot,
            due_ms,
            state: RunState::Queued,
            worker: String::new(),
            worker_lease: 0,
            attempt: 0,
            leader_rev,
            token: 0,
            created_ms,
            started_ms: 0,
            finished_ms: 0,
            spawn_us: 0,
            exit_code: None,
            output_tail: String::new(),
            note: String::new(),
        }
    }

    /// Milliseconds the command ran (its last attempt), when it has finished.
    pub fn duration_ms(&self) -> Option<i64> {
        (self.finished_ms > 0 && self.started_ms > 0).then(|| self.finished_ms - self.started_ms)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a run serialises")
    }
}

/// A worker's registration at `sched/workers/NAME`, kept by its lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    /// How many runs it executes at once.
    pub slots: u32,
    pub lease: i64,
    pub started_ms: i64,
    pub version: String,
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sort_in_time_order_with_manual_runs_after_their_second() {
        let mut names = vec![
            slot_name(1_000_000_010),
            manual_slot_name(1_000_000_009, 1),
            slot_name(999_999_999),
            slot_name(1_000_000_009),
        ];
        names.sort();
        assert_eq!(
            names,
            vec![
                slot_name(999_999_999),
                slot_name(1_000_000_009),
                manual_slot_name(1_000_000_009, 1),
                slot_name(1_000_000_010),
            ]
        );
    }

    #[test]
    fn runs_round_trip_through_json() {
        let run = Run {
            state: RunState::Running,
            worker: "w1".into(),
            worker_lease: 7,
            attempt: 1,
            token: 9,
            started_ms: 5020,
            ..Run::queued("j", slot_name(5), 5000, 5010, 3)
        };
        let back: Run = serde_json::from_slice(&run.to_json()).unwrap();
        assert_eq!(back, run);
        assert_eq!(back.duration_ms(), None);
    }
}
