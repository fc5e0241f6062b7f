//! The invariants of `docs/design/storage.md` ("MVCC state machine"), checked over the whole
//! store. Tests run it after every step; a broken invariant is a panic naming it.

use super::error::MvccError;
use super::layout::*;
use super::store::MvccStore;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::BTreeMap;

pub(crate) fn check(store: &MvccStore) -> Result<(), MvccError> {
    let txn = store.database().begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |name| -> Result<u64, MvccError> { Ok(meta.get(name)?.map_or(0, |v| v.value())) };
    let current = get(META_CURRENT_REVISION)?;
    let compacted = get(META_COMPACTED_REVISION)?;
    assert_eq!(
        get(META_FORMAT_VERSION)?,
        FORMAT_VERSION,
        "the file has our format"
    );
    assert!(
        compacted <= current,
        "invariant 3: compacted revision {compacted} <= current revision {current}"
    );
    assert_eq!(
        get(META_APPLIED_INDEX)?,
        store.applied_index(),
        "invariant 6: the published applied index is the stored one"
    );

    let versions = txn.open_table(VERSIONS)?;
    let changes = txn.open_table(CHANGES)?;
    let live = txn.open_table(LIVE)?;
    let leases = txn.open_table(LEASES)?;
    let lease_keys = txn.open_table(LEASE_KEYS)?;

    // Newest version and number of versions at or below the compacted revision, per key.
    let mut newest: BTreeMap<Vec<u8>, ((u64, u32), Record)> = BTreeMap::new();
    let mut at_or_below_compacted: BTreeMap<Vec<u8>, Vec<(u64, bool)>> = BTreeMap::new();
    let mut version_count = 0u64;
    for entry in versions.iter()? {
        let (at, record) = entry?;
        let ((key, revision, sub_revision), record) = (at.value(), Record::decode(record.value())?);
        version_count += 1;
        assert!(
            revision >= 1 && revision <= current,
            "invariant 3: version at revision {revision} within 1..={current}"
        );
        let change = changes.get((revision, sub_revision))?;
        assert!(
            change.is_some_and(|c| c.value() == key),
            "invariant 2: version ({key:?}, {revision}, {sub_revision}) has its change-log entry"
        );
        if let Record::Put {
            create_revision,
            version,
            ..
        } = &record
        {
            assert!(
                *version >= 1 && *create_revision as u64 <= revision,
                "invariant 7: put record numbers are sane"
            );
            assert!(
                *version != 1 || *create_revision as u64 == revision,
                "invariant 7: version 1 is created at its revision"
            );
        }
        if revision <= compacted {
            at_or_below_compacted
                .entry(key.to_vec())
                .or_default()
                .push((revision, record == Record::Tombstone));
        }
        newest.insert(key.to_vec(), ((revision, sub_revision), record));
    }
    assert_eq!(
        changes.len()?,
        version_count,
        "invariant 2: one change-log entry per version"
    );
    for (key, kept) in &at_or_below_compacted {
        assert!(
            kept.len() == 1,
            "invariant 4: key {key:?} keeps one version at or below {compacted}, has {kept:?}"
        );
        let (revision, tombstone) = kept[0];
        assert!(
            !tombstone || revision == compacted,
            "invariant 4: only a tombstone at exactly {compacted} survives, not at {revision}"
        );
    }
    let mut live_count = 0u64;
    for (key, (at, record)) in &newest {
        let found = live.get(&key[..])?.map(|v| v.value());
        match record {
            Record::Put { lease, .. } => {
                live_count += 1;
                assert_eq!(
                    found,
                    Some(*at),
                    "invariant 1: live key {key:?} points at its newest version"
                );
                if *lease != 0 {
                    assert!(
                        leases.get(*lease)?.is_some(),
                        "invariant 5: key {key:?} is attached to an existing lease {lease}"
                    );
                    assert!(
                        lease_keys.get((*lease, &key[..]))?.is_some(),
                        "invariant 5: lease {lease} lists key {key:?}"
                    );
                }
            }
            Record::Tombstone => {
                assert_eq!(found, None, "invariant 1: deleted key {key:?} is not live")
            }
        }
    }
    assert_eq!(
        live.len()?,
        live_count,
        "invariant 1: every live key has a newest put"
    );
    for entry in lease_keys.iter()? {
        let (attached, _) = entry?;
        let (lease, key) = attached.value();
        let holds =
            matches!(newest.get(key), Some((_, Record::Put { lease: l, .. })) if *l == lease);
        assert!(
            holds,
            "invariant 5: lease {lease} lists key {key:?} only while the key is attached to it"
        );
    }
    Ok(())
}
