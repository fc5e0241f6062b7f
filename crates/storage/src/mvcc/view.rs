//! Reading the versioned state, over any redb table handles: the read-only ones of a read
//! transaction (`range`, `events`, snapshots) or the writable ones of the apply transaction
//! (compares and ranges inside a transaction see its own earlier writes, including the revision
//! records it has not yet appended). Never writes.

use super::error::{ApplyError, MvccError};
use super::layout::{split_revision_record, ChangeKey, Record, VersionKey, KIND_TOMBSTONE};
use super::types::*;
use bytes::Bytes;
use redb::ReadableTable;
use std::ops::Bound;

/// Revision records written by the apply transaction but not yet appended to `mvcc_revisions`
/// (they go in at the end of the batch, in one ordered run, so the leaves are packed full).
/// In revision order.
pub(crate) type Pending = [(ChangeKey, Vec<u8>)];

/// The tables a read needs.
pub(crate) struct View<'a, R, I> {
    pub revisions: &'a R,
    pub index: &'a I,
    pub pending: &'a Pending,
}

/// Where one version of a key lives: `(revision, sub_revision)` in `mvcc_revisions`, which is
/// `(key, revision, sub_revision)` in `mvcc_index`.
#[derive(Debug, Clone)]
pub(crate) struct Locator {
    pub key: Bytes,
    pub revision: u64,
    pub sub_revision: u32,
}

/// A start and an end bound.
type Bounds<T> = (Bound<T>, Bound<T>);

/// Bounds of a key range over keys, or `None` when the range is empty (`key >= range_end`).
fn key_bounds(range: &KeyRange) -> Option<Bounds<&[u8]>> {
    let start = Bound::Included(&range.key[..]);
    if range.range_end.is_empty() {
        return Some((start, Bound::Included(&range.key[..])));
    }
    if &range.range_end[..] == b"\0" {
        return Some((start, Bound::Unbounded));
    }
    (range.key < range.range_end).then_some((start, Bound::Excluded(&range.range_end[..])))
}

/// The same range over `mvcc_index` (every revision of every key in it).
fn version_bounds(range: &KeyRange) -> Option<Bounds<(&[u8], u64, u32)>> {
    let (start, end) = key_bounds(range)?;
    let Bound::Included(start) = start else {
        unreachable!("ranges start at their key")
    };
    let end = match end {
        Bound::Included(key) => Bound::Included((key, u64::MAX, u32::MAX)),
        Bound::Excluded(key) => Bound::Excluded((key, 0, 0)),
        Bound::Unbounded => Bound::Unbounded,
    };
    Some((Bound::Included((start, 0, 0)), end))
}

