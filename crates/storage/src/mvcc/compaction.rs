//! Compaction: dropping history below a revision. A `Compact` command takes effect at once (the
//! compacted revision moves, reads below it fail); the versions it makes unreachable leave the
//! index in bounded steps, one per write (the **sweep**), so no write stalls on a large history.
//! Their records become garbage for segment GC (`gc.rs`), which reclaims the space.
//!
//! After the sweep reaches C, every key has at most one version at or below C: a put, or a
//! tombstone at exactly C (which a replay of events from C skips, as etcd's compaction drops a
//! tombstone at C with its generation). Given that for the previous compacted revision P, it
//! holds for C after visiting the
//! change log from P to C in revision order and, for each change `(r, s)` of key `k`:
//!
//! 1. dropping the newest version of `k` below `(r, s)` (superseded at or below C), and
//! 2. dropping `(k, r, s)` itself if it is a tombstone and `r < C`.
//!
//! The sweep costs O(changes since P), not O(keys). While it is behind, the reads that could see
//! unreachable versions (events at exactly C) skip them with [`State::reachable`]; the hash and
//! snapshots finish the sweep first.

use super::index::State;

/// Changes the sweep visits per write: each is a few index operations, so a step takes well
/// under a millisecond, and it outpaces any write rate (a write adds at most a batch of changes).
pub const SWEEP_CHANGES_PER_WRITE_MAX: usize = 16 * 1024;

impl State {
    /// Visits up to `changes_max` changes of the change log for the compacted revision.
    pub(crate) fn sweep_step(&mut self, changes_max: usize) {
        let target = self.position.compacted_revision as u64;
        for _ in 0..changes_max {
            let Some(change) = self.changes.get(self.sweep_cursor) else {
                return;
            };
            if change.at.0 > target {
                return;
            }
            let (at, key) = (change.at, change.key.clone());
            let mut dropped = Vec::new();
            if let Some(versions) = self.keys.get_mut(&key) {
                let position = versions.partition_point(|version| version.at < at);
                if position > 0 {
                    dropped.push(versions.remove(position - 1).location);
                }
                let own = versions.partition_point(|version| version.at < at);
                let own_is_old_tombstone = versions
                    .get(own)
                    .is_some_and(|version| version.at == at && !version.is_put());
                if own_is_old_tombstone && at.0 < target {
                    dropped.push(versions.remove(own).location);
                }
                if versions.is_empty() {
                    self.keys.remove(&key);
                }
            }
            for location in dropped {
                self.forget(location);
            }
            if at.0 < target {
                assert_eq!(
                    self.sweep_cursor, 0,
                    "changes below the compacted revision are at the front of the change log"
                );
                self.changes.pop_front();
            } else {
                // At exactly the compacted revision: kept for events from there.
                self.sweep_cursor += 1;
            }
        }
    }

    /// Runs the sweep to its end (for the hash and snapshots, which must see only what is
    /// reachable).
    pub(crate) fn finish_sweep(&mut self) {
        while self.sweep_behind() {
            self.sweep_step(SWEEP_CHANGES_PER_WRITE_MAX);
        }
    }
}
