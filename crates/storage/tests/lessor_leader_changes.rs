//! Property: across any sequence of leaders — each a fresh lessor built from the remaining TTLs
//! its predecessors checkpointed through the (simulated) log — a lease that gets no more
//! keep-alives is revoked
//!
//! - no earlier than its TTL after its last acknowledged keep-alive (one whose checkpoint was
//!   applied; a keep-alive whose checkpoint died with its leader was never acknowledged), and
//! - no later than its TTL + the leader grace + one tick after it, plus for each leader change
//!   since then `min(outgoing tenure, checkpoint interval + tick) + election gap` — the time since
//!   the last checkpoint, which no new leader can see (see `lessor`'s module documentation).
//!
//! With a single leader change, that is TTL + checkpoint interval + election + grace.

use ballot_storage::lessor::{LeaseTtl, Lessor, LessorConfig, LessorError};
use ballot_storage::mvcc::types::{Command, LeaseId};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Scenario {
    tick_ms: u64,
    checkpoint_interval_ms: u64,
    leader_grace_ms: u64,
    /// (TTL seconds, keep-alive every ms, last keep-alive at ms)
    leases: Vec<(i64, u64, u64)>,
    /// (tenure ms, election gap ms before the next leader)
    leaders: Vec<(u64, u64)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    // The edges matter most: no grace, no election gap, and a leader that dies one tick after a
    // checkpoint (the new leader then starts from an almost exact remaining TTL).
    let grace = prop_oneof![Just(0u64), 0..=1_500u64];
    let gap = prop_oneof![Just(0u64), 0..=600u64];
    let tenure = prop_oneof![(1..=8_000u64).prop_map(Err), (1..=5u64).prop_map(Ok)];
    (
        1..=40u64,
        1..=40u64,
        grace,
        prop::collection::vec((1..=5i64, 50..=6_000u64, 0..=20_000u64), 1..=6),
        prop::collection::vec((tenure, gap), 1..=30),
    )
        .prop_map(
            |(tick_ms, interval_ticks, leader_grace_ms, leases, leaders)| {
                let checkpoint_interval_ms = interval_ticks * tick_ms;
                let leaders = leaders
                    .into_iter()
                    .map(|(tenure, gap_ms)| match tenure {
                        // Ok(k): k checkpoint rounds and one tick.
                        Ok(rounds) => (rounds * checkpoint_interval_ms + tick_ms, gap_ms),
                        Err(tenure_ms) => (tenure_ms, gap_ms),
                    })
                    .collect();
                Scenario {
                    tick_ms,
                    checkpoint_interval_ms,
                    leader_grace_ms,
                    leases,
                    leaders,
                }
            },
        )
}

/// What the test knows about one lease, independently of the lessor.
#[derive(Debug)]
struct Client {
    ttl_ms: u64,
    every_ms: u64,
    stop_ms: u64,
    next_keep_alive_ms: u64,
    /// The last keep-alive (or the grant) whose checkpoint reached the log.
    acknowledged_ms: u64,
    /// A keep-alive the current leader took, not yet in a checkpoint.
    pending_ms: Option<u64>,
    /// The last keep-alive the current leader took.
    current_leader_keep_alive_ms: Option<u64>,
    /// Sum of the allowed extensions of leader changes since `acknowledged_ms`.
    extension_ms: u64,
}

impl Client {
    fn earliest_expiry_ms(&self) -> u64 {
        self.acknowledged_ms
            .max(self.current_leader_keep_alive_ms.unwrap_or(0))
            + self.ttl_ms
    }

    fn latest_expiry_ms(&self, grace_ms: u64) -> u64 {
        let base = (self.acknowledged_ms + self.extension_ms)
            .max(self.current_leader_keep_alive_ms.unwrap_or(0));
        base + self.ttl_ms + grace_ms
    }
}

