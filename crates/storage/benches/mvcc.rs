//! MVCC state machine throughput and size: batched puts (1,000 per `apply_batch`), single-key
//! gets and 100-key prefix ranges, at 100k and 1M keys with 100-byte values, the size of the
//! state directory, and how long reopening it takes (the index is rebuilt by reading every
//! segment).
//! Prints a table (harness = false); run with `cargo bench -p ballot-storage --bench mvcc`.
//! Then the churn table: on-disk size under put / delete / compact churn at several live sizes.
//! `MVCC_BENCH_QUICK=1` runs the 100k case and the two smaller churn sizes only;
//! `MVCC_BENCH_CHURN_ONLY=1` runs the churn table only; `MVCC_BENCH_CHURN_KEYS=2000,20000` (empty:
//! no churn table) and
//! `MVCC_BENCH_CHURN_DURABLE=1,4` pick its live sizes and durable-commit cadences,
//! `MVCC_BENCH_CHURN_VALUE_BYTES=100` its value size (1 KiB by default).

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

// ---- churn: space reuse under put / delete / compact ----

const CHURN_PUTS_PER_BATCH: usize = 100;
const CHURN_ROUNDS: usize = 8;
const CHURN_WARM_UP_ROUNDS: usize = 2;

fn churn_key(i: usize) -> Bytes {
    Bytes::from(format!("churn/{i:08}"))
}

/// What one churn run measured, in bytes.
struct Churn {
    live_bytes: u64,
    /// The most bytes the state referred to (live data, history since compaction, framing).
    referred_peak_bytes: u64,
    file_peak_bytes: u64,
    file_end_bytes: u64,
    puts_per_second: f64,
}

/// Every round overwrites every key in random order, deletes a tenth and puts it back, and
/// compacts at the current revision each time a quarter of the live set has been written
/// (so history between compactions is a quarter of the live data at every size).
fn churn(path: &std::path::Path, keys: usize, value_bytes: usize, options: MvccOptions) -> Churn {
    let store = MvccStore::open_with(path, options).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let live_bytes = (keys * (churn_key(0).len() + value_bytes)) as u64;
    let compact_every_writes = (keys / 4).max(CHURN_PUTS_PER_BATCH);
    let mut index = store.applied_index();
    let mut batch: Vec<(u64, Command)> = Vec::with_capacity(CHURN_PUTS_PER_BATCH + 2);
    let (mut writes_since_compaction, mut batches, mut writes) = (0usize, 0usize, 0usize);
    let (mut referred_peak_bytes, mut file_peak_bytes) = (0u64, 0u64);
    let mut measured_started = None;
    for round in 0..CHURN_ROUNDS {
        if round == CHURN_WARM_UP_ROUNDS {
            measured_started = Some((Instant::now(), writes));
        }
        let measuring = round >= CHURN_WARM_UP_ROUNDS;
        let mut order: Vec<usize> = (0..keys).collect();
        order.shuffle(&mut rng);
        for (n, &i) in order.iter().enumerate() {
            let value = Bytes::from(vec![(round * 31 + i) as u8; value_bytes]);
            let put = |value: Bytes| {
                Command::Put(PutRequest {
                    key: churn_key(i),
                    value,
                    ..Default::default()
                })
            };
            index += 1;
            batch.push((index, put(value.clone())));
            if i % 10 == round % 10 {
                index += 1;
                let delete = DeleteRangeRequest {
                    range: KeyRange::single(churn_key(i)),
                    prev_kv: false,
                };
                batch.push((index, Command::DeleteRange(delete)));
                index += 1;
                batch.push((index, put(value)));
            }
            if batch.len() < CHURN_PUTS_PER_BATCH && n + 1 < order.len() {
                continue;
            }
            writes += batch.len();
            writes_since_compaction += batch.len();
            store.apply_batch(&batch).unwrap();
            batch.clear();
            if writes_since_compaction >= compact_every_writes {
                writes_since_compaction = 0;
                index += 1;
                let compact = Command::Compact {
                    revision: store.revision(),
                };
                assert!(store.apply(index, &compact).unwrap().result.is_ok());
            }
            batches += 1;
            if batches % 10 == 0 {
                // The server's background flusher syncs every 100 ms; retired segments go then.
                store.flush().unwrap();
            }
            if measuring {
                let space = store.space().unwrap();
                file_peak_bytes = file_peak_bytes.max(space.file_bytes);
                referred_peak_bytes = referred_peak_bytes.max(space.live_bytes);
            }
        }
    }
    let (started, writes_before) = measured_started.expect("more rounds than warm-up");
    let puts_per_second = (writes - writes_before) as f64 / started.elapsed().as_secs_f64();
    Churn {
        live_bytes,
        referred_peak_bytes,
        file_peak_bytes,
        file_end_bytes: store.file_bytes().unwrap(),
        puts_per_second,
    }
}

