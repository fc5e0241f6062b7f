//! One test per Raft rule; each names the section of the paper (Raft, 2014) or of Ongaro's
//! dissertation it checks.

mod common;

use ballot_core::{
    Entry, EntryPayload, LogPosition, Membership, MembershipChange, PersistedState, ReadMode,
    Replica, ReplicaError, Role,
};
use ballot_raft::{AppendResult, Config, Message, MessageBody, Raft};
use bytes::Bytes;
use common::{bootstrap, config_for, Cluster};

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Command(Bytes::from(format!("e{index}t{term}"))),
    }
}

/// A follower restored with the given log, in `term`.
fn follower_with_log(id: u64, term: u64, terms: &[u64]) -> Raft {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    let persisted = PersistedState {
        hard_state: ballot_core::HardState {
            term,
            voted_for: None,
            commit_index: 0,
        },
        compacted: bootstrap(&[1, 2, 3]).compacted,
        entries,
    };
    let mut config = config_for(id);
    config.check_quorum = false;
    Raft::new(config, persisted).unwrap()
}

fn drain(raft: &mut Raft) -> (Vec<Message>, Vec<Message>, Option<ballot_core::HardState>) {
    let ready = raft.ready();
    raft.advance();
    (
        ready.messages,
        ready.messages_after_persist,
        ready.hard_state,
    )
}

/// n1 just won the election of term 1; its no-op is not yet acknowledged by anyone.
fn fresh_leader() -> Raft {
    let mut leader = Raft::new(config_for(1), bootstrap(&[1, 2, 3])).unwrap();
    while leader.status().role == Role::Follower {
        leader.tick();
    }
    drain(&mut leader);
    leader.step(msg(2, 1, 1, MessageBody::PreVoteResponse { granted: true }));
    drain(&mut leader);
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(leader.status().role, Role::Leader);
    drain(&mut leader);
    leader
}

#[test]
fn s6_4_reads_and_membership_changes_wait_for_the_leaders_noop() {
    let mut leader = fresh_leader();
    assert_eq!(
        leader.read(1, ReadMode::ReadIndex),
        Err(ReplicaError::LeaderNotReady)
    );
    assert_eq!(
        leader.read(1, ReadMode::Lease),
        Err(ReplicaError::LeaderNotReady)
    );
    assert_eq!(
        leader.propose_membership_change(MembershipChange::AddLearner(4)),
        Err(ReplicaError::LeaderNotReady)
    );
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::AppendEntriesResponse(AppendResult::Success { match_index: 1 }),
    ));
    assert_eq!(leader.status().commit_index, 1);
    assert_eq!(leader.read(1, ReadMode::ReadIndex), Ok(()));
    assert!(leader
        .propose_membership_change(MembershipChange::AddLearner(4))
        .is_ok());
}

#[test]
fn s5_2_one_leader_is_elected_and_commits_a_noop() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    assert_eq!(cluster.leader(), Some(1));
    let status = cluster.node(1).status();
    assert_eq!(status.term, 1);
    cluster.tick_all(5);
    for id in 1..=3 {
        let applied = &cluster.applied[&id];
        assert!(
            matches!(applied[0].payload, EntryPayload::Noop),
            "n{id} applied the leader's no-op first"
        );
    }
}

#[test]
fn s5_2_a_new_groups_chosen_replica_campaigns_at_once_and_only_in_the_first_term() {
    let mut cluster = Cluster::new(3);
    cluster.node_mut(2).campaign();
    assert_eq!(
        cluster.node(2).role(),
        Role::Candidate,
        "no pre-vote round: nobody leads a group that never had a term"
    );
    cluster.settle();
    assert_eq!(cluster.leader(), Some(2), "elected without a single tick");
    assert_eq!(cluster.node(2).status().term, 1);
    cluster.node_mut(3).campaign();
    cluster.node_mut(2).campaign();
    cluster.settle();
    assert_eq!(
        cluster.node(3).role(),
        Role::Follower,
        "a later era ignores it"
    );
    assert_eq!(
        (cluster.leader(), cluster.node(2).status().term),
        (Some(2), 1)
    );
}

#[test]
fn s5_2_vote_is_persisted_before_the_reply_leaves() {
    let mut raft = follower_with_log(2, 1, &[1]);
    raft.step(msg(
        1,
        2,
        2,
        MessageBody::RequestVote {
            last_log: LogPosition::new(1, 1),
            leadership_transfer: false,
        },
    ));
    let ready = raft.ready();
    assert!(
        ready.messages.is_empty(),
        "a vote must not leave before it is durable"
    );
    let hard_state = ready.hard_state.expect("term and vote must be persisted");
    assert_eq!((hard_state.term, hard_state.voted_for), (2, Some(1)));
    assert!(ready.must_persist(), "a vote is synced, not just written");
    assert!(matches!(
        ready.messages_after_persist[0].body,
        MessageBody::RequestVoteResponse { granted: true }
    ));
}

