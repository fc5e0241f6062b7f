//! Opening the state directory: every segment is read once, front to back, and the state is
//! rebuilt from the records found. Records may come in any order (segment GC copies old records
//! forward, and a crash between a copy and the deletion of its original leaves both), so the
//! rebuild is by identity, not by order: each key's versions by revision, each lease's latest
//! change by log index, the position from the newest commit record. Then compaction is applied
//! to what was found, exactly as the sweep would have left it.
//!
//! Damage: the last segment may end in a batch that was being written (records after its last
//! commit record) or in a torn record with nothing valid after it; both are cut off and reported.
//! Any other defect (in a sealed segment, or followed by a valid record) is an error naming the
//! file and offset: it is never skipped.

use super::error::MvccError;
use super::index::{
    key_hash, lease_hash, Change, LeaseEntry, Position, SegmentInfo, State, Version,
};
use super::layout::{self, CommitRecord, Record, INITIAL_REVISION};
use super::segments::{self, Location, SegmentId};
use super::types::LeaseId;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What a damaged tail cost: the file, where it was cut, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub file: PathBuf,
    pub offset: u64,
    /// Bytes cut off (an unfinished batch, or a torn record and what followed it).
    pub bytes_discarded: u64,
    pub reason: String,
}

/// The rebuilt state, the head segment and its length, and any repair made.
pub(crate) struct Recovered {
    pub state: State,
    pub head: SegmentId,
    pub head_len: u64,
    pub tail_repair: Option<TailRepair>,
}

/// A lease change found on disk.
struct LeaseChange {
    change_index: u64,
    /// `None`: the lease was revoked.
    set: Option<(i64, i64)>,
    location: Location,
}

