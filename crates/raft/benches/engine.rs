//! The pure Raft engine, three nodes in memory, no I/O: how many entries per second it commits
//! when proposals arrive one per round trip (no batching) and when many arrive between two
//! `Ready`s (batched into one append per follower).
//!
//! Run: `cargo bench -p ballot-raft --bench engine`. Figures go to docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use ballot_core::Replica;
use bytes::Bytes;
use common::Cluster;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const VALUE: &[u8] = &[7u8; 128];

fn cluster() -> Cluster {
    let mut cluster = Cluster::with_config(3, |c| c.snapshot_threshold_entries = 50_000);
    cluster.auto_snapshot = true;
    cluster.record_delivered = false;
    cluster.elect(1);
    cluster.settle();
    cluster
}

fn commit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_engine_commit");
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut cluster = cluster();
        group.bench_with_input(
            BenchmarkId::new("entries_per_batch", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    for _ in 0..batch {
                        cluster
                            .node_mut(1)
                            .propose(Bytes::from_static(VALUE))
                            .unwrap();
                    }
                    cluster.settle();
                    // Keep memory flat: applied entries are not needed by the benchmark.
                    for applied in cluster.applied.values_mut() {
                        applied.clear();
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, commit_throughput);
criterion_main!(benches);