/// The commit index is volatile state (figure 2): a hard state that only moves it is written
/// but not synced, so a commit costs the leader and each follower no fsync of its own.
#[test]
fn s5_3_a_commit_only_hard_state_is_written_without_a_sync() {
    let mut raft = follower_with_log(2, 1, &[1, 1]);
    raft.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            leader_commit: 2,
            read_round: 0,
        },
    ));
    let ready = raft.ready();
    let hard_state = ready.hard_state.expect("the new commit index is written");
    assert_eq!(hard_state.commit_index, 2);
    assert!(ready.entries.is_empty());
    assert!(
        !ready.must_persist(),
        "moving only the commit index needs no fsync"
    );
    assert_eq!(
        ready.committed_entries.len(),
        2,
        "both entries may be applied"
    );
    raft.advance();

    // A new term in the same kind of message is synced.
    raft.step(msg(
        3,
        2,
        2,
        MessageBody::Heartbeat {
            leader_commit: 2,
            read_round: 0,
        },
    ));
    let ready = raft.ready();
    assert_eq!(ready.hard_state.map(|state| state.term), Some(2));
    assert!(
        ready.must_persist(),
        "a new term is synced before anyone hears of it"
    );
}

#[test]
fn s5_2_one_vote_per_term() {
    let mut raft = follower_with_log(3, 1, &[1]);
    let last_log = LogPosition::new(1, 1);
    raft.step(msg(
        1,
        3,
        2,
        MessageBody::RequestVote {
            last_log,
            leadership_transfer: false,
        },
    ));
    raft.step(msg(
        2,
        3,
        2,
        MessageBody::RequestVote {
            last_log,
            leadership_transfer: false,
        },
    ));
    let (_, after, _) = drain(&mut raft);
    let grants: Vec<bool> = after
        .iter()
        .map(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: true }))
        .collect();
    assert_eq!(grants, vec![true, false]);
}

#[test]
fn s5_4_1_vote_denied_to_a_less_up_to_date_log() {
    let mut raft = follower_with_log(3, 2, &[1, 2]);
    // Same last term, shorter log.
    raft.step(msg(
        1,
        3,
        3,
        MessageBody::RequestVote {
            last_log: LogPosition::new(1, 2),
            leadership_transfer: false,
        },
    ));
    // Older last term, longer log.
    raft.step(msg(
        2,
        3,
        4,
        MessageBody::RequestVote {
            last_log: LogPosition::new(9, 1),
            leadership_transfer: false,
        },
    ));
    let (_, after, _) = drain(&mut raft);
    assert!(after
        .iter()
        .all(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: false })));
    assert_eq!(
        raft.status().term,
        4,
        "a higher term is adopted even when the vote is denied"
    );
}

#[test]
fn s5_1_lower_term_is_rejected_and_higher_term_steps_down() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    // A stale leader's append is rejected with our term.
    let follower = cluster.node_mut(2);
    follower.step(msg(
        3,
        2,
        term - 1,
        MessageBody::Heartbeat {
            leader_commit: 0,
            read_round: 0,
        },
    ));
    assert_eq!(follower.status().leader, Some(1));
    let (_, after, _) = drain(follower);
    assert_eq!(after[0].term, term);
    // The leader steps down on a higher term.
    let leader = cluster.node_mut(1);
    leader.step(msg(
        3,
        1,
        term + 5,
        MessageBody::HeartbeatResponse { read_round: 0 },
    ));
    assert_eq!(leader.status().role, Role::Follower);
    assert_eq!(leader.status().term, term + 5);
}

#[test]
fn s5_3_consistency_check_rejects_and_hints_conflict_term() {
    // Follower log terms: 1 1 2 2 2; leader claims prev (5, 3).
    let mut raft = follower_with_log(2, 3, &[1, 1, 2, 2, 2]);
    raft.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log: LogPosition::new(5, 3),
            entries: vec![],
            leader_commit: 0,
        },
    ));
    let (_, after, _) = drain(&mut raft);
    assert_eq!(
        after[0].body,
        MessageBody::AppendEntriesResponse(AppendResult::Conflict {
            prev_index: 5,
            conflict_term: Some(2),
            first_index: 3
        })
    );
}

#[test]
fn s5_3_follower_truncates_conflicting_suffix_and_appends() {
    let mut raft = follower_with_log(2, 3, &[1, 1, 2, 2, 2]);
    let entries = vec![entry(3, 3), entry(4, 3)];
    raft.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log: LogPosition::new(2, 1),
            entries,
            leader_commit: 4,
        },
    ));
    let ready = raft.ready();
    assert_eq!(
        ready
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(3, 3), (4, 3)]
    );
    assert_eq!(
        raft.status().last_log,
        LogPosition::new(4, 3),
        "entry 5 of term 2 is gone"
    );
    assert_eq!(raft.status().commit_index, 4);
    assert!(matches!(
        ready.messages_after_persist[0].body,
        MessageBody::AppendEntriesResponse(AppendResult::Success { match_index: 4 })
    ));
}

