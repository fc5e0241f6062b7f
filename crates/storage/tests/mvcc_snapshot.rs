//! Snapshot and restore of the whole state, and agreement between replicas (hash_kv).

mod mvcc_common;

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{MvccError, MvccStore};
use mvcc_common::*;

fn workload() -> Vec<(u64, Command)> {
    let mut entries = vec![(
        1,
        Command::LeaseGrant {
            id: 0,
            ttl_seconds: 60,
        },
    )];
    let mut index = 2;
    for round in 0..6 {
        for key in ["a", "b", "c", "d/1", "d/2", "e"] {
            let command = if key.starts_with('d') {
                put_with_lease(key, &format!("{round}"), 1)
            } else {
                put(key, &format!("{key}{round}"))
            };
            entries.push((index, command));
            index += 1;
        }
        entries.push((index, delete("b", "c")));
        index += 1;
        if round == 3 {
            entries.push((index, Command::Compact { revision: 12 }));
            index += 1;
            entries.push((
                index,
                Command::LeaseCheckpoint {
                    checkpoints: vec![(1, 1234)],
                },
            ));
            index += 1;
        }
    }
    entries
}

fn full_state(store: &MvccStore) -> Vec<RangeResponse> {
    let mut states = vec![];
    for revision in [0, store.compacted_revision(), store.revision() - 3] {
        let request = RangeRequest {
            range: everything(),
            revision,
            ..Default::default()
        };
        states.push(store.range(&request).unwrap());
    }
    states
}

#[test]
fn restore_into_a_fresh_store_is_identical() {
    let dir = TempDir::new("mvcc-snapshot");
    let source = MvccStore::open(dir.file("source")).unwrap();
    source.apply_batch(&workload()).unwrap();
    let snapshot = source.snapshot().unwrap();

    let target = MvccStore::open(dir.file("target")).unwrap();
    target
        .apply_batch(&[(1, put("stale", "x")), (2, put("zzz", "y"))])
        .unwrap();
    target.restore(&snapshot).unwrap();
    target.invariants();
    assert_eq!(
        (
            target.applied_index(),
            target.revision(),
            target.compacted_revision()
        ),
        (
            source.applied_index(),
            source.revision(),
            source.compacted_revision()
        )
    );
    assert_eq!(full_state(&target), full_state(&source));
    assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    assert_eq!(target.hash_kv(15).unwrap(), source.hash_kv(15).unwrap());
    assert_eq!(target.leases().unwrap(), source.leases().unwrap());
    let events = |s: &MvccStore| {
        s.events(&everything(), s.compacted_revision(), s.revision(), 0, true)
            .unwrap()
    };
    assert_eq!(events(&target), events(&source));
    // Both go on identically.
    let next = vec![
        (1000, Command::LeaseRevoke { id: 1 }),
        (1001, put("f", "1")),
    ];
    assert_eq!(
        target.apply_batch(&next).unwrap(),
        source.apply_batch(&next).unwrap()
    );
    assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    // And the restore survives a reopen.
    drop(target);
    let reopened = MvccStore::open(dir.file("target")).unwrap();
    assert_eq!(full_state(&reopened), full_state(&source));
}

#[test]
fn replicas_batching_differently_agree_and_hash_kv_sees_a_difference() {
    let dir = TempDir::new("mvcc-hash");
    let one_by_one = MvccStore::open(dir.file("a")).unwrap();
    let batched = MvccStore::open(dir.file("b")).unwrap();
    let entries = workload();
    for (index, command) in &entries {
        one_by_one.apply(*index, command).unwrap();
    }
    for chunk in entries.chunks(5) {
        batched.apply_batch(chunk).unwrap();
    }
    assert_eq!(one_by_one.hash_kv(0).unwrap(), batched.hash_kv(0).unwrap());
    assert_eq!(one_by_one.snapshot().unwrap(), batched.snapshot().unwrap());
    let (hash, compacted) = batched.hash_kv(0).unwrap();
    assert_eq!(compacted, 12);
    batched.apply(10_000, &put("a", "diverged")).unwrap();
    assert_ne!(batched.hash_kv(0).unwrap().0, hash);
    assert_eq!(
        batched.hash_kv(one_by_one.revision()).unwrap().0,
        hash,
        "hash at the old revision is unchanged"
    );
    assert!(
        matches!(batched.hash_kv(5), Err(MvccError::Request(_))),
        "below the compacted revision"
    );
}

#[test]
fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = TempDir::new("mvcc-snapshot-bad");
    let source = MvccStore::open(dir.file("source")).unwrap();
    source.apply_batch(&workload()).unwrap();
    let snapshot = source.snapshot().unwrap();
    let target = MvccStore::open(dir.file("target")).unwrap();
    target.apply(1, &put("keep", "me")).unwrap();
    let before = target.snapshot().unwrap();
    let mut flipped = snapshot.to_vec();
    flipped[60] ^= 1;
    for bad in [
        &snapshot[..snapshot.len() - 1],
        &flipped[..],
        &b"BALLOTMV"[..],
        &[][..],
    ] {
        assert!(matches!(target.restore(bad), Err(MvccError::Snapshot(_))));
        assert_eq!(target.snapshot().unwrap(), before);
    }
}

#[test]
fn a_snapshot_summary_counts_what_it_holds_and_hashes_as_hash_kv() {
    let dir = TempDir::new("mvcc-snapshot-summary");
    let source = MvccStore::open(dir.file("source")).unwrap();
    source.apply_batch(&workload()).unwrap();
    let snapshot = source.snapshot().unwrap();
    let summary = ballot_storage::mvcc::summarize_snapshot(&snapshot).unwrap();
    assert_eq!(summary.applied_index, source.applied_index());
    assert_eq!(summary.revision, source.revision());
    assert_eq!(summary.compacted_revision, source.compacted_revision());
    assert_eq!(summary.hash, source.hash_kv(0).unwrap().0);
    let live = source
        .range(&RangeRequest {
            range: everything(),
            count_only: true,
            ..Default::default()
        })
        .unwrap()
        .count;
    assert_eq!(summary.keys, live as u64);
    assert_eq!(summary.leases, 1);
    // Damage anywhere is refused, as a restore would refuse it.
    let mut damaged = snapshot.to_vec();
    damaged[snapshot.len() / 2] ^= 1;
    assert!(ballot_storage::mvcc::summarize_snapshot(&damaged).is_err());
    assert!(ballot_storage::mvcc::summarize_snapshot(&snapshot[..snapshot.len() - 1]).is_err());
}
