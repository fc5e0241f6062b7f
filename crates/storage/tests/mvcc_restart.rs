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
    let path = dir.file("state");
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn everything_now(store: &MvccStore) -> RangeResponse {
    store
        .range(&RangeRequest {
            range: everything(),
            ..Default::default()
        })
        .unwrap()
}

/// A process crash loses nothing handed to `write`: a copy of the directory taken while writes
/// are not yet synced opens at the last write.
#[test]
fn a_process_crash_loses_nothing_written() {
    let dir = TempDir::new("mvcc-kill");
    let path = dir.file("state");
    let store = MvccStore::open_with(
        &path,
        MvccOptions {
            non_durable_commits_max: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    fill(&store, 1, 30);
    let copy = dir.file("copy");
    copy_dir(&path, &copy);
    let reopened = MvccStore::open(&copy).unwrap();
    reopened.invariants();
    assert_eq!(reopened.applied_index(), 30);
    assert_eq!(everything_now(&reopened), everything_now(&store));
}

/// A power loss keeps what was synced and any part of what was not: the head segment's unsynced
/// tail may be cut anywhere, or hold garbage. Every such tail must open (cut off and reported) at
/// a state the store really had, at or after the last sync, and replaying the log from there must
/// reach the live store's state.
#[test]
fn a_power_loss_returns_to_a_state_the_store_had() {
    let dir = TempDir::new("mvcc-power");
    let path = dir.file("state");
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
    assert_eq!(store.durable_applied_index(), 10);
    let head = store.segment_paths().last().unwrap().clone();
    let synced = std::fs::metadata(&head).unwrap().len();
    let mut states = vec![everything_now(&store)];
    for index in 11..=30 {
        fill(&store, index, index);
        states.push(everything_now(&store));
    }
    assert_eq!(
        (store.applied_index(), store.durable_applied_index()),
        (30, 10)
    );
    let written = std::fs::read(&head).unwrap();
    let live_hash = store.hash_kv(0).unwrap();

    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in (synced as usize..=written.len()).step_by(7) {
        damaged.push((format!("cut at {cut}"), written[..cut].to_vec()));
    }
    for at in (synced as usize..written.len()).step_by(53) {
        let mut flipped = written.clone();
        flipped[at] ^= 0x10;
        // A torn write: everything after the damaged sector is lost too.
        flipped.truncate((at + 40).min(written.len()));
        damaged.push((format!("bit flipped at {at}, rest lost"), flipped));
        let mut zeroed = written.clone();
        zeroed[at..].iter_mut().for_each(|b| *b = 0);
        damaged.push((format!("zeros from {at}"), zeroed));
    }
    for (case, bytes) in damaged {
        let copy = dir.file("crashed");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&path, &copy);
        std::fs::write(copy.join(head.file_name().unwrap()), &bytes).unwrap();
        let recovered = MvccStore::open(&copy).unwrap_or_else(|e| panic!("{case}: {e}"));
        recovered.invariants();
        let applied = recovered.applied_index();
        assert!(
            (10..=30).contains(&applied),
            "{case}: opened at {applied}, not between the last sync (10) and the last write (30)"
        );
        assert_eq!(
            everything_now(&recovered),
            states[applied as usize - 10],
            "{case}: the state at applied index {applied}"
        );
        // Nothing is cut silently: either the tail ended at a batch boundary and is whole, or
        // the repair is reported.
        let head_now = std::fs::metadata(copy.join(head.file_name().unwrap()))
            .unwrap()
            .len();
        assert!(
            recovered.tail_repair().is_some() || head_now == bytes.len() as u64,
            "{case}: what was cut is reported"
        );
        fill(&recovered, applied + 1, 30);
        assert_eq!(recovered.hash_kv(0).unwrap(), live_hash, "{case}: replay");
    }
}

/// Damage anywhere but a torn tail is refused with the file and offset, never skipped: in a
/// sealed segment, or in the head with a valid record after it.
#[test]
fn damage_before_the_tail_is_refused_naming_file_and_offset() {
    let dir = TempDir::new("mvcc-corrupt");
    let path = dir.file("state");
    let options = MvccOptions {
        segment_bytes_min: 4096,
        segment_bytes_max: 4096,
        ..Default::default()
    };
    let store = MvccStore::open_with(&path, options).unwrap();
    fill(&store, 1, 1000);
    let segments = store.segment_paths();
    assert!(segments.len() > 3, "{segments:?}");
    drop(store);
    for (victim, at) in [(&segments[1], 100usize), (segments.last().unwrap(), 30)] {
        let copy = dir.file("damaged");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&path, &copy);
        let file = copy.join(victim.file_name().unwrap());
        let mut bytes = std::fs::read(&file).unwrap();
        assert!(bytes.len() > at + 200, "a valid record follows the damage");
        bytes[at] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        let error = match MvccStore::open(&copy) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("damage in {} was not noticed", file.display()),
        };
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            error.contains(&name) && error.contains("offset"),
            "the error names the file and offset: {error}"
        );
    }
}