#[test]
fn s5_3_divergent_follower_is_repaired_in_few_round_trips() {
    // n3 holds a long suffix from a term nobody else has; the leader's fast back-off skips it
    // by whole terms instead of one entry per round trip.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for _ in 0..50 {
        cluster.propose(1, b"x");
    }
    cluster.settle();
    cluster.isolate(1);
    for _ in 0..100 {
        let _ = cluster.node_mut(1).propose(Bytes::from_static(b"lost"));
    }
    cluster.settle();
    cluster.heal();
    cluster.isolate(1);
    cluster.tick_all(40); // n2 or n3 takes over
    let new_leader = cluster
        .leader()
        .filter(|&id| id != 1)
        .expect("a new leader among n2, n3");
    cluster.propose(new_leader, b"y");
    cluster.heal();
    cluster.delivered.clear();
    cluster.tick_all(10);
    let rejections = cluster
        .delivered
        .iter()
        .filter(|m| {
            m.from == 1
                && matches!(
                    m.body,
                    MessageBody::AppendEntriesResponse(AppendResult::Conflict { .. })
                )
        })
        .count();
    assert!(
        rejections <= 3,
        "{rejections} rejections: back-off should skip a term per round trip"
    );
    let leader_log = cluster.node(new_leader).status().last_log;
    assert_eq!(
        cluster.node(1).status().last_log,
        leader_log,
        "old leader's uncommitted suffix replaced"
    );
}

#[test]
fn s5_4_2_entries_of_older_terms_are_not_committed_by_counting_replicas() {
    // Figure 8: n1 becomes leader of term 3 holding an entry of term 2 that n2 also holds.
    // A majority (n1, n2) has it, but it must not commit until an entry of term 3 does.
    let mut config = config_for(1);
    config.check_quorum = false;
    let persisted = PersistedState {
        hard_state: ballot_core::HardState {
            term: 2,
            voted_for: None,
            commit_index: 0,
        },
        compacted: bootstrap(&[1, 2, 3]).compacted,
        entries: vec![entry(1, 2)],
    };
    let mut leader = Raft::new(config, persisted).unwrap();
    for _ in 0..40 {
        leader.tick();
        if leader.status().role != Role::Follower {
            break;
        }
    }
    drain(&mut leader);
    // Grant pre-vote and vote from n2.
    leader.step(msg(2, 1, 3, MessageBody::PreVoteResponse { granted: true }));
    drain(&mut leader);
    leader.step(msg(
        2,
        1,
        3,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(leader.status().role, Role::Leader);
    drain(&mut leader);
    // n2 acknowledges only entry 1 (of term 2).
    leader.step(msg(
        2,
        1,
        3,
        MessageBody::AppendEntriesResponse(AppendResult::Success { match_index: 1 }),
    ));
    drain(&mut leader);
    assert_eq!(
        leader.status().commit_index,
        0,
        "term-2 entry must not commit by counting replicas"
    );
    // Once the term-3 no-op at index 2 is on n2 too, both commit.
    leader.step(msg(
        2,
        1,
        3,
        MessageBody::AppendEntriesResponse(AppendResult::Success { match_index: 2 }),
    ));
    assert_eq!(leader.status().commit_index, 2);
}

#[test]
fn s9_6_prevote_keeps_an_isolated_node_from_raising_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    cluster.isolate(3);
    cluster.tick_all(200);
    assert_eq!(
        cluster.node(3).status().term,
        term,
        "pre-votes fail, so the term stays"
    );
    cluster.heal();
    cluster.tick_all(50);
    assert_eq!(
        cluster.leader(),
        Some(1),
        "rejoining did not disrupt the leader"
    );
    assert_eq!(cluster.node(1).status().term, term);
}

#[test]
fn s9_6_without_prevote_an_isolated_node_disrupts_on_rejoin() {
    // The contrast case that shows the test above can fail.
    let mut cluster = Cluster::with_config(3, |c| c.pre_vote = false);
    cluster.elect(1);
    let term = cluster.node(1).status().term;
    cluster.isolate(3);
    cluster.tick_all(200);
    assert!(cluster.node(3).status().term > term);
    cluster.heal();
    cluster.tick_all(50);
    let max_term = (1..=3)
        .map(|id| cluster.node(id).status().term)
        .max()
        .unwrap();
    assert!(max_term > term, "the rejoining node forced a new term");
}

#[test]
fn s6_2_check_quorum_leader_steps_down_when_cut_off() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick(1, 31);
    cluster.settle();
    assert_ne!(
        cluster.node(1).status().role,
        Role::Leader,
        "leader without quorum steps down"
    );
}

#[test]
fn s10_2_proposals_between_readies_are_batched_and_pipelined() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    for _ in 0..100 {
        cluster.propose(1, b"v");
    }
    let ready = cluster.node_mut(1).ready();
    let appends: Vec<&Message> = ready
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::AppendEntries { .. }))
        .collect();
    assert_eq!(appends.len(), 2, "one batched append per follower");
    assert!(
        ready.messages_after_persist.is_empty(),
        "leader sends appends before its own fsync"
    );
    cluster.node_mut(1).advance();
    cluster.queue.extend(ready.messages);
    cluster.settle();
    assert_eq!(cluster.commands_applied(2).len(), 100);
}

