//! The lease clock on one leader: expiry, keep-alive, checkpoints, revokes, limits, errors.

use ballot_storage::lessor::{LeaseTtl, Lessor, LessorConfig, LessorError};
use ballot_storage::mvcc::types::Command;

fn config() -> LessorConfig {
    LessorConfig {
        checkpoint_interval_ms: 1_000,
        min_ttl_seconds: 1,
        max_ttl_seconds: 100,
        leader_grace_ms: 500,
        revoke_retry_interval_ms: 2_000,
        revokes_in_flight_max: 3,
        checkpoints_per_command_max: 4,
    }
}

fn leader() -> Lessor {
    let mut lessor = Lessor::new(config());
    lessor.become_leader(0, []);
    lessor
}

fn revokes(commands: &[Command]) -> Vec<i64> {
    commands
        .iter()
        .filter_map(|c| {
            if let Command::LeaseRevoke { id } = c {
                Some(*id)
            } else {
                None
            }
        })
        .collect()
}

fn checkpoints(commands: &[Command]) -> Vec<Vec<(i64, i64)>> {
    commands
        .iter()
        .filter_map(|c| {
            if let Command::LeaseCheckpoint { checkpoints } = c {
                Some(checkpoints.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_lease_expires_exactly_at_its_ttl_and_is_revoked_once() {
    let mut lessor = leader();
    lessor.on_granted(7, 5, 100);
    assert_eq!(lessor.remaining_ttl_ms(7, 100), Ok(5_000));
    assert!(revokes(&lessor.tick(5_099)).is_empty());
    assert_eq!(revokes(&lessor.tick(5_100)), [7]);
    assert!(revokes(&lessor.tick(5_200)).is_empty(), "proposed once");
    assert_eq!(lessor.remaining_ttl_ms(7, 5_200), Ok(0));
    lessor.on_revoked(7);
    assert_eq!(
        lessor.remaining_ttl_ms(7, 5_200),
        Err(LessorError::LeaseNotFound { id: 7 })
    );
    lessor.check_invariants();
}

#[test]
fn keep_alive_renews_to_the_full_ttl_and_is_checkpointed_at_the_next_tick() {
    let mut lessor = leader();
    lessor.on_granted(7, 5, 0);
    assert!(
        checkpoints(&lessor.tick(10)).is_empty(),
        "no checkpoint before the interval"
    );
    assert_eq!(lessor.keep_alive(7, 3_000), Ok(5));
    assert_eq!(checkpoints(&lessor.tick(3_010)), [vec![(7, 4_990)]]);
    assert!(
        checkpoints(&lessor.tick(3_020)).is_empty(),
        "a keep-alive is checkpointed once"
    );
    assert!(revokes(&lessor.tick(7_999)).is_empty());
    assert_eq!(revokes(&lessor.tick(8_000)), [7]);
}

#[test]
fn an_expired_lease_cannot_be_kept_alive() {
    let mut lessor = leader();
    lessor.on_granted(7, 1, 0);
    let expired = lessor.keep_alive(7, 1_000).unwrap_err();
    assert_eq!(expired, LessorError::LeaseNotFound { id: 7 });
    assert_eq!(expired.to_string(), "etcdserver: requested lease not found");
    assert_eq!(revokes(&lessor.tick(1_000)), [7]);
    assert!(lessor.keep_alive(7, 1_001).is_err());
    assert_eq!(
        lessor.keep_alive(99, 0),
        Err(LessorError::LeaseNotFound { id: 99 })
    );
}

#[test]
fn every_lease_is_checkpointed_each_interval_in_batches_of_the_maximum() {
    let mut lessor = leader();
    for id in 1..=4 {
        lessor.on_granted(id, 10, 0);
    }
    assert!(checkpoints(&lessor.tick(999)).is_empty());
    let batches = checkpoints(&lessor.tick(1_000));
    assert_eq!(
        batches,
        [vec![(1, 9_000), (2, 9_000), (3, 9_000), (4, 9_000)]],
        "exactly the maximum: one command"
    );
    lessor.on_granted(5, 10, 1_000);
    assert!(checkpoints(&lessor.tick(1_999)).is_empty());
    let batches = checkpoints(&lessor.tick(2_000));
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 1],
        "one over the maximum: two commands"
    );
}

#[test]
fn keep_alive_checkpoints_merge_into_the_periodic_round() {
    let mut lessor = leader();
    lessor.on_granted(1, 10, 0);
    lessor.on_granted(2, 10, 0);
    lessor.keep_alive(1, 1_000).unwrap();
    assert_eq!(
        checkpoints(&lessor.tick(1_000)),
        [vec![(1, 10_000), (2, 9_000)]]
    );
}

#[test]
fn revokes_in_flight_are_bounded_and_retried_until_applied() {
    let mut lessor = leader();
    for id in 1..=4 {
        lessor.on_granted(id, 1, 0);
    }
    assert_eq!(
        revokes(&lessor.tick(1_000)),
        [1, 2, 3],
        "revokes_in_flight_max is 3"
    );
    assert_eq!(lessor.revokes_in_flight(), 3);
    assert!(revokes(&lessor.tick(2_999)).is_empty());
    lessor.on_revoked(2);
    assert_eq!(
        revokes(&lessor.tick(3_000)),
        [1, 3, 4],
        "1 and 3 retried after 2 s, 4 takes the freed slot"
    );
    lessor.check_invariants();
    for id in [1, 3, 4] {
        lessor.on_revoked(id);
    }
    assert!(lessor.tick(10_000).is_empty());
    assert_eq!(lessor.lease_count(), 0);
}

#[test]
fn a_new_leader_resumes_from_the_remaining_ttl_plus_the_grace() {
    let mut lessor = Lessor::new(LessorConfig {
        leader_grace_ms: 1_500,
        ..config()
    });
    let leases = [
        LeaseTtl {
            id: 1,
            ttl_seconds: 10,
            remaining_ttl_ms: 3_000,
        },
        LeaseTtl {
            id: 2,
            ttl_seconds: 10,
            remaining_ttl_ms: -200,
        },
        LeaseTtl {
            id: 3,
            ttl_seconds: 10,
            remaining_ttl_ms: 60_000,
        },
    ];
    lessor.become_leader(50_000, leases);
    assert_eq!(
        lessor.remaining_ttl_ms(1, 50_000),
        Ok(4_500),
        "remaining + grace, not the full TTL"
    );
    assert_eq!(
        lessor.remaining_ttl_ms(2, 50_000),
        Ok(1_300),
        "inside the grace"
    );
    assert_eq!(
        lessor.remaining_ttl_ms(3, 50_000),
        Ok(11_500),
        "never more than the TTL"
    );
    // Checkpoints carry the remaining TTL without the grace (negative inside it), so the grace
    // never accumulates across leader changes.
    let commands = lessor.tick(51_000);
    assert!(revokes(&commands).is_empty());
    assert_eq!(
        checkpoints(&commands),
        [vec![(1, 2_000), (2, -1_200), (3, 9_000)]]
    );
    assert!(revokes(&lessor.tick(51_299)).is_empty());
    assert_eq!(revokes(&lessor.tick(51_300)), [2]);
    // A keep-alive ends the grace.
    lessor.keep_alive(1, 51_300).unwrap();
    assert_eq!(lessor.remaining_ttl_ms(1, 51_300), Ok(10_000));
}

#[test]
fn a_follower_has_no_clock_and_says_so() {
    let mut lessor = Lessor::new(config());
    lessor.on_granted(1, 10, 0);
    assert_eq!(lessor.lease_count(), 0);
    let error = lessor.keep_alive(1, 0).unwrap_err();
    assert_eq!(error, LessorError::NotLeader);
    assert!(error.to_string().contains("not the leader"));
    assert_eq!(lessor.remaining_ttl_ms(1, 0), Err(LessorError::NotLeader));
    assert!(lessor.tick(100_000).is_empty());

    let mut lessor = leader();
    lessor.on_granted(1, 10, 0);
    lessor.step_down();
    assert_eq!(lessor.keep_alive(1, 1), Err(LessorError::NotLeader));
    assert!(lessor.tick(100_000).is_empty());
    lessor.check_invariants();
}

#[test]
fn grant_ttls_are_raised_to_the_minimum_and_refused_above_the_maximum() {
    let config = config();
    assert_eq!(config.grant_ttl_seconds(0), Ok(1));
    assert_eq!(config.grant_ttl_seconds(100), Ok(100));
    let error = config.grant_ttl_seconds(101).unwrap_err();
    assert_eq!(
        error,
        LessorError::TtlTooLarge {
            ttl_seconds: 101,
            max_ttl_seconds: 100
        }
    );
    assert_eq!(error.to_string(), "etcdserver: too large lease TTL");
    assert!(LessorConfig {
        revokes_in_flight_max: 0,
        ..config.clone()
    }
    .validate()
    .unwrap_err()
    .contains("revokes_in_flight_max"));
    assert!(LessorConfig {
        min_ttl_seconds: 5,
        max_ttl_seconds: 4,
        ..config.clone()
    }
    .validate()
    .is_err());
    let too_many = LessorConfig {
        checkpoints_per_command_max: 1_001,
        ..config
    }
    .validate()
    .unwrap_err();
    assert!(
        too_many.contains("checkpoints_per_command_max"),
        "{too_many}"
    );
    assert!(LessorConfig::default().validate().is_ok());
}
