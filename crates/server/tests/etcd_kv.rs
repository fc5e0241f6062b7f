//! etcd's KV service over a real three-node cluster, through the generated gRPC client: ranges
//! (prefix, limit, count, sort, past revisions, compaction), transactions, the request limits
//! (refused with etcd's error, nothing written), and a follower answering writes and
//! linearizable reads by forwarding them to the leader.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_server::etcd::RequestLimits;
use etcd_support::{get, prefix_end, put, values, Cluster};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
use tonic::Code;

const LIMITS: RequestLimits = RequestLimits {
    max_request_bytes: 4096,
    max_txn_ops: 4,
};

fn put_op(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: key.to_string().into(),
            value: value.to_string().into(),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key: key.to_string().into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_writes_transactions_and_compaction() {
    let cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader);

    // Put answers with the new revision in the header; prev_kv returns the old value.
    let first = put(&mut kv, "fruit/apple", "red").await;
    let header = first.header.unwrap();
    assert_eq!(header.member_id, cluster.ids[leader]);
    assert!(header.revision > 0 && header.raft_term > 0 && header.cluster_id != 0);
    let replaced = kv
        .put(pb::PutRequest {
            key: "fruit/apple".into(),
            value: "green".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.header.unwrap().revision, header.revision + 1);
    assert_eq!(&replaced.prev_kv.unwrap().value[..], b"red");
    for (key, value) in [
        ("fruit/banana", "yellow"),
        ("fruit/cherry", "dark"),
        ("veg/kale", "x"),
    ] {
        put(&mut kv, key, value).await;
    }

    // Single key, with its versions.
    let apple = get(&mut kv, "fruit/apple").await;
    assert_eq!(apple.count, 1);
    let apple_kv = &apple.kvs[0];
    assert_eq!(apple_kv.version, 2);
    assert_eq!(apple_kv.create_revision, header.revision);
    assert_eq!(apple_kv.mod_revision, header.revision + 1);

    // Prefix range, limit / more / count, count_only, keys_only, sort.
    let prefix = |limit, sort_order, sort_target| pb::RangeRequest {
        key: "fruit/".into(),
        range_end: prefix_end("fruit/"),
        limit,
        sort_order,
        sort_target,
        ..Default::default()
    };
    let all = kv.range(prefix(0, 0, 0)).await.unwrap().into_inner();
    assert_eq!(
        values(&all),
        [
            ("fruit/apple".into(), "green".into()),
            ("fruit/banana".into(), "yellow".into()),
            ("fruit/cherry".into(), "dark".into())
        ]
    );
    assert!(!all.more);
    let limited = kv.range(prefix(2, 0, 0)).await.unwrap().into_inner();
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (2, true, 3)
    );
    let by_value_descending = kv
        .range(prefix(
            0,
            pb::range_request::SortOrder::Descend as i32,
            pb::range_request::SortTarget::Value as i32,
        ))
        .await
        .unwrap()
        .into_inner();
    let sorted: Vec<String> = values(&by_value_descending)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(sorted, ["yellow", "green", "dark"]);
    let counted = kv
        .range(pb::RangeRequest {
            count_only: true,
            ..prefix(0, 0, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counted.count, counted.kvs.len()), (3, 0));
    let keys = kv
        .range(pb::RangeRequest {
            keys_only: true,
            ..prefix(0, 0, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()) && keys.kvs.len() == 3);
    let everything = kv
        .range(pb::RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.count, 5, "ready, three fruits, kale");

    // Unknown enum values are refused, naming the field.
    let error = kv.range(prefix(0, 7, 0)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("sort_order"),
        "{}",
        error.message()
    );

    // A past revision; a future one.
    let past = kv
        .range(pb::RangeRequest {
            key: "fruit/apple".into(),
            revision: header.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&past.kvs[0].value[..], b"red");
    let error = kv
        .range(pb::RangeRequest {
            key: "fruit/apple".into(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    // Delete a range with prev_kvs.
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "veg/".into(),
            range_end: prefix_end("veg/"),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(&deleted.prev_kvs[0].key[..], b"veg/kale");
    assert_eq!(get(&mut kv, "veg/kale").await.count, 0);

    // Txn: the compare holds, the success branch runs; then it fails, the else branch runs.
    let banana = get(&mut kv, "fruit/banana").await.kvs[0].clone();
    let compare_value = |value: &str| pb::Compare {
        key: "fruit/banana".into(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(value.to_string().into())),
        ..Default::default()
    };
    let txn = |compare: pb::Compare| pb::TxnRequest {
        compare: vec![
            compare,
            pb::Compare {
                key: "fruit/banana".into(),
                target: CompareTarget::Mod as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::ModRevision(banana.mod_revision)),
                ..Default::default()
            },
        ],
        success: vec![put_op("fruit/banana", "ripe"), get_op("fruit/banana")],
        failure: vec![get_op("fruit/apple")],
    };
    let succeeded = kv
        .txn(txn(compare_value("yellow")))
        .await
        .unwrap()
        .into_inner();
    assert!(succeeded.succeeded);
    let txn_revision = succeeded.header.unwrap().revision;
    match &succeeded.responses[1].response {
        Some(OpResponse::ResponseRange(range)) => {
            assert_eq!(&range.kvs[0].value[..], b"ripe");
            assert_eq!(range.kvs[0].mod_revision, txn_revision);
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    let failed = kv
        .txn(txn(compare_value("yellow")))
        .await
        .unwrap()
        .into_inner();
    assert!(!failed.succeeded);
    match &failed.responses[0].response {
        Some(OpResponse::ResponseRange(range)) => assert_eq!(&range.kvs[0].value[..], b"green"),
        other => panic!("expected the else branch's range, got {other:?}"),
    }
    assert_eq!(
        failed.header.unwrap().revision,
        txn_revision,
        "a read-only branch writes nothing"
    );

    // Compaction: older revisions are gone, with etcd's error; compacting again below is refused.
    let compact_at = txn_revision;
    kv.compact(pb::CompactionRequest {
        revision: compact_at,
        physical: true,
    })
    .await
    .unwrap();
    let error = kv
        .range(pb::RangeRequest {
            key: "fruit/apple".into(),
            revision: header.revision,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let error = kv
        .compact(pb::CompactionRequest {
            revision: compact_at - 1,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    // The compacted revision itself still reads.
    kv.range(pb::RangeRequest {
        key: "fruit/apple".into(),
        revision: compact_at,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_refuse_with_etcds_errors_and_write_nothing() {
    let cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader);
    put(&mut kv, "k", "v").await;
    cluster.wait_applied().await;
    let before: Vec<i64> = (0..3).map(|i| cluster.revision(i)).collect();

    let too_large = kv
        .put(pb::PutRequest {
            key: "big".into(),
            value: vec![b'x'; LIMITS.max_request_bytes].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Code::InvalidArgument);
    assert_eq!(too_large.message(), "etcdserver: request is too large");
    let detail = too_large.metadata().get("ballot-detail").unwrap();
    assert!(
        detail
            .to_str()
            .unwrap()
            .contains("max-request-bytes is 4096"),
        "{detail:?}"
    );

    let too_many = kv
        .txn(pb::TxnRequest {
            success: (0..5).map(|i| put_op(&format!("t{i}"), "v")).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert_eq!(
        too_many.message(),
        "etcdserver: too many operations in txn request"
    );
    // A nested transaction gets what its parent level left: 3 + 2 > 4.
    let nested = pb::TxnRequest {
        success: vec![
            put_op("a", "1"),
            put_op("b", "2"),
            pb::RequestOp {
                request: Some(Op::RequestTxn(pb::TxnRequest {
                    success: vec![put_op("c", "3"), put_op("d", "4")],
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let error = kv.txn(nested).await.unwrap_err();
    assert_eq!(
        error.message(),
        "etcdserver: too many operations in txn request"
    );

    let no_key = kv
        .put(pb::PutRequest {
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::InvalidArgument);
    assert_eq!(no_key.message(), "etcdserver: key is not provided");
    let no_key = kv.range(pb::RangeRequest::default()).await.unwrap_err();
    assert_eq!(no_key.message(), "etcdserver: key is not provided");

    let duplicate = kv
        .txn(pb::TxnRequest {
            success: vec![put_op("d", "1"), put_op("d", "2")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::InvalidArgument);
    assert_eq!(
        duplicate.message(),
        "etcdserver: duplicate key given in txn request"
    );

    // A gRPC message beyond the decoding limit is refused by the transport, not proposed.
    let huge = kv
        .put(pb::PutRequest {
            key: "huge".into(),
            value: vec![b'x'; LIMITS.max_decoding_message_bytes() + 1].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(huge.code(), Code::Ok);

    // Nothing was written anywhere: no member's revision moved.
    cluster.wait_applied().await;
    let after: Vec<i64> = (0..3).map(|i| cluster.revision(i)).collect();
    assert_eq!(before, after);
    for key in ["big", "t0", "a", "d", "huge"] {
        assert_eq!(get(&mut kv, key).await.count, 0, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_answers_writes_and_linearizable_reads_through_the_leader() {
    let cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let mut kv = cluster.kv(follower);

    // The write goes to the leader through Raft; as in etcd, the header names the member asked.
    let written = put(&mut kv, "via-follower", "1").await;
    assert_eq!(written.header.unwrap().member_id, cluster.ids[follower]);

    // A linearizable read on the follower sees it at once (the leader confirms a read index,
    // the follower serves it once applied), at the revision the leader wrote.
    let read = get(&mut kv, "via-follower").await;
    assert_eq!(values(&read), [("via-follower".into(), "1".into())]);
    let header = read.header.unwrap();
    assert_eq!(header.member_id, cluster.ids[follower]);
    assert_eq!(header.revision, written.header.unwrap().revision);

    // A serializable read is the follower's own, answered by it.
    cluster.wait_applied().await;
    let local = kv
        .range(pb::RangeRequest {
            key: "via-follower".into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local.header.unwrap().member_id, cluster.ids[follower]);
    assert_eq!(local.kvs.len(), 1);

    // Transactions, deletes and errors come back through the follower unchanged.
    let txn = kv
        .txn(pb::TxnRequest {
            success: vec![put_op("t", "1")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(txn.succeeded);
    let error = kv
        .txn(pb::TxnRequest {
            success: vec![put_op("d", "1"), put_op("d", "2")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "etcdserver: duplicate key given in txn request"
    );
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);

    // A request already forwarded once over the client API (what only the leader answers, such
    // as a lease's time to live; writes and linearizable reads go through Raft) is not forwarded
    // again.
    let mut marked = tonic::Request::new(pb::LeaseTimeToLiveRequest { id: 1, keys: false });
    marked
        .metadata_mut()
        .insert("ballot-forwarded", "1".parse().unwrap());
    let error = cluster
        .lease(follower)
        .lease_time_to_live(marked)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(error.message(), "etcdserver: not leader");
}

/// Raising the limits above etcd's defaults must work end to end: the store applies what the
/// edge let through instead of refusing it after it was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raised_limits_are_honoured_by_the_store() {
    let raised = RequestLimits {
        max_request_bytes: 3 * 1024 * 1024,
        max_txn_ops: 300,
    };
    let cluster = Cluster::start(raised).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader);
    let wide = kv
        .txn(pb::TxnRequest {
            success: (0..250).map(|i| put_op(&format!("w{i:03}"), "v")).collect(),
            ..Default::default()
        })
        .await
        .expect("250 operations fit a limit of 300")
        .into_inner();
    assert!(wide.succeeded);
    let counted = kv
        .range(pb::RangeRequest {
            key: "w".into(),
            range_end: prefix_end("w"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.count, 250);

    let two_mib = vec![b'x'; 2 * 1024 * 1024];
    kv.put(pb::PutRequest {
        key: "large".into(),
        value: two_mib.clone().into(),
        ..Default::default()
    })
    .await
    .expect("a 2 MiB value fits a 3 MiB request limit");
    let stored = get(&mut kv, "large").await;
    assert_eq!(stored.kvs[0].value.len(), two_mib.len());
}

/// What the gRPC layer (`etcd/serve.rs`) answers by itself: a message past the decoding limit
/// (`max_request_bytes` plus gRPC room) is refused from its length prefix with ResourceExhausted,
/// as grpc-go refuses it, and nothing is written; the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_past_the_decoding_limit_is_resource_exhausted_and_nothing_is_written() {
    let cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let mut kv = cluster.kv(leader);
    let refused = kv
        .put(pb::PutRequest {
            key: "big".into(),
            value: vec![b'x'; LIMITS.max_decoding_message_bytes() + 1].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("larger than max"), "{refused:?}");

    put(&mut kv, "after", "ok").await;
    assert_eq!(
        values(&get(&mut kv, "after").await),
        vec![("after".to_string(), "ok".to_string())]
    );
    assert!(get(&mut kv, "big").await.kvs.is_empty());
}

/// KV's unary calls are served inside their connection's task: many at once on one connection
/// (more than its 200 concurrent streams), writes a follower forwards and answers once applied
/// interleaved with linearizable reads that wait for a read index, each get their own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_calls_on_one_connection_each_get_their_own_answer() {
    let cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let calls_max = 300;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..calls_max {
        // Clones of one channel share its one HTTP/2 connection.
        let mut kv = cluster.kv(follower);
        calls.spawn(async move {
            let key = format!("many/{i}");
            let written = put(&mut kv, &key, &i.to_string()).await;
            let read = get(&mut kv, &key).await;
            assert_eq!(values(&read), [(key, i.to_string())]);
            written.header.unwrap().revision
        });
    }
    let mut revisions = Vec::new();
    let all_answered = async {
        while let Some(revision) = calls.join_next().await {
            revisions.push(revision.unwrap());
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), all_answered)
        .await
        .expect("every call is answered within a minute");
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), calls_max, "every put got its own revision");
}

/// A write in flight when the server shuts down is still answered: the client has sent the
/// call's headers, the server shuts down (GOAWAY), then the client sends the request message;
/// the answer comes back whole, and the server returns once it is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_in_flight_at_shutdown_is_answered_before_the_server_returns() {
    use ballot_server::etcd::serve::encode_message;
    use prost::Message;
    use tonic::codegen::http;

    let mut cluster = Cluster::start(LIMITS).await;
    let leader = cluster.leader().await;
    let address = cluster.client_urls[leader]
        .trim_start_matches("http://")
        .to_string();
    let socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/etcdserverpb.KV/Put"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut body) = client.send_request(request, false).unwrap();
    // The server has the call (its headers) and waits for the message.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(async move {
        let returned = cluster
            .stop_serving(leader, std::time::Duration::from_secs(10))
            .await;
        (returned, cluster)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let put = pb::PutRequest {
        key: "in-flight".into(),
        value: "1".into(),
        ..Default::default()
    };
    body.send_data(encode_message(&put), true).unwrap();
    let answer = answer.await.expect("the call is answered, not reset");
    assert_eq!(answer.status(), http::StatusCode::OK);
    let mut answer_body = answer.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = answer_body.data().await {
        message.extend_from_slice(&chunk.unwrap());
    }
    let trailers = answer_body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let response = pb::PutResponse::decode(&message[5..]).unwrap();
    assert!(response.header.unwrap().revision > 1, "the put took effect");
    let (returned, cluster) = stopping.await.unwrap();
    assert!(returned, "the server returned once its call was answered");
    drop(cluster);
}
