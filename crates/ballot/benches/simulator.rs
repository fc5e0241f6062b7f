//! Simulator speed: whole seeded runs of a 5-node Raft cluster, 2,000 chaos ticks each, every
//! fault on, all checkers including linearizability. One iteration is one seed.
//!
//! Run: `cargo bench -p ballot --bench simulator`. Figures go to docs/benchmarks.md.

use ballot::raft_replica;
use ballot_sim::{run, FaultSet, SimConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn seeds_per_second(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulator");
    group.throughput(Throughput::Elements(1));
    for nodes in [3usize, 5] {
        let mut seed = 0;
        group.bench_function(format!("raft_{nodes}_nodes_2000_steps_all_faults"), |b| {
            b.iter(|| {
                seed += 1;
                let config = SimConfig {
                    nodes,
                    seed,
                    faults: FaultSet::all(),
                    ..SimConfig::default()
                };
                let report = run(&config, |start| raft_replica::build(start, None));
                assert!(report.violations.is_empty());
                report.ops_committed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seeds_per_second);
criterion_main!(benches);
