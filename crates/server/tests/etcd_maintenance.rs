//! etcd's Maintenance and Auth services over a real three-node cluster: status, HashKV agreeing
//! on every member, a snapshot download that passes etcd's client checks and restores, alarms,
//! defragment, moving the leader, and the auth status etcdctl asks for.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::auth_client::AuthClient;
use ballot_server::backup::snapshot_from_payload;
use ballot_server::etcd::RequestLimits;
use ballot_storage::mvcc::MvccStore;
use etcd_support::{put, Cluster};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_hashes_snapshots_and_leadership() {
    let cluster = Cluster::start(RequestLimits::default()).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader);
    for i in 0..50 {
        put(&mut kv, &format!("m/{i:02}"), &"v".repeat(i * 100)).await;
    }
    kv.delete_range(pb::DeleteRangeRequest {
        key: "m/07".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.wait_applied().await;

    // Status: every member names the same leader and reports its own state.
    for member in 0..3 {
        let status = cluster
            .maintenance(member)
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.leader, cluster.ids[leader], "member {member}");
        assert_eq!(status.header.unwrap().member_id, cluster.ids[member]);
        assert!(status.version.starts_with("3."), "{}", status.version);
        assert!(status.db_size > 0 && status.db_size_in_use > 0);
        assert!(status.raft_index >= status.raft_applied_index || status.raft_applied_index > 0);
        assert!(status.raft_term > 0);
        assert!(!status.is_learner);
        assert!(status.errors.is_empty(), "{:?}", status.errors);
    }

    // HashKV: every member has the same history, so the same hash at the same revision.
    let revision = cluster.revision(leader);
    let mut hashes = Vec::new();
    for member in 0..3 {
        let hash = cluster
            .maintenance(member)
            .hash_kv(pb::HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hash.hash_revision, revision);
        hashes.push(hash.hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let error = cluster
        .maintenance(leader)
        .hash_kv(pb::HashKvRequest {
            revision: revision + 100,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);

    // Snapshot of a follower: chunks, then the sha256; size 512 * n + 32 as etcdctl checks; it
    // restores into a store with the same hash.
    let follower = cluster.follower(leader);
    let mut chunks = cluster
        .maintenance(follower)
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut payload = Vec::new();
    let mut messages = 0;
    while let Some(chunk) = chunks.message().await.unwrap() {
        assert!(chunk.blob.len() <= 32 * 1024);
        payload.extend_from_slice(&chunk.blob);
        messages += 1;
    }
    assert!(messages >= 2, "data, then the digest");
    assert_eq!(payload.len() % 512, 32, "etcd's hasChecksum");
    let snapshot = snapshot_from_payload(&payload).unwrap();
    assert_eq!(&snapshot[..8], b"BALLOTMV");
    let restore_dir = std::env::temp_dir().join(format!(
        "ballot-etcd-snapshot-{}-{}",
        std::process::id(),
        revision
    ));
    std::fs::create_dir_all(&restore_dir).unwrap();
    let restored = MvccStore::open(restore_dir.join("state")).unwrap();
    restored.restore(snapshot).unwrap();
    assert_eq!(restored.revision(), revision);
    assert_eq!(restored.hash_kv(revision).unwrap().0, hashes[0]);
    drop(restored);
    let _ = std::fs::remove_dir_all(&restore_dir);

    // Alarms: none; defragment: a no-op that succeeds; Hash answers.
    let alarms = cluster
        .maintenance(follower)
        .alarm(pb::AlarmRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(alarms.alarms.is_empty());
    let defragmented = cluster
        .maintenance(follower)
        .defragment(pb::DefragmentRequest {})
        .await
        .unwrap();
    let note = defragmented.metadata().get("ballot-detail").unwrap();
    assert!(
        note.to_str().unwrap().contains("no-op"),
        "the answer says it did nothing: {note:?}"
    );
    cluster
        .maintenance(follower)
        .hash(pb::HashRequest {})
        .await
        .unwrap();

    // Auth: disabled, as etcdctl asks; Authenticate says so in etcd's words.
    let mut auth = AuthClient::new(cluster.channel(follower));
    let status = auth
        .auth_status(pb::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.enabled);
    let error = auth
        .authenticate(pb::AuthenticateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.message(), "etcdserver: authentication is not enabled");
    let error = auth
        .user_list(pb::AuthUserListRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);

    // MoveLeader, sent to a follower (forwarded to the leader): answers once the target leads.
    let target = cluster.follower(leader);
    let via = (leader + 2) % 3;
    cluster
        .maintenance(via)
        .move_leader(pb::MoveLeaderRequest {
            target_id: cluster.ids[target],
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while cluster.handles[via].status().leader != Some(cluster.ids[target]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every member follows the new leader");
    let error = cluster
        .maintenance(target)
        .move_leader(pb::MoveLeaderRequest { target_id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(error.message(), "etcdserver: bad leader transferee");

    // Writes go on under the new leader.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let attempt = cluster
                .kv(leader)
                .put(pb::PutRequest {
                    key: "after-move".into(),
                    value: "1".into(),
                    ..Default::default()
                })
                .await;
            if attempt.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a write after the leader moved");
}
