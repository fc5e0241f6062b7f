//! Reading the versioned state: etcd's Range rules over versions located in the index, with
//! values loaded from their records. Records are read through [`Records`]: from the segment files
//! for a read (after the state lock is released), or also from the batch being written for the
//! compares and ranges inside a transaction (they see its own earlier writes). Never writes.

use super::error::{ApplyError, MvccError};
use super::index::Version;
use super::layout::decode_version_record;
use super::segments::{self, Location, SegmentId};
use super::types::*;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

/// Where records are read from.
pub(crate) trait Records {
    fn read(&self, location: Location) -> Result<Bytes, MvccError>;
}

/// The segment files, as a read found them under the state lock.
pub(crate) struct Files(pub Arc<HashMap<SegmentId, Arc<File>>>);

impl Records for Files {
    fn read(&self, location: Location) -> Result<Bytes, MvccError> {
        let file = self.0.get(&location.segment).ok_or_else(|| {
            MvccError::Corrupt(format!(
                "a record is in segment {}, which does not exist",
                location.segment
            ))
        })?;
        segments::read_record(file, location)
    }
}

/// The key-value of `version` of `key`, reading its value only when asked.
pub(crate) fn load(
    records: &impl Records,
    key: &Bytes,
    version: &Version,
    with_value: bool,
) -> Result<KeyValue, MvccError> {
    let meta = version.put.ok_or_else(|| {
        MvccError::Corrupt(format!("loading a tombstone of {key:?} as a key-value"))
    })?;
    let value = if with_value {
        value_of(records, key, version)?
    } else {
        Bytes::new()
    };
    Ok(KeyValue {
        key: key.clone(),
        create_revision: meta.create_revision,
        mod_revision: version.at.0 as Revision,
        version: meta.version,
        value,
        lease: meta.lease,
    })
}

/// The value stored in `version`'s record, which must be the record the index says it is.
pub(crate) fn value_of(
    records: &impl Records,
    key: &[u8],
    version: &Version,
) -> Result<Bytes, MvccError> {
    let bytes = records.read(version.location)?;
    let record = decode_version_record(&bytes).map_err(|defect| {
        MvccError::Corrupt(format!(
            "the record of {key:?} at revision {:?} ({:?}): {defect}",
            version.at, version.location
        ))
    })?;
    if record.key != key || record.at != version.at {
        return Err(MvccError::Corrupt(format!(
            "{:?} holds {:?} at {:?}, the index says {key:?} at {:?}",
            version.location, record.key, record.at, version.at
        )));
    }
    match record.put {
        Some((_, value)) => Ok(value),
        None => Err(MvccError::Corrupt(format!(
            "the index says put, the record of {key:?} at {:?} is a tombstone",
            version.at
        ))),
    }
}

/// etcd's `Range` over the keys `located` (each key in range at the read revision, in key order,
/// with that version). `current_revision` is what "now" means (inside a transaction, the revision
/// it is writing once it wrote something).
pub(crate) fn range(
    request: &RangeRequest,
    located: &[(Bytes, Version)],
    current_revision: Revision,
    records: &impl Records,
) -> Result<RangeResponse, MvccError> {
    let mut response = RangeResponse {
        count: located.len() as i64,
        revision: current_revision,
        ..Default::default()
    };
    if request.count_only {
        return Ok(response);
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
        let take = |(key, version): &(Bytes, Version)| load(records, key, version, with_value);
        match order {
            SortOrder::Descend => {
                for found in located.iter().rev().take(limit) {
                    kvs.push(take(found)?);
                }
            }
            _ => {
                for found in located.iter().take(limit) {
                    kvs.push(take(found)?);
                }
            }
        }
        response.more = located.len() > limit;
    } else {
        let sort_by_value = request.sort_target == SortTarget::Value;
        // etcd reads everything only when it must (an order asked for, or filters); otherwise,
        // with a limit, it reads `limit + 1` keys in key order and sorts those alone (by the
        // target, ascending): sorting by another target without an order is a sort of a page.
        let scanned = if request.sort_order == SortOrder::None && !filtered && limit < usize::MAX {
            &located[..located.len().min(limit + 1)]
        } else {
            located
        };
        let mut candidates = Vec::new();
        for (key, version) in scanned {
            let meta = version.put.expect("located versions are puts");
            let kv = KeyValue {
                key: key.clone(),
                create_revision: meta.create_revision,
                mod_revision: version.at.0 as Revision,
                version: meta.version,
                value: Bytes::new(),
                lease: meta.lease,
            };
            if passes_filters(request, &kv) {
                candidates.push((kv, version));
            }
        }
        if sort_by_value {
            for (kv, version) in &mut candidates {
                kv.value = value_of(records, &kv.key, version)?;
            }
        }
        let mut sorted: Vec<KeyValue> = candidates.into_iter().map(|(kv, _)| kv).collect();
        sort_kvs(&mut sorted, request.sort_target, order);
        response.more = sorted.len() > limit;
        sorted.truncate(limit);
        if with_value && !sort_by_value {
            for kv in &mut sorted {
                let version = located
                    .binary_search_by(|(key, _)| key.cmp(&kv.key))
                    .map(|i| located[i].1)
                    .expect("a filtered key-value was located");
                kv.value = value_of(records, &kv.key, &version)?;
            }
        } else if !with_value {
            sorted.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        return Ok(RangeResponse {
            kvs: sorted,
            ..response
        });
    }
    response.kvs = kvs;
    Ok(response)
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