/// Rebuilds the state from `dir`, creating an empty store if it holds no segment.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, MvccError> {
    finish_interrupted_restore(dir)?;
    segments::ensure_dir(dir)?;
    let ids = segments::list(dir)?;
    if ids.is_empty() {
        return create_empty(dir);
    }
    let mut state = State::default();
    let mut versions: BTreeMap<Bytes, Vec<Version>> = BTreeMap::new();
    let mut lease_changes: BTreeMap<LeaseId, LeaseChange> = BTreeMap::new();
    let mut newest_commit: Option<(CommitRecord, Location)> = None;
    let mut tail_repair = None;
    let mut head_len = 0;
    for (position, &id) in ids.iter().enumerate() {
        let last = position + 1 == ids.len();
        let path = segments::segment_path(dir, id);
        let bytes = Bytes::from(
            std::fs::read(&path).map_err(|e| segments::io_error("cannot read", &path, e))?,
        );
        let mut found = Vec::new();
        let mut end_of_commits = None;
        let stop = segments::scan(&bytes, id, &path, |scanned| {
            if matches!(scanned.record, Record::Commit(_)) {
                end_of_commits = Some(scanned.offset + u64::from(scanned.len));
            }
            found.push(scanned);
            Ok(())
        })?;
        let header_end = found
            .first()
            .map(|first| u64::from(first.len))
            .ok_or_else(|| {
                MvccError::Corrupt(format!("{} has no segment header", path.display()))
            })?;
        if let Some(stop) = &stop {
            if !last {
                return Err(MvccError::Corrupt(format!(
                    "{} at offset {}: {} (a sealed segment is never written again)",
                    path.display(),
                    stop.offset,
                    stop.defect
                )));
            }
            // Valid records after the damage: a power loss may keep later sectors of an unsynced
            // batch and not earlier ones, which is a torn tail; damage to what a sync had made
            // durable is not. The commit records after it say how much was synced.
            if let Some(synced) = synced_after(&bytes, stop.offset) {
                if synced > stop.offset {
                    return Err(MvccError::Corrupt(format!(
                        "{} at offset {}: {}, inside what was synced (the first {synced} bytes): \
                         damage to durable data, not a torn tail",
                        path.display(),
                        stop.offset,
                        stop.defect
                    )));
                }
            }
        }
        let keep_end = end_of_commits.unwrap_or(header_end);
        if !last && (stop.is_some() || keep_end != bytes.len() as u64) {
            return Err(MvccError::Corrupt(format!(
                "{} does not end with a commit record (offset {keep_end} of {})",
                path.display(),
                bytes.len()
            )));
        }
        let file = segments::open(&path)?;
        if last && keep_end < bytes.len() as u64 {
            let reason = match &stop {
                Some(stop) if stop.offset == keep_end => stop.defect.to_string(),
                Some(stop) => format!(
                    "a batch without its commit record, then at offset {}: {}",
                    stop.offset, stop.defect
                ),
                None => "a batch without its commit record".to_string(),
            };
            file.set_len(keep_end)
                .and_then(|()| file.sync_all())
                .map_err(|e| segments::io_error("cannot cut the tail of", &path, e))?;
            tail_repair = Some(TailRepair {
                file: path.clone(),
                offset: keep_end,
                bytes_discarded: bytes.len() as u64 - keep_end,
                reason,
            });
        }
        if last {
            // What a killed process left in the page cache counts as written from now on (later
            // commit records say it was synced), so it must be on disk before that.
            file.sync_all()
                .map_err(|e| segments::io_error("cannot sync", &path, e))?;
            segments::sync_dir(dir)?;
            head_len = keep_end;
        }
        let mut segment = SegmentInfo::new(file, keep_end);
        for scanned in found.into_iter().filter(|s| s.offset < keep_end) {
            let location = Location {
                segment: id,
                len: scanned.len,
                offset: scanned.offset,
            };
            match scanned.record {
                Record::SegmentHeader { .. } => {}
                Record::Commit(commit) => {
                    if newest_commit
                        .is_none_or(|(newest, _)| newest.applied_index <= commit.applied_index)
                    {
                        newest_commit = Some((commit, location));
                    }
                }
                Record::Version(version) => {
                    segment.note_owner(key_hash(&version.key), version.at);
                    let found = Version {
                        at: version.at,
                        put: version.put.map(|(meta, _)| meta),
                        location,
                    };
                    // The key is copied: a slice would keep the whole segment's bytes in memory.
                    match versions.get_mut(&version.key[..]) {
                        Some(known) => known.push(found),
                        None => {
                            versions.insert(Bytes::copy_from_slice(&version.key), vec![found]);
                        }
                    }
                }
                Record::Lease {
                    id: lease,
                    change_index,
                    ttl_seconds,
                    remaining_ttl_ms,
                } => {
                    segment.note_owner(lease_hash(lease), (change_index, 0));
                    note_lease_change(
                        &mut lease_changes,
                        lease,
                        LeaseChange {
                            change_index,
                            set: Some((ttl_seconds, remaining_ttl_ms)),
                            location,
                        },
                    );
                }
                Record::LeaseGone {
                    id: lease,
                    change_index,
                } => {
                    segment.note_owner(lease_hash(lease), (change_index, 0));
                    note_lease_change(
                        &mut lease_changes,
                        lease,
                        LeaseChange {
                            change_index,
                            set: None,
                            location,
                        },
                    );
                }
            }
        }
        state.segments.insert(id, segment);
    }
    let (commit, commit_location) = newest_commit
        .ok_or_else(|| MvccError::Corrupt(format!("{} holds no commit record", dir.display())))?;
    state.position = Position {
        applied_index: commit.applied_index,
        current_revision: commit.current_revision,
        compacted_revision: commit.compacted_revision,
    };
    if commit.compacted_revision > commit.current_revision {
        return Err(MvccError::Corrupt(format!(
            "compacted revision {} is above the current revision {}",
            commit.compacted_revision, commit.current_revision
        )));
    }
    state.remember(commit_location);
    state.commit_location = Some(commit_location);
    rebuild_keys(&mut state, versions)?;
    state.live_keys = state.count_live_keys();
    rebuild_leases(&mut state, lease_changes)?;
    state.refresh_files();
    let head = *ids.last().expect("not empty");
    Ok(Recovered {
        state,
        head,
        head_len,
        tail_repair,
    })
}