fn churn_table(dir: &std::path::Path, sizes: &[usize], durabilities: &[u32]) {
    if sizes.is_empty() {
        return;
    }
    let value_bytes = list_from_env("MVCC_BENCH_CHURN_VALUE_BYTES").map_or(1024, |v| v[0]);
    println!();
    println!("Churn: {value_bytes}-byte values, {CHURN_PUTS_PER_BATCH} writes per apply_batch, compaction every quarter of the live set, {CHURN_ROUNDS} rounds ({CHURN_WARM_UP_ROUNDS} warm-up)");
    println!();
    println!("| live keys | live bytes | durable every | writes/s | peak referred | peak on disk | on disk at end | peak on disk / live |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mb = |bytes: u64| bytes as f64 / 1e6;
    for &keys in sizes {
        for &non_durable_commits_max in durabilities {
            let path = dir.join(format!("churn-{keys}-{non_durable_commits_max}"));
            let _ = std::fs::remove_dir_all(&path);
            let options = MvccOptions {
                non_durable_commits_max,
                ..Default::default()
            };
            let measured = churn(&path, keys, value_bytes, options);
            let live = measured.live_bytes;
            println!(
                "| {keys} | {:.1} MB | {non_durable_commits_max} | {:.0}k | {:.1} MB ({:.2}x) | {:.1} MB | {:.1} MB | {:.2}x |",
                mb(live),
                measured.puts_per_second / 1e3,
                mb(measured.referred_peak_bytes),
                measured.referred_peak_bytes as f64 / live as f64,
                mb(measured.file_peak_bytes),
                mb(measured.file_end_bytes),
                measured.file_peak_bytes as f64 / live as f64,
            );
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is configurable.
    let quick = std::env::var("MVCC_BENCH_QUICK").is_ok();
    let dir = std::env::temp_dir().join(format!("ballot-mvcc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let churn_sizes = list_from_env("MVCC_BENCH_CHURN_KEYS").unwrap_or(if quick {
        vec![2_000, 20_000]
    } else {
        vec![2_000, 20_000, 200_000]
    });
    let churn_durabilities = list_from_env("MVCC_BENCH_CHURN_DURABLE").unwrap_or(vec![1, 4]);
    if std::env::var("MVCC_BENCH_CHURN_ONLY").is_ok() {
        let durabilities: Vec<u32> = churn_durabilities.iter().map(|&d| d as u32).collect();
        churn_table(&dir, &churn_sizes, &durabilities);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    println!("MVCC state machine: {VALUE_BYTES}-byte values, {PUTS_PER_BATCH} puts per apply_batch, keys in random order");
    println!();
    println!("| keys | durable every | puts/s | gets/s | 100-key prefix ranges/s | on disk | on disk / (keys+values) | reopen |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sizes: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &keys in sizes {
        let durabilities: &[u32] = if keys == 100_000 { &[1, 4, 32] } else { &[4] };
        for &non_durable_commits_max in durabilities {
            let path = dir.join(format!("state-{keys}-{non_durable_commits_max}"));
            let _ = std::fs::remove_dir_all(&path);
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
            drop(store);
            let started = Instant::now();
            let reopened = MvccStore::open(&path).unwrap();
            let reopen = started.elapsed();
            assert_eq!(reopened.applied_index() as usize, keys);
            drop(reopened);
            println!(
                "| {keys} | {non_durable_commits_max} commits | {:.0}k | {:.0}k | {:.1}k | {:.1} MiB | {:.2}x | {:.2} s |",
                puts / 1e3,
                get_rate / 1e3,
                range_rate / 1e3,
                file as f64 / (1024.0 * 1024.0),
                file as f64 / logical as f64,
                reopen.as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    let durabilities: Vec<u32> = churn_durabilities.iter().map(|&d| d as u32).collect();
    churn_table(&dir, &churn_sizes, &durabilities);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A comma-separated list of numbers from the environment, for focused runs.
fn list_from_env(name: &str) -> Option<Vec<usize>> {
    let text = std::env::var(name).ok()?;
    let numbers = text.split(',').filter(|n| !n.trim().is_empty());
    Some(
        numbers
            .map(|n| n.trim().parse().expect("a number"))
            .collect(),
    )
}
