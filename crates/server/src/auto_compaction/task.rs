//! The thin async shell around [`Schedule`]: it wakes at each check, tells the schedule the time,
//! the store's revisions and whether this member leads, and proposes the compaction it answers
//! with through the log (a `Compact` command, as a client's Compaction call). It decides nothing
//! itself.

use super::schedule::{Schedule, StoreRevisions};
use super::AutoCompaction;
use crate::node::{NodeError, NodeHandle};
use ballot_core::Role;
use ballot_storage::mvcc::types::Command;
use ballot_storage::mvcc::ApplyError;
use tokio::time::Instant;

/// Starts the automatic compaction of `handle`'s node; `None` when it is off. Abort the task to
/// stop it (it also ends by itself once the node has stopped and it tries to propose).
pub(crate) fn spawn(
    handle: NodeHandle,
    policy: AutoCompaction,
) -> Option<tokio::task::JoinHandle<()>> {
    let start = Instant::now();
    let schedule = Schedule::new(policy, start.elapsed(), handle.store().revision())?;
    tracing::info!(
        mode = %policy.mode_name(),
        retention = %policy.retention_text(),
        check_interval_ms = schedule.check_interval().as_millis() as u64,
        "automatic compaction on (the leader compacts)"
    );
    Some(tokio::spawn(run(handle, policy, schedule, start)))
}

async fn run(handle: NodeHandle, policy: AutoCompaction, mut schedule: Schedule, start: Instant) {
    loop {
        tokio::time::sleep_until(start + schedule.next_check_at()).await;
        let store = handle.store();
        let revisions = StoreRevisions {
            current: store.revision(),
            compacted: store.compacted_revision(),
        };
        let leading = handle.with_status(|status| status.role == Some(Role::Leader));
        let Some(revision) = schedule.check(start.elapsed(), revisions, leading) else {
            continue;
        };
        match handle.propose(Command::Compact { revision }).await {
            Ok(_) => {
                tracing::info!(
                    mode = %policy.mode_name(),
                    retention = %policy.retention_text(),
                    revision,
                    "automatic compaction: compacted"
                );
                schedule.compacted(start.elapsed());
            }
            Err(NodeError::Apply(ApplyError::Compacted { compacted_revision })) => {
                // A client compacted at least as far meanwhile: what was due is done.
                tracing::debug!(
                    revision,
                    compacted_revision,
                    "automatic compaction: skipped"
                );
                schedule.compacted(start.elapsed());
            }
            Err(NodeError::Stopped) => return,
            Err(
                error @ (NodeError::NotLeader { .. }
                | NodeError::LeaderChanged
                | NodeError::NoLeader),
            ) => {
                tracing::debug!(%error, revision, "automatic compaction: leadership moved");
            }
            Err(error) => tracing::warn!(
                %error,
                mode = %policy.mode_name(),
                revision,
                retry_in_ms = schedule.check_interval().as_millis() as u64,
                "automatic compaction failed; retrying at the next check"
            ),
        }
    }
}
