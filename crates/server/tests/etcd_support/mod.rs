//! A three-node cluster in one process (real WAL, state store, TCP on loopback) with the etcd v3 gRPC
//! services on each node's client port, driven by the generated tonic clients.

#![allow(dead_code)]

use ballot_core::{NodeId, Role};
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_proto::etcdserverpb::lease_client::LeaseClient;
use ballot_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use ballot_server::config::{ClusterState, ServerConfig};
use ballot_server::etcd::{self, LeaderChannel, RequestLimits};
use ballot_server::node::{Node, NodeHandle};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Reaches members by the client URLs of the test's configurations.
pub struct MapLeaderChannel {
    channels: HashMap<NodeId, Channel>,
}

impl LeaderChannel for MapLeaderChannel {
    fn channel(&self, leader: NodeId) -> Option<Channel> {
        self.channels.get(&leader).cloned()
    }
}

pub struct Cluster {
    nodes: Vec<Option<Node>>,
    pub handles: Vec<NodeHandle>,
    pub ids: Vec<NodeId>,
    pub client_urls: Vec<String>,
    channels: Vec<Channel>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    root: PathBuf,
}

#[path = "../support/ports.rs"]
mod ports;
use ports::free_port;

impl Cluster {
    pub async fn start(limits: RequestLimits) -> Cluster {
        Cluster::start_with(limits, |_| {}).await
    }

    /// As [`Cluster::start`], with `configure` applied to every member's configuration.
    pub async fn start_with(
        limits: RequestLimits,
        configure: impl Fn(&mut ServerConfig),
    ) -> Cluster {
        let size = 3;
        let root = std::env::temp_dir().join(format!(
            "ballot-etcd-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&root).unwrap();
        // Client listeners are bound first so their ports cannot be taken meanwhile.
        let mut client_listeners = Vec::new();
        for _ in 0..size {
            client_listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let client_urls: Vec<String> = client_listeners
            .iter()
            .map(|l| url(l.local_addr().unwrap().port()))
            .collect();
        let peer_urls: Vec<String> = (0..size).map(|_| url(free_port())).collect();
        let initial_cluster: Vec<(String, String)> = peer_urls
            .iter()
            .enumerate()
            .map(|(i, peer)| (format!("n{}", i + 1), peer.clone()))
            .collect();
        let configs: Vec<ServerConfig> = (0..size)
            .map(|i| ServerConfig {
                name: format!("n{}", i + 1),
                data_dir: root.join(format!("n{}", i + 1)),
                listen_client_urls: vec![client_urls[i].clone()],
                advertise_client_urls: vec![client_urls[i].clone()],
                listen_peer_urls: vec![peer_urls[i].clone()],
                initial_advertise_peer_urls: vec![peer_urls[i].clone()],
                initial_cluster: initial_cluster.clone(),
                initial_cluster_state: ClusterState::New,
                initial_cluster_token: "etcd-test".into(),
                heartbeat_interval_ms: 20,
                election_timeout_ms: 200,
                snapshot_count: 1000,
                max_request_bytes: limits.max_request_bytes,
                max_txn_ops: limits.max_txn_ops,
                ..ServerConfig::default()
            })
            .map(|mut config| {
                configure(&mut config);
                config
            })
            .collect();
        let ids: Vec<NodeId> = configs.iter().map(ServerConfig::node_id).collect();
        let channels: Vec<Channel> = client_urls
            .iter()
            .map(|u| Channel::from_shared(u.clone()).unwrap().connect_lazy())
            .collect();
        let leaders: Arc<dyn LeaderChannel> = Arc::new(MapLeaderChannel {
            channels: ids.iter().copied().zip(channels.iter().cloned()).collect(),
        });
        let mut nodes = Vec::new();
        for config in &configs {
            nodes.push(Some(
                Node::start(config.clone(), ballot_raft::Raft::start)
                    .await
                    .unwrap(),
            ));
        }
        let handles: Vec<NodeHandle> = nodes.iter().flatten().map(|n| n.handle.clone()).collect();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        for (i, listener) in client_listeners.into_iter().enumerate() {
            let routes = etcd::services(handles[i].clone(), limits, leaders.clone());
            let mut stopped = stopped.clone();
            servers.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                etcd::serve(listener, routes, shutdown).await.unwrap();
            }));
        }
        let cluster = Cluster {
            nodes,
            handles,
            ids,
            client_urls,
            channels,
            servers,
            stop,
            root,
        };
        cluster.wait_until_ready().await;
        cluster
    }

    /// Index of the leader, once there is one that has committed an entry of its term.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self
                .handles
                .iter()
                .position(|n| n.status().role == Some(Role::Leader))
            {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn follower(&self, leader: usize) -> usize {
        (leader + 1) % self.handles.len()
    }

    /// Until a write through the leader succeeds (the leader has committed in its term).
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.leader().await;
            let put = pb::PutRequest {
                key: "ready".into(),
                value: "1".into(),
                ..Default::default()
            };
            if self.kv(leader).put(put).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never took a write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until every member has applied what the leader has. By log index, not revision: a
    /// compaction moves no revision but must reach every member's store too.
    pub async fn wait_applied(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = self.handles[self.leader().await].store().applied_index();
        while self
            .handles
            .iter()
            .any(|handle| handle.store().applied_index() < target)
        {
            assert!(Instant::now() < deadline, "members did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channels[i].clone())
    }

    pub fn watch(&self, i: usize) -> WatchClient<Channel> {
        WatchClient::new(self.channels[i].clone())
    }

    pub fn lease(&self, i: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channels[i].clone())
    }

    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channels[i].clone())
    }

    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i].clone()
    }

    /// Tells every member's client server to shut down (GOAWAY, calls in flight finish) and
    /// waits up to `wait` for member `i`'s to return. True if it did.
    pub async fn stop_serving(&mut self, i: usize, wait: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(wait, &mut self.servers[i])
            .await
            .is_ok()
    }

    pub fn revision(&self, i: usize) -> i64 {
        self.handles[i].store().revision()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for server in &self.servers {
            server.abort();
        }
        self.handles.clear();
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> pb::PutResponse {
    kv.put(pb::PutRequest {
        key: key.to_string().into(),
        value: value.to_string().into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn get(kv: &mut KvClient<Channel>, key: &str) -> pb::RangeResponse {
    kv.range(pb::RangeRequest {
        key: key.to_string().into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

pub fn values(response: &pb::RangeResponse) -> Vec<(String, String)> {
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// etcd's prefix range end.
pub fn prefix_end(prefix: &str) -> bytes::Bytes {
    ballot_storage::mvcc::types::prefix_end(prefix.as_bytes())
}
