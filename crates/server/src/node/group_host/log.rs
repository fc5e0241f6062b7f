//! Where a group's log lives: group 0 in its own WAL (the data directory's `wal/`, as before
//! groups), every other group in the node's shared WAL (`groups/wal/`), so that one `fdatasync`
//! covers a batch of all of them (docs/design/storage.md, "The shared WAL").

use ballot_core::{Entry, GroupId, HardState, LogIndex, LogPosition, LogStore};
use ballot_storage::wal::{GroupWal, Recovered, SharedWal, Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Group 0's WAL or a group's view of the shared one.
#[derive(Debug)]
pub(crate) enum HostLog {
    /// Boxed: one per node, far larger than a view of the shared WAL.
    Own(Box<Wal>),
    Shared(GroupWal),
}

impl HostLog {
    /// Whether everything appended is durable (for the shared WAL: every group's appends).
    pub(crate) fn is_synced(&self) -> bool {
        match self {
            HostLog::Own(wal) => wal.synced_sequence() == wal.appended_sequence(),
            HostLog::Shared(wal) => wal.is_synced(),
        }
    }

    /// Group 0's own WAL, for what only group 0 does (`--force-new-cluster`).
    pub(crate) fn own(&mut self) -> Option<&mut Wal> {
        match self {
            HostLog::Own(wal) => Some(wal.as_mut()),
            HostLog::Shared(_) => None,
        }
    }
}

impl LogStore for HostLog {
    type Error = WalError;

    fn append(&mut self, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), WalError> {
        match self {
            HostLog::Own(wal) => LogStore::append(wal.as_mut(), entries, hard_state),
            HostLog::Shared(wal) => wal.append(entries, hard_state),
        }
    }

    fn sync(&mut self) -> Result<(), WalError> {
        match self {
            HostLog::Own(wal) => LogStore::sync(wal.as_mut()),
            HostLog::Shared(wal) => LogStore::sync(wal),
        }
    }

    fn install_snapshot(&mut self, position: LogPosition) -> Result<(), WalError> {
        match self {
            HostLog::Own(wal) => LogStore::install_snapshot(wal.as_mut(), position),
            HostLog::Shared(wal) => wal.install_snapshot(position),
        }
    }

    fn compact_to(&mut self, index: LogIndex) -> Result<(), WalError> {
        match self {
            HostLog::Own(wal) => LogStore::compact_to(wal.as_mut(), index),
            HostLog::Shared(wal) => wal.compact_to(index),
        }
    }
}

/// The node's shared WAL, opened when the first group other than 0 starts (a node that never
/// hosts one keeps the layout of a node before groups), with what it recovered for each group
/// until that group starts.
pub(crate) struct SharedLog {
    pub(crate) wal: Arc<Mutex<SharedWal>>,
    pub(crate) recovered: std::collections::BTreeMap<GroupId, Recovered>,
}

/// Where the shared WAL lives.
pub(crate) fn shared_wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("groups").join("wal")
}

impl SharedLog {
    /// Opens the node's shared WAL, with segments of `segment_bytes`.
    pub(crate) fn open(data_dir: &Path, segment_bytes: u64) -> Result<Self, String> {
        let dir = shared_wal_dir(data_dir);
        let options = WalOptions {
            segment_size_bytes: segment_bytes,
            ..WalOptions::default()
        };
        let opened =
            SharedWal::open(&dir, options).map_err(|error| format!("shared WAL: {error}"))?;
        if let Some(repair) = &opened.tail_repair {
            tracing::warn!(
                ?repair,
                "cut a damaged tail off the shared WAL (written after the last fsync, or rotted \
                 since)"
            );
        }
        Ok(SharedLog {
            wal: Arc::new(Mutex::new(opened.wal)),
            recovered: opened.groups,
        })
    }