fn run(s: Scenario) {
    let config = LessorConfig {
        checkpoint_interval_ms: s.checkpoint_interval_ms,
        min_ttl_seconds: 1,
        max_ttl_seconds: 100,
        leader_grace_ms: s.leader_grace_ms,
        // Commands apply at once here, so a retry would be a bug.
        revoke_retry_interval_ms: u64::MAX / 4,
        revokes_in_flight_max: 16,
        checkpoints_per_command_max: 2,
    };
    let tick = s.tick_ms;
    // The replicated state: lease -> (TTL seconds, remaining TTL ms at the last checkpoint).
    let mut store: BTreeMap<LeaseId, (i64, i64)> = BTreeMap::new();
    let mut clients: BTreeMap<LeaseId, Client> = BTreeMap::new();
    let mut lessor = Lessor::new(config.clone());
    lessor.become_leader(0, []);
    for (index, &(ttl_seconds, every_ms, stop_ms)) in s.leases.iter().enumerate() {
        let id = index as LeaseId + 1;
        lessor.on_granted(id, ttl_seconds, 0);
        store.insert(id, (ttl_seconds, ttl_seconds * 1000));
        let client = Client {
            ttl_ms: ttl_seconds as u64 * 1000,
            every_ms,
            stop_ms,
            next_keep_alive_ms: every_ms,
            acknowledged_ms: 0,
            pending_ms: None,
            current_leader_keep_alive_ms: None,
            extension_ms: 0,
        };
        clients.insert(id, client);
    }
    let mut leader: Option<Lessor> = Some(lessor);
    let mut leaders = s.leaders.iter().copied();
    let (mut tenure_ms, mut gap_ms) = leaders.next().unwrap();
    let mut tenure_start_ms = 0;
    let mut stepped_down_ms = 0;
    let horizon_ms = 60_000;
    let mut now = 0;
    while now <= horizon_ms && !clients.is_empty() {
        // Leader changes: the outgoing lessor vanishes with whatever it had not proposed yet.
        if leader.is_some() && now >= tenure_start_ms + tenure_ms {
            leader = None;
            stepped_down_ms = now;
            for client in clients.values_mut() {
                client.pending_ms = None;
                client.current_leader_keep_alive_ms = None;
            }
        }
        if leader.is_none() && now >= stepped_down_ms + gap_ms {
            let tenure = stepped_down_ms - tenure_start_ms;
            for client in clients.values_mut() {
                client.extension_ms +=
                    tenure.min(s.checkpoint_interval_ms + tick) + (now - stepped_down_ms);
            }
            let mut lessor = Lessor::new(config.clone());
            let state = store
                .iter()
                .map(|(&id, &(ttl_seconds, remaining_ttl_ms))| LeaseTtl {
                    id,
                    ttl_seconds,
                    remaining_ttl_ms,
                });
            lessor.become_leader(now, state);
            leader = Some(lessor);
            tenure_start_ms = now;
            (tenure_ms, gap_ms) = leaders.next().unwrap_or((u64::MAX / 4, 0));
        }
        let Some(lessor) = leader.as_mut() else {
            now += tick;
            continue;
        };
        for (&id, client) in clients.iter_mut() {
            if now >= client.next_keep_alive_ms && now <= client.stop_ms {
                client.next_keep_alive_ms = now + client.every_ms;
                match lessor.keep_alive(id, now) {
                    Ok(_) => {
                        client.pending_ms = Some(now);
                        client.current_leader_keep_alive_ms = Some(now);
                    }
                    Err(LessorError::LeaseNotFound { .. }) => {} // expired, revoke on its way
                    Err(other) => panic!("keep-alive on the leader failed: {other}"),
                }
            }
        }
        for command in lessor.tick(now) {
            match command {
                Command::LeaseRevoke { id } => {
                    let client = clients.remove(&id).expect("a lease is revoked once");
                    assert!(
                        now >= client.earliest_expiry_ms(),
                        "lease {id} revoked at {now} ms, before {} ms: {client:?}",
                        client.earliest_expiry_ms()
                    );
                    assert!(
                        now <= client.latest_expiry_ms(s.leader_grace_ms) + tick,
                        "lease {id} revoked at {now} ms, after {} ms + a tick: {client:?}",
                        client.latest_expiry_ms(s.leader_grace_ms)
                    );
                    store.remove(&id);
                    lessor.on_revoked(id);
                }
                Command::LeaseCheckpoint { checkpoints } => {
                    assert!(checkpoints.len() <= config.checkpoints_per_command_max);
                    for (id, remaining_ttl_ms) in checkpoints {
                        store.get_mut(&id).expect("checkpoint of a live lease").1 =
                            remaining_ttl_ms;
                        let client = clients.get_mut(&id).unwrap();
                        if let Some(keep_alive_ms) = client.pending_ms.take() {
                            client.acknowledged_ms = keep_alive_ms;
                            client.extension_ms = 0;
                        }
                    }
                }
                other => panic!("the lessor proposed {other:?}"),
            }
        }
        lessor.check_invariants();
        for (id, client) in &clients {
            assert!(
                now < client.latest_expiry_ms(s.leader_grace_ms),
                "lease {id} still alive at {now} ms, past {} ms: {client:?}",
                client.latest_expiry_ms(s.leader_grace_ms)
            );
        }
        now += tick;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn leases_expire_within_their_bounds_across_leader_changes(s in scenario()) {
        run(s);
    }
}

#[test]
fn one_leader_change_costs_at_most_the_checkpoint_interval_and_the_grace() {
    // TTL 10 s, checkpoints every second, grace 0.5 s, no keep-alives; the leader dies at 3.9 s
    // (last checkpoint at 3 s, remaining 7 s) and the next one is elected at 4.1 s.
    let config = LessorConfig {
        checkpoint_interval_ms: 1_000,
        min_ttl_seconds: 1,
        leader_grace_ms: 500,
        ..LessorConfig::default()
    };
    let mut first = Lessor::new(config.clone());
    first.become_leader(0, []);
    first.on_granted(1, 10, 0);
    let mut remaining_ttl_ms = 10_000;
    for now in (0..3_900).step_by(100) {
        for command in first.tick(now) {
            if let Command::LeaseCheckpoint { checkpoints } = command {
                remaining_ttl_ms = checkpoints[0].1;
            }
        }
    }
    assert_eq!(remaining_ttl_ms, 7_000);
    let mut second = Lessor::new(config);
    second.become_leader(
        4_100,
        [LeaseTtl {
            id: 1,
            ttl_seconds: 10,
            remaining_ttl_ms,
        }],
    );
    let expiry_ms = (4_100..20_000).step_by(10).find(|now| {
        !second
            .tick(*now)
            .iter()
            .all(|c| !matches!(c, Command::LeaseRevoke { .. }))
    });
    // 10 s TTL + 1.1 s since the last checkpoint + 0.5 s grace.
    assert_eq!(expiry_ms, Some(11_600));
}