#[test]
fn s10_2_inflight_window_bounds_unacknowledged_appends() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.inflight_messages_max = 4;
        c.entries_per_message_max = 10;
    });
    cluster.elect(1);
    cluster.settle();
    for _ in 0..200 {
        cluster.propose(1, b"v");
    }
    let ready = cluster.node_mut(1).ready();
    let to_two = ready.messages.iter().filter(|m| m.to == 2).count();
    assert_eq!(to_two, 4, "window of 4 appends of 10 entries each");
    cluster.node_mut(1).advance();
    cluster.queue.extend(ready.messages);
    cluster.settle();
    assert_eq!(
        cluster.commands_applied(3).len(),
        200,
        "acks reopen the window until done"
    );
}

#[test]
fn s6_4_read_index_waits_for_a_quorum_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.node_mut(1).read(7, ReadMode::ReadIndex).unwrap();
    cluster.isolate(1);
    cluster.settle();
    assert!(
        cluster.reads.get(&1).is_none_or(|r| r.is_empty()),
        "no quorum, no read"
    );
    cluster.heal();
    cluster.tick_all(3);
    let reads = &cluster.reads[&1];
    assert_eq!(reads[0].request_id, 7);
    assert_eq!(reads[0].index, cluster.node(1).status().commit_index);
}

#[test]
fn s6_4_a_follower_serves_reads_at_an_index_the_leader_confirmed() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for _ in 0..5 {
        cluster.propose(1, b"w");
    }
    cluster.settle();
    let commit_index = cluster.node(1).status().commit_index;
    // Reads gathered between two Readies travel as one request.
    cluster.node_mut(2).read(8, ReadMode::ReadIndex).unwrap();
    cluster.node_mut(2).read(9, ReadMode::ReadIndex).unwrap();
    cluster.settle();
    let requests = cluster
        .delivered
        .iter()
        .filter(|m| matches!(m.body, MessageBody::ReadIndex { .. }))
        .count();
    assert_eq!(requests, 1, "one ReadIndex request for the batch");
    let released: Vec<(u64, u64)> = cluster.reads[&2]
        .iter()
        .map(|r| (r.request_id, r.index))
        .collect();
    assert_eq!(released, vec![(8, commit_index), (9, commit_index)]);
    // The leader confirmed it with a heartbeat round first: the index is safe to read at.
    let round_before_answer = cluster
        .delivered
        .iter()
        .position(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }) && m.to == 1);
    let answer = cluster.delivered.iter().position(|m| {
        matches!(
            m.body,
            MessageBody::ReadIndexResponse { index: Some(_), .. }
        )
    });
    assert!(
        round_before_answer < answer,
        "a quorum round precedes the answer"
    );
}

#[test]
fn s6_4_a_followers_read_is_dropped_when_the_leader_cannot_confirm() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    // The leader is cut off: the request never gets an answer, and the read is dropped (the
    // client retries; a read has no effect) rather than left waiting.
    cluster.isolate(1);
    cluster.node_mut(2).read(8, ReadMode::ReadIndex).unwrap();
    cluster.settle();
    assert!(cluster.reads.get(&2).is_none_or(|r| r.is_empty()));
    let patience = cluster.node(2).config().election_timeout_max_ticks;
    cluster.tick(2, patience);
    cluster.settle();
    assert!(
        cluster.reads.get(&2).is_none_or(|r| r.is_empty()),
        "never released"
    );
    assert_eq!(cluster.dropped_reads[&2], vec![8]);

    // A member that is not the leader refuses a ReadIndex request outright.
    let mut follower = follower_with_log(3, 2, &[1, 1]);
    follower.step(msg(
        2,
        3,
        2,
        MessageBody::ReadIndex {
            request: 5,
            lease: false,
        },
    ));
    let (now, after, _) = drain(&mut follower);
    let answers: Vec<&MessageBody> = now.iter().chain(&after).map(|m| &m.body).collect();
    assert_eq!(
        answers,
        vec![&MessageBody::ReadIndexResponse {
            request: 5,
            index: None
        }]
    );
    // And a node that knows no leader refuses its client's read at once.
    let mut alone = follower_with_log(3, 0, &[]);
    assert!(matches!(
        alone.read(1, ReadMode::ReadIndex),
        Err(ReplicaError::NotLeader { leader_hint: None })
    ));
}

#[test]
fn s6_4_lease_read_needs_no_round_trip_while_the_lease_lasts() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.tick_all(4); // a heartbeat round confirms the lease
    cluster.isolate(1);
    cluster.node_mut(1).read(1, ReadMode::Lease).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.reads[&1].len(),
        1,
        "served from the lease without contacting anyone"
    );
    cluster.tick(1, 14);
    cluster.node_mut(1).read(2, ReadMode::Lease).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.reads[&1].len(),
        1,
        "lease expired: the read waits for a quorum"
    );
}

