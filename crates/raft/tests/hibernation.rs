//! Hibernation (see the crate's `hibernation` module): a quiet group sleeps and costs nothing
//! per tick, wakes on work, keeps its lease reads correct, and elects again when node liveness
//! says its leader's node is down.

mod common;

use ballot_core::{ReadMode, Replica, Role};
use ballot_raft::MessageBody;
use common::Cluster;

fn hibernating() -> Cluster {
    Cluster::with_config(3, |config| config.hibernate = true)
}

/// Ticks every node once per round until every node sleeps; returns the rounds it took.
fn until_asleep(cluster: &mut Cluster) -> u32 {
    for round in 1..=200 {
        cluster.tick_all(1);
        if (1..=3).all(|id| cluster.node(id).is_asleep()) {
            return round;
        }
    }
    panic!("the group never fell asleep");
}

#[test]
fn a_quiet_group_sleeps_after_an_election_timeout_and_a_tick_then_does_nothing() {
    let mut cluster = hibernating();
    cluster.elect(1);
    cluster.propose(1, b"x");
    cluster.settle();
    let rounds = until_asleep(&mut cluster);
    let timeout = cluster.node(1).config().election_timeout_min_ticks;
    assert!(
        rounds >= timeout && rounds <= timeout + 2,
        "asleep after {rounds} quiet ticks, the timeout is {timeout}"
    );
    cluster.delivered.clear();
    cluster.tick_all(1000);
    assert!(cluster.delivered.is_empty(), "no message in 1,000 ticks");
    assert_eq!(cluster.leader(), Some(1), "and nobody campaigned");
}

#[test]
fn work_wakes_the_group_and_it_sleeps_again() {
    let mut cluster = hibernating();
    cluster.elect(1);
    until_asleep(&mut cluster);
    cluster.propose(1, b"after");
    cluster.settle();
    for id in 1..=3 {
        assert!(!cluster.node(id).is_asleep(), "n{id} woke for the append");
    }
    cluster.tick_all(5);
    assert_eq!(cluster.commands_applied(3), vec![&b"after"[..]]);
    until_asleep(&mut cluster);
    // A follower's forwarded proposal wakes it and, through the message, the leader.
    cluster
        .node_mut(2)
        .propose_or_forward("from 2".into())
        .unwrap();
    cluster.settle();
    cluster.tick_all(3);
    assert_eq!(cluster.commands_applied(1).last().unwrap(), &b"from 2"[..]);
}

#[test]
fn a_woken_leader_has_no_lease_until_a_quorum_answers() {
    let mut cluster = hibernating();
    cluster.elect(1);
    until_asleep(&mut cluster);
    cluster.node_mut(1).read(7, ReadMode::Lease).unwrap();
    cluster.handle_ready(1);
    assert!(
        cluster.reads.get(&1).is_none_or(|reads| reads.is_empty()),
        "a lease read after a sleep waits for a round of heartbeats"
    );
    cluster.settle();
    assert_eq!(cluster.reads[&1].len(), 1, "and is released by it");
}

#[test]
fn a_late_heartbeat_answer_does_not_wake_the_group_it_put_to_sleep() {
    let mut cluster = hibernating();
    cluster.elect(1);
    // The leader's heartbeat answers stay in flight while it falls asleep.
    let timeout = cluster.node(1).config().election_timeout_min_ticks;
    let mut held = Vec::new();
    for _ in 0..timeout + 2 {
        for id in 1..=3 {
            cluster.node_mut(id).tick();
        }
        cluster.settle();
        if cluster.node(1).is_asleep() {
            break;
        }
    }
    assert!(cluster.node(1).is_asleep());
    held.push(ballot_raft::Message {
        from: 2,
        to: 1,
        term: cluster.node(1).status().term,
        body: MessageBody::HeartbeatResponse { read_round: 0 },
    });
    for message in held {
        cluster.node_mut(1).step(message);
    }
    assert!(cluster.node(1).is_asleep());
}

#[test]
fn a_dead_leader_of_a_sleeping_group_is_replaced_once_liveness_says_so() {
    let mut cluster = hibernating();
    cluster.elect(1);
    until_asleep(&mut cluster);
    cluster.isolate(1);
    cluster.tick_all(500);
    assert_eq!(
        cluster.node(2).status().leader,
        Some(1),
        "asleep, the followers notice nothing by themselves"
    );
    cluster.node_mut(2).peer_down(1);
    cluster.node_mut(3).peer_down(1);
    cluster.node_mut(3).peer_down(2);
    for _ in 0..200 {
        cluster.tick(2, 1);
        cluster.tick(3, 1);
        cluster.settle();
        if [2, 3]
            .iter()
            .any(|&id| cluster.node(id).status().role == Role::Leader)
        {
            break;
        }
    }
    let leader = [2, 3]
        .into_iter()
        .find(|&id| cluster.node(id).status().role == Role::Leader)
        .expect("n2 or n3 leads");
    assert!(cluster.node(leader).status().term > 1);
    // The old leader, still asleep, is woken by a read and finds out: no lease, no stale read.
    cluster.heal();
    cluster.node_mut(1).read(9, ReadMode::Lease).unwrap();
    cluster.settle();
    assert!(cluster.reads.get(&1).is_none_or(|reads| reads.is_empty()));
    assert_ne!(cluster.node(1).status().role, Role::Leader);
}

#[test]
fn without_hibernation_nothing_sleeps() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.tick_all(200);
    assert!((1..=3).all(|id| !cluster.node(id).is_asleep()));
}

#[test]
fn a_sleeping_group_gives_back_its_whole_log_and_works_after() {
    let mut cluster = hibernating();
    cluster.auto_snapshot = true;
    cluster.elect(1);
    for _ in 0..20 {
        cluster.propose(1, b"x");
    }
    cluster.settle();
    until_asleep(&mut cluster);
    cluster.settle();
    for id in 1..=3 {
        let status = cluster.node(id).status();
        assert_eq!(status.applied_index, 21, "n{id}: the no-op and 20 commands");
        assert_eq!(
            status.first_log_index, 22,
            "n{id}: asleep, the log is compacted whole, no trailing entries kept"
        );
        assert!(
            cluster.node(id).is_asleep(),
            "n{id}: the compaction woke nothing"
        );
    }
    cluster.propose(1, b"after");
    cluster.settle();
    cluster.tick_all(5);
    for id in 1..=3 {
        assert_eq!(
            cluster.node(id).status().applied_index,
            22,
            "n{id} appended after the compacted log, from the log, not a snapshot"
        );
    }
}
