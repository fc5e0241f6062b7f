//! `ballot demo`: a real three-process cluster on loopback and a short, narrated workload
//! through the etcd v3 API: writes and reads, a compare-and-swap, a watch, a lease, then a
//! SIGKILL of the leader, re-election, and the killed node restarting and catching up.

use ballot::dev_cluster::{health, RunningCluster};
use ballot_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Failure = Box<dyn std::error::Error>;

pub fn run() -> ExitCode {
    let data_dir = std::env::temp_dir().join(format!("ballot-demo-{}", std::process::id()));
    let outcome = (|| -> Result<(), Failure> {
        let exe = std::env::current_exe()?;
        println!(
            "ballot demo: starting 3 `ballot server` processes on loopback (data in {})",
            data_dir.display()
        );
        let mut cluster = RunningCluster::start(&exe, 3, &data_dir, true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(workload(&mut cluster));
        cluster.stop();
        result
    })();
    let _ = std::fs::remove_dir_all(&data_dir);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn key(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

async fn channel(url: &str) -> Result<Channel, Failure> {
    Ok(Channel::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// Which node leads, asked of every reachable node.
async fn leader(urls: &HashMap<String, String>, names: &HashMap<u64, String>) -> Option<String> {
    for url in urls.values() {
        let Ok(channel) = channel(url).await else {
            continue;
        };
        if let Ok(status) = MaintenanceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
        {
            if let Some(name) = names.get(&status.into_inner().leader) {
                return Some(name.clone());
            }
        }
    }
    None
}

async fn put(kv: &mut KvClient<Channel>, k: &str, v: &str, lease: i64) -> Result<i64, Failure> {
    let request = pb::PutRequest {
        key: key(k),
        value: key(v),
        lease,
        ..Default::default()
    };
    Ok(kv
        .put(request)
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision))
}

async fn get(
    kv: &mut KvClient<Channel>,
    k: &str,
    prefix: bool,
    serializable: bool,
) -> Result<Vec<(String, String)>, Failure> {
    let range_end = if prefix {
        ballot_storage::mvcc::types::prefix_end(k.as_bytes())
    } else {
        bytes::Bytes::new()
    };
    let request = pb::RangeRequest {
        key: key(k),
        range_end,
        serializable,
        ..Default::default()
    };
    let kvs = kv.range(request).await?.into_inner().kvs;
    Ok(kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into(),
                String::from_utf8_lossy(&kv.value).into(),
            )
        })
        .collect())
}

fn show(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn workload(cluster: &mut RunningCluster) -> Result<(), Failure> {
    let urls: HashMap<String, String> = cluster
        .plan
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                format!("http://127.0.0.1:{}", n.client_port),
            )
        })
        .collect();
    let members = pb::cluster_client::ClusterClient::new(channel(&urls["n1"]).await?)
        .member_list(pb::MemberListRequest { linearizable: true })
        .await?
        .into_inner()
        .members;
    let names: HashMap<u64, String> = members.iter().map(|m| (m.id, m.name.clone())).collect();
    for node in &cluster.plan.nodes {
        println!(
            "  {}  client {}  metrics http://127.0.0.1:{}/metrics",
            node.name, urls[&node.name], node.metrics_port
        );
    }
    let first_leader = leader(&urls, &names).await.ok_or("no leader")?;
    println!("  leader: {first_leader}\n");

    let mut kv = KvClient::new(channel(&urls["n1"]).await?);
    println!("1. Writes and reads (sent to n1; a follower forwards writes to the leader)");
    let revision = put(&mut kv, "/demo/color", "blue", 0).await?;
    println!("   put /demo/color=blue    -> revision {revision}");
    let revision = put(&mut kv, "/demo/shape", "circle", 0).await?;
    println!("   put /demo/shape=circle  -> revision {revision}");
    println!(
        "   get /demo/ --prefix     -> {}",
        show(&get(&mut kv, "/demo/", true, false).await?)
    );

    println!("\n2. Compare-and-swap: if /demo/color is \"blue\", set it to \"green\"");
    let cas = || pb::TxnRequest {
        compare: vec![pb::Compare {
            key: key("/demo/color"),
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            target_union: Some(pb::compare::TargetUnion::Value(key("blue"))),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key("/demo/color"),
                value: key("green"),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    println!(
        "   first attempt  -> succeeded: {}",
        kv.txn(cas()).await?.into_inner().succeeded
    );
    println!(
        "   second attempt -> succeeded: {} (the value is green now)",
        kv.txn(cas()).await?.into_inner().succeeded
    );

    println!("\n3. Watch /demo/ on n3 while writing through n1");
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    let create = pb::WatchCreateRequest {
        key: key("/demo/"),
        range_end: ballot_storage::mvcc::types::prefix_end(b"/demo/"),
        ..Default::default()
    };
    requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await?;
    let mut events = WatchClient::new(channel(&urls["n3"]).await?)
        .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let _created = events.message().await?;
    put(&mut kv, "/demo/size", "large", 0).await?;
    let response = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await??
        .ok_or("watch ended")?;
    for event in response.events {
        let kind = if event.r#type == 0 { "PUT" } else { "DELETE" };
        let kv_event = event.kv.unwrap_or_default();
        println!(
            "   event: {kind} {}={} at revision {}",
            String::from_utf8_lossy(&kv_event.key),
            String::from_utf8_lossy(&kv_event.value),
            kv_event.mod_revision
        );
    }
    drop(requests);

    println!("\n4. A lease: keys attached to it live and die with it");
    let mut leases = LeaseClient::new(channel(&urls["n1"]).await?);
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 10, id: 0 })
        .await?
        .into_inner();
    put(&mut kv, "/demo/session", "alice", lease.id).await?;
    println!(
        "   granted lease {:x} (TTL {} s), put /demo/session=alice with it",
        lease.id, lease.ttl
    );
    leases
        .lease_revoke(pb::LeaseRevokeRequest { id: lease.id })
        .await?;
    println!(
        "   revoked it -> get /demo/session: {:?}",
        get(&mut kv, "/demo/session", false, false).await?
    );

    println!("\n5. Crash: SIGKILL the leader {first_leader}");
    cluster.kill(&first_leader);
    let started = Instant::now();
    let survivors: HashMap<String, String> = urls
        .iter()
        .filter(|(n, _)| **n != first_leader)
        .map(|(n, u)| (n.clone(), u.clone()))
        .collect();
    let new_leader = loop {
        if let Some(name) = leader(&survivors, &names)
            .await
            .filter(|n| *n != first_leader)
        {
            break name;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("no new leader within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "   {new_leader} elected after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let survivor = survivors.keys().next().expect("two survivors").clone();
    let mut kv = KvClient::new(channel(&survivors[&survivor]).await?);
    let revision = loop {
        match put(&mut kv, "/demo/after-crash", "yes", 0).await {
            Ok(revision) => break revision,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => return Err(error),
        }
    };
    println!(
        "   put via {survivor} -> revision {revision}; nothing acknowledged was lost: {}",
        show(&get(&mut kv, "/demo/", true, false).await?)
    );

    println!("\n6. Restart {first_leader} from its data directory");
    cluster.restart(&first_leader)?;
    let metrics_port = cluster
        .plan
        .nodes
        .iter()
        .find(|n| n.name == first_leader)
        .map(|n| n.metrics_port)
        .expect("planned");
    let started = Instant::now();
    while !health(metrics_port) {
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "{first_leader} did not come back:\n{}",
                cluster.log_tail(&first_leader)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut restarted = KvClient::new(channel(&urls[&first_leader]).await?);
    loop {
        let local = get(&mut restarted, "/demo/after-crash", false, true).await?;
        if !local.is_empty() {
            println!(
                "   caught up after {:.2} s: its own copy (serializable read) has {}",
                started.elapsed().as_secs_f64(),
                show(&local)
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("{first_leader} did not catch up").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("\nDone. Next:");
    println!("  ballot dev                                 keep a local cluster running (etcdctl works against it)");
    println!("  ballot sim raft --nodes 5 --seeds 1000     the protocol under 1,000 seeded fault schedules");
    println!("  ballot demo --simulated                    the same story in the deterministic simulator");
    Ok(())
}