impl<R, I> View<'_, R, I>
where
    R: ReadableTable<ChangeKey, &'static [u8]>,
    I: ReadableTable<VersionKey, u8>,
{
    pub fn load(&self, at: &Locator, with_value: bool) -> Result<Option<KeyValue>, MvccError> {
        let revision_key = (at.revision, at.sub_revision);
        let missing = || {
            MvccError::Corrupt(format!(
                "no revision record ({}, {}) for key {:?}",
                at.revision, at.sub_revision, at.key
            ))
        };
        let pending = self
            .pending
            .binary_search_by(|(pending_at, _)| pending_at.cmp(&revision_key));
        let stored;
        let bytes = match pending {
            Ok(position) => &self.pending[position].1[..],
            Err(_) => {
                stored = self.revisions.get(revision_key)?.ok_or_else(missing)?;
                stored.value()
            }
        };
        let (key, record) = split_revision_record(bytes)?;
        if key != &at.key[..] {
            return Err(MvccError::Corrupt(format!(
                "revision ({}, {}) holds key {key:?}, the index says {:?}",
                at.revision, at.sub_revision, at.key
            )));
        }
        Record::decode_kv(record, key, at.revision as Revision, with_value)
    }

    /// The newest version of `key` at or below `revision`: where it is and whether it is a put.
    fn newest(&self, key: &[u8], revision: u64) -> Result<Option<(Locator, bool)>, MvccError> {
        let range = (key, 0u64, 0u32)..=(key, revision, u32::MAX);
        let Some(entry) = self.index.range(range)?.next_back() else {
            return Ok(None);
        };
        let (found, kind) = entry?;
        let (_, revision, sub_revision) = found.value();
        let at = Locator {
            key: Bytes::copy_from_slice(key),
            revision,
            sub_revision,
        };
        Ok(Some((at, kind.value() != KIND_TOMBSTONE)))
    }

    /// Whether the version `(key, at)` is reachable after compaction at `compacted_revision`,
    /// that is, what the sweep leaves: every version above it, and at or below it only the key's
    /// newest version there, unless that is a tombstone below it.
    pub fn reachable(
        &self,
        key: &[u8],
        at: ChangeKey,
        tombstone: bool,
        compacted_revision: Revision,
    ) -> Result<bool, MvccError> {
        let compacted = compacted_revision as u64;
        if at.0 > compacted {
            return Ok(true);
        }
        if tombstone && at.0 < compacted {
            return Ok(false);
        }
        let newest = self.newest(key, compacted)?;
        Ok(newest.is_some_and(|(found, _)| (found.revision, found.sub_revision) == at))
    }

    /// Whether the key exists now (without loading its value).
    pub fn exists(&self, key: &[u8]) -> Result<bool, MvccError> {
        Ok(matches!(self.newest(key, u64::MAX)?, Some((_, true))))
    }

    /// The key's current version, if it exists now.
    pub fn current(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        self.at_revision(key, Revision::MAX)
    }

    /// The key as of `revision` (its newest retained version at or below it), if it existed.
    pub fn at_revision(
        &self,
        key: &[u8],
        revision: Revision,
    ) -> Result<Option<KeyValue>, MvccError> {
        if revision <= 0 {
            return Ok(None);
        }
        match self.newest(key, revision as u64)? {
            Some((at, true)) => {
                let kv = self.load(&at, true)?;
                kv.ok_or_else(|| {
                    MvccError::Corrupt(format!("index says put, record is a tombstone: {at:?}"))
                })
                .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Every key in `range` that exists at `revision`, in key order; `None` means "now".
    pub fn locate(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
    ) -> Result<Vec<Locator>, MvccError> {
        let mut found = Vec::new();
        let Some(bounds) = version_bounds(range) else {
            return Ok(found);
        };
        let revision = revision.map_or(u64::MAX, |r| r as u64);
        // Versions come in key order, then revision order: remember the newest version at or
        // below `revision` of the key being scanned, and keep it if it is a put.
        let mut newest: Option<(Locator, bool)> = None;
        for entry in self.index.range::<(&[u8], u64, u32)>(bounds)? {
            let (at, kind) = entry?;
            let (key, version_revision, sub_revision) = at.value();
            if version_revision > revision {
                continue;
            }
            let is_put = kind.value() != KIND_TOMBSTONE;
            match &mut newest {
                Some((last, last_is_put)) if &last.key[..] == key => {
                    last.revision = version_revision;
                    last.sub_revision = sub_revision;
                    *last_is_put = is_put;
                }
                _ => {
                    if let Some((last, true)) = newest.take() {
                        found.push(last);
                    }
                    let locator = Locator {
                        key: Bytes::copy_from_slice(key),
                        revision: version_revision,
                        sub_revision,
                    };
                    newest = Some((locator, is_put));
                }
            }
        }
        if let Some((last, true)) = newest {
            found.push(last);
        }
        Ok(found)
    }

    /// Every key-value in `range` now, in key order (for compares and deletes).
    pub fn current_range(&self, range: &KeyRange) -> Result<Vec<KeyValue>, MvccError> {
        let mut kvs = Vec::new();
        for at in self.locate(range, None)? {
            kvs.extend(self.load(&at, true)?);
        }
        Ok(kvs)
    }

    /// etcd's `Range`, reading at `request.revision` (0: now). `current_revision` is the revision
    /// "now" means (inside a transaction, the one it is writing once it wrote something).
    pub fn range(
        &self,
        request: &RangeRequest,
        current_revision: Revision,
        compacted_revision: Revision,
    ) -> Result<Result<RangeResponse, ApplyError>, MvccError> {
        if let Err(refused) =
            check_read_revision(request.revision, current_revision, compacted_revision)
        {
            return Ok(Err(refused));
        }
        let at = (request.revision > 0).then_some(request.revision);
        let found = self.locate(&request.range, at)?;
        let mut response = RangeResponse {
            count: found.len() as i64,
            revision: current_revision,
            ..Default::default()
        };
        if request.count_only {
            return Ok(Ok(response));
        }
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        let order = effective_sort_order(request);
        let limit = if request.limit > 0 {
            request.limit as usize
        } else {
            usize::MAX
        };
        let with_value = !request.keys_only;
        let mut kvs = Vec::new();
        if !filtered && request.sort_target == SortTarget::Key {
            // Key order is the scan order: load only what is returned.
            let take = |at: &Locator| self.load(at, with_value);
            match order {
                SortOrder::Descend => {
                    for at in found.iter().rev().take(limit) {
                        kvs.extend(take(at)?);
                    }
                }
                _ => {
                    for at in found.iter().take(limit) {
                        kvs.extend(take(at)?);
                    }
                }
            }
            response.more = found.len() > limit;
        } else {
            let sort_by_value = request.sort_target == SortTarget::Value;
            for at in &found {
                kvs.extend(self.load(at, with_value || sort_by_value)?);
            }
            kvs.retain(|kv| passes_filters(request, kv));
            sort_kvs(&mut kvs, request.sort_target, order);
            response.more = kvs.len() > limit;
            kvs.truncate(limit);
            if !with_value {
                kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
            }
        }
        response.kvs = kvs;
        Ok(Ok(response))
    }
}

/// A read at `revision` (0: now) needs `compacted <= revision <= current`.
pub(crate) fn check_read_revision(
    revision: Revision,
    current: Revision,
    compacted: Revision,
) -> Result<(), ApplyError> {
    if revision > current {
        return Err(ApplyError::FutureRevision {
            current_revision: current,
        });
    }
    if revision > 0 && revision < compacted {
        return Err(ApplyError::Compacted {
            compacted_revision: compacted,
        });
    }
    Ok(())
}

/// etcd: any target but the key with no order sorts ascending; key ascending is scan order.
pub(crate) fn effective_sort_order(request: &RangeRequest) -> SortOrder {
    match (request.sort_target, request.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    }
}

pub(crate) fn passes_filters(request: &RangeRequest, kv: &KeyValue) -> bool {
    !(request.max_mod_revision != 0 && kv.mod_revision > request.max_mod_revision
        || request.min_mod_revision != 0 && kv.mod_revision < request.min_mod_revision
        || request.max_create_revision != 0 && kv.create_revision > request.max_create_revision
        || request.min_create_revision != 0 && kv.create_revision < request.min_create_revision)
}

/// Stable sort: ties keep key order, for both directions.
pub(crate) fn sort_kvs(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let compare = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(compare),
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
    }
}
