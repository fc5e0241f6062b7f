#![cfg(feature = "interop-tests")]
//! ballot as a third-party etcd v3 client sees it: real three-node clusters of `ballot server`
//! processes on loopback ports, driven only through the `etcd-client` crate (its own generated
//! protobuf code, its own channel balancing). Every KV, Txn, Watch, Lease, Cluster,
//! Maintenance, Lock and Election call ([`coordination`]) is checked against what etcd answers: values, revisions, `prev_kv`, error
//! codes and messages. Also: a follower serving every kind of request, a SIGKILLed leader with
//! the client carrying on after the election, a restarted node catching up by snapshot, and
//! each request limit refusing a request with nothing written.
//!
//! Each test starts its own cluster, so tests are independent and run in parallel. A failing
//! test keeps its cluster's directory (data and `server.log` of each node) and prints where.
//!
//! Built only with `--features interop-tests`:
//! `cargo test -p ballot --features interop-tests --test etcd_client_interop`.

use ballot::dev_cluster::RunningCluster;
use etcd_client::{
    AlarmAction, AlarmType, Client, CompactionOptions, Compare, CompareOp, ConnectOptions,
    DeleteOptions, Event, EventType, GetOptions, HashKvResponse, KeyValue, LeaseGrantOptions,
    LeaseTimeToLiveOptions, Member, MemberAddOptions, PutOptions, ResponseHeader, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

mod coordination;

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");
/// Longest one call may take; a healthy loopback cluster answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for something that needs an election, a transfer or a catch-up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition that is not there yet.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// etcd's (and ballot's) default `--max-request-bytes`.
const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// etcd's (and ballot's) default `--max-txn-ops`.
const MAX_TXN_OPS_DEFAULT: usize = 128;
/// etcd's `clientv3.InvalidWatchID`: the watch id of a stream-wide progress response.
const PROGRESS_WATCH_ID: i64 = -1;

// ---------------------------------------------------------------------------------------------
// The cluster and the client
// ---------------------------------------------------------------------------------------------

/// A running three-node cluster. Dropping it stops the nodes; the directory is removed unless
/// the test failed, so that the logs can be read.
struct TestCluster {
    running: RunningCluster,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts the nodes and waits until each lists every member with its client URL: a
    /// follower can forward to the leader only once the leader has published its URL.
    async fn start(test: &str, server_args: &[&str]) -> TestCluster {
        let dir =
            std::env::temp_dir().join(format!("ballot-interop-{test}-{}", std::process::id()));
        let args: Vec<String> = server_args.iter().map(|a| a.to_string()).collect();
        let running = RunningCluster::start_with_args(Path::new(BALLOT), 3, &dir, true, &args)
            .unwrap_or_else(|e| panic!("the cluster for {test} did not start: {e}"));
        let cluster = TestCluster { running, dir };
        for name in cluster.names() {
            let node = cluster.client_of(&name).await;
            eventually("every member is published", || {
                let mut node = node.clone();
                async move {
                    let list = node.member_list().await.ok()?;
                    let published = list.members().len() == 3
                        && list.members().iter().all(|m| !m.client_urls().is_empty());
                    published.then_some(())
                }
            })
            .await;
        }
        cluster
    }

    fn names(&self) -> Vec<String> {
        self.running
            .plan
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// `127.0.0.1:port`, the endpoint form etcd clients are usually given.
    fn endpoint(&self, name: &str) -> String {
        let node = self
            .running
            .plan
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        format!("127.0.0.1:{}", node.client_port)
    }

    /// A client balancing over every node.
    async fn client(&self) -> Client {
        let endpoints: Vec<String> = self.names().iter().map(|n| self.endpoint(n)).collect();
        connect(&endpoints).await
    }

    /// A client that talks to `name` only.
    async fn client_of(&self, name: &str) -> Client {
        connect(&[self.endpoint(name)]).await
    }

    /// Each node's member id, from the header of its own Status answer.
    async fn member_ids(&self) -> BTreeMap<String, u64> {
        self.member_ids_of(&self.names()).await
    }

    /// As [`TestCluster::member_ids`], asking only the nodes in `names`.
    async fn member_ids_of(&self, names: &[String]) -> BTreeMap<String, u64> {
        let mut ids = BTreeMap::new();
        for name in names {
            let mut client = self.client_of(name).await;
            let status = within("status", client.status()).await.expect("status");
            ids.insert(name.clone(), header(status.header()).member_id());
        }
        ids
    }

    /// The leader's name, once every node in `among` reports the same leader, itself among them.
    async fn leader(&self, among: &[String]) -> String {
        let ids = self.member_ids_of(among).await;
        eventually("the nodes agree on a leader", || async {
            let mut leaders = BTreeSet::new();
            for name in among {
                let mut client = self.client_of(name).await;
                match within("status", client.status()).await {
                    Ok(status) => leaders.insert(status.leader()),
                    Err(_) => return None,
                };
            }
            let leader = *leaders.iter().next()?;
            if leaders.len() != 1 || leader == 0 {
                return None;
            }
            ids.iter()
                .find(|(_, id)| **id == leader)
                .map(|(name, _)| name.clone())
        })
        .await
    }

    fn peer_url(&self, name: &str) -> String {
        let node = self.running.plan.nodes.iter().find(|n| n.name == name);
        format!("http://127.0.0.1:{}", node.expect("a node").peer_port)
    }

    /// The `<index>-<term>.snap` files in a node's snapshot directory.
    fn snapshot_files(&self, name: &str) -> BTreeSet<String> {
        let dir = self.dir.join(name).join("data").join("snap");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|file| file.ends_with(".snap"))
            .collect()
    }

    /// Size in bytes of one file in a node's snapshot directory.
    fn snapshot_file_bytes(&self, name: &str, file: &str) -> u64 {
        let path = self.dir.join(name).join("data").join("snap").join(file);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.running.stop();
        if std::thread::panicking() {
            eprintln!("cluster data and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(CALL_TIMEOUT);
    within("connect", Client::connect(endpoints, Some(options)))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoints:?}: {e}"))
}

/// Awaits `future`, failing the test if it takes longer than [`CALL_TIMEOUT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
}

/// Polls `probe` until it returns `Some`, failing the test after [`CONVERGE_TIMEOUT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {CONVERGE_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reading answers
// ---------------------------------------------------------------------------------------------

/// The request failed with exactly this gRPC code and message (etcd's words).
#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "the whole status: {status:?}"
        ),
        other => panic!("expected {code:?} {message:?}, got {other:?}"),
    }
}

#[track_caller]
fn header(header: Option<&ResponseHeader>) -> &ResponseHeader {
    header.expect("every response carries a header")
}

#[track_caller]
fn revision(response_header: Option<&ResponseHeader>) -> i64 {
    header(response_header).revision()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("the test writes UTF-8 only")
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(kv.key())).collect()
}

fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (text(kv.key()), text(kv.value())))
        .collect()
}

/// An event as (kind, key, value, mod revision, previous value).
fn describe(event: &Event) -> (&'static str, String, String, i64, Option<String>) {
    let kind = match event.event_type() {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    };
    let kv = event.kv().expect("an event carries its key-value");
    (
        kind,
        text(kv.key()),
        text(kv.value()),
        kv.mod_revision(),
        event.prev_kv().map(|prev| text(prev.value())),
    )
}

