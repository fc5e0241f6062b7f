//! Restarts and crashes: the applied index is stored with the data, so a reopened store is at
//! exactly the state of its last commit, and re-applied entries are skipped.

mod mvcc_common;

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{ApplyError, MvccOptions, MvccStore};
use mvcc_common::*;

fn fill(store: &MvccStore, from: u64, to: u64) {
    for index in from..=to {
        let key = format!("k{}", index % 7);
        store
            .apply(index, &put(&key, &format!("v{index}")))
            .unwrap();
    }
}

#[test]
fn reopen_gives_the_same_state_and_skips_applied_entries() {
    let dir = TempDir::new("mvcc-restart");
    let path = dir.file("state.redb");
    let (all, snapshot, hash) = {
        let store = MvccStore::open(&path).unwrap();
        fill(&store, 1, 40);
        store
            .apply(
                41,
                &Command::LeaseGrant {
                    id: 9,
                    ttl_seconds: 30,
                },
            )
            .unwrap();
        store.apply(42, &put_with_lease("leased", "x", 9)).unwrap();
        store.apply(43, &Command::Compact { revision: 20 }).unwrap();
        store.mark_applied(45).unwrap(); // 44 and 45 carried no command
        let all = store
            .range(&RangeRequest {
                range: everything(),
                ..Default::default()
            })
            .unwrap();
        (all, store.snapshot().unwrap(), store.hash_kv(0).unwrap())
    };
    let store = MvccStore::open(&path).unwrap();
    store.invariants();
    assert_eq!(
        (
            store.applied_index(),
            store.revision(),
            store.compacted_revision()
        ),
        (45, 42, 20)
    );
    assert_eq!(store.durable_applied_index(), 45);
    assert_eq!(
        store
            .range(&RangeRequest {
                range: everything(),
                ..Default::default()
            })
            .unwrap(),
        all
    );
    assert_eq!(store.snapshot().unwrap(), snapshot);
    assert_eq!(store.hash_kv(0).unwrap(), hash);
    assert_eq!(
        store.lease(9).unwrap().unwrap().keys,
        vec![bytes::Bytes::from("leased")]
    );

    // The log is replayed from before the applied index: those entries change nothing.
    let replayed = store
        .apply_batch(&[
            (44, put("k1", "again")),
            (45, put("k2", "again")),
            (46, put("k3", "new")),
        ])
        .unwrap();
    assert_eq!(
        replayed[0].result,
        Err(ApplyError::AlreadyApplied {
            index: 44,
            applied_index: 45
        })
    );
    assert!(
        replayed[0].was_skipped() && replayed[1].was_skipped() && replayed[0].events.is_empty()
    );
    assert!(replayed[2].result.is_ok());
    assert_eq!(store.revision(), 43);
    assert_eq!(
        store.range(&get("k1")).unwrap().kvs[0].value,
        all.kvs.iter().find(|kv| kv.key == "k1").unwrap().value
    );
}

/// A crash keeps only what reached the disk. Copying the file while commits are not yet durable
/// captures exactly that: the copy must open at the last durable commit, with data and applied
/// index from that same commit.
#[test]
fn a_crash_returns_to_the_last_durable_commit() {
    let dir = TempDir::new("mvcc-crash");
    let path = dir.file("state.redb");
    let store = MvccStore::open_with(
        &path,
        MvccOptions {
            non_durable_commits_max: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    fill(&store, 1, 10);
    store.flush().unwrap();
    let durable_state = store
        .range(&RangeRequest {
            range: everything(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.durable_applied_index(), 10);
    fill(&store, 11, 30);
    assert_eq!(
        (store.applied_index(), store.durable_applied_index()),
        (30, 10)
    );

    let crashed = dir.file("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    let recovered = MvccStore::open(&crashed).unwrap();
    recovered.invariants();
    assert_eq!(
        recovered.applied_index(),
        10,
        "never ahead of what was durable"
    );
    assert_eq!(
        recovered
            .range(&RangeRequest {
                range: everything(),
                ..Default::default()
            })
            .unwrap(),
        durable_state
    );
    // Replaying the log from the recovered index reaches the same state as the live store.
    fill(&recovered, 11, 30);
    assert_eq!(recovered.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
}
