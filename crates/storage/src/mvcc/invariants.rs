//! The invariants of `docs/design/storage.md` ("MVCC state machine"), checked over the whole
//! store: the in-memory state on its own, against every record it points at, and against the
//! state an open of the same directory rebuilds. Tests run it after every step; a broken
//! invariant is a panic naming it.

use super::index::State;
use super::layout::{decode_record, Record};
use super::recovery;
use super::segments;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub(crate) fn check(state: &State, dir: &Path) {
    let position = state.position;
    let current = position.current_revision as u64;
    let compacted = position.compacted_revision as u64;
    assert!(
        compacted <= current,
        "invariant 3: compacted revision {compacted} <= current revision {current}"
    );
    let read = |location: segments::Location| {
        let segment = state
            .segments
            .get(&location.segment)
            .unwrap_or_else(|| panic!("invariant 1: {location:?} is in an existing segment"));
        let bytes = segments::read_record(&segment.file, location).expect("readable");
        decode_record(&bytes)
            .unwrap_or_else(|defect| panic!("invariant 1: {location:?} holds a record: {defect}"))
            .0
    };
    assert_eq!(
        state.live_keys,
        state.count_live_keys(),
        "invariant 11: the live key count is the number of keys whose newest version is a put"
    );
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    let mut count = |location: segments::Location| {
        *live.entry(location.segment).or_default() += u64::from(location.len);
    };

    // Versions.
    let mut above_compacted = BTreeSet::new();
    for (key, versions) in &state.keys {
        assert!(!versions.is_empty(), "invariant 2: {key:?} has a version");
        assert!(
            versions.windows(2).all(|pair| pair[0].at < pair[1].at),
            "invariant 2: the versions of {key:?} are in revision order"
        );
        for version in versions {
            assert!(
                version.at.0 >= 1 && version.at.0 <= current,
                "invariant 3: version at {:?} within 1..={current}",
                version.at
            );
            let Record::Version(record) = read(version.location) else {
                panic!("invariant 1: {:?} holds a version record", version.location)
            };
            assert!(
                record.key == key && record.at == version.at,
                "invariant 1: {:?} holds {key:?} at {:?}",
                version.location,
                version.at
            );
            assert_eq!(
                record.put.as_ref().map(|(meta, _)| *meta),
                version.put,
                "invariant 1: the record of {key:?} at {:?} says what the index says",
                version.at
            );
            if let Some(meta) = version.put {
                let revision = version.at.0 as i64;
                assert!(
                    meta.version >= 1 && meta.create_revision <= revision,
                    "invariant 7: put numbers are sane for {key:?} at {:?}",
                    version.at
                );
                assert!(
                    meta.version != 1 || meta.create_revision == revision,
                    "invariant 7: version 1 of {key:?} is created at its revision"
                );
            }
            if version.at.0 > compacted {
                above_compacted.insert((version.at, key.clone()));
            }
            count(version.location);
        }
        if !state.sweep_behind() {
            let kept: Vec<_> = versions.iter().filter(|v| v.at.0 <= compacted).collect();
            assert!(
                kept.len() <= 1,
                "invariant 4: {key:?} keeps one version at or below {compacted}, has {kept:?}"
            );
            if let Some(only) = kept.first() {
                assert!(
                    only.is_put() || only.at.0 == compacted,
                    "invariant 4: only a tombstone at exactly {compacted} survives, not {:?}",
                    only.at
                );
            }
        }
    }

    // The change log.
    assert!(
        state
            .changes
            .iter()
            .zip(state.changes.iter().skip(1))
            .all(|(a, b)| a.at < b.at),
        "invariant 8: the change log is in revision order"
    );
    assert!(
        state
            .changes
            .iter()
            .take(state.sweep_cursor)
            .all(|change| change.at.0 == compacted),
        "invariant 8: the sweep has visited only changes at the compacted revision it keeps"
    );
    let logged: BTreeSet<_> = state
        .changes
        .iter()
        .filter(|change| change.at.0 > compacted)
        .map(|change| (change.at, change.key.clone()))
        .collect();
    assert_eq!(
        logged, above_compacted,
        "invariant 8: the change log above the compacted revision is every version there"
    );

    // Leases.
    for (&id, lease) in &state.leases {
        let Record::Lease {
            id: stored,
            change_index,
            ttl_seconds,
            remaining_ttl_ms,
        } = read(lease.location)
        else {
            panic!("invariant 5: lease {id}'s record is a lease record")
        };
        assert_eq!(
            (stored, change_index, ttl_seconds, remaining_ttl_ms),
            (
                id,
                lease.change_index,
                lease.ttl_seconds,
                lease.remaining_ttl_ms
            ),
            "invariant 5: lease {id}'s record says what the state says"
        );
        count(lease.location);
        for key in &lease.keys {
            let attached = state.current(key).and_then(|v| v.put).map(|m| m.lease);
            assert_eq!(
                attached,
                Some(id),
                "invariant 5: lease {id} lists {key:?} only while the key is attached to it"
            );
        }
    }
    for (key, versions) in &state.keys {
        let lease = versions.last().and_then(|v| v.put).map_or(0, |m| m.lease);
        if lease != 0 {
            assert!(
                state
                    .leases
                    .get(&lease)
                    .is_some_and(|l| l.keys.contains(key)),
                "invariant 5: {key:?} is attached to lease {lease}, which exists and lists it"
            );
        }
    }

    // The position and the accounting.
    let commit = state
        .commit_location
        .expect("invariant 6: there is a commit record");
    let Record::Commit(record) = read(commit) else {
        panic!("invariant 6: the latest commit record is one")
    };
    assert_eq!(
        (
            record.applied_index,
            record.current_revision,
            record.compacted_revision
        ),
        (
            position.applied_index,
            position.current_revision,
            position.compacted_revision
        ),
        "invariant 6: the latest commit record is the state's position"
    );
    count(commit);
    for (&id, segment) in &state.segments {
        assert_eq!(
            segment.live_bytes,
            live.get(&id).copied().unwrap_or(0),
            "invariant 9: segment {id}'s live bytes are those of the records the state refers to"
        );
        let on_disk = std::fs::metadata(segments::segment_path(dir, id))
            .map(|m| m.len())
            .unwrap_or_else(|e| panic!("invariant 9: segment {id} exists: {e}"));
        assert_eq!(
            segment.bytes, on_disk,
            "invariant 9: segment {id}'s length is its file's"
        );
        assert!(
            !segment.retired || segment.live_bytes == 0,
            "invariant 9: a retired segment {id} holds nothing live"
        );
    }

    // What an open would rebuild from the files.
    let reopened = recovery::recover(dir)
        .expect("invariant 10: the directory opens")
        .state;
    assert_eq!(
        reopened.position, position,
        "invariant 10: an open finds the same position"
    );
    let reachable = |state: &State| {
        let mut all = BTreeMap::new();
        for (key, versions) in &state.keys {
            let kept: Vec<_> = versions
                .iter()
                .filter(|v| state.reachable(key, v.at, !v.is_put()))
                .map(|v| (v.at, v.put, v.location))
                .collect();
            if !kept.is_empty() {
                all.insert(key.clone(), kept);
            }
        }
        all
    };
    assert_eq!(
        reachable(&reopened),
        reachable(state),
        "invariant 10: an open finds every reachable version where the state has it, and no other"
    );
    let leases = |state: &State| {
        state
            .leases
            .iter()
            .map(|(&id, l)| {
                (
                    id,
                    l.ttl_seconds,
                    l.remaining_ttl_ms,
                    l.keys.clone(),
                    l.location,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        leases(&reopened),
        leases(state),
        "invariant 10: an open finds the same leases"
    );
    // Segment GC drops a dead tombstone only if no other segment holds an older record of its
    // key, which it reads from each segment's oldest record per owner: the running state must
    // know what an open finds by reading every record (each write notes the record it adds).
    for (id, segment) in &state.segments {
        if let Some(rebuilt) = reopened.segments.get(id) {
            assert_eq!(
                segment.oldest, rebuilt.oldest,
                "invariant 10: segment {id} knows the oldest record of every owner it holds"
            );
        }
    }
}
