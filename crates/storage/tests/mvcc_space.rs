//! Space reuse under churn: puts, deletes and compactions over a fixed live set must not grow
//! the file without bound (no defragmentation is ever run). See `docs/design/storage.md`,
//! "Space reuse without defragmenting", for the measurements behind the bounds here: redb
//! reuses freed pages, the allocation settles at about 2x the live data (values packed three to
//! a 4 KiB leaf in `mvcc_revisions`, a quarter of the live set in history between compactions),
//! and the file is the peak allocation rounded up to redb's next growth step (it doubles the file
//! below 4 GiB), so here 4x the live data. The 2x file target is not met; the doc says
//! why. Also here: the sweep (compaction's deletions, in bounded steps per commit) must not be
//! visible to any read while it is behind.

mod mvcc_common;

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::MvccStore;
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
fn churn_round(store: &MvccStore, round: usize, next_index: &mut u64, batches: &mut usize) {
    let mut batch = Vec::with_capacity(PUTS_PER_BATCH);
    let mut apply = |batch: &mut Vec<(u64, Command)>, next_index: &mut u64| {
        for applied in store.apply_batch(batch).unwrap() {
            assert!(applied.result.is_ok(), "{:?}", applied.result);
        }
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
}

#[test]
fn churn_reuses_space() {
    let dir = TempDir::new("mvcc-space");
    let store = MvccStore::open(dir.file("state.redb")).unwrap();
    let live_bytes = (LIVE_KEYS * (VALUE_BYTES + key(0).len())) as u64;
    let (mut next_index, mut batches) = (1, 0);
    let (mut files, mut allocated) = (vec![], vec![]);
    for round in 0..ROUNDS {
        churn_round(&store, round, &mut next_index, &mut batches);
        let (pages, page_bytes, _, _) = store.space_stats().unwrap();
        files.push(store.file_bytes().unwrap());
        allocated.push(pages * page_bytes as u64);
    }
    eprintln!("live {live_bytes} bytes; file after each round {files:?}; allocated {allocated:?}");
    let count = store
        .range(&RangeRequest {
            range: KeyRange::prefix("churn/"),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(count.count, LIVE_KEYS as i64);
    store.invariants();

    // Freed pages are reused: after warm-up neither the file nor the allocation grows.
    let warm_file = files[WARM_UP_ROUNDS];
    assert!(
        files[WARM_UP_ROUNDS..].iter().all(|&f| f <= warm_file),
        "the file grew after warm-up: {files:?}"
    );
    // Allocation is sampled wherever a round ends in the durable-commit and compaction cycles,
    // so it jitters; what must not happen is a trend: the later half peaks no higher than the
    // earlier half of the post-warm-up rounds.
    let middle = (WARM_UP_ROUNDS + ROUNDS) / 2;
    let earlier = *allocated[WARM_UP_ROUNDS..middle].iter().max().unwrap();
    let later = *allocated[middle..].iter().max().unwrap();
    assert!(
        later <= earlier + earlier / 10,
        "the allocation trends up after warm-up: {allocated:?}"
    );
    // Bounded near the live data: 2.05x measured at the end of a round (3.1x with values in the
    // key-ordered table of format 1).
    for &a in &allocated[WARM_UP_ROUNDS..] {
        assert!(
            a <= 5 * live_bytes / 2,
            "allocated {a} bytes is over 2.5x the live data ({live_bytes})"
        );
    }
    // The file is the peak allocation rounded up to redb's next growth step (it doubles).
    let file_bound = (5 * live_bytes / 2).next_power_of_two() + (1 << 20);
    assert!(
        files.iter().all(|&f| f <= file_bound),
        "file over {file_bound} bytes: {files:?}"
    );
}

/// The sweep deletes what a compaction made unreachable in bounded steps (4,096 changes of the
/// log per apply commit), so a large compaction is still being swept while later commands apply.
/// Meanwhile, and across a restart, every read must show exactly what a finished sweep leaves:
/// compare with a store whose sweep finished (before compacting again at a later revision).
#[test]
fn sweep_in_steps_reads_like_a_finished_sweep() {
    let dir = TempDir::new("mvcc-sweep");
    let path = dir.file("stepped.redb");
    let mut stepped = MvccStore::open(&path).unwrap();
    let finished = MvccStore::open(dir.file("finished.redb")).unwrap();
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
        stepped = MvccStore::open(&path).unwrap();
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
    let (stepped_pages, ..) = stepped.space_stats().unwrap();
    let (finished_pages, ..) = finished.space_stats().unwrap();
    assert!(
        stepped_pages.abs_diff(finished_pages) * 10 <= finished_pages,
        "allocated pages {stepped_pages} and {finished_pages}"
    );
}
