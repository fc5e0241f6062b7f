//! Compaction: dropping history below a revision, in the apply transaction, in time proportional
//! to the changes since the previous compaction (not to the whole history).
//!
//! After compaction at C, every key has at most one version at or below C: a put, or a tombstone
//! at exactly C (kept so that a replay from C, which etcd allows, still sees that delete). Given
//! that for the previous compacted revision P, it holds for C after visiting the change log from
//! P to C in revision order and, for each change `(r, s) -> k`:
//!
//! 1. deleting the newest version of `k` below `(r, s)` (superseded at or below C), and
//! 2. deleting `(k, r, s)` itself if it is a tombstone and `r < C`.

use super::apply::Applier;
use super::error::MvccError;
use super::layout::Record;
use super::types::Revision;
use redb::ReadableTable;

/// Changes read from the change log per step (bounds the memory of one compaction).
const COMPACTION_CHUNK_CHANGES_MAX: usize = 4096;

impl Applier<'_> {
    pub(crate) fn compact(&mut self, revision: Revision) -> Result<(), MvccError> {
        assert!(
            revision > self.position.compacted_revision
                && revision <= self.position.current_revision,
            "compaction moves forward and not past the current revision"
        );
        let target = revision as u64;
        let mut from = (self.position.compacted_revision as u64, 0u32);
        loop {
            let mut chunk = Vec::with_capacity(COMPACTION_CHUNK_CHANGES_MAX);
            for entry in self
                .tables
                .changes
                .range(from..=(target, u32::MAX))?
                .take(COMPACTION_CHUNK_CHANGES_MAX)
            {
                let (at, key) = entry?;
                chunk.push((at.value(), key.value().to_vec()));
            }
            let Some(&((last_revision, last_sub_revision), _)) = chunk.last() else {
                return Ok(());
            };
            for ((change_revision, sub_revision), key) in &chunk {
                self.drop_predecessor(key, *change_revision, *sub_revision)?;
                if *change_revision < target {
                    self.drop_if_tombstone(key, *change_revision, *sub_revision)?;
                }
            }
            from = match last_sub_revision.checked_add(1) {
                Some(next) => (last_revision, next),
                None => (last_revision + 1, 0),
            };
        }
    }

    fn drop_predecessor(
        &mut self,
        key: &[u8],
        revision: u64,
        sub_revision: u32,
    ) -> Result<(), MvccError> {
        let predecessor = match self
            .tables
            .versions
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

    fn drop_if_tombstone(
        &mut self,
        key: &[u8],
        revision: u64,
        sub_revision: u32,
    ) -> Result<(), MvccError> {
        let tombstone = match self.tables.versions.get((key, revision, sub_revision))? {
            Some(record) => Record::is_tombstone(record.value()),
            None => false,
        };
        if tombstone {
            self.remove_version(key, revision, sub_revision)?;
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
            .versions
            .remove((key, revision, sub_revision))?
            .is_some();
        assert!(removed, "compaction removes versions that exist");
        let removed = self
            .tables
            .changes
            .remove((revision, sub_revision))?
            .is_some();
        assert!(removed, "every version has its change-log entry");
        Ok(())
    }
}