/// Ticks `leader` and delivers messages, handling the leader's outputs by hand (the cluster's
/// handler would swallow the request), until it asks for a snapshot image; false if it never
/// does within 20 ticks.
fn ticks_until_image_wanted(cluster: &mut Cluster, leader: u64) -> bool {
    for _ in 0..20 {
        cluster.tick(leader, 1);
        let mut asked = false;
        loop {
            cluster.settle_except(leader);
            if !cluster.node(leader).has_ready() {
                break;
            }
            asked |= ready_by_hand(cluster, leader).snapshot_wanted;
        }
        if asked {
            return true;
        }
    }
    false
}

/// Takes `id`'s next Ready, queues its messages and advances (persisting is instant here),
/// handing the Ready back for the test to look at.
fn ready_by_hand(cluster: &mut Cluster, id: u64) -> ballot_core::Ready<ballot_raft::Message> {
    let ready = cluster.node_mut(id).ready();
    cluster.queue.extend(ready.messages.iter().cloned());
    cluster
        .queue
        .extend(ready.messages_after_persist.iter().cloned());
    cluster.node_mut(id).advance();
    ready
}

/// n1 leads; n3 is cut off while n1 commits `proposals` entries with n2.
fn leave_n3_behind(cluster: &mut Cluster, proposals: usize) {
    cluster.elect(1);
    cluster.isolate(3);
    for _ in 0..proposals {
        cluster.propose(1, b"v");
        cluster.settle();
    }
}

fn image(applied: u64, data: &'static [u8]) -> ballot_core::Snapshot {
    ballot_core::Snapshot {
        meta: ballot_core::SnapshotMeta {
            last_included: LogPosition::new(applied, 0),
            membership: Membership::default(),
        },
        data: Bytes::from_static(data),
    }
}

#[test]
fn s7_lagging_follower_catches_up_by_snapshot_in_chunks() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.snapshot_threshold_entries = 20;
        c.snapshot_trailing_entries = 0;
        c.snapshot_chunk_bytes = 7;
    });
    leave_n3_behind(&mut cluster, 50);
    // The application's state machine is durable through what it applied: it compacts. No
    // image is built yet; nobody needs one.
    let applied = cluster.node(1).status().applied_index;
    let meta = cluster
        .node_mut(1)
        .compact(applied)
        .unwrap()
        .expect("a newer compaction point");
    assert_eq!(meta.last_included.index, applied);
    assert_eq!(meta.membership, Membership::with_voters([1, 2, 3]));
    assert_eq!(
        cluster.node(1).status().first_log_index,
        applied + 1,
        "log compacted"
    );
    assert_eq!(
        cluster.node_mut(1).compact(applied).unwrap(),
        None,
        "compacting at the same point again changes nothing"
    );
    // n3 comes back needing entries that are gone: the leader asks for an image.
    cluster.heal();
    let asked = ticks_until_image_wanted(&mut cluster, 1);
    assert!(asked, "the leader asked for an image for n3");
    cluster.delivered.clear();
    cluster
        .node_mut(1)
        .snapshot_taken(image(applied, b"state-machine-image-of-thirty-bytes"))
        .unwrap();
    cluster.settle();
    cluster.tick_all(20);
    let chunks = cluster
        .delivered
        .iter()
        .filter(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count();
    assert!(
        chunks >= 5,
        "a 35-byte snapshot in 7-byte chunks takes 5 messages, saw {chunks}"
    );
    let installed = cluster.disks[&3]
        .snapshot
        .as_ref()
        .expect("n3 installed the snapshot");
    assert_eq!(&installed.data[..], b"state-machine-image-of-thirty-bytes");
    assert_eq!(
        installed.meta.membership,
        Membership::with_voters([1, 2, 3]),
        "membership comes from the log"
    );
    assert_eq!(
        cluster.node(3).status().commit_index,
        cluster.node(1).status().commit_index
    );
}

#[test]
fn a_durable_point_no_newer_than_the_last_compaction_is_not_asked_for_again_at_once() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.snapshot_threshold_entries = 20;
        c.snapshot_trailing_entries = 0;
    });
    cluster.elect(1);
    for _ in 0..25 {
        cluster.propose(1, b"v");
    }
    cluster.settle();
    let applied = cluster.node(1).status().applied_index;
    cluster.node_mut(1).compact(applied).unwrap();
    for _ in 0..25 {
        cluster.propose(1, b"w");
    }
    // Handle n1's outputs by hand: it asks for a compaction; the caller's store has not made
    // anything newer durable, so it offers the old point again.
    let mut asked = 0;
    for _ in 0..100 {
        cluster.settle_except(1);
        if !cluster.node(1).has_ready() {
            break;
        }
        if ready_by_hand(&mut cluster, 1).compaction_wanted {
            asked += 1;
            assert_eq!(cluster.node_mut(1).compact(applied).unwrap(), None);
        }
    }
    assert_eq!(
        asked, 1,
        "asked once, then not again before another threshold"
    );
    assert!(
        !cluster.node(1).has_ready(),
        "a refused durable point must not leave the replica asking in a loop"
    );
}