type Described = (&'static str, String, String, i64, Option<String>);

fn put_event(key: &str, value: &str, revision: i64, prev: Option<&str>) -> Described {
    (
        "PUT",
        key.into(),
        value.into(),
        revision,
        prev.map(Into::into),
    )
}

fn delete_event(key: &str, revision: i64, prev: Option<&str>) -> Described {
    (
        "DELETE",
        key.into(),
        String::new(),
        revision,
        prev.map(Into::into),
    )
}

async fn next_watch_response(stream: &mut WatchStream) -> WatchResponse {
    within("watch response", stream.message())
        .await
        .expect("the watch stream failed")
        .expect("the watch stream ended")
}

/// Sends a create request on `stream` and returns the new watch's id from the creation ack.
async fn create_watch(stream: &mut WatchStream, key: &str, options: WatchOptions) -> i64 {
    within("watch create", stream.watch(key, Some(options)))
        .await
        .expect("send the create request");
    created_watch_id(stream).await
}

async fn created_watch_id(stream: &mut WatchStream) -> i64 {
    let response = next_watch_response(stream).await;
    assert!(
        response.created() && !response.canceled() && response.events().is_empty(),
        "expected a creation ack, got {response:?}"
    );
    response.watch_id()
}

/// Reads until every watch in `wanted` has that many events (more are a failure).
async fn read_events(
    stream: &mut WatchStream,
    wanted: &BTreeMap<i64, usize>,
) -> BTreeMap<i64, Vec<Described>> {
    let mut got: BTreeMap<i64, Vec<Described>> = BTreeMap::new();
    while wanted
        .iter()
        .any(|(id, count)| got.get(id).map_or(0, Vec::len) < *count)
    {
        let response = next_watch_response(stream).await;
        assert!(
            !response.canceled() && !response.created(),
            "unexpected {response:?}"
        );
        let events = got.entry(response.watch_id()).or_default();
        events.extend(response.events().iter().map(describe));
        let limit = wanted.get(&response.watch_id()).copied().unwrap_or(0);
        assert!(
            events.len() <= limit,
            "watch {} got more events than {limit}: {events:?}",
            response.watch_id()
        );
    }
    got
}

// ---------------------------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kv_put_range_delete_and_compaction() {
    let cluster = TestCluster::start("kv", &[]).await;
    let mut client = cluster.client().await;

    // Put with prev_kv: nothing before the first write, the old pair after the second.
    let first = client
        .put("/kv/a", "1", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert!(first.prev_key().is_none(), "{first:?}");
    let rev_a1 = revision(first.header());
    assert_eq!(rev_a1, 2, "etcd's first write is revision 2");
    let second = client
        .put("/kv/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    let rev_a2 = revision(second.header());
    assert_eq!(rev_a2, rev_a1 + 1, "each put takes one revision");
    let prev = second.prev_key().expect("prev_kv of an existing key");
    assert_eq!((text(prev.value()), prev.version()), ("1".to_string(), 1));
    assert_eq!(
        (prev.create_revision(), prev.mod_revision()),
        (rev_a1, rev_a1)
    );

    let got = client.get("/kv/a", None).await.expect("get");
    assert_eq!(got.count(), 1);
    let kv = &got.kvs()[0];
    assert_eq!((text(kv.value()), kv.version()), ("2".to_string(), 2));
    assert_eq!((kv.create_revision(), kv.mod_revision()), (rev_a1, rev_a2));
    assert_eq!(revision(got.header()), rev_a2);
    let old = client
        .get("/kv/a", Some(GetOptions::new().with_revision(rev_a1)))
        .await
        .expect("get at an old revision");
    assert_eq!(pairs(old.kvs()), [("/kv/a".into(), "1".into())]);
    let missing = client.get("/kv/none", None).await.expect("get");
    assert_eq!((missing.count(), missing.kvs().len()), (0, 0));

    // Five keys under one prefix, written out of key order.
    let mut created = BTreeMap::new();
    for (key, value) in [("3", "c"), ("1", "e"), ("2", "a"), ("5", "d"), ("4", "b")] {
        let put = client
            .put(format!("/kv/p/{key}"), value, None)
            .await
            .expect("put");
        created.insert(key, revision(put.header()));
    }
    let prefix = || GetOptions::new().with_prefix();
    let all = client.get("/kv/p/", Some(prefix())).await.expect("get");
    assert_eq!(
        keys(all.kvs()),
        ["/kv/p/1", "/kv/p/2", "/kv/p/3", "/kv/p/4", "/kv/p/5"]
    );
    assert_eq!((all.count(), all.more()), (5, false));

    let limited = client
        .get("/kv/p/", Some(prefix().with_limit(2)))
        .await
        .expect("get");
    assert_eq!(keys(limited.kvs()), ["/kv/p/1", "/kv/p/2"]);
    assert_eq!((limited.count(), limited.more()), (5, true));

    let by_value = client
        .get(
            "/kv/p/",
            Some(prefix().with_sort(SortTarget::Value, SortOrder::Descend)),
        )
        .await
        .expect("get");
    let values: Vec<String> = by_value.kvs().iter().map(|kv| text(kv.value())).collect();
    assert_eq!(values, ["e", "d", "c", "b", "a"]);

    let by_creation = client
        .get(
            "/kv/p/",
            Some(prefix().with_sort(SortTarget::Create, SortOrder::Descend)),
        )
        .await
        .expect("get");
    assert_eq!(
        keys(by_creation.kvs()),
        ["/kv/p/4", "/kv/p/5", "/kv/p/2", "/kv/p/1", "/kv/p/3"]
    );

    let keys_only = client
        .get("/kv/p/", Some(prefix().with_keys_only()))
        .await
        .expect("get");
    assert_eq!(keys_only.kvs().len(), 5);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));

    let count_only = client
        .get("/kv/p/", Some(prefix().with_count_only()))
        .await
        .expect("get");
    assert_eq!((count_only.count(), count_only.kvs().len()), (5, 0));

    let range = client
        .get("/kv/p/2", Some(GetOptions::new().with_range("/kv/p/4")))
        .await
        .expect("get");
    assert_eq!(keys(range.kvs()), ["/kv/p/2", "/kv/p/3"]);
    let from_key = client
        .get("/kv/p/4", Some(GetOptions::new().with_from_key()))
        .await
        .expect("get");
    assert_eq!(keys(from_key.kvs()), ["/kv/p/4", "/kv/p/5"]);
    let recent = client
        .get("/kv/p/", Some(prefix().with_min_mod_revision(created["2"])))
        .await
        .expect("get");
    assert_eq!(keys(recent.kvs()), ["/kv/p/2", "/kv/p/4", "/kv/p/5"]);
    let early = client
        .get(
            "/kv/p/",
            Some(prefix().with_max_create_revision(created["1"])),
        )
        .await
        .expect("get");
    assert_eq!(keys(early.kvs()), ["/kv/p/1", "/kv/p/3"]);

    // ignore_lease keeps the key's lease, ignore_value its value.
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    client
        .put("/kv/l", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with a lease");
    client
        .put("/kv/l", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put ignoring the lease");
    let kept = client
        .put(
            "/kv/l",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .expect("put ignoring the value");
    let prev = kept.prev_key().expect("prev_kv");
    assert_eq!((text(prev.value()), prev.lease()), ("v2".into(), lease));
    let got = client.get("/kv/l", None).await.expect("get");
    let kv = &got.kvs()[0];
    // As in etcd, ignore_value keeps only the value: the request's lease (none) replaces it.
    assert_eq!(
        (text(kv.value()), kv.lease(), kv.version()),
        ("v2".into(), 0, 3)
    );
    assert_status(
        client
            .put("/kv/l", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        client
            .put(
                "/kv/l",
                "x",
                Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
            )
            .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        client
            .put("/kv/new", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        client
            .put("/kv/new", "x", Some(PutOptions::new().with_lease(0x7777)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let nothing = client.get("/kv/new", None).await.expect("get");
    assert_eq!(nothing.count(), 0, "a refused put writes nothing");
    assert_status(
        client.put("", "x", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );

    // DeleteRange with prev_kv.
    let before_delete = revision(client.get("/kv/a", None).await.expect("get").header());
    let deleted = client
        .delete(
            "/kv/p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(deleted.deleted(), 5);
    assert_eq!(
        pairs(deleted.prev_kvs()),
        [
            ("/kv/p/1", "e"),
            ("/kv/p/2", "a"),
            ("/kv/p/3", "c"),
            ("/kv/p/4", "b"),
            ("/kv/p/5", "d")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(
        revision(deleted.header()),
        before_delete + 1,
        "one delete of many keys takes one revision"
    );
    let none = client
        .delete(
            "/kv/p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!((none.deleted(), none.prev_kvs().len()), (0, 0));
    assert_eq!(
        revision(none.header()),
        before_delete + 1,
        "deleting nothing takes no revision"
    );
    let gone = client.get("/kv/p/", Some(prefix())).await.expect("get");
    assert_eq!(gone.count(), 0);

    // Compaction: history below the compacted revision is gone, the rest readable.
    let rev_c1 = revision(client.put("/kv/c", "x", None).await.expect("put").header());
    let rev_c2 = revision(client.put("/kv/c", "y", None).await.expect("put").header());
    client
        .compact(rev_c1, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert_status(
        client
            .get("/kv/c", Some(GetOptions::new().with_revision(rev_c1 - 1)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let at_compaction = client
        .get("/kv/c", Some(GetOptions::new().with_revision(rev_c1)))
        .await
        .expect("the compacted revision itself stays readable");
    assert_eq!(pairs(at_compaction.kvs()), [("/kv/c".into(), "x".into())]);
    assert_status(
        client
            .get("/kv/c", Some(GetOptions::new().with_revision(rev_c2 + 100)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_status(
        client.compact(rev_c1 - 1, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        client.compact(rev_c2 + 100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
}

// ---------------------------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn txn_compares_every_target_and_runs_nested_ops() {
    let cluster = TestCluster::start("txn", &[]).await;
    let mut client = cluster.client().await;
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let rev_a = revision(client.put("/t/a", "10", None).await.expect("put").header());
    let rev_b = revision(
        client
            .put("/t/b", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put")
            .header(),
    );

    let nested = Txn::new()
        .when([Compare::value("/t/a", CompareOp::Greater, "09")])
        .and_then([TxnOp::put("/t/d", "nested", None)])
        .or_else([TxnOp::put("/t/e", "wrong branch", None)]);
    let txn = Txn::new()
        .when([
            Compare::value("/t/a", CompareOp::Equal, "10"),
            Compare::version("/t/a", CompareOp::Equal, 1),
            Compare::create_revision("/t/a", CompareOp::Equal, rev_a),
            Compare::mod_revision("/t/a", CompareOp::Equal, rev_a),
            Compare::lease("/t/b", CompareOp::Equal, lease),
            Compare::version("/t/missing", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("/t/c", "1", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("/t/a", None),
            TxnOp::delete("/t/b", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(nested),
        ])
        .or_else([TxnOp::put("/t/f", "wrong branch", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(response.succeeded(), "{response:?}");
    let rev_txn = revision(response.header());
    assert_eq!(
        rev_txn,
        rev_b + 1,
        "a transaction that writes takes one revision"
    );
    match response.op_responses().as_slice() {
        [TxnOpResponse::Put(put), TxnOpResponse::Get(get), TxnOpResponse::Delete(delete), TxnOpResponse::Txn(nested)] =>
        {
            assert!(put.prev_key().is_none(), "/t/c did not exist: {put:?}");
            assert_eq!(pairs(get.kvs()), [("/t/a".into(), "10".into())]);
            assert_eq!(delete.deleted(), 1);
            assert_eq!(pairs(delete.prev_kvs()), [("/t/b".into(), "x".into())]);
            assert_eq!(delete.prev_kvs()[0].lease(), lease);
            assert!(nested.succeeded(), "{nested:?}");
            assert!(
                matches!(nested.op_responses().as_slice(), [TxnOpResponse::Put(_)]),
                "{nested:?}"
            );
        }
        other => panic!("unexpected op responses {other:?}"),
    }
    let after = client
        .get("/t/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(keys(after.kvs()), ["/t/a", "/t/c", "/t/d"]);
    assert!(
        after.kvs()[1..]
            .iter()
            .all(|kv| kv.mod_revision() == rev_txn),
        "every write of one transaction has its revision: {after:?}"
    );

    // The failure branch, whose later op sees the earlier one's write.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::value("/t/a", CompareOp::Less, "10")])
                .and_then([TxnOp::put("/t/g", "wrong branch", None)])
                .or_else([
                    TxnOp::put("/t/f", "else", None),
                    TxnOp::get(
                        "/t/",
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    ),
                ]),
        )
        .await
        .expect("txn");
    assert!(!response.succeeded());
    match response.op_responses().as_slice() {
        [TxnOpResponse::Put(_), TxnOpResponse::Get(count)] => assert_eq!(count.count(), 4),
        other => panic!("unexpected op responses {other:?}"),
    }
    let rev_f = revision(response.header());
    assert_eq!(rev_f, rev_txn + 1);

    // Each comparison target on its own, true and false.
    let cases = [
        (Compare::value("/t/a", CompareOp::NotEqual, "10"), false),
        (Compare::value("/t/a", CompareOp::Greater, "1"), true),
        (Compare::version("/t/a", CompareOp::Greater, 0), true),
        (Compare::version("/t/a", CompareOp::Less, 1), false),
        (
            Compare::create_revision("/t/a", CompareOp::Equal, rev_a + 1),
            false,
        ),
        (
            Compare::create_revision("/t/a", CompareOp::Less, rev_a + 1),
            true,
        ),
        (
            Compare::mod_revision("/t/c", CompareOp::Equal, rev_txn),
            true,
        ),
        (
            Compare::mod_revision("/t/c", CompareOp::Greater, rev_txn),
            false,
        ),
        (Compare::lease("/t/a", CompareOp::Equal, 0), true),
        (Compare::lease("/t/a", CompareOp::Equal, lease), false),
        // A value compare on a missing key fails; its revisions compare as 0.
        (Compare::value("/t/missing", CompareOp::Equal, ""), false),
        (
            Compare::create_revision("/t/missing", CompareOp::Equal, 0),
            true,
        ),
        // Over a range, every key must satisfy the comparison.
        (
            Compare::version("/t/", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            Compare::value("/t/", CompareOp::Equal, "10").with_prefix(),
            false,
        ),
    ];
    for (compare, expected) in cases {
        let description = format!("{compare:?}");
        let response = client
            .txn(
                Txn::new()
                    .when([compare])
                    .and_then([TxnOp::get("/t/a", None)]),
            )
            .await
            .expect("txn");
        assert_eq!(response.succeeded(), expected, "{description}");
        assert_eq!(
            revision(response.header()),
            rev_f,
            "a read-only transaction takes no revision"
        );
    }

    // etcd refuses two writes of one key in one transaction level, a put beside a delete too.
    for ops in [
        vec![TxnOp::put("/t/x", "1", None), TxnOp::put("/t/x", "2", None)],
        vec![
            TxnOp::put("/t/x", "1", None),
            TxnOp::delete("/t/", Some(DeleteOptions::new().with_prefix())),
        ],
    ] {
        assert_status(
            client.txn(Txn::new().and_then(ops)).await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
    }
    let untouched = client
        .get("/t/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(keys(untouched.kvs()), ["/t/a", "/t/c", "/t/d", "/t/f"]);
    assert_eq!(revision(untouched.header()), rev_f);
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn watch_many_watches_on_one_stream() {
    let cluster = TestCluster::start("watch", &[]).await;
    // One member for the writes and the watch stream: a watch with no start revision begins
    // after what *its* member has applied, and a client balanced over all members could have
    // its put answered by one member and its watch opened on another that has not applied the
    // put yet (the watch would then see it, as etcd's would).
    let member = cluster.names()[0].clone();
    let mut client = cluster.client_of(&member).await;
    let rev0 = revision(client.put("/w/a", "0", None).await.expect("put").header());

    let mut stream = within(
        "watch",
        client.watch("/w/a", Some(WatchOptions::new().with_prev_key())),
    )
    .await
    .expect("open a watch stream");
    let key_with_prev = created_watch_id(&mut stream).await;
    let prefix_no_delete = create_watch(
        &mut stream,
        "/w/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    let prefix_no_put = create_watch(
        &mut stream,
        "/w/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]),
    )
    .await;
    let from_history = create_watch(
        &mut stream,
        "/w/a",
        WatchOptions::new().with_start_revision(rev0),
    )
    .await;
    let ids = BTreeSet::from([key_with_prev, prefix_no_delete, prefix_no_put, from_history]);
    assert_eq!(ids.len(), 4, "each watch has its own id");

    let rev1 = revision(client.put("/w/a", "1", None).await.expect("put").header());
    let rev2 = revision(client.put("/w/b", "2", None).await.expect("put").header());
    let rev3 = revision(client.delete("/w/a", None).await.expect("delete").header());
    let got = read_events(
        &mut stream,
        &BTreeMap::from([
            (key_with_prev, 2),
            (prefix_no_delete, 2),
            (prefix_no_put, 1),
            (from_history, 3),
        ]),
    )
    .await;
    assert_eq!(
        got[&key_with_prev],
        [
            put_event("/w/a", "1", rev1, Some("0")),
            delete_event("/w/a", rev3, Some("1"))
        ]
    );
    assert_eq!(
        got[&prefix_no_delete],
        [
            put_event("/w/a", "1", rev1, None),
            put_event("/w/b", "2", rev2, None)
        ]
    );
    assert_eq!(got[&prefix_no_put], [delete_event("/w/a", rev3, None)]);
    assert_eq!(
        got[&from_history],
        [
            put_event("/w/a", "0", rev0, None),
            put_event("/w/a", "1", rev1, None),
            delete_event("/w/a", rev3, None)
        ]
    );

    // Cancel one watch: it is acknowledged and gets nothing more; the others carry on.
    within("cancel", stream.cancel(key_with_prev))
        .await
        .expect("send cancel");
    let canceled = next_watch_response(&mut stream).await;
    assert!(
        canceled.canceled() && canceled.watch_id() == key_with_prev,
        "{canceled:?}"
    );
    let rev4 = revision(client.put("/w/a", "4", None).await.expect("put").header());
    let got = read_events(
        &mut stream,
        &BTreeMap::from([(prefix_no_delete, 1), (from_history, 1)]),
    )
    .await;
    assert_eq!(got[&from_history], [put_event("/w/a", "4", rev4, None)]);

    // A progress request: one answer for the stream, after every event before it.
    within("progress", stream.request_progress())
        .await
        .expect("send a progress request");
    let progress = next_watch_response(&mut stream).await;
    assert_eq!(
        (
            progress.watch_id(),
            progress.events().len(),
            progress.canceled()
        ),
        (PROGRESS_WATCH_ID, 0, false),
        "{progress:?}"
    );
    assert_eq!(revision(progress.header()), rev4);

    // A watch from a compacted revision is created, then canceled with the compaction point.
    client
        .compact(rev2, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let compacted = create_watch(
        &mut stream,
        "/w/a",
        WatchOptions::new().with_start_revision(rev0),
    )
    .await;
    let cancel = next_watch_response(&mut stream).await;
    assert!(
        cancel.canceled() && cancel.watch_id() == compacted,
        "{cancel:?}"
    );
    assert_eq!(cancel.compact_revision(), rev2, "{cancel:?}");
}

// ---------------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lease_grant_keepalive_time_to_live_revoke_and_expiry() {
    let cluster = TestCluster::start("lease", &[]).await;
    let mut client = cluster.client().await;
    let granted = client.lease_grant(30, None).await.expect("grant");
    let id = granted.id();
    assert!(id > 0 && granted.ttl() == 30, "{granted:?}");
    // etcd raises a TTL below its minimum (1.5 election timeouts, rounded up: 2 s by default).
    let raised = client.lease_grant(1, None).await.expect("grant");
    assert_eq!(raised.ttl(), 2, "{raised:?}");
    client.lease_revoke(raised.id()).await.expect("revoke");
    let chosen = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .expect("grant with an id");
    assert_eq!(chosen.id(), 0x1234);
    assert_status(
        client
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );

    for key in ["/l/a", "/l/b"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put with a lease");
    }
    client
        .put("/l/c", "v", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .expect("put with a lease");

    let ttl = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 30));
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30, "{ttl:?}");
    let attached: BTreeSet<String> = ttl.keys().iter().map(|k| text(k)).collect();
    assert_eq!(attached, BTreeSet::from(["/l/a".into(), "/l/b".into()]));

    let leases = client.leases().await.expect("leases");
    let listed: BTreeSet<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(listed, BTreeSet::from([id, 0x1234]));

    // KeepAlive: the client sends the first request and checks the first answer itself.
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.expect("keep alive");
    assert_eq!(keeper.id(), id);
    within("keep alive", keeper.keep_alive())
        .await
        .expect("send keep alive");
    let refreshed = within("keep alive answer", responses.message())
        .await
        .expect("keep alive stream")
        .expect("a keep alive answer");
    assert_eq!((refreshed.id(), refreshed.ttl()), (id, 30));

    // Revoke deletes the attached keys, in one revision.
    let before = revision(client.get("/l/", None).await.expect("get").header());
    let revoked = client.lease_revoke(id).await.expect("revoke");
    assert_eq!(revision(revoked.header()), before + 1);
    let left = client
        .get("/l/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(keys(left.kvs()), ["/l/c"]);
    let ttl = client
        .lease_time_to_live(id, None)
        .await
        .expect("etcd answers TimeToLive of an unknown lease with TTL -1, not an error");
    assert_eq!(ttl.ttl(), -1, "{ttl:?}");
    assert_status(
        client.lease_revoke(id).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_status(
        client
            .put("/l/d", "v", Some(PutOptions::new().with_lease(id)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // etcd answers a keep-alive of an unknown lease with TTL 0, which etcd-client reports so.
    match client.lease_keep_alive(id).await {
        Err(etcd_client::Error::LeaseKeepAliveError(message)) => {
            assert_eq!(message, "lease not found")
        }
        other => panic!("expected etcd-client's lease-not-found error, got {other:?}"),
    }
    let leases = client.leases().await.expect("leases");
    let listed: BTreeSet<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(listed, BTreeSet::from([0x1234]));

    // Expiry: a lease nobody keeps alive takes its key with it, not before its TTL.
    let short = client.lease_grant(3, None).await.expect("grant");
    let granted_at = Instant::now();
    client
        .put("/l/e", "v", Some(PutOptions::new().with_lease(short.id())))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = client.get("/l/e", None).await.expect("get");
    assert_eq!(alive.count(), 1, "the key went before its lease's TTL");
    eventually("the expired lease's key is deleted", || {
        let mut client = client.clone();
        async move {
            let got = client.get("/l/e", None).await.ok()?;
            (got.count() == 0).then_some(())
        }
    })
    .await;
    assert!(
        granted_at.elapsed() >= Duration::from_secs(short.ttl() as u64 - 1),
        "expired after {:?} with a TTL of {} s",
        granted_at.elapsed(),
        short.ttl()
    );
    let ttl = client
        .lease_time_to_live(short.id(), None)
        .await
        .expect("time to live");
    assert_eq!(ttl.ttl(), -1, "the expired lease is gone: {ttl:?}");
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

#[path = "../../../server/tests/support/ports.rs"]
mod ports;
use ports::free_ports;

/// A fourth `ballot server` joining the cluster (`--initial-cluster-state existing`), killed on
/// drop.
struct JoiningNode {
    child: Child,
    client_endpoint: String,
}

impl JoiningNode {
    fn start(cluster: &TestCluster, name: &str, ports: &[u16]) -> JoiningNode {
        let [client_port, peer_port, metrics_port] = ports else {
            panic!("three ports: client, peer, metrics");
        };
        let url = |port: &u16| format!("http://127.0.0.1:{port}");
        let mut initial_cluster: Vec<String> = cluster
            .names()
            .iter()
            .map(|n| format!("{n}={}", cluster.peer_url(n)))
            .collect();
        initial_cluster.push(format!("{name}={}", url(peer_port)));
        let dir = cluster.dir.join(name);
        std::fs::create_dir_all(&dir).expect("node directory");
        let log = std::fs::File::create(dir.join("server.log")).expect("server.log");
        let child = Command::new(BALLOT)
            .arg("server")
            .args(["--name", name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &url(client_port)])
            .args(["--advertise-client-urls", &url(client_port)])
            .args(["--listen-peer-urls", &url(peer_port)])
            .args(["--initial-advertise-peer-urls", &url(peer_port)])
            .args(["--listen-metrics-urls", &url(metrics_port)])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-state", "existing"])
            .args(["--initial-cluster-token", &cluster.running.plan.token])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start the joining node");
        JoiningNode {
            child,
            client_endpoint: format!("127.0.0.1:{client_port}"),
        }
    }
}

impl Drop for JoiningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn member_by_id(members: &[Member], id: u64) -> Option<&Member> {
    members.iter().find(|m| m.id() == id)
}

#[tokio::test]
async fn cluster_member_list_add_update_promote_remove() {
    let cluster = TestCluster::start("cluster", &[]).await;
    let ids = cluster.member_ids().await;
    let names = cluster.names();
    let leader = cluster.leader(&names).await;
    let follower = names.iter().find(|n| **n != leader).expect("a follower");
    let mut client = cluster.client().await;
    let mut via_leader = cluster.client_of(&leader).await;
    let mut via_follower = cluster.client_of(follower).await;

    let list = client.member_list().await.expect("member list");
    assert_eq!(list.members().len(), 3, "{list:?}");
    for (name, id) in &ids {
        let member = member_by_id(list.members(), *id).unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(member.name(), name);
        assert_eq!(member.peer_urls(), [cluster.peer_url(name)]);
        assert_eq!(
            member.client_urls(),
            [format!("http://{}", cluster.endpoint(name))]
        );
        assert!(!member.is_learner());
    }

    // Refusals, in etcd's words.
    let taken = cluster.peer_url(&names[0]);
    assert_status(
        client.member_add([taken.as_str()], None).await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_status(
        client.member_remove(0x4242).await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        client
            .member_update(0x4242, ["http://127.0.0.1:1".to_string()])
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        via_leader.member_promote(ids[follower]).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );

    // A learner that never starts: listed, not promotable, updatable, removable.
    let ports = free_ports(2);
    let absent_url = format!("http://127.0.0.1:{}", ports[0]);
    let added = client
        .member_add(
            [absent_url.as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("add a learner");
    let learner = added.member().expect("the added member").clone();
    assert!(learner.is_learner() && learner.id() != 0, "{learner:?}");
    assert_eq!(learner.peer_urls(), [absent_url]);
    assert_eq!(added.member_list().len(), 4, "{added:?}");
    // A plain MemberList is served by whichever member the client picks, from what it has
    // applied (as in etcd): a follower may list the learner a moment after the leader does.
    let learner_id = learner.id();
    let listed = eventually("every member lists the learner", || {
        let mut client = client.clone();
        async move {
            let list = client.member_list().await.ok()?;
            member_by_id(list.members(), learner_id).cloned()
        }
    })
    .await;
    assert!(
        listed.is_learner() && listed.name().is_empty(),
        "{listed:?}"
    );
    for promoter in [&mut via_leader, &mut via_follower] {
        assert_status(
            promoter.member_promote(learner.id()).await,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        );
    }
    let moved_url = format!("http://127.0.0.1:{}", ports[1]);
    let updated = client
        .member_update(learner.id(), [moved_url.clone()])
        .await
        .expect("member update");
    let listed = member_by_id(updated.members(), learner.id()).expect("still listed");
    assert_eq!(listed.peer_urls(), [moved_url]);
    let removed = client
        .member_remove(learner.id())
        .await
        .expect("member remove");
    assert!(member_by_id(removed.members(), learner.id()).is_none());
    assert_eq!(removed.members().len(), 3);

    // A real fourth node: joins as a learner, catches up, is promoted, is removed.
    let (node, _, new_id) = join_fourth_node(&cluster, &client, &via_leader).await;
    let removed = client.member_remove(new_id).await.expect("remove n4");
    assert_eq!(removed.members().len(), 3);
    drop(node);
    client
        .put("/m/three-again", "3", None)
        .await
        .expect("the three remaining voters commit");

    // A voter that never starts: three of four still commit; removing it restores three.
    let added = client
        .member_add([format!("http://127.0.0.1:{}", free_ports(1)[0])], None)
        .await
        .expect("add a voter");
    let voter = added.member().expect("the added member").clone();
    assert!(!voter.is_learner());
    client
        .put("/m/four", "4", None)
        .await
        .expect("three of four voters commit");
    client.member_remove(voter.id()).await.expect("remove it");
    let list = client.member_list().await.expect("member list");
    let left: BTreeSet<u64> = list.members().iter().map(|m| m.id()).collect();
    assert_eq!(left, ids.values().copied().collect());
}

/// Adds a learner through `client`, starts it as `n4`, waits until it has applied the writes
/// made before, promotes it through `via_leader`, and checks that the original members list it
/// as a voter under its name. Returns the node, a client of it only, and its member id.
async fn join_fourth_node(
    cluster: &TestCluster,
    client: &Client,
    via_leader: &Client,
) -> (JoiningNode, Client, u64) {
    let mut client = client.clone();
    let ports = free_ports(3);
    let joining_url = format!("http://127.0.0.1:{}", ports[1]);
    let key_before = client.put("/m/before", "1", None).await.expect("put");
    let added = client
        .member_add(
            [joining_url.as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("add a learner");
    let new_id = added.member().expect("the added member").id();
    let node = JoiningNode::start(cluster, "n4", &ports);
    let mut new_client = connect(std::slice::from_ref(&node.client_endpoint)).await;
    let wanted = revision(key_before.header());
    eventually("the learner applies the earlier writes", || {
        let mut new_client = new_client.clone();
        async move {
            let got = new_client
                .get("/m/before", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (revision(got.header()) >= wanted && got.count() == 1).then_some(())
        }
    })
    .await;
    let status = new_client.status().await.expect("status of the learner");
    assert!(status.is_learner(), "{status:?}");
    assert_eq!(header(status.header()).member_id(), new_id);
    let promoted = eventually("the caught-up learner is promoted", || {
        let mut via_leader = via_leader.clone();
        async move { via_leader.member_promote(new_id).await.ok() }
    })
    .await;
    let member = member_by_id(promoted.members(), new_id).expect("the promoted member");
    assert!(!member.is_learner(), "{member:?}");
    let list = eventually("the new member publishes its name", || {
        let mut client = client.clone();
        async move {
            let list = client.member_list().await.ok()?;
            let named = member_by_id(list.members(), new_id)?.name() == "n4";
            named.then_some(list)
        }
    })
    .await;
    assert_eq!(list.members().len(), 4);
    assert!(list.members().iter().all(|m| !m.is_learner()), "{list:?}");
    (node, new_client, new_id)
}

#[tokio::test]
async fn joined_member_knows_every_member_and_serves_after_promotion() {
    let cluster = TestCluster::start("joined", &[]).await;
    let names = cluster.names();
    let leader = cluster.leader(&names).await;
    let mut client = cluster.client().await;
    let via_leader = cluster.client_of(&leader).await;
    let (_node, mut new_client, new_id) = join_fourth_node(&cluster, &client, &via_leader).await;

    let list = new_client.member_list().await.expect("member list on n4");
    let listed: BTreeSet<u64> = list.members().iter().map(|m| m.id()).collect();
    let mut expected: BTreeSet<u64> = cluster.member_ids().await.into_values().collect();
    expected.insert(new_id);
    assert_eq!(listed, expected, "n4 lists every member: {list:?}");
    client.put("/m/after", "2", None).await.expect("put");
    let got = new_client
        .get("/m/after", None)
        .await
        .expect("linearizable get on the new voter");
    assert_eq!(pairs(got.kvs()), [("/m/after".into(), "2".into())]);
    new_client
        .put("/m/through-n4", "3", None)
        .await
        .expect("a put through the new voter");
}

#[tokio::test]
async fn joined_member_never_commits_without_a_quorum() {
    let mut cluster = TestCluster::start("split", &[]).await;
    let names = cluster.names();
    let leader = cluster.leader(&names).await;
    let client = cluster.client().await;
    let via_leader = cluster.client_of(&leader).await;
    let (_node, mut new_client, _) = join_fourth_node(&cluster, &client, &via_leader).await;
    let follower = names.iter().find(|n| **n != leader).expect("a follower");
    cluster.running.kill(&leader);
    cluster.running.kill(follower);

    // Two of four voters are alive: no quorum, so no write may be acknowledged.
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let key = format!("/split/{i:04}");
        let put = new_client.put(key.clone(), "v", None);
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(1), put).await {
            acknowledged.push((key, revision(response.header())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
    }
    assert!(
        acknowledged.is_empty(),
        "with two of four voters down, n4 acknowledged {} writes: {acknowledged:?}",
        acknowledged.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------------------------

/// HashKV of `name` at `revision`, once the node has applied it.
async fn hash_kv_once_reached(cluster: &TestCluster, name: &str, revision: i64) -> HashKvResponse {
    let node = cluster.client_of(name).await;
    eventually("the node reaches the revision", || {
        let mut node = node.clone();
        async move { node.hash_kv(revision).await.ok() }
    })
    .await
}

#[tokio::test]
async fn maintenance_status_hash_snapshot_alarm_defragment_move_leader() {
    let cluster = TestCluster::start("maintenance", &[]).await;
    let names = cluster.names();
    let ids = cluster.member_ids().await;
    let leader = cluster.leader(&names).await;
    let mut client = cluster.client().await;
    for (key, value) in [("/s/a", "1"), ("/s/b", "2"), ("/s/c", "3")] {
        client.put(key, value, None).await.expect("put");
    }
    let rev = revision(client.put("/s/a", "4", None).await.expect("put").header());

    // Status of every node: one leader, every field etcd clients read.
    for name in &names {
        let mut node = cluster.client_of(name).await;
        let status = node.status().await.expect("status");
        assert_eq!(header(status.header()).member_id(), ids[name]);
        assert_eq!(status.leader(), ids[&leader], "{name}: {status:?}");
        assert!(status.version().starts_with("3."), "{status:?}");
        assert!(
            status.raft_term() > 0 && status.raft_index() > 0,
            "{status:?}"
        );
        assert!(
            status.raft_applied_index() > 0 && status.db_size() > 0,
            "{status:?}"
        );
        assert!(
            !status.is_learner() && status.errors().is_empty(),
            "{status:?}"
        );
    }

    // HashKV at one revision agrees on every node; a later revision hashes differently.
    let mut hashes = BTreeSet::new();
    for name in &names {
        let response = hash_kv_once_reached(&cluster, name, rev).await;
        assert_eq!(response.hash_revision(), rev, "{response:?}");
        hashes.insert(response.hash());
    }
    assert_eq!(hashes.len(), 1, "every node hashes revision {rev} alike");
    let rev_later = revision(client.put("/s/d", "5", None).await.expect("put").header());
    let later = hash_kv_once_reached(&cluster, &leader, rev_later).await;
    assert!(
        !hashes.contains(&later.hash()),
        "a new revision, a new hash"
    );
    // After a compaction (which drops old revisions, and so changes the hash, as in etcd) the
    // nodes agree again, each naming the compaction revision.
    client
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let mut hashes = BTreeSet::new();
    for name in &names {
        let response = eventually("the node applies the compaction", || async {
            let response = hash_kv_once_reached(&cluster, name, rev_later).await;
            (response.compact_version() == rev).then_some(response)
        })
        .await;
        assert_eq!(response.hash_revision(), rev_later, "{name}: {response:?}");
        hashes.insert(response.hash());
    }
    assert_eq!(
        hashes.len(),
        1,
        "every node hashes alike after the compaction"
    );
    let hash = client.hash().await.expect("hash");
    assert!(hash.header().is_some());

    // Alarms: none raised. Defragment: answers, changes nothing.
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(alarms.alarms().is_empty(), "{alarms:?}");
    for name in &names {
        let mut node = cluster.client_of(name).await;
        node.defragment().await.expect("defragment");
    }
    let after = client
        .get("/s/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(after.count(), 4);

    // Snapshot: etcd's framing (a multiple of 512 bytes, then a sha256), the data restorable.
    let mut node = cluster.client_of(&leader).await;
    let mut stream = node.snapshot().await.expect("snapshot");
    let mut payload = Vec::new();
    let mut last_remaining = None;
    while let Some(chunk) = within("snapshot chunk", stream.message())
        .await
        .expect("snapshot stream")
    {
        payload.extend_from_slice(chunk.blob());
        last_remaining = Some(chunk.remaining_bytes());
    }
    assert_eq!(last_remaining, Some(0));
    assert_eq!(payload.len() % 512, 32, "{} bytes", payload.len());
    let snapshot =
        ballot_server::backup::snapshot_from_payload(&payload).expect("digest and frame check");
    let restore_dir = cluster.dir.join("restored");
    std::fs::create_dir_all(&restore_dir).expect("restore directory");
    let store = ballot_storage::mvcc::MvccStore::open(restore_dir.join("db")).expect("open store");
    store
        .restore(snapshot)
        .expect("restore the downloaded snapshot");
    let restored = store
        .range(&ballot_storage::mvcc::types::RangeRequest {
            range: ballot_storage::mvcc::types::KeyRange::prefix(&b"/s/"[..]),
            ..Default::default()
        })
        .expect("range the restored store");
    let restored: Vec<(String, String)> = restored
        .kvs
        .iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect();
    assert_eq!(
        restored,
        [("/s/a", "4"), ("/s/b", "2"), ("/s/c", "3"), ("/s/d", "5")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );

    // MoveLeader, sent to the leader: the target leads when the call returns.
    let target = names.iter().find(|n| **n != leader).expect("a follower");
    let mut via_leader = cluster.client_of(&leader).await;
    assert_status(
        via_leader.move_leader(0x4242).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    via_leader
        .move_leader(ids[target])
        .await
        .expect("move leader");
    let mut via_target = cluster.client_of(target).await;
    let status = via_target.status().await.expect("status");
    assert_eq!(status.leader(), ids[target], "{status:?}");
    assert_eq!(&cluster.leader(&names).await, target);
    client
        .put("/s/after-move", "1", None)
        .await
        .expect("writes go on under the new leader");
}

// ---------------------------------------------------------------------------------------------
// A follower serves every kind of request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn follower_serves_kv_txn_watch_and_lease() {
    let cluster = TestCluster::start("follower", &[]).await;
    let names = cluster.names();
    let ids = cluster.member_ids().await;
    let leader = cluster.leader(&names).await;
    let follower = names
        .iter()
        .find(|n| **n != leader)
        .expect("a follower")
        .clone();
    let mut via_follower = cluster.client_of(&follower).await;
    let mut via_leader = cluster.client_of(&leader).await;

    let put = via_follower.put("/f/a", "1", None).await.expect("put");
    let got = via_follower.get("/f/a", None).await.expect("get");
    assert_eq!(pairs(got.kvs()), [("/f/a".into(), "1".into())]);
    assert_eq!(revision(got.header()), revision(put.header()));

    // A write through the leader is seen at once by a linearizable read on the follower.
    for round in 0..20 {
        let value = round.to_string();
        via_leader
            .put("/f/b", value.clone(), None)
            .await
            .expect("put");
        let got = via_follower.get("/f/b", None).await.expect("get");
        assert_eq!(pairs(got.kvs()), [("/f/b".into(), value)], "round {round}");
    }
    let serializable = via_follower
        .get("/f/a", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get");
    assert_eq!(serializable.count(), 1);
    assert_eq!(header(serializable.header()).member_id(), ids[&follower]);

    let txn = via_follower
        .txn(
            Txn::new()
                .when([Compare::value("/f/a", CompareOp::Equal, "1")])
                .and_then([TxnOp::put(
                    "/f/a",
                    "2",
                    Some(PutOptions::new().with_prev_key()),
                )]),
        )
        .await
        .expect("txn");
    assert!(txn.succeeded());
    match txn.op_responses().as_slice() {
        [TxnOpResponse::Put(put)] => {
            assert_eq!(text(put.prev_key().expect("prev_kv").value()), "1")
        }
        other => panic!("unexpected op responses {other:?}"),
    }

    // A watch on the follower sees writes made through the leader.
    let mut stream = via_follower
        .watch(
            "/f/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    let watch_id = created_watch_id(&mut stream).await;
    let rev = revision(
        via_leader
            .put("/f/a", "3", None)
            .await
            .expect("put")
            .header(),
    );
    let got = read_events(&mut stream, &BTreeMap::from([(watch_id, 1)])).await;
    assert_eq!(got[&watch_id], [put_event("/f/a", "3", rev, Some("2"))]);

    // Leases through the follower.
    let lease = via_follower
        .lease_grant(30, None)
        .await
        .expect("grant")
        .id();
    via_follower
        .put("/f/leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with a lease");
    let (mut keeper, mut responses) = via_follower
        .lease_keep_alive(lease)
        .await
        .expect("keep alive");
    keeper.keep_alive().await.expect("send keep alive");
    let refreshed = within("keep alive answer", responses.message())
        .await
        .expect("keep alive stream")
        .expect("an answer");
    assert_eq!((refreshed.id(), refreshed.ttl()), (lease, 30));
    let ttl = via_follower
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.keys(), [b"/f/leased".to_vec()]);
    let leases = via_follower.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == lease));
    via_follower.lease_revoke(lease).await.expect("revoke");
    let gone = via_leader.get("/f/leased", None).await.expect("get");
    assert_eq!(
        gone.count(),
        0,
        "revoking through a follower deletes the key"
    );

    let deleted = via_follower
        .delete(
            "/f/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(deleted.deleted(), 2);
    let rev = revision(deleted.header());
    via_follower.compact(rev, None).await.expect("compact");
    assert_status(
        via_leader
            .get("/f/a", Some(GetOptions::new().with_revision(rev - 1)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let status = via_follower.status().await.expect("status");
    assert_eq!(status.leader(), ids[&leader]);
    let list = via_follower.member_list().await.expect("member list");
    assert_eq!(list.members().len(), 3);
}

#[tokio::test]
async fn follower_answers_with_its_own_member_id() {
    let cluster = TestCluster::start("follower-header", &[]).await;
    let names = cluster.names();
    let ids = cluster.member_ids().await;
    let leader = cluster.leader(&names).await;
    let follower = names.iter().find(|n| **n != leader).expect("a follower");
    let mut via_follower = cluster.client_of(follower).await;
    let put = via_follower.put("/h/a", "1", None).await.expect("put");
    assert_eq!(header(put.header()).member_id(), ids[follower], "put");
    let get = via_follower.get("/h/a", None).await.expect("get");
    assert_eq!(
        header(get.header()).member_id(),
        ids[follower],
        "linearizable get"
    );
    let txn = via_follower
        .txn(Txn::new().and_then([TxnOp::put("/h/b", "2", None)]))
        .await
        .expect("txn");
    assert_eq!(header(txn.header()).member_id(), ids[follower], "txn");
}

// ---------------------------------------------------------------------------------------------
// Failover and catch-up
// ---------------------------------------------------------------------------------------------

/// A call that failed in the client's transport (a dead endpoint, a connection cut by the
/// SIGKILL) rather than with an answer from a server, which always says `etcdserver: ...`.
fn is_connect_error(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(status.code(), Code::Unavailable | Code::Unknown)
                && !status.message().starts_with("etcdserver:")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// A linearizable get, tried again when the client picked a dead endpoint (a bounded number of
/// times); any error from a server fails the test.
async fn get_past_connect_errors(client: &mut Client, key: &str) -> etcd_client::GetResponse {
    for _ in 0..20 {
        match within("get", client.get(key, None)).await {
            Ok(response) => return response,
            Err(error) if is_connect_error(&error) => continue,
            Err(error) => panic!("get {key}: {error:?}"),
        }
    }
    panic!("get {key}: the client reached no live endpoint in 20 tries")
}

#[tokio::test]
async fn client_carries_on_after_the_leader_is_sigkilled() {
    let mut cluster = TestCluster::start("failover", &[]).await;
    let names = cluster.names();
    let old_leader = cluster.leader(&names).await;
    let mut client = cluster.client().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("/k/{i:03}");
        client
            .put(key.clone(), i.to_string(), None)
            .await
            .expect("put");
        acknowledged.push(key);
    }
    let old_term = cluster
        .client_of(&old_leader)
        .await
        .status()
        .await
        .expect("status")
        .raft_term();

    cluster.running.kill(&old_leader);
    let killed_at = Instant::now();
    // etcd-client's balanced channel keeps picking the killed node's endpoint now and then;
    // those calls fail in the client ("tcp connect error") and never reach a server. Servers
    // answer `etcdserver: no leader` until the election is over.
    let mut connect_errors = 0;
    let mut server_errors = Vec::new();
    let mut first_success_after = None;
    let mut i = acknowledged.len();
    while acknowledged.len() < 60 {
        assert!(
            killed_at.elapsed() < CONVERGE_TIMEOUT,
            "writes did not resume within {CONVERGE_TIMEOUT:?} after the leader was killed \
             ({connect_errors} connect errors; server errors {server_errors:?})"
        );
        let key = format!("/k/{i:03}");
        match tokio::time::timeout(CALL_TIMEOUT, client.put(key.clone(), i.to_string(), None)).await
        {
            Ok(Ok(_)) => {
                first_success_after.get_or_insert(killed_at.elapsed());
                acknowledged.push(key);
            }
            Ok(Err(error)) if is_connect_error(&error) => {
                connect_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(error)) => {
                server_errors.push(error.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => server_errors.push(format!("no answer within {CALL_TIMEOUT:?}")),
        }
        i += 1;
    }
    eprintln!(
        "first write after the SIGKILL succeeded after {:?}; {connect_errors} connect errors, \
         server errors {server_errors:?}",
        first_success_after.expect("writes succeeded")
    );

    let survivors: Vec<String> = names
        .iter()
        .filter(|n| **n != old_leader)
        .cloned()
        .collect();
    let new_leader = cluster.leader(&survivors).await;
    assert_ne!(new_leader, old_leader);
    let status = cluster
        .client_of(&new_leader)
        .await
        .status()
        .await
        .expect("status");
    assert!(
        status.raft_term() > old_term,
        "{status:?} after term {old_term}"
    );
    for (n, key) in acknowledged.iter().enumerate() {
        let got = get_past_connect_errors(&mut client, key).await;
        let value = key
            .trim_start_matches("/k/")
            .parse::<usize>()
            .expect("index");
        assert_eq!(
            pairs(got.kvs()),
            [(key.clone(), value.to_string())],
            "acknowledged write {n} lost"
        );
    }

    // The killed node comes back and catches up from the log.
    cluster
        .running
        .restart(&old_leader)
        .expect("restart the old leader");
    let last = acknowledged.last().expect("writes").clone();
    let mut restarted = cluster.client_of(&old_leader).await;
    eventually("the restarted node has every write", || {
        let mut restarted = restarted.clone();
        let last = last.clone();
        async move {
            let got = restarted
                .get(last, Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (got.count() == 1).then_some(())
        }
    })
    .await;
    let everything = restarted
        .get(
            "/k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_serializable()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("get");
    let present: BTreeSet<String> = keys(everything.kvs()).into_iter().collect();
    assert!(acknowledged.iter().all(|key| present.contains(key)));
    let status = restarted.status().await.expect("status");
    assert_eq!(status.leader(), cluster.member_ids().await[&new_leader]);
}

/// Entries a node keeps in its log behind a snapshot: Raft's default, which `ballot server`
/// keeps.
fn snapshot_trailing_entries() -> u64 {
    ballot_raft::Config::new(1).snapshot_trailing_entries
}

/// The index in a `<index>-<term>.snap` file name.
fn snapshot_index(file: &str) -> u64 {
    file.split('-')
        .next()
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("not a snapshot file name: {file}"))
}

#[tokio::test]
async fn restarted_follower_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start("snapshot", &["--snapshot-count", "100"]).await;
    let names = cluster.names();
    let leader = cluster.leader(&names).await;
    let follower = names
        .iter()
        .find(|n| **n != leader)
        .expect("a follower")
        .clone();
    let client = cluster.client_of(&leader).await;
    client
        .clone()
        .put("/c/first", "1", None)
        .await
        .expect("put");
    let applied_at_kill = eventually("the follower applies the first write", || {
        let cluster = &cluster;
        let follower = follower.clone();
        async move {
            let mut node = cluster.client_of(&follower).await;
            let got = node
                .get("/c/first", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            if got.count() != 1 {
                return None;
            }
            Some(node.status().await.ok()?.raft_applied_index())
        }
    })
    .await;
    cluster.running.kill(&follower);

    // Write until the leader's log no longer holds the entry after the follower's last one
    // (which may be a few entries past its applied index).
    const LOG_MARGIN_ENTRIES: u64 = 20;
    let mut written = 0;
    let compacted_past = |cluster: &TestCluster| {
        cluster
            .snapshot_files(&leader)
            .iter()
            .map(|file| snapshot_index(file))
            .max()
            .is_some_and(|index| {
                index.saturating_sub(snapshot_trailing_entries())
                    > applied_at_kill + LOG_MARGIN_ENTRIES
            })
    };
    while !compacted_past(&cluster) {
        assert!(
            written < 3000,
            "the leader's log was not compacted after {written} writes"
        );
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..4 {
            let mut client = client.clone();
            tasks.spawn(async move {
                for i in 0..50 {
                    let key = format!("/c/{written:05}-{task}-{i:02}");
                    client.put(key, "x".repeat(100), None).await.expect("put");
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("writer task");
        }
        written += 200;
    }
    let last = client.clone().put("/c/last", "1", None).await.expect("put");
    let last_revision = revision(last.header());

    cluster.running.restart(&follower).expect("restart");
    let mut restarted = cluster.client_of(&follower).await;
    eventually("the restarted follower reaches the last write", || {
        let mut restarted = restarted.clone();
        async move {
            let got = restarted
                .get("/c/last", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (got.count() == 1).then_some(())
        }
    })
    .await;

    // The leader keeps only compaction markers (a few dozen bytes: its store is durable on its
    // own) and built an image for the follower on demand. The follower's own records are
    // markers too, so a record holding the data (more than the 20 KB of values written) and
    // newer than what it had applied can only be the leader's image.
    let leader_records = cluster.snapshot_files(&leader);
    assert!(
        leader_records
            .iter()
            .all(|file| cluster.snapshot_file_bytes(&leader, file) < 4096),
        "the leader wrote an image to disk: {leader_records:?}"
    );
    let follower_records = cluster.snapshot_files(&follower);
    let received: Vec<&String> = follower_records
        .iter()
        .filter(|file| snapshot_index(file) > applied_at_kill)
        .filter(|file| cluster.snapshot_file_bytes(&follower, file) > 20_000)
        .collect();
    assert!(
        !received.is_empty(),
        "the follower (applied index {applied_at_kill} when killed) holds no image from the \
         leader; it has {follower_records:?}"
    );
    let count = restarted
        .get(
            "/c/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_serializable()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count");
    assert_eq!(count.count(), written as i64 + 2);
    let theirs = client
        .clone()
        .hash_kv(last_revision)
        .await
        .expect("hash on the leader");
    let ours = restarted
        .hash_kv(last_revision)
        .await
        .expect("hash on the restarted follower");
    assert_eq!(
        ours.hash(),
        theirs.hash(),
        "same data at revision {last_revision}"
    );
}

// ---------------------------------------------------------------------------------------------
// Request limits
// ---------------------------------------------------------------------------------------------

fn puts(prefix: &str, count: usize) -> Vec<TxnOp> {
    (0..count)
        .map(|i| TxnOp::put(format!("{prefix}{i:04}"), "v", None))
        .collect()
}

async fn count_under(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count()
}

#[tokio::test]
async fn default_request_limits_refuse_with_nothing_written() {
    let cluster = TestCluster::start("limits-default", &[]).await;
    let mut client = cluster.client().await;

    let too_large = "x".repeat(MAX_REQUEST_BYTES_DEFAULT + 1024);
    assert_status(
        client.put("/big/a", too_large, None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_eq!(count_under(&mut client, "/big/").await, 0);
    let fits = "x".repeat(MAX_REQUEST_BYTES_DEFAULT - 1024);
    client
        .put("/big/b", fits.clone(), None)
        .await
        .expect("a put just under the limit");
    let got = client.get("/big/b", None).await.expect("get");
    assert_eq!(got.kvs()[0].value().len(), fits.len());

    assert_status(
        client
            .txn(Txn::new().and_then(puts("/ops/a/", MAX_TXN_OPS_DEFAULT + 1)))
            .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let compares: Vec<Compare> = (0..=MAX_TXN_OPS_DEFAULT)
        .map(|i| Compare::version(format!("/ops/c/{i}"), CompareOp::Equal, 0))
        .collect();
    assert_status(
        client
            .txn(Txn::new().when(compares).and_then(puts("/ops/c/", 1)))
            .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    // A nested transaction gets what its parent level left: 128 - 100 = 28 operations.
    let nested = |count| {
        let mut ops = puts("/ops/n/", 99);
        ops.push(TxnOp::txn(Txn::new().and_then(puts("/ops/m/", count))));
        Txn::new().and_then(ops)
    };
    assert_status(
        client.txn(nested(29)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_eq!(
        count_under(&mut client, "/ops/").await,
        0,
        "refused: nothing written"
    );

    client
        .txn(Txn::new().and_then(puts("/ops/a/", MAX_TXN_OPS_DEFAULT)))
        .await
        .expect("a transaction at the limit");
    assert_eq!(count_under(&mut client, "/ops/a/").await, 128);
    client
        .txn(nested(28))
        .await
        .expect("a nested transaction at the limit");
    assert_eq!(count_under(&mut client, "/ops/n/").await, 99);
    assert_eq!(count_under(&mut client, "/ops/m/").await, 28);
}

#[tokio::test]
async fn configured_request_limits_refuse_with_nothing_written() {
    let cluster = TestCluster::start(
        "limits-configured",
        &["--max-request-bytes", "4096", "--max-txn-ops", "8"],
    )
    .await;
    let mut client = cluster.client().await;
    assert_status(
        client.put("/big/a", "x".repeat(5000), None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Far past the limit, gRPC itself refuses the message (the code is checked in
    // `request_far_past_the_limit_is_resource_exhausted`).
    assert!(client
        .put("/big/b", "x".repeat(700 * 1024), None)
        .await
        .is_err());
    assert_eq!(count_under(&mut client, "/big/").await, 0);
    client
        .put("/big/c", "x".repeat(3000), None)
        .await
        .expect("a put under the limit");

    assert_status(
        client.txn(Txn::new().and_then(puts("/ops/", 9))).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_eq!(count_under(&mut client, "/ops/").await, 0);
    client
        .txn(Txn::new().and_then(puts("/ops/", 8)))
        .await
        .expect("a transaction at the limit");
    assert_eq!(count_under(&mut client, "/ops/").await, 8);
}

/// Past `max-request-bytes` plus the gRPC room, the server refuses the message from its prefix,
/// before reading it, with grpc-go's code (tonic's decoder answered OutOfRange).
#[tokio::test]
async fn request_far_past_the_limit_is_resource_exhausted() {
    let cluster = TestCluster::start("limits-grpc", &["--max-request-bytes", "4096"]).await;
    let mut client = cluster.client().await;
    match client.put("/big/b", "x".repeat(700 * 1024), None).await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}")
        }
        other => panic!("expected ResourceExhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn raised_request_limits_are_honoured() {
    let max_request_bytes = 3 * 1024 * 1024;
    let cluster = TestCluster::start(
        "limits-raised",
        &[
            "--max-request-bytes",
            &max_request_bytes.to_string(),
            "--max-txn-ops",
            "300",
        ],
    )
    .await;
    let mut client = cluster.client().await;
    let value = "x".repeat(max_request_bytes - 4096);
    client
        .put("/big/a", value.clone(), None)
        .await
        .expect("a put past the default limit, under the raised one");
    let got = client.get("/big/a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value().len(), value.len());
    assert_status(
        client
            .put("/big/b", "x".repeat(max_request_bytes + 1024), None)
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_status(
        client.txn(Txn::new().and_then(puts("/ops/", 301))).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_eq!(count_under(&mut client, "/ops/").await, 0);
    client
        .txn(Txn::new().and_then(puts("/ops/", 300)))
        .await
        .expect("a transaction at the raised limit");
    assert_eq!(count_under(&mut client, "/ops/").await, 300);
}
