//! WAL throughput against what the disk can do, in one run:
//!
//! - the raw `fdatasync` rate: write 4 KiB, `fdatasync`, repeat; appending to a growing file, into
//!   space preallocated with `fallocate` (as WAL segments are), and into a file written with zeros
//!   first (as the WAL keeps the space just ahead of its appends: see `ZERO_AHEAD_BYTES`);
//! - WAL appends per second through `GroupCommit` with 1 and 64 concurrent writers, each appending
//!   one 256-byte entry and waiting until it is durable, plus entries per `fdatasync`.
//!
//! `cargo bench -p ballot-storage --bench wal` (files go to a temporary directory under
//! `BALLOT_BENCH_DIR`, or the current directory's file system; `BALLOT_BENCH_SECONDS` sets the
//! time per row, 3 by default).

use ballot_core::{Entry, EntryPayload};
use ballot_storage::wal::{GroupCommit, Wal, WalOptions};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const ENTRY_PAYLOAD_BYTES: usize = 256;
const RAW_WRITE_BYTES: usize = 4096;

fn main() {
    let seconds: u64 = std::env::var("BALLOT_BENCH_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(seconds);
    let parent = std::env::var("BALLOT_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let root = tempfile::tempdir_in(parent).expect("a temporary directory");

    println!(
        "WAL benchmark, {seconds} s per row, in {}",
        root.path().display()
    );
    println!();
    println!(
        "| what | durable writes per second | fdatasyncs per second | entries per fdatasync |"
    );
    println!("|---|---:|---:|---:|");
    for (space, label) in [
        (Space::Growing, "growing file"),
        (Space::Fallocated, "preallocated file (fallocate)"),
        (Space::ZeroFilled, "file written with zeros first"),
    ] {
        let path = root.path().join(format!("raw-{space:?}"));
        let rate = raw_fdatasync_rate(&path, space, duration);
        println!("| raw: write 4 KiB + fdatasync, {label} | {rate:.0} | {rate:.0} | 1 |");
    }
    for writers in [1, 64] {
        let dir = root.path().join(format!("wal-{writers}"));
        let (appends_per_second, entries_per_sync) = wal_rate(&dir, writers, duration);
        let syncs_per_second = appends_per_second / entries_per_sync;
        println!(
            "| WAL: {writers} writer(s), 256-byte entries, group commit | {appends_per_second:.0} | \
             {syncs_per_second:.0} | {entries_per_sync:.1} |"
        );
    }
}

/// What the raw loop writes into.
#[derive(Debug, Clone, Copy)]
enum Space {
    Growing,
    Fallocated,
    ZeroFilled,
}

/// Bytes reserved for the raw loops that write into prepared space (they start over at the
/// beginning when they reach the end).
const RAW_SPACE_BYTES: u64 = 1 << 30;

/// Writes of 4 KiB, each followed by `fdatasync`, per second.
fn raw_fdatasync_rate(path: &Path, space: Space, duration: Duration) -> f64 {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    match space {
        Space::Growing => {}
        Space::Fallocated => {
            rustix::fs::fallocate(
                &file,
                rustix::fs::FallocateFlags::empty(),
                0,
                RAW_SPACE_BYTES,
            )
            .expect("fallocate");
        }
        Space::ZeroFilled => {
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..RAW_SPACE_BYTES >> 20 {
                file.write_all(&zeros).unwrap();
            }
        }
    }
    file.sync_all().unwrap();
    let block = vec![0xA5u8; RAW_WRITE_BYTES];
    let started = Instant::now();
    let mut count = 0u64;
    let mut offset = 0u64;
    while started.elapsed() < duration {
        if !matches!(space, Space::Growing) && offset + RAW_WRITE_BYTES as u64 > RAW_SPACE_BYTES {
            offset = 0;
        }
        file.write_all_at(&block, offset).unwrap();
        offset += RAW_WRITE_BYTES as u64;
        file.sync_data().unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Durable appends per second with `writers` threads, and entries per `fdatasync`.
fn wal_rate(dir: &Path, writers: usize, duration: Duration) -> (f64, f64) {
    let (wal, _) = Wal::open(dir, WalOptions::default()).unwrap();
    let group = GroupCommit::new(wal);
    let payload = Bytes::from(vec![0x5Au8; ENTRY_PAYLOAD_BYTES]);
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let group = group.clone();
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut appends = 0u64;
                while started.elapsed() < duration {
                    let sequence = group.with_wal(|wal| {
                        let entry = Entry {
                            index: wal.last_index() + 1,
                            term: 1,
                            payload: EntryPayload::Command(payload.clone()),
                        };
                        wal.append(&[entry], None).unwrap()
                    });
                    group.wait_durable(sequence).unwrap();
                    appends += 1;
                }
                appends
            })
        })
        .collect();
    let appends: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = group.stats();
    (appends as f64 / elapsed, stats.entries_per_sync_average())
}
