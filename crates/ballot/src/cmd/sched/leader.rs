//! The elected worker's dispatch loop: plans from the mirror (`plan.rs`) and sends each
//! decision fenced by its election rev, so that a leader that lost its election without
//! noticing (paused, partitioned, its clock slow) has every write refused by the store.
//!
//! It keeps nothing that matters only in memory: a new leader plans from the same keys. It
//! steps down when the store refuses its fence, and resigns when it cannot reach the store for
//! a lease period (seed 000 §2.3: a leader that lost its database must step down).

use super::mirror::Mirror;
use super::plan::{Decision, Planner, What};
use super::run::{self, now_ms};
use super::store::{Store, StoreError};
use ballot_proto::v3electionpb::LeaderKey;
use std::time::Duration;
use tokio::time::Instant;

/// Why a leader stopped leading.
#[derive(Debug)]
pub enum Stepped {
    /// The store refused its fence: another leader was elected.
    FenceLost(String),
    /// No write reached the store for a lease period.
    Unreachable(String),
}

/// Longest pause between plans when nothing changes and nothing is due.
const IDLE_PLAN_INTERVAL: Duration = Duration::from_millis(500);

/// Dispatches until this leader must step down. `fenced: false` is `ballot check`'s deliberate
/// bug: writes without the leader's fence, which the checker must catch.
pub async fn lead(
    store: &Store,
    mirror: &mut Mirror,
    leader: &LeaderKey,
    name: &str,
    lease_ttl: Duration,
    fenced: bool,
) -> Stepped {
    let fence = format!("{}:{}", run::LEADER_ELECTION, leader.rev);
    let fence = fenced.then_some(fence.as_str());
    let mut planner = Planner::new(name.to_string(), leader.rev);
    let mut failing_since: Option<Instant> = None;
    loop {
        let decisions = {
            let view = mirror.view();
            planner.plan(&view, now_ms())
        };
        // The decisions touch disjoint keys and each carries its own compares, so they are
        // sent together: the cluster batches them into a few log entries, where one after the
        // other would cost a round trip each (100 jobs due at once: ~600 ms against ~40).
        let mut sent = tokio::task::JoinSet::new();
        for decision in decisions {
            let store = store.clone();
            let fence = fence.map(str::to_string);
            sent.spawn(async move {
                let answer = store.txn(decision.txn.clone(), fence.as_deref()).await;
                (decision, answer)
            });
        }
        let mut wrote_at = 0;
        let mut failure = None;
        while let Some(done) = sent.join_next().await {
            let Ok((decision, answer)) = done else {
                continue;
            };
            match answer {
                Ok(answer) => {
                    if answer.succeeded {
                        wrote_at = answer.header.map_or(wrote_at, |h| h.revision.max(wrote_at));
                        log_decision(&decision);
                    }
                }
                Err(StoreError::FenceLost(why)) => return Stepped::FenceLost(why),
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            None => failing_since = None,
            Some(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= lease_ttl {
                    store.resign(leader.clone()).await;
                    return Stepped::Unreachable(error.to_string());
                }
            }
        }
        if wrote_at > 0 {
            mirror.caught_up(wrote_at, Duration::from_secs(1)).await;
            continue;
        }
        // Sleep until the next slot is due or the keys change.
        let next_due = planner.next_due_ms(&mirror.view());
        let pause = next_due
            .map(|due_ms| Duration::from_millis((due_ms - now_ms()).clamp(0, 500) as u64))
            .unwrap_or(IDLE_PLAN_INTERVAL)
            .min(IDLE_PLAN_INTERVAL);
        if failing_since.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            // A decision refused as stale leaves the pause at zero: wait for the copy to move.
            mirror.changed(pause.max(Duration::from_millis(20))).await;
        }
    }
}

fn log_decision(decision: &Decision) {
    if decision.what == What::Retire {
        return;
    }
    for run in &decision.runs {
        let to = if run.worker.is_empty() {
            String::new()
        } else {
            format!(" to {}", run.worker)
        };
        eprintln!(
            "sched: {} {}/{} {}{to}",
            what_name(decision.what),
            run.job,
            run.slot,
            run.state
        );
    }
}

fn what_name(what: What) -> &'static str {
    match what {
        What::Slots => "slot",
        What::Assign => "assigned",
        What::HandOver => "handed on",
        What::Follow => "follows",
        What::Retire => "retired",
    }
}