#[test]
fn an_image_a_compaction_overtakes_mid_transfer_is_replaced_by_a_newer_one() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.snapshot_threshold_entries = 20;
        c.snapshot_trailing_entries = 0;
        c.snapshot_chunk_bytes = 4;
    });
    leave_n3_behind(&mut cluster, 30);
    let first_point = cluster.node(1).status().applied_index;
    cluster.node_mut(1).compact(first_point).unwrap();
    cluster.heal();
    assert!(ticks_until_image_wanted(&mut cluster, 1));
    cluster
        .node_mut(1)
        .snapshot_taken(image(first_point, b"old-image-old-image"))
        .unwrap();
    // The first chunk is on its way; n3 falls silent while the log moves on and is compacted
    // past the image being sent.
    cluster.isolate(3);
    for _ in 0..30 {
        cluster.propose(1, b"w");
        cluster.settle();
    }
    let second_point = cluster.node(1).status().applied_index;
    assert!(second_point > first_point);
    cluster.node_mut(1).compact(second_point).unwrap();
    cluster.heal();
    assert!(
        ticks_until_image_wanted(&mut cluster, 1),
        "the leader asks for a new image instead of sending one nobody could continue from"
    );
    cluster
        .node_mut(1)
        .snapshot_taken(image(second_point, b"new-image-new-image"))
        .unwrap();
    cluster.settle();
    cluster.tick_all(30);
    let installed = cluster.disks[&3]
        .snapshot
        .as_ref()
        .expect("n3 installed an image");
    assert_eq!(&installed.data[..], b"new-image-new-image");
    assert_eq!(installed.meta.last_included.index, second_point);
    assert_eq!(
        cluster.node(3).status().commit_index,
        cluster.node(1).status().commit_index
    );
}

#[test]
fn dissertation_4_1_learner_catches_up_then_is_promoted() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for _ in 0..300 {
        cluster.propose(1, b"v");
    }
    cluster.settle();
    cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::AddLearner(4))
        .unwrap();
    assert_eq!(
        cluster
            .node_mut(1)
            .propose_membership_change(MembershipChange::Remove(2)),
        Err(ReplicaError::MembershipChangePending)
    );
    // The new node joins with no membership of its own: it learns it from the log.
    let joining = Raft::new(
        Config::new(4),
        PersistedState::bootstrap(Membership::default()),
    )
    .unwrap();
    cluster.nodes.insert(4, joining);
    cluster.disks.insert(4, Default::default());
    cluster.settle();
    cluster.tick_all(5);
    assert!(cluster.node(4).status().membership.is_learner(4));
    assert_eq!(
        cluster.commands_applied(4).len(),
        300,
        "learner replicated the whole log"
    );
    cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::PromoteLearner(4))
        .unwrap();
    cluster.tick_all(5);
    assert!(cluster.node(2).status().membership.is_voter(4));
    assert_eq!(cluster.node(1).status().membership.quorum_size(), 3);
    // The joiner started knowing no member and replayed the log from its start; the bootstrap
    // voters are in no entry of their own, yet it must count them in its quorums.
    assert_eq!(
        cluster.node(4).status().membership,
        Membership::with_voters([1, 2, 3, 4]),
        "the joined node knows every member"
    );
}

#[test]
fn dissertation_4_2_1_promotion_refuses_voters_and_silent_learners() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    // Promoting a voter (here the leader itself) is a mistake about the member, not about its
    // progress: the answer must say so rather than "unknown node" or "behind".
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_membership_change(MembershipChange::PromoteLearner(1)),
        Err(ReplicaError::InvalidMembershipChange { .. })
    ));
    assert_eq!(
        cluster
            .node_mut(1)
            .propose_membership_change(MembershipChange::PromoteLearner(9)),
        Err(ReplicaError::UnknownNode { node: 9 })
    );
    // A learner that was added but never started has acknowledged nothing: however short the
    // log, it is not caught up.
    cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::AddLearner(4))
        .unwrap();
    cluster.settle();
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_membership_change(MembershipChange::PromoteLearner(4)),
        Err(ReplicaError::LearnerBehind { node: 4, .. })
    ));
}

#[test]
fn dissertation_4_2_2_removed_leader_steps_down_after_commit() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove(1))
        .unwrap();
    cluster.tick_all(3);
    assert_ne!(cluster.node(1).status().role, Role::Leader);
    assert_eq!(
        cluster.node_mut(1).propose(Bytes::new()),
        Err(ReplicaError::Removed)
    );
    cluster.tick_all(60);
    let leader = cluster
        .leader()
        .expect("n2 or n3 leads the two-node cluster");
    assert_ne!(leader, 1);
}

