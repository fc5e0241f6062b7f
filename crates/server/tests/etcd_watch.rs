//! etcd's Watch service over a real three-node cluster: creation acks, events in order with
//! prev_kv, filters, cancel, watching from a past or compacted revision, progress requests, and
//! a refused create, on a follower as well as the leader.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_proto::mvccpb::event::EventType;
use ballot_server::etcd::RequestLimits;
use etcd_support::{prefix_end, put, Cluster};
use pb::watch_request::RequestUnion;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Watcher {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Watcher {
    async fn open(cluster: &Cluster, member: usize) -> Watcher {
        let (requests, receiver) = mpsc::channel(16);
        let responses = cluster
            .watch(member)
            .watch(ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        Watcher {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .unwrap();
    }

    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a watch response within 10 s")
            .unwrap()
            .expect("the stream is open")
    }

    /// The next response that carries events, and the events of the ones after it until
    /// `count` events have arrived.
    async fn events(&mut self, count: usize) -> Vec<ballot_proto::mvccpb::Event> {
        let mut events = Vec::new();
        while events.len() < count {
            let response = self.next().await;
            assert!(!response.canceled, "unexpected cancel: {response:?}");
            events.extend(response.events);
        }
        events
    }
}

fn key_of(event: &ballot_proto::mvccpb::Event) -> String {
    String::from_utf8_lossy(&event.kv.as_ref().unwrap().key).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_deliver_events_in_order_and_follow_etcds_protocol() {
    let cluster = Cluster::start(RequestLimits::default()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let mut kv = cluster.kv(leader);

    // A prefix watch with prev_kv on a follower, and a delete-only watch on the leader.
    let mut on_follower = Watcher::open(&cluster, follower).await;
    on_follower
        .create(pb::WatchCreateRequest {
            key: "w/".into(),
            range_end: prefix_end("w/"),
            prev_kv: true,
            ..Default::default()
        })
        .await;
    let created = on_follower.next().await;
    assert!(created.created && !created.canceled);
    let prefix_watch = created.watch_id;
    assert_eq!(created.header.unwrap().member_id, cluster.ids[follower]);

    let mut on_leader = Watcher::open(&cluster, leader).await;
    on_leader
        .create(pb::WatchCreateRequest {
            key: "w/".into(),
            range_end: prefix_end("w/"),
            filters: vec![pb::watch_create_request::FilterType::Noput as i32],
            watch_id: 7,
            ..Default::default()
        })
        .await;
    let created = on_leader.next().await;
    assert!(created.created);
    assert_eq!(created.watch_id, 7, "the client's watch id is kept");

    let first = put(&mut kv, "w/a", "1").await.header.unwrap().revision;
    put(&mut kv, "w/a", "2").await;
    put(&mut kv, "other", "x").await;
    put(&mut kv, "w/b", "3").await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: "w/a".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let events = on_follower.events(4).await;
    let seen: Vec<(i32, String, i64)> = events
        .iter()
        .map(|e| (e.r#type, key_of(e), e.kv.as_ref().unwrap().mod_revision))
        .collect();
    let put_type = EventType::Put as i32;
    let delete_type = EventType::Delete as i32;
    assert_eq!(
        seen,
        [
            (put_type, "w/a".into(), first),
            (put_type, "w/a".into(), first + 1),
            (put_type, "w/b".into(), first + 3),
            (delete_type, "w/a".into(), first + 4),
        ]
    );
    assert!(
        events[0].prev_kv.is_none(),
        "a creation has no previous value"
    );
    assert_eq!(&events[1].prev_kv.as_ref().unwrap().value[..], b"1");
    assert_eq!(&events[3].prev_kv.as_ref().unwrap().value[..], b"2");

    let deletes = on_leader.events(1).await;
    assert_eq!(deletes.len(), 1, "puts are filtered out");
    assert_eq!(deletes[0].r#type, delete_type);

    // Cancel: acknowledged with canceled; no more events for that watch.
    on_follower
        .send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: prefix_watch,
        }))
        .await;
    let canceled = on_follower.next().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, prefix_watch);

    // A progress request is answered with watch id -1 and the current revision.
    put(&mut kv, "other", "y").await;
    cluster.wait_applied().await;
    on_follower
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let progress = on_follower.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert_eq!(progress.header.unwrap().revision, cluster.revision(leader));

    // Watching from a past revision replays history.
    let mut replay = Watcher::open(&cluster, follower).await;
    replay
        .create(pb::WatchCreateRequest {
            key: "w/a".into(),
            start_revision: first,
            ..Default::default()
        })
        .await;
    assert!(replay.next().await.created);
    let replayed = replay.events(3).await;
    let revisions: Vec<i64> = replayed
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revisions, [first, first + 1, first + 4]);

    // A create the hub refuses: created and canceled, watch id -1, with the reason.
    replay
        .create(pb::WatchCreateRequest {
            key: "z".into(),
            range_end: "a".into(),
            ..Default::default()
        })
        .await;
    let refused = replay.next().await;
    assert!(refused.created && refused.canceled);
    assert_eq!(refused.watch_id, -1);
    assert!(refused.cancel_reason.contains("range"), "{refused:?}");
    // An unknown filter value is refused the same way, naming the field.
    replay
        .create(pb::WatchCreateRequest {
            key: "z".into(),
            filters: vec![9],
            ..Default::default()
        })
        .await;
    let refused = replay.next().await;
    assert!(refused.canceled && refused.cancel_reason.contains("filters"));

    // After compaction, a watch from below the compacted revision is created, then canceled
    // with the compact revision (what etcd sends).
    let compact_at = cluster.revision(leader);
    kv.compact(pb::CompactionRequest {
        revision: compact_at,
        physical: false,
    })
    .await
    .unwrap();
    cluster.wait_applied().await;
    let mut compacted = Watcher::open(&cluster, follower).await;
    compacted
        .create(pb::WatchCreateRequest {
            key: "w/a".into(),
            start_revision: first,
            ..Default::default()
        })
        .await;
    let created = compacted.next().await;
    assert!(created.created && !created.canceled);
    let canceled = compacted.next().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, created.watch_id);
    assert_eq!(canceled.compact_revision, compact_at);

    // Closing the client's side ends the stream.
    drop(on_leader.requests);
    let ended = tokio::time::timeout(Duration::from_secs(10), on_leader.responses.message())
        .await
        .expect("the stream ends");
    assert!(matches!(ended, Ok(None)));
}
