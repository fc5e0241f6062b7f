//! The invariants of `docs/design/storage.md` ("MVCC state machine"), checked over the whole
//! store. Tests run it after every step; a broken invariant is a panic naming it.

use super::error::MvccError;
use super::layout::*;
use super::store::{read_sweep, MvccStore};
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

    let sweep = read_sweep(&meta)?;
    let swept = sweep.done_revision as u64;
    assert!(
        swept <= compacted
            && (swept, 0) <= sweep.resume
            && sweep.resume <= (compacted, u32::MAX),
        "invariant 4: the sweep ({sweep:?}) is between the revisions it started from and compacted {compacted}"
    );
    let revisions = txn.open_table(REVISIONS)?;
    let index = txn.open_table(INDEX)?;
    let leases = txn.open_table(LEASES)?;
    let lease_keys = txn.open_table(LEASE_KEYS)?;

    // Newest version of each key, and its versions at or below the revision the sweep finished.
    let mut newest: BTreeMap<Vec<u8>, ((u64, u32), Record)> = BTreeMap::new();
    let mut at_or_below_swept: BTreeMap<Vec<u8>, Vec<(u64, bool)>> = BTreeMap::new();
    let mut version_count = 0u64;
    for entry in index.iter()? {
        let (at, kind) = entry?;
        let ((key, revision, sub_revision), kind) = (at.value(), kind.value());
        version_count += 1;
        assert!(
            revision >= 1 && revision <= current,
            "invariant 3: version at revision {revision} within 1..={current}"
        );
        let stored = revisions.get((revision, sub_revision))?;
        let stored = stored.unwrap_or_else(|| {
            panic!("invariant 1: version ({key:?}, {revision}, {sub_revision}) has its revision record")
        });
        let (stored_key, record) = split_revision_record(stored.value())?;
        let record = Record::decode(record)?;
        assert!(
            stored_key == key && record.kind() == kind,
            "invariant 1: revision ({revision}, {sub_revision}) holds key {key:?} and kind {kind}"
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
        if revision <= swept {
            at_or_below_swept
                .entry(key.to_vec())
                .or_default()
                .push((revision, record == Record::Tombstone));
        }
        newest.insert(key.to_vec(), ((revision, sub_revision), record));
    }
    assert_eq!(
        revisions.len()?,
        version_count,
        "invariant 2: one revision record per index entry"
    );
    for (key, kept) in &at_or_below_swept {
        assert!(
            kept.len() == 1,
            "invariant 4: key {key:?} keeps one version at or below {swept}, has {kept:?}"
        );
        let (revision, tombstone) = kept[0];
        assert!(
            !tombstone || revision == swept,
            "invariant 4: only a tombstone at exactly {swept} survives, not at {revision}"
        );
    }
    for (key, (_, record)) in &newest {
        if let Record::Put { lease, .. } = record {
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
    }
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
