//! Compaction: dropping history below a revision. A `Compact` command takes effect at once, in its
//! apply transaction (the compacted revision moves, reads below it fail); the versions it makes
//! unreachable are deleted by the **sweep**, a bounded step at the end of every apply commit
//! (etcd deletes in batches of 1,000 revisions between other writes for the same reason). One
//! transaction that deleted a quarter of a large store's versions would copy most leaves of the
//! old revisions at once, and redb grows the file (by doubling) for that transient peak.
//!
//! After the sweep reaches C, every key has at most one version at or below C: a put, or a
//! tombstone at exactly C (kept so that a replay from C, which etcd allows, still sees that
//! delete). Given that for the previous compacted revision P, it holds for C after visiting the
//! change log from P to C in revision order and, for each change `(r, s) -> k`:
//!
//! 1. deleting the newest version of `k` below `(r, s)` (superseded at or below C), and
//! 2. deleting `(k, r, s)` itself if it is a tombstone and `r < C`.
//!
//! A version is deleted from both tables: its revision record and its index entry. The sweep
//! costs O(changes since P), not O(history), and deletes old revisions, which sit together at
//! the start of `mvcc_revisions`. Its position (`Sweep`) is written with the data, so a restart
//! resumes it. While it is behind, the reads that could see unreachable versions (hash,
//! snapshot, events at exactly C) skip them: see [`View::reachable`](super::view::View).

use super::apply::{Applier, Sweep};
use super::error::MvccError;
use super::layout::{split_revision_record, Record};
use super::types::Revision;
use redb::ReadableTable;

/// Changes of the log the sweep visits per apply commit (each deletes at most two versions).
/// Bounds the work and the pages copied by one commit, while keeping the number of steps low:
/// each step also rewrites the `mvcc_index` leaves it touches, and with random keys a step of a
/// few thousand touches most of a small index. Far more than an apply batch writes, so the sweep
/// keeps up with any write rate.
pub(crate) const SWEEP_CHANGES_PER_COMMIT_MAX: usize = 4096;

/// One change read from `mvcc_revisions`: `(revision, sub_revision)`, key, whether a tombstone.
type Change = ((u64, u32), Vec<u8>, bool);

impl Applier<'_> {
    /// Compaction at `revision`: logical now, deletions by the sweep.
    pub(crate) fn compact(&mut self, revision: Revision) {
        let previous = self.position.compacted_revision;
        assert!(
            revision > previous && revision <= self.position.current_revision,
            "compaction moves forward and not past the current revision"
        );
        // The changes at the previous compacted revision are visited again: a tombstone there
        // was kept for P and goes for C. Visiting a change twice is harmless once invariant 4
        // holds below it (its predecessor is gone); if the sweep is still before P, it just
        // goes on to C.
        let sweep = &mut self.position.sweep;
        sweep.resume = sweep.resume.min((previous as u64, 0));
        self.position.compacted_revision = revision;
    }

    /// One bounded step of the sweep, if it is behind the compacted revision.
    pub(crate) fn sweep_step(&mut self, changes_max: usize) -> Result<(), MvccError> {
        let target = self.position.compacted_revision;
        if !self.position.sweep.is_behind(target) {
            return Ok(());
        }
        // The scan below reads `mvcc_revisions`: earlier writes of this batch must be in it.
        self.append_pending()?;
        let mut chunk: Vec<Change> = Vec::with_capacity(changes_max);
        let from = self.position.sweep.resume;
        for entry in self
            .tables
            .revisions
            .range(from..=(target as u64, u32::MAX))?
            .take(changes_max)
        {
            let (at, stored) = entry?;
            let (key, record) = split_revision_record(stored.value())?;
            chunk.push((at.value(), key.to_vec(), Record::is_tombstone(record)));
        }
        for ((change_revision, sub_revision), key, tombstone) in &chunk {
            self.drop_predecessor(key, *change_revision, *sub_revision)?;
            if *tombstone && *change_revision < target as u64 {
                self.remove_version(key, *change_revision, *sub_revision)?;
            }
        }
        self.position.sweep = match chunk.last() {
            Some(&((revision, sub_revision), _, _)) if chunk.len() == changes_max => Sweep {
                done_revision: self.position.sweep.done_revision,
                resume: match sub_revision.checked_add(1) {
                    Some(next) => (revision, next),
                    None => (revision + 1, 0),
                },
            },
            _ => Sweep::finished(target),
        };
        Ok(())
    }

    fn drop_predecessor(
        &mut self,
        key: &[u8],
        revision: u64,
        sub_revision: u32,
    ) -> Result<(), MvccError> {
        let predecessor = match self
            .tables
            .index
            .range((key, 0u64, 0u32)..(key, revision, sub_revision))?
            .next_back()
        {
            Some(entry) => {
                let (at, _) = entry?;
                let (_, predecessor_revision, predecessor_sub_revision) = at.value();
                Some((predecessor_revision, predecessor_sub_revision))
            }
            None => None,
        };
        if let Some((predecessor_revision, predecessor_sub_revision)) = predecessor {
            self.remove_version(key, predecessor_revision, predecessor_sub_revision)?;
        }
        Ok(())
    }

    fn remove_version(
        &mut self,
        key: &[u8],
        revision: u64,
        sub_revision: u32,
    ) -> Result<(), MvccError> {
        let removed = self
            .tables
            .index
            .remove((key, revision, sub_revision))?
            .is_some();
        assert!(removed, "compaction removes versions that exist");
        let removed = self
            .tables
            .revisions
            .remove((revision, sub_revision))?
            .is_some();
        assert!(removed, "every version has its revision record");
        Ok(())
    }
}
