//! Every deliberate break of Raft is caught by the checker meant for it: the proof that the
//! simulator's checks bite. Each test searches seeds in order (deterministically) and names the
//! first seed that shows the violation.

use ballot::raft_replica;
use ballot_raft::Break;
use ballot_sim::{run_many, SimConfig};

/// The first seed in `0..seeds_max` whose run has a violation from one of `checkers`.
fn first_caught(
    broken: Break,
    config: &SimConfig,
    seeds_max: u64,
    checkers: &[&str],
) -> Option<(u64, String)> {
    const CHUNK: u64 = 100;
    let mut start = 0;
    while start < seeds_max {
        let reports = run_many(
            config,
            start..start + CHUNK,
            |s| raft_replica::build(s, Some(broken)),
            None,
        );
        for report in reports {
            if let Some(violation) = report
                .violations
                .iter()
                .find(|v| checkers.contains(&v.checker))
            {
                return Some((report.seed, violation.to_string()));
            }
        }
        start += CHUNK;
    }
    None
}

#[test]
fn stale_read_is_caught_by_linearizability() {
    let config = SimConfig {
        nodes: 5,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    let caught = first_caught(Break::StaleRead, &config, 100, &["linearizability"]);
    assert!(caught.is_some(), "stale reads went unnoticed");
}

#[test]
fn unconfirmed_follower_read_is_caught_by_linearizability() {
    let config = SimConfig {
        nodes: 3,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    let caught = first_caught(
        Break::UnconfirmedFollowerRead,
        &config,
        3000,
        &["linearizability"],
    );
    assert!(
        caught.is_some(),
        "a deposed leader handing followers stale read indexes went unnoticed"
    );
}

#[test]
fn a_sleeping_leader_keeping_its_lease_is_caught_by_linearizability() {
    // Only groups other than 0 hibernate, so the break needs them; their clients go quiet in
    // turns, the groups fall asleep, and faults meet them asleep.
    let config = SimConfig {
        nodes: 3,
        groups: 8,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    let caught = first_caught(Break::SleepingLease, &config, 1000, &["linearizability"]);
    assert!(
        caught.is_some(),
        "a hibernating leader serving lease reads after a sleep went unnoticed"
    );
}

#[test]
fn persist_vote_is_caught_by_election_safety() {
    let config = SimConfig {
        nodes: 3,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    let caught = first_caught(Break::PersistVote, &config, 3000, &["election-safety"]);
    assert!(
        caught.is_some(),
        "a node voting twice in a term went unnoticed"
    );
}

#[test]
fn commit_old_term_is_caught_by_a_safety_checker() {
    let config = SimConfig {
        nodes: 3,
        faults: "crash,isolate-leader,drop".parse().unwrap(),
        ..SimConfig::default()
    };
    let safety = [
        "leader-completeness",
        "state-machine-safety",
        "linearizability",
        "log-matching",
    ];
    let caught = first_caught(Break::CommitOldTerm, &config, 3000, &safety);
    assert!(
        caught.is_some(),
        "committing old-term entries by counting replicas went unnoticed"
    );
}

#[test]
fn no_prevote_check_is_caught_by_leader_stability() {
    let config = SimConfig {
        nodes: 5,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    let caught = first_caught(Break::NoPrevoteCheck, &config, 1000, &["leader-stability"]);
    assert!(
        caught.is_some(),
        "a rejoining node deposing a healthy leader went unnoticed"
    );
}

#[test]
fn the_correct_protocol_passes_the_same_searches() {
    // The contrast: the exact configurations above find nothing when nothing is broken.
    for (nodes, faults) in [(3, "all"), (5, "all"), (3, "crash,isolate-leader,drop")] {
        let config = SimConfig {
            nodes,
            faults: faults.parse().unwrap(),
            ..SimConfig::default()
        };
        let reports = run_many(&config, 0..100, |s| raft_replica::build(s, None), None);
        let violations: Vec<_> = reports.iter().flat_map(|r| &r.violations).collect();
        assert!(
            violations.is_empty(),
            "{nodes} nodes, {faults}: {violations:?}"
        );
    }
}

#[test]
fn forgetting_the_bootstrap_membership_is_caught_by_liveness() {
    // A driver that hands a node its starting membership from memory and never stores it: once
    // every node has crashed, none knows the voters any more and no leader is ever elected.
    let config = SimConfig {
        nodes: 3,
        faults: "crash-all".parse().unwrap(),
        driver_break: Some(ballot_sim::DriverBreak::ForgetBootstrap),
        ..SimConfig::default()
    };
    let reports = run_many(&config, 0..4, |s| raft_replica::build(s, None), None);
    let caught = reports
        .iter()
        .find(|report| report.violations.iter().any(|v| v.checker == "liveness"));
    assert!(
        caught.is_some(),
        "a cluster that forgot its voters went unnoticed: {:?}",
        reports.iter().map(|r| &r.violations).collect::<Vec<_>>()
    );
    // The same runs with the membership stored pass: the fault alone is survivable.
    let healthy = SimConfig {
        driver_break: None,
        ..config
    };
    for report in run_many(&healthy, 0..4, |s| raft_replica::build(s, None), None) {
        assert!(
            report.passed(),
            "seed {}: {:?}",
            report.seed,
            report.violations
        );
    }
}

#[test]
fn every_break_is_still_caught_with_8_groups_on_the_nodes() {
    // Eight groups share three nodes and the network; a break of the protocol is in every
    // group's replicas, and the per-group checkers must still catch it.
    let config = SimConfig {
        nodes: 3,
        groups: 8,
        faults: "all".parse().unwrap(),
        ..SimConfig::default()
    };
    for broken in Break::ALL {
        // persist-vote needs a crash in the middle of an election: seed 157 since `clock-skew`
        // joined the episodes `all` draws from (32 since `bit-flip` did, 436 with `sync-fail`
        // and without it, 73 before).
        let caught = first_caught(
            broken,
            &config,
            600,
            &[
                "linearizability",
                "election-safety",
                "log-matching",
                "leader-completeness",
                "state-machine-safety",
                "leader-stability",
                "liveness",
            ],
        );
        assert!(caught.is_some(), "{broken} went unnoticed with 8 groups");
    }
    // The PreVote scenario still runs with every node leading some group.
    let caught = first_caught(Break::NoPrevoteCheck, &config, 400, &["leader-stability"]);
    assert!(
        caught.is_some(),
        "no-prevote-check went unnoticed by leader-stability with 8 groups"
    );
    let healthy = run_many(&config, 0..30, |s| raft_replica::build(s, None), None);
    let violations: Vec<_> = healthy.iter().flat_map(|r| &r.violations).collect();
    assert!(
        violations.is_empty(),
        "the correct protocol with 8 groups: {violations:?}"
    );
}

#[test]
fn carrying_on_after_a_failed_fsync_is_caught() {
    // A driver that retries a failed fsync and carries on (fsyncgate): the retry succeeds with
    // nothing to write, and the node acknowledges entries its disk lost.
    let config = SimConfig {
        nodes: 3,
        faults: "sync-fail".parse().unwrap(),
        driver_break: Some(ballot_sim::DriverBreak::RetryFailedSync),
        ..SimConfig::default()
    };
    let reports = run_many(&config, 0..32, |s| raft_replica::build(s, None), None);
    assert!(
        reports.iter().any(|report| !report.passed()),
        "a driver carrying on after a failed fsync went unnoticed"
    );
    // The same seeds with a driver that stops on the failure pass.
    let healthy = SimConfig {
        driver_break: None,
        ..config
    };
    let reports = run_many(&healthy, 0..32, |s| raft_replica::build(s, None), None);
    let violations: Vec<_> = reports.iter().flat_map(|r| &r.violations).collect();
    assert!(violations.is_empty(), "{violations:?}");
}

#[test]
fn cutting_the_log_at_a_damaged_record_is_caught() {
    // A recovery that takes a damaged record with later ones after it for a torn tail: the
    // node comes back without entries it acknowledged, votes as if it never had them, and a
    // leader without them is elected.
    let config = SimConfig {
        nodes: 3,
        faults: "bit-flip,crash,partition".parse().unwrap(),
        driver_break: Some(ballot_sim::DriverBreak::CutAtDamage),
        ..SimConfig::default()
    };
    let reports = run_many(&config, 0..64, |s| raft_replica::build(s, None), None);
    assert!(
        reports.iter().any(|report| !report.passed()),
        "a recovery cutting the log at a damaged record went unnoticed"
    );
    // The same seeds, where the damaged replica refuses its log and is rebuilt, pass.
    let healthy = SimConfig {
        driver_break: None,
        ..config
    };
    let reports = run_many(&healthy, 0..64, |s| raft_replica::build(s, None), None);
    let violations: Vec<_> = reports.iter().flat_map(|r| &r.violations).collect();
    assert!(violations.is_empty(), "{violations:?}");
}