#[test]
fn dissertation_3_10_leadership_transfer() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    cluster.node_mut(1).transfer_leadership(3).unwrap();
    assert!(matches!(
        cluster.node_mut(1).propose(Bytes::new()),
        Err(ReplicaError::TransferInProgress { target: 3 })
    ));
    cluster.settle();
    assert_eq!(cluster.leader(), Some(3));
    assert!(cluster.node(3).status().term > 1);
}

#[test]
fn restart_recovers_term_vote_and_log_from_disk() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, b"a");
    cluster.tick_all(5);
    let before = cluster.node(2).status();
    cluster.restart(2);
    let after = cluster.node(2).status();
    assert_eq!((after.term, after.last_log), (before.term, before.last_log));
    cluster.tick_all(5);
    assert_eq!(
        cluster.commands_applied(2),
        vec![Bytes::from_static(b"a")],
        "re-applied after restart"
    );
}

#[test]
fn bad_input_is_refused_with_a_named_error() {
    let mut cluster = Cluster::with_config(1, |c| c.command_bytes_max = 8);
    cluster.elect(1);
    let too_big = cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"123456789"));
    assert_eq!(
        too_big,
        Err(ReplicaError::CommandTooLarge { bytes: 9, max: 8 })
    );
    assert_eq!(
        cluster.node_mut(1).transfer_leadership(9),
        Err(ReplicaError::UnknownNode { node: 9 })
    );
    let mut bad = Config::new(1);
    bad.election_timeout_min_ticks = bad.heartbeat_interval_ticks;
    assert!(Raft::new(bad, bootstrap(&[1]))
        .unwrap_err()
        .contains("heartbeat"));
}

// The three tests below come from a review of this crate; each failed before its fix.

#[test]
fn s10_2_1_a_leader_sends_nothing_before_its_term_is_durable() {
    // A sole voter elects itself inside one tick. If its appends left before its new term was on
    // disk and it crashed, it could lead the same term again with other entries at the same
    // indexes, and a learner would apply both histories.
    let membership = Membership {
        voters: [1].into(),
        learners: [2].into(),
    };
    let mut n1 = Raft::new(Config::new(1), PersistedState::bootstrap(membership)).unwrap();
    while n1.status().role != Role::Leader {
        n1.tick();
    }
    n1.propose(Bytes::from_static(b"X")).unwrap();
    let ready = n1.ready();
    assert_eq!(
        ready.hard_state.map(|h| h.term),
        Some(1),
        "the new term is in this batch"
    );
    assert!(
        ready
            .messages
            .iter()
            .all(|m| !matches!(m.body, MessageBody::AppendEntries { .. })),
        "appends must wait until the term is durable"
    );
    assert!(ready
        .messages_after_persist
        .iter()
        .any(|m| matches!(m.body, MessageBody::AppendEntries { .. })));
    // (Once the term is durable, appends leave before the leader's own fsync again: see
    // s10_2_proposals_between_readies_are_batched_and_pipelined.)
}

#[test]
fn s6_4_a_delayed_timeout_now_voids_the_lease_for_the_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    cluster.node_mut(1).transfer_leadership(2).unwrap();
    cluster.handle_ready(1);
    let held = cluster
        .queue
        .iter()
        .position(|m| matches!(m.body, MessageBody::TimeoutNow))
        .unwrap();
    let timeout_now = cluster.queue.remove(held).unwrap();
    cluster.settle();
    cluster.tick_all(70); // the transfer is abandoned; heartbeats keep confirming rounds
    assert_eq!(cluster.leader(), Some(1));
    cluster.isolate(1);
    cluster.node_mut(2).step(timeout_now); // arrives late: n2 campaigns through n3's lease
    cluster.settle();
    assert_eq!(cluster.node(2).status().role, Role::Leader);
    let written = cluster.propose(2, b"W");
    cluster.settle();
    assert!(cluster.node(2).status().commit_index >= written.index);
    cluster.node_mut(1).read(77, ReadMode::Lease).unwrap();
    cluster.settle();
    let stale = cluster
        .reads
        .get(&1)
        .into_iter()
        .flatten()
        .any(|r| r.request_id == 77 && r.index < written.index);
    assert!(
        !stale,
        "the old leader served a lease read that misses a committed write"
    );
}

#[test]
fn s9_6_the_lease_promise_outlives_a_term_change() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.tick_all(4); // n2 acknowledged a heartbeat round: it promised n1 not to elect another
    let term = cluster.node(2).status().term;
    let last_log = cluster.node(2).status().last_log;
    // A late refusal of a pre-vote n2 once sent raises its term and clears its leader...
    cluster.node_mut(2).step(msg(
        3,
        2,
        term + 1,
        MessageBody::PreVoteResponse { granted: false },
    ));
    assert_eq!(cluster.node(2).status().leader, None);
    // ...but the promise is about time, not terms: it still grants no vote.
    cluster.node_mut(2).step(msg(
        3,
        2,
        term + 2,
        MessageBody::RequestVote {
            last_log,
            leadership_transfer: false,
        },
    ));
    let ready = cluster.node_mut(2).ready();
    let granted = ready
        .messages_after_persist
        .iter()
        .any(|m| matches!(m.body, MessageBody::RequestVoteResponse { granted: true }));
    assert!(!granted, "vote granted inside the lease");
}

