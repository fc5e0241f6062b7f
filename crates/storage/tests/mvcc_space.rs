//! Space reuse under churn: puts, deletes and compactions over a fixed live set must keep the
//! state directory within 2x of the live data (keys and values of the keys that exist) with no
//! defragment, ever: segment GC copies what is live out of mostly-garbage segments as writes go
//! on. See `docs/design/storage.md`, "Space reuse without defragmenting". Also here: the sweep
//! (compaction's removals from the index, in bounded steps per write) must not be visible to any
//! read while it is behind, and a deleted key must never come back after GC and a reopen.

mod mvcc_common;

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{MvccOptions, MvccStore};
use bytes::Bytes;
use mvcc_common::TempDir;

const LIVE_KEYS: usize = 2_000;
const VALUE_BYTES: usize = 1024;
const PUTS_PER_BATCH: usize = 100;
/// Compact after this many batches (500-odd writes, a quarter of the live set).
const BATCHES_PER_COMPACTION: usize = 5;
const ROUNDS: usize = 20;
const WARM_UP_ROUNDS: usize = 4;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("churn/{i:06}"))
}

fn value(round: usize, i: usize) -> Bytes {
    Bytes::from(vec![(round * 31 + i) as u8; VALUE_BYTES])
}

/// One round: overwrite every key, delete a tenth and put it back; compact every few batches.
/// Returns the largest size of the state directory seen after a batch.
fn churn_round(store: &MvccStore, round: usize, next_index: &mut u64, batches: &mut usize) -> u64 {
    let mut batch = Vec::with_capacity(PUTS_PER_BATCH);
    let mut peak = 0;
    let mut apply = |batch: &mut Vec<(u64, Command)>, next_index: &mut u64| {
        for applied in store.apply_batch(batch).unwrap() {
            assert!(applied.result.is_ok(), "{:?}", applied.result);
        }
        peak = peak.max(store.file_bytes().unwrap());
        batch.clear();
        *batches += 1;
        if *batches == BATCHES_PER_COMPACTION {
            *batches = 0;
            let compact = Command::Compact {
                revision: store.revision(),
            };
            assert!(store.apply(*next_index, &compact).unwrap().result.is_ok());
            *next_index += 1;
        }
    };
    for i in 0..LIVE_KEYS {
        let put = PutRequest {
            key: key(i),
            value: value(round, i),
            ..Default::default()
        };
        batch.push((*next_index, Command::Put(put)));
        *next_index += 1;
        if i % 10 == round % 10 {
            let delete = DeleteRangeRequest {
                range: KeyRange::single(key(i)),
                prev_kv: false,
            };
            batch.push((*next_index, Command::DeleteRange(delete)));
            *next_index += 1;
            let put = PutRequest {
                key: key(i),
                value: value(round + 1, i),
                ..Default::default()
            };
            batch.push((*next_index, Command::Put(put)));
            *next_index += 1;
        }
        if batch.len() >= PUTS_PER_BATCH {
            apply(&mut batch, next_index);
        }
    }
    apply(&mut batch, next_index);
    peak
}

