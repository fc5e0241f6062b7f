//! Automatic compaction on a three-node cluster in one process (`--auto-compaction-mode
//! periodic --auto-compaction-retention 1s` on every member): the compacted revision advances on
//! every member by itself while clients write, never past what was current one retention
//! earlier, reads below it are refused as etcd refuses them, and it goes on advancing after the
//! leadership moves to another member.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_server::auto_compaction::AutoCompaction;
use ballot_server::etcd::RequestLimits;
use etcd_support::{put, Cluster};
use std::time::{Duration, Instant};

const RETENTION: Duration = Duration::from_secs(1);

/// How long a compaction may take to show up: a retention, plus a check interval, plus room for
/// a slow machine.
const COMPACTION_DEADLINE: Duration = Duration::from_secs(20);

/// Time between two polls of the members' stores (each also writes a key).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What the test saw: the leader's revision read at each moment, oldest first.
struct Observed {
    revisions: Vec<(Instant, i64)>,
}

impl Observed {
    /// The most a compaction observed at `at` may have compacted: the revision read at the first
    /// moment not earlier than one retention before `at` (the schedule's target is a revision
    /// current at least one retention before it compacts, and revisions only grow).
    fn compaction_bound(&self, at: Instant) -> Option<i64> {
        let horizon = at.checked_sub(RETENTION)?;
        self.revisions
            .iter()
            .find(|(seen_at, _)| *seen_at >= horizon)
            .map(|&(_, revision)| revision)
    }
}

/// Writes a key per poll through `writer` until every member has compacted to at least
/// `revision`, checking on the way that no member compacted more than one retention allows.
async fn wait_until_compacted(
    cluster: &Cluster,
    writer: usize,
    revision: i64,
    observed: &mut Observed,
) {
    let deadline = Instant::now() + COMPACTION_DEADLINE;
    let mut kv = cluster.kv(writer);
    let mut written = 0;
    loop {
        let compacted: Vec<i64> = cluster
            .handles
            .iter()
            .map(|handle| handle.store().compacted_revision())
            .collect();
        // Taken after the compacted revisions, so every compaction seen happened before it.
        let now = Instant::now();
        observed.revisions.push((now, cluster.revision(writer)));
        if let Some(bound) = observed.compaction_bound(now) {
            for (member, &compacted) in compacted.iter().enumerate() {
                assert!(
                    compacted <= bound,
                    "member {member} compacted to {compacted}, but {bound} was current less \
                     than a retention ago"
                );
            }
        }
        if compacted.iter().all(|&compacted| compacted >= revision) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "compacted revisions {compacted:?} did not reach {revision} within \
             {COMPACTION_DEADLINE:?} ({written} keys written meanwhile)"
        );
        put(&mut kv, &format!("auto/{written}"), "v").await;
        written += 1;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_compaction_advances_by_itself_and_follows_the_leader() {
    let cluster = Cluster::start_with(RequestLimits::default(), |config| {
        config.auto_compaction = AutoCompaction::Periodic {
            retention: RETENTION,
        };
    })
    .await;
    let leader = cluster.leader().await;
    let mut observed = Observed {
        revisions: Vec::new(),
    };
    let mut kv = cluster.kv(leader);
    for i in 0..10 {
        put(&mut kv, &format!("before/{i}"), "v").await;
    }
    let first_mark = cluster.revision(leader);
    wait_until_compacted(&cluster, leader, first_mark, &mut observed).await;

    // Reads below the compacted revision fail as etcd's do, on every member.
    for member in 0..3 {
        let error = cluster
            .kv(member)
            .range(pb::RangeRequest {
                key: "before/0".into(),
                revision: first_mark - 1,
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            error.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }

    // The leadership moves; the new leader takes over the compactions.
    let successor = cluster.follower(leader);
    cluster.handles[leader]
        .transfer_leadership(cluster.ids[successor])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.leader().await != successor {
        assert!(Instant::now() < deadline, "the leadership did not move");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let second_mark = cluster.revision(successor) + 1;
    wait_until_compacted(&cluster, successor, second_mark, &mut observed).await;
}