#[test]
fn s9_6_prevote_refuses_while_a_leader_is_alive_even_without_check_quorum() {
    let mut cluster = Cluster::with_config(3, |c| c.check_quorum = false);
    cluster.elect(1);
    cluster.tick_all(2);
    let term = cluster.node(2).status().term;
    let last_log = cluster.node(1).status().last_log;
    cluster
        .node_mut(2)
        .step(msg(3, 2, term + 1, MessageBody::PreVote { last_log }));
    let ready = cluster.node_mut(2).ready();
    assert!(ready
        .messages_after_persist
        .iter()
        .all(|m| matches!(m.body, MessageBody::PreVoteResponse { granted: false })));
}

#[test]
fn a_follower_forwards_proposals_to_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.settle();
    cluster
        .node_mut(2)
        .propose_or_forward(Bytes::from_static(b"from-n2"))
        .unwrap();
    cluster.settle();
    assert_eq!(
        cluster.commands_applied(3),
        vec![Bytes::from_static(b"from-n2")]
    );
    cluster.isolate(1);
    cluster.tick_all(40);
    let mut lone = Raft::new(config_for(9), bootstrap(&[9, 8, 7])).unwrap();
    assert!(
        matches!(
            lone.propose_or_forward(Bytes::new()),
            Err(ReplicaError::NotLeader { leader_hint: None })
        ),
        "with no known leader the caller is told so"
    );
}

/// The forwards a follower's node 2 sent in one Ready's worth of `commands`, as delivered.
fn forwards_of(
    configure: fn(&mut Config),
    commands: &[&'static [u8]],
) -> (Vec<Vec<Bytes>>, Cluster) {
    let mut cluster = Cluster::with_config(3, configure);
    cluster.elect(1);
    cluster.settle();
    cluster.delivered.clear();
    for &command in commands {
        cluster
            .node_mut(2)
            .propose_or_forward(Bytes::from_static(command))
            .unwrap();
    }
    cluster.settle();
    let forwards = cluster
        .delivered
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::ForwardProposals { commands } => Some(commands.clone()),
            _ => None,
        })
        .collect();
    (forwards, cluster)
}

fn batch(commands: &[&'static [u8]]) -> Vec<Bytes> {
    commands.iter().map(|c| Bytes::from_static(c)).collect()
}

/// Not a paper rule but a batching one: the proposals a follower forwards between two Readies
/// travel as one message to the leader, up to `entries_per_message_max` commands, and the leader
/// appends them in the order they were proposed.
#[test]
fn a_follower_forwards_the_proposals_of_one_ready_in_one_message() {
    let (forwards, cluster) = forwards_of(
        |config| config.entries_per_message_max = 2,
        &[b"a", b"b", b"c"],
    );
    assert_eq!(
        forwards,
        vec![batch(&[b"a", b"b"]), batch(&[b"c"])],
        "two commands per message at most, in order"
    );
    assert_eq!(cluster.commands_applied(3), batch(&[b"a", b"b", b"c"]));
}

/// A forward is no larger than `bytes_per_message_max` in commands, unless one command alone is.
#[test]
fn a_forward_joins_commands_up_to_the_message_byte_limit() {
    let (forwards, cluster) = forwards_of(
        |config| config.bytes_per_message_max = 10,
        &[b"aaaa", b"bbbbbb", b"cccc", b"dddddddddddd"],
    );
    assert_eq!(
        forwards,
        vec![
            batch(&[b"aaaa", b"bbbbbb"]),
            batch(&[b"cccc"]),
            batch(&[b"dddddddddddd"]),
        ],
        "10 bytes fit, 14 do not; a 12-byte command still travels, alone"
    );
    assert_eq!(cluster.commands_applied(1).len(), 4);
}

#[test]
fn only_a_leader_lets_its_committed_entries_be_applied_before_its_batch_is_persisted() {
    // A leader counts its own entries towards a commit only once persisted, so what it hands
    // out as committed is durable on a quorum already; a follower's acknowledgements are what
    // commits wait for, so it must persist first.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, b"x");
    cluster.settle_except(2);
    let follower = cluster.node_mut(2);
    assert!(follower.has_ready(), "n2 received the append");
    let ready = follower.ready();
    assert!(!ready.entries.is_empty(), "n2 writes the entry");
    assert!(!ready.apply_early && !ready.may_apply_before_persist());
    follower.advance();

    cluster.settle_except(1);
    cluster.propose(1, b"y");
    let leader = cluster.node_mut(1);
    assert!(leader.has_ready());
    let ready = leader.ready();
    assert!(
        ready.apply_early,
        "a leader's batch may be applied before it is persisted"
    );
    leader.advance();
}