/// The most any commit record found after `from` says was synced, if any valid record follows.
fn synced_after(bytes: &Bytes, from: u64) -> Option<u64> {
    let mut at = segments::valid_record_after(bytes, from)?;
    let mut synced = 0;
    while (at as usize) < bytes.len() {
        match layout::decode_record(&bytes.slice(at as usize..)) {
            Ok((record, size)) => {
                if let Record::Commit(commit) = record {
                    synced = synced.max(commit.synced_bytes);
                }
                at += size as u64;
            }
            Err(_) => match segments::valid_record_after(bytes, at) {
                Some(next) => at = next,
                None => break,
            },
        }
    }
    Some(synced)
}

fn note_lease_change(
    changes: &mut BTreeMap<LeaseId, LeaseChange>,
    id: LeaseId,
    change: LeaseChange,
) {
    match changes.get(&id) {
        // Equal change indexes are copies of one record (a copy whose original survived): the
        // later segment (scanned later) holds the copy GC made last, which the state points at.
        Some(known) if known.change_index > change.change_index => {}
        _ => {
            changes.insert(id, change);
        }
    }
}

/// Sorts each key's versions, drops duplicates (a copy and its original), applies compaction at
/// the compacted revision, and builds the change log from it on.
fn rebuild_keys(
    state: &mut State,
    versions: BTreeMap<Bytes, Vec<Version>>,
) -> Result<(), MvccError> {
    let compacted = state.position.compacted_revision as u64;
    let current = state.position.current_revision as u64;
    let mut changes: Vec<Change> = Vec::new();
    for (key, mut found) in versions {
        // Newest copy first among equals, so dedup keeps the copy GC made last.
        found.sort_by(|a, b| {
            a.at.cmp(&b.at)
                .then(b.location.segment.cmp(&a.location.segment))
        });
        found.dedup_by(|later, earlier| later.at == earlier.at);
        if let Some(newest) = found.last().filter(|v| v.at.0 > current) {
            return Err(MvccError::Corrupt(format!(
                "{key:?} has a version at revision {} above the current revision {current}",
                newest.at.0
            )));
        }
        // Compaction: of the versions at or below C only the newest stays, and not if it is a
        // tombstone below C.
        let at_or_below = found.partition_point(|v| v.at.0 <= compacted);
        let mut kept: Vec<Version> = Vec::with_capacity(found.len() - at_or_below + 1);
        if at_or_below > 0 {
            let newest = found[at_or_below - 1];
            if newest.is_put() || newest.at.0 == compacted {
                kept.push(newest);
            }
        }
        kept.extend_from_slice(&found[at_or_below..]);
        if kept.is_empty() {
            continue;
        }
        for version in &kept {
            state.remember(version.location);
            if version.at.0 >= compacted {
                changes.push(Change {
                    at: version.at,
                    key: key.clone(),
                });
            }
        }
        state.keys.insert(key, kept);
    }
    changes.sort_unstable_by_key(|change| change.at);
    if let Some(pair) = changes.windows(2).find(|pair| pair[0].at == pair[1].at) {
        return Err(MvccError::Corrupt(format!(
            "keys {:?} and {:?} both changed at {:?}",
            pair[0].key, pair[1].key, pair[0].at
        )));
    }
    // The changes at exactly the compacted revision are the ones the sweep keeps and has visited.
    state.sweep_cursor = changes.partition_point(|change| change.at.0 <= compacted);
    state.changes = changes.into();
    Ok(())
}

