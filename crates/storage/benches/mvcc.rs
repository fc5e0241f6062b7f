//! MVCC state machine throughput and size: batched puts (1,000 per `apply_batch`), single-key
//! gets and 100-key prefix ranges, at 100k and 1M keys with 100-byte values, and the file size.
//! Prints a table (harness = false); run with `cargo bench -p ballot-storage --bench mvcc`.
//! `MVCC_BENCH_QUICK=1` runs the 100k case only.

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{MvccOptions, MvccStore};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

const VALUE_BYTES: usize = 100;
const PUTS_PER_BATCH: usize = 1_000;
const GETS: usize = 100_000;
const PREFIX_RANGES: usize = 5_000;

/// 100 keys share each prefix `key/NNNNNN/`.
fn key(i: usize) -> Bytes {
    Bytes::from(format!("key/{:06}/{:02}", i / 100, i % 100))
}

fn load(store: &MvccStore, keys: usize, rng: &mut ChaCha8Rng) -> f64 {
    let mut order: Vec<usize> = (0..keys).collect();
    order.shuffle(rng);
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let mut index = store.applied_index();
    let started = Instant::now();
    for chunk in order.chunks(PUTS_PER_BATCH) {
        let batch: Vec<(u64, Command)> = chunk
            .iter()
            .map(|&i| {
                index += 1;
                (
                    index,
                    Command::Put(PutRequest {
                        key: key(i),
                        value: value.clone(),
                        ..Default::default()
                    }),
                )
            })
            .collect();
        store.apply_batch(&batch).unwrap();
    }
    store.flush().unwrap();
    keys as f64 / started.elapsed().as_secs_f64()
}

fn gets(store: &MvccStore, keys: usize, rng: &mut ChaCha8Rng) -> f64 {
    let started = Instant::now();
    for _ in 0..GETS {
        let request = RangeRequest {
            range: KeyRange::single(key(rng.random_range(0..keys))),
            ..Default::default()
        };
        assert_eq!(store.range(&request).unwrap().kvs.len(), 1);
    }
    GETS as f64 / started.elapsed().as_secs_f64()
}

fn prefix_ranges(store: &MvccStore, keys: usize, rng: &mut ChaCha8Rng) -> f64 {
    let started = Instant::now();
    for _ in 0..PREFIX_RANGES {
        let prefix = format!("key/{:06}/", rng.random_range(0..keys / 100));
        let request = RangeRequest {
            range: KeyRange::prefix(prefix),
            ..Default::default()
        };
        assert_eq!(store.range(&request).unwrap().kvs.len(), 100);
    }
    PREFIX_RANGES as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is configurable.
    let quick = std::env::var("MVCC_BENCH_QUICK").is_ok();
    let dir = std::env::temp_dir().join(format!("ballot-mvcc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("MVCC state machine: {VALUE_BYTES}-byte values, {PUTS_PER_BATCH} puts per apply_batch, keys in random order");
    println!();
    println!("| keys | durable every | puts/s | gets/s | 100-key prefix ranges/s | file | file / (keys+values) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let sizes: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &keys in sizes {
        let durabilities: &[u32] = if keys == 100_000 { &[1, 4, 32] } else { &[4] };
        for &non_durable_commits_max in durabilities {
            let path = dir.join(format!("state-{keys}-{non_durable_commits_max}.redb"));
            let _ = std::fs::remove_file(&path);
            let store = MvccStore::open_with(
                &path,
                MvccOptions {
                    non_durable_commits_max,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let puts = load(&store, keys, &mut rng);
            let get_rate = gets(&store, keys, &mut rng);
            let range_rate = prefix_ranges(&store, keys, &mut rng);
            let file = store.file_bytes().unwrap();
            let logical = keys * (key(0).len() + VALUE_BYTES);
            println!(
                "| {keys} | {non_durable_commits_max} commits | {:.0}k | {:.0}k | {:.1}k | {:.1} MiB | {:.1}x |",
                puts / 1e3,
                get_rate / 1e3,
                range_rate / 1e3,
                file as f64 / (1024.0 * 1024.0),
                file as f64 / logical as f64
            );
            drop(store);
            let _ = std::fs::remove_file(&path);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
