//! Raft under the deterministic simulator: hundreds of seeded runs across 3- and 5-node clusters
//! and every fault kind, each checked for Election Safety, Log Matching, Leader Completeness,
//! State Machine Safety, liveness after the heal, and linearizability of every client operation.

use ballot::raft_replica;
use ballot_sim::{run, run_many, FaultKind, FaultSet, SimConfig, SimReport};

fn run_seeds(config: &SimConfig, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    run_many(
        config,
        seeds,
        |start| raft_replica::build(start, None),
        None,
    )
}

fn assert_clean(label: &str, reports: &[SimReport]) {
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.violations
                .iter()
                .map(move |v| format!("seed {}: {v}", r.seed))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{label}: {} violations:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let committed: u64 = reports.iter().map(|r| r.ops_committed).sum();
    assert!(
        committed >= 100 * reports.len() as u64,
        "{label}: only {committed} operations committed over {} runs; the workload did not run",
        reports.len()
    );
}

#[test]
fn every_fault_kind_alone_3_nodes() {
    for kind in FaultKind::ALL {
        let faults: FaultSet = kind.name().parse().unwrap();
        let config = SimConfig {
            nodes: 3,
            faults,
            ..SimConfig::default()
        };
        let reports = run_seeds(&config, 0..20);
        assert_clean(kind.name(), &reports);
    }
}

#[test]
fn all_faults_3_nodes() {
    let config = SimConfig {
        nodes: 3,
        faults: FaultSet::all(),
        ..SimConfig::default()
    };
    assert_clean("all faults, 3 nodes", &run_seeds(&config, 100..200));
}

#[test]
fn all_faults_5_nodes() {
    let config = SimConfig {
        nodes: 5,
        faults: FaultSet::all(),
        ..SimConfig::default()
    };
    let reports = run_seeds(&config, 200..400);
    assert_clean("all faults, 5 nodes", &reports);
    let elections: u64 = reports.iter().map(|r| r.leader_changes).sum();
    assert!(
        elections > 2 * reports.len() as u64,
        "faults should force re-elections, saw {elections}"
    );
}

#[test]
fn crashes_and_membership_changes_exercise_snapshot_installation() {
    // A node wiped and re-added, or down for long, catches up by InstallSnapshot (the leader
    // compacts every 200 entries in these runs). Without this the snapshot path could rot unseen.
    let config = SimConfig {
        nodes: 3,
        faults: "crash,membership".parse().unwrap(),
        trace: true,
        ..SimConfig::default()
    };
    let installed = (0..40).any(|seed| {
        let report = run(
            &SimConfig {
                seed,
                ..config.clone()
            },
            |s| raft_replica::build(s, None),
        );
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        report
            .trace
            .iter()
            .any(|line| line.contains("InstallSnapshotResp") && line.contains("done=true"))
    });
    assert!(installed, "no run in 40 seeds completed an InstallSnapshot");
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    let config = SimConfig {
        nodes: 5,
        seed: 77,
        faults: FaultSet::all(),
        trace: true,
        ..SimConfig::default()
    };
    let first = run(&config, |s| raft_replica::build(s, None));
    let second = run(&config, |s| raft_replica::build(s, None));
    assert!(
        first.trace.len() > 1000,
        "trace has {} lines",
        first.trace.len()
    );
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.ops_committed, second.ops_committed);
    let other = run(&SimConfig { seed: 78, ..config }, |s| {
        raft_replica::build(s, None)
    });
    assert_ne!(
        first.trace, other.trace,
        "different seeds take different paths"
    );
}