/// Each lease's newest change decides whether it exists; the keys attached to it are the keys
/// whose current version names it.
fn rebuild_leases(
    state: &mut State,
    changes: BTreeMap<LeaseId, LeaseChange>,
) -> Result<(), MvccError> {
    for (id, change) in changes {
        let Some((ttl_seconds, remaining_ttl_ms)) = change.set else {
            continue;
        };
        state.remember(change.location);
        state.leases.insert(
            id,
            LeaseEntry {
                ttl_seconds,
                remaining_ttl_ms,
                keys: BTreeSet::new(),
                change_index: change.change_index,
                location: change.location,
            },
        );
    }
    let attached: Vec<(LeaseId, Bytes)> = state
        .keys
        .iter()
        .filter_map(|(key, versions)| {
            let lease = versions.last()?.put?.lease;
            (lease != 0).then(|| (lease, key.clone()))
        })
        .collect();
    for (lease, key) in attached {
        let entry = state.leases.get_mut(&lease).ok_or_else(|| {
            MvccError::Corrupt(format!(
                "{key:?} is attached to lease {lease}, which does not exist"
            ))
        })?;
        entry.keys.insert(key);
    }
    Ok(())
}

/// A fresh store: one segment with a commit record at revision 1 (as etcd, an empty store is at
/// revision 1, so the first write makes revision 2: clients read a zero revision as "not set").
fn create_empty(dir: &Path) -> Result<Recovered, MvccError> {
    let head: SegmentId = 1;
    let (file, header_len) = segments::create(dir, head)?;
    let mut state = State {
        position: Position {
            applied_index: 0,
            current_revision: INITIAL_REVISION,
            compacted_revision: 0,
        },
        ..State::default()
    };
    let mut buffer = Vec::new();
    let len = layout::encode_commit(
        &CommitRecord {
            applied_index: 0,
            current_revision: INITIAL_REVISION,
            compacted_revision: 0,
            synced_bytes: 0,
        },
        &mut buffer,
    );
    use std::os::unix::fs::FileExt;
    file.write_all_at(&buffer, header_len)
        .and_then(|()| file.sync_data())
        .map_err(|e| segments::io_error("cannot write", &segments::segment_path(dir, head), e))?;
    let location = Location {
        segment: head,
        len: len as u32,
        offset: header_len,
    };
    state
        .segments
        .insert(head, SegmentInfo::new(file, header_len + len as u64));
    state.remember(location);
    state.commit_location = Some(location);
    state.refresh_files();
    Ok(Recovered {
        state,
        head,
        head_len: header_len + len as u64,
        tail_repair: None,
    })
}

/// The sibling directories a restore uses: the new state being built, and the old one while the
/// two are swapped.
pub(crate) fn restore_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    (
        dir.with_file_name(format!("{name}.new")),
        dir.with_file_name(format!("{name}.old")),
    )
}

/// A restore builds `<dir>.new` completely and durably, renames `<dir>` to `<dir>.old`, renames
/// `<dir>.new` to `<dir>`, then deletes `<dir>.old`. After a crash anywhere in that, this finishes
/// or forgets it: with both `.new` and `.old` but no `<dir>`, the new state was complete (it was
/// synced before the first rename); with `<dir>` present, a `.new` is unfinished and an `.old` is
/// left over.
fn finish_interrupted_restore(dir: &Path) -> Result<(), MvccError> {
    let (new, old) = restore_dirs(dir);
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if !dir.exists() && old.exists() && !new.exists() {
        return Err(MvccError::Corrupt(format!(
            "{} is missing and {} is there without {}: a restore was interrupted in a way it \
             never is (rename {} back to use the state from before the restore)",
            dir.display(),
            old.display(),
            new.display(),
            old.display()
        )));
    }
    if !dir.exists() && new.exists() && old.exists() {
        std::fs::rename(&new, dir).map_err(|e| segments::io_error("cannot rename", &new, e))?;
        if let Some(parent) = parent {
            segments::sync_dir(parent)?;
        }
    }
    for leftover in [&new, &old] {
        if dir.exists() && leftover.exists() {
            std::fs::remove_dir_all(leftover)
                .map_err(|e| segments::io_error("cannot delete", leftover, e))?;
        }
    }
    Ok(())
}
