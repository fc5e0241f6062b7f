//! etcd's Lease service over a real three-node cluster: grant, attach keys, keep alive over a
//! stream (also through a follower, which forwards to the leader), time-to-live with keys, the
//! lease list, revoke deleting the keys, and etcd's answers for unknown leases.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_server::etcd::RequestLimits;
use etcd_support::{get, Cluster};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn keep_alive_once(
    requests: &mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: &mut tonic::Streaming<pb::LeaseKeepAliveResponse>,
    id: i64,
) -> pb::LeaseKeepAliveResponse {
    requests
        .send(pb::LeaseKeepAliveRequest { id })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a keep-alive answer within 10 s")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_grant_attach_keep_alive_and_revoke() {
    let cluster = Cluster::start(RequestLimits::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let mut lease = cluster.lease(leader);
    let mut kv = cluster.kv(leader);

    // Grant: a store-chosen id, and one the client picks; the TTL is raised to the minimum.
    let granted = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, 60);
    let chosen = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 100, id: 4242 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((chosen.id, chosen.ttl), (4242, 100));
    let short = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(short.ttl, 2, "raised to etcd's minimum TTL");
    lease
        .lease_revoke(pb::LeaseRevokeRequest { id: short.id })
        .await
        .unwrap();
    let exists = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Code::FailedPrecondition);
    assert_eq!(exists.message(), "etcdserver: lease already exists");
    let too_long = lease
        .lease_grant(pb::LeaseGrantRequest {
            ttl: i64::MAX,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::OutOfRange);
    assert_eq!(too_long.message(), "etcdserver: too large lease TTL");

    // Attach two keys; a put with an unknown lease is refused.
    for key in ["l/a", "l/b"] {
        kv.put(pb::PutRequest {
            key: key.into(),
            value: "v".into(),
            lease: granted.id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let unknown = kv
        .put(pb::PutRequest {
            key: "l/c".into(),
            value: "v".into(),
            lease: 999_999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");
    assert_eq!(get(&mut kv, "l/a").await.kvs[0].lease, granted.id);

    // Time-to-live with keys, on the leader and through a follower.
    for member in [leader, follower] {
        let ttl = cluster
            .lease(member)
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: granted.id,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ttl.id, granted.id);
        assert_eq!(ttl.granted_ttl, 60);
        assert!(ttl.ttl > 50 && ttl.ttl <= 60, "{ttl:?}");
        let mut keys: Vec<&[u8]> = ttl.keys.iter().map(|k| &k[..]).collect();
        keys.sort();
        assert_eq!(keys, [&b"l/a"[..], b"l/b"]);
    }
    let without_keys = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: granted.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(without_keys.keys.is_empty());
    let unknown_ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: 31337,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unknown_ttl.id, unknown_ttl.ttl), (31337, -1));

    // Keep-alive stream on a follower: forwarded to the leader, answered in order.
    let (requests, receiver) = mpsc::channel(4);
    let mut responses = cluster
        .lease(follower)
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        let answer = keep_alive_once(&requests, &mut responses, granted.id).await;
        assert_eq!((answer.id, answer.ttl), (granted.id, 60));
    }
    // An unknown lease answers TTL 0, as etcd does, and the stream stays open.
    let answer = keep_alive_once(&requests, &mut responses, 31337).await;
    assert_eq!((answer.id, answer.ttl), (31337, 0));
    let answer = keep_alive_once(&requests, &mut responses, chosen.id).await;
    assert_eq!((answer.id, answer.ttl), (chosen.id, 100));
    drop(requests);

    // The same on the leader directly.
    let (requests, receiver) = mpsc::channel(4);
    let mut responses = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let answer = keep_alive_once(&requests, &mut responses, granted.id).await;
    assert_eq!(answer.ttl, 60);
    assert_eq!(answer.header.unwrap().member_id, cluster.ids[leader]);
    drop(requests);

    // The lease list, on every member.
    cluster.wait_applied().await;
    for member in 0..3 {
        let leases = cluster
            .lease(member)
            .lease_leases(pb::LeaseLeasesRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut ids: Vec<i64> = leases.leases.iter().map(|l| l.id).collect();
        ids.sort();
        let mut expected = vec![granted.id, chosen.id];
        expected.sort();
        assert_eq!(ids, expected, "member {member}");
    }

    // Revoke (through a follower) deletes the attached keys.
    cluster
        .lease(follower)
        .lease_revoke(pb::LeaseRevokeRequest { id: granted.id })
        .await
        .unwrap();
    assert_eq!(get(&mut kv, "l/a").await.count, 0);
    assert_eq!(get(&mut kv, "l/b").await.count, 0);
    let again = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: granted.id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(again.message(), "etcdserver: requested lease not found");
}