#[test]
fn churn_stays_within_twice_the_live_data() {
    let dir = TempDir::new("mvcc-space");
    let store = MvccStore::open(dir.file("state")).unwrap();
    let live_bytes = (LIVE_KEYS * (VALUE_BYTES + key(0).len())) as u64;
    let (mut next_index, mut batches) = (1, 0);
    let mut peaks = vec![];
    for round in 0..ROUNDS {
        peaks.push(churn_round(&store, round, &mut next_index, &mut batches));
        // Retired segments go at the flush that makes their copies durable.
        store.flush().unwrap();
    }
    eprintln!("live {live_bytes} bytes; largest directory in each round {peaks:?}");
    let count = store
        .range(&RangeRequest {
            range: KeyRange::prefix("churn/"),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(count.count, LIVE_KEYS as i64);
    store.invariants();
    // After warm-up the directory never exceeds twice the live data, at any batch.
    for (round, &peak) in peaks.iter().enumerate().skip(WARM_UP_ROUNDS) {
        assert!(
            peak <= 2 * live_bytes,
            "round {round}: {peak} bytes on disk is over 2x the live data ({live_bytes}): {peaks:?}"
        );
    }
    // And the space is reused, not just bounded by luck: no trend upwards.
    let middle = (WARM_UP_ROUNDS + ROUNDS) / 2;
    let earlier = *peaks[WARM_UP_ROUNDS..middle].iter().max().unwrap();
    let later = *peaks[middle..].iter().max().unwrap();
    assert!(
        later <= earlier + earlier / 10,
        "the directory trends up after warm-up: {peaks:?}"
    );
    let space = store.space().unwrap();
    assert!(
        space.segments > 2,
        "GC had segments to work with: {space:?}"
    );
}

/// The sweep removes what a compaction made unreachable in bounded steps (4,096 changes of the
/// log per write here), so a large compaction is still being swept while later commands apply.
/// Meanwhile, and across a restart, every read must show exactly what a finished sweep leaves:
/// compare with a store whose sweep finished (before compacting again at a later revision).
#[test]
fn sweep_in_steps_reads_like_a_finished_sweep() {
    let dir = TempDir::new("mvcc-sweep");
    let path = dir.file("stepped");
    let options = MvccOptions {
        sweep_changes_per_write: 4096,
        ..Default::default()
    };
    let mut stepped = MvccStore::open_with(&path, options).unwrap();
    let finished = MvccStore::open_with(dir.file("finished"), options).unwrap();
    // 2,000 keys written three times and a fifth of them deleted: 6,400 changes.
    let mut commands = Vec::new();
    for round in 0..3 {
        for i in 0..2_000 {
            let put = PutRequest {
                key: key(i),
                value: value(round, i),
                ..Default::default()
            };
            commands.push(Command::Put(put));
        }
    }
    for i in (0..2_000).step_by(5) {
        let delete = DeleteRangeRequest {
            range: KeyRange::single(key(i)),
            prev_kv: false,
        };
        commands.push(Command::DeleteRange(delete));
    }
    let mut index = 0u64;
    for chunk in commands.chunks(100) {
        let batch: Vec<(u64, Command)> = chunk
            .iter()
            .map(|command| {
                index += 1;
                (index, command.clone())
            })
            .collect();
        stepped.apply_batch(&batch).unwrap();
        finished.apply_batch(&batch).unwrap();
    }
    // Compact at the last delete (a tombstone at exactly the compacted revision), then further
    // at a later put while the first sweep is behind.
    let first = stepped.revision();
    for i in 0..10 {
        let put = Command::Put(PutRequest {
            key: key(i),
            value: value(9, i),
            ..Default::default()
        });
        index += 1;
        stepped.apply(index, &put).unwrap();
        finished.apply(index, &put).unwrap();
    }
    let second = first + 5;
    let reads = |store: &MvccStore, compacted: Revision| {
        let all = RangeRequest {
            range: KeyRange::prefix("churn/"),
            ..Default::default()
        };
        let at_compacted = RangeRequest {
            revision: compacted,
            ..all.clone()
        };
        let events = store.events(
            &KeyRange::prefix("churn/"),
            compacted,
            store.revision(),
            0,
            true,
        );
        let snapshot = store.snapshot().unwrap();
        // The records, without the header (applied index and revisions) and the checksum.
        let records = snapshot[36..snapshot.len() - 4].to_vec();
        (
            store.range(&all).unwrap(),
            store.range(&at_compacted).unwrap(),
            events.unwrap(),
            store.hash_kv(0).unwrap(),
            records,
        )
    };
    for (compacted, steps) in [(first, 0), (second, 1)] {
        index += 1;
        let compact = Command::Compact {
            revision: compacted,
        };
        assert!(stepped.apply(index, &compact).unwrap().result.is_ok());
        assert!(finished.apply(index, &compact).unwrap().result.is_ok());
        // Commits without commands sweep 4,096 changes each: two finish 6,400.
        for _ in 0..2 {
            index += 1;
            finished.mark_applied(index).unwrap();
        }
        let want = reads(&finished, compacted);
        for _ in 0..steps {
            index += 1;
            stepped.mark_applied(index).unwrap();
            stepped.invariants();
            assert!(reads(&stepped, compacted) == want, "reads during the sweep");
        }
        stepped.invariants();
        assert!(reads(&stepped, compacted) == want, "reads during the sweep");
        drop(stepped);
        stepped = MvccStore::open_with(&path, options).unwrap();
        stepped.invariants();
        assert!(
            reads(&stepped, compacted) == want,
            "reads after a restart during the sweep"
        );
    }
    // The sweep finishes, and deletes what a finished sweep deleted.
    for _ in 0..2 {
        index += 1;
        stepped.mark_applied(index).unwrap();
    }
    stepped.invariants();
    assert!(
        reads(&stepped, second) == reads(&finished, second),
        "reads after the sweep"
    );
    // The same versions are live in both (commit records differ by a few bytes).
    let (stepped_live, finished_live) = (
        stepped.space().unwrap().live_bytes,
        finished.space().unwrap().live_bytes,
    );
    assert!(
        stepped_live.abs_diff(finished_live) < 64,
        "live bytes {stepped_live} and {finished_live}"
    );
}

/// Tiny segments, so GC runs all the time: keys are deleted, compacted away and put back,
/// leases granted and revoked, while GC copies records forward and drops garbage. After every
/// batch the invariants hold (they include: an open of the directory finds exactly the state),
/// and a reopened store never shows a key that was deleted: a dropped tombstone must not let an
/// older record come back.
#[test]
fn gc_never_brings_back_what_was_deleted() {
    let dir = TempDir::new("mvcc-gc");
    let path = dir.file("state");
    let options = MvccOptions {
        segment_bytes_min: 2048,
        segment_bytes_max: 2048,
        garbage_percent_max: 10,
        garbage_bytes_min: 0,
        non_durable_commits_max: 3,
        ..Default::default()
    };
    let mut store = MvccStore::open_with(&path, options).unwrap();
    let mut index = 0u64;
    let mut next = |store: &MvccStore, command: Command| {
        index += 1;
        let applied = store.apply(index, &command).unwrap();
        assert!(applied.result.is_ok(), "{command:?}: {:?}", applied.result);
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut expected: std::collections::BTreeMap<Bytes, Bytes> = Default::default();
    for step in 0..1500 {
        let k = key(random(40) as usize);
        match random(10) {
            0..=5 => {
                let v = Bytes::from(format!("v{step}-{}", "x".repeat(random(200) as usize)));
                next(
                    &store,
                    Command::Put(PutRequest {
                        key: k.clone(),
                        value: v.clone(),
                        ..Default::default()
                    }),
                );
                expected.insert(k, v);
            }
            6..=7 => {
                next(
                    &store,
                    Command::DeleteRange(DeleteRangeRequest {
                        range: KeyRange::single(k.clone()),
                        prev_kv: false,
                    }),
                );
                expected.remove(&k);
            }
            8 => {
                let id = 1 + random(3) as i64;
                if store.lease(id).unwrap().is_some() {
                    next(&store, Command::LeaseRevoke { id });
                    expected.retain(|_, v| !v.starts_with(format!("lease{id}:").as_bytes()));
                } else {
                    next(
                        &store,
                        Command::LeaseGrant {
                            id,
                            ttl_seconds: 60,
                        },
                    );
                    let v = Bytes::from(format!("lease{id}:{step}"));
                    next(
                        &store,
                        Command::Put(PutRequest {
                            key: k.clone(),
                            value: v.clone(),
                            lease: id,
                            ..Default::default()
                        }),
                    );
                    expected.insert(k, v);
                }
            }
            _ => {
                if store.compacted_revision() < store.revision() {
                    next(
                        &store,
                        Command::Compact {
                            revision: store.revision(),
                        },
                    );
                }
            }
        }
        if step % 25 == 0 {
            store.invariants();
        }
        if step % 100 == 99 {
            store.flush().unwrap();
            drop(store);
            store = MvccStore::open_with(&path, options).unwrap();
            store.invariants();
        }
        let all = store
            .range(&RangeRequest {
                range: KeyRange::prefix("churn/"),
                ..Default::default()
            })
            .unwrap();
        let found: std::collections::BTreeMap<Bytes, Bytes> =
            all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(found, expected, "step {step}");
    }
    // GC did the work: many segments were written and most of them collected and deleted.
    let space = store.space().unwrap();
    let newest: u32 = store
        .segment_paths()
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap();
    assert!(
        newest > 50 && (space.segments as u32) < newest / 5,
        "segments written {newest}, left {space:?}"
    );
    assert!(
        space.file_bytes < 2 * space.live_bytes + 4096,
        "garbage is bounded: {space:?}"
    );
}