    /// The groups whose entries keep the oldest segment, once more than `segments_kept_max`
    /// are kept ([`SharedWal::groups_keeping_old_segments`]).
    pub(crate) fn groups_keeping_old_segments(&self, segments_kept_max: usize) -> Vec<GroupId> {
        self.lock().groups_keeping_old_segments(segments_kept_max)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedWal> {
        self.wal
            .lock()
            .expect("the shared WAL's lock is never poisoned")
    }

    /// `group`'s log, for its host to start from: moved in from the group's own WAL first if a
    /// release before the shared WAL left one (`groups/<id>/wal`).
    pub(crate) fn take_group(
        &mut self,
        group: GroupId,
        group_dir: &Path,
    ) -> Result<(GroupWal, Recovered), String> {
        let old_dir = group_dir.join("wal");
        if old_dir.is_dir() {
            let recovered = self.import(group, &old_dir).map_err(|error| {
                format!("moving {} into the shared WAL: {error}", old_dir.display())
            })?;
            self.recovered.insert(group, recovered);
        }
        let recovered = self.recovered.remove(&group).unwrap_or(Recovered {
            first_index: 1,
            ..Recovered::default()
        });
        Ok((GroupWal::new(group, self.wal.clone()), recovered))
    }

    /// Copies a group's own WAL into the shared one, durably, then deletes it. Idempotent: a
    /// crash before the delete repeats the copy, whose removal record first forgets the
    /// partial one.
    fn import(&mut self, group: GroupId, old_dir: &Path) -> Result<Recovered, WalError> {
        let options = WalOptions {
            segment_size_bytes: 1024 * 1024,
            ..WalOptions::default()
        };
        let (old, recovered) = Wal::open(old_dir, options)?;
        drop(old);
        let mut wal = self.lock();
        wal.remove_group(group)?;
        if let Some(position) = recovered.snapshot {
            wal.install_snapshot(group, position)?;
        }
        wal.append(group, &recovered.entries, Some(recovered.hard_state))?;
        wal.sync()?;
        drop(wal);
        std::fs::remove_dir_all(old_dir).map_err(|source| WalError::Io {
            operation: "delete the moved",
            path: old_dir.to_path_buf(),
            source,
        })?;
        tracing::info!(
            group,
            entries = recovered.entries.len(),
            from = %old_dir.display(),
            "moved a group's own WAL into the node's shared WAL (format 3)"
        );
        Ok(Recovered {
            tail_repair: None,
            ..recovered
        })
    }

    /// Forgets a group this node no longer hosts (and what was recovered for it).
    pub(crate) fn remove_group(&mut self, group: GroupId) -> Result<(), WalError> {
        self.recovered.remove(&group);
        self.lock().remove_group(group)
    }

    /// Groups the shared WAL holds records of.
    pub(crate) fn groups(&self) -> Vec<GroupId> {
        self.lock().groups().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_core::{EntryPayload, LogPosition};

    fn entry(index: LogIndex, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Command(format!("put {index}").into_bytes().into()),
        }
    }

    /// A group's own WAL, as the release before the shared WAL left it: compacted at 3, entries
    /// 4..=6, a hard state.
    fn write_old_wal(group_dir: &Path) -> Recovered {
        let (mut wal, _) = Wal::open(group_dir.join("wal"), WalOptions::default()).unwrap();
        wal.append(&(1..=6).map(|i| entry(i, 2)).collect::<Vec<_>>(), None)
            .unwrap();
        wal.compact_to(3).unwrap();
        let hard_state = HardState {
            term: 2,
            voted_for: Some(9),
            commit_index: 5,
        };
        wal.append(&[], Some(hard_state)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        Wal::open(group_dir.join("wal"), WalOptions::default())
            .unwrap()
            .1
    }

    #[test]
    fn a_groups_own_wal_moves_into_the_shared_one_once_and_whole() {
        let data = tempfile::tempdir().unwrap();
        let group_dir = data.path().join("groups").join("5");
        let old = write_old_wal(&group_dir);
        assert_eq!(old.snapshot, Some(LogPosition::new(3, 2)));

        let mut shared =
            SharedLog::open(data.path(), ballot_storage::wal::SEGMENT_SIZE_BYTES_DEFAULT).unwrap();
        let (_, moved) = shared.take_group(5, &group_dir).unwrap();
        assert!(
            !group_dir.join("wal").exists(),
            "the old WAL is gone once moved"
        );
        assert_eq!(moved, old);
        drop(shared);

        // Moved durably: a restart finds the group in the shared WAL.
        let mut shared =
            SharedLog::open(data.path(), ballot_storage::wal::SEGMENT_SIZE_BYTES_DEFAULT).unwrap();
        assert_eq!(shared.groups(), vec![5]);
        let (_, reopened) = shared.take_group(5, &group_dir).unwrap();
        assert_eq!(reopened.entries, old.entries);
        assert_eq!(reopened.hard_state, old.hard_state);
        assert_eq!(reopened.snapshot, old.snapshot);
        drop(shared);

        // A crash after the copy and before the delete leaves both: the move runs again and
        // its removal record makes the first copy vanish, so nothing is doubled or refused.
        write_old_wal(&group_dir);
        let mut shared =
            SharedLog::open(data.path(), ballot_storage::wal::SEGMENT_SIZE_BYTES_DEFAULT).unwrap();
        let (_, again) = shared.take_group(5, &group_dir).unwrap();
        assert_eq!(again.entries, old.entries);
        drop(shared);
        let mut shared =
            SharedLog::open(data.path(), ballot_storage::wal::SEGMENT_SIZE_BYTES_DEFAULT).unwrap();
        let (_, last) = shared.take_group(5, &group_dir).unwrap();
        assert_eq!(last.entries, old.entries);
        assert_eq!(last.snapshot, old.snapshot);
    }
}
