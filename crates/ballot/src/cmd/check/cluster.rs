//! The cluster under test: the `ballot server` processes (`ballot::dev_cluster`), a proxy in
//! front of every node's peer port, the member id of every node, and the etcd v3 calls the
//! nemesis and the monitor make (status, move leader, member remove / add / promote). Owns the
//! processes; decides nothing about when to hurt them (that is the nemesis).

use super::proxy::{self, Links, NodeIndex, Proxy};
use ballot::dev_cluster::{health, NodeOptions, RunningCluster};
use ballot_proto::etcdserverpb as pb;
use ballot_server::config::member_id;
use pb::cluster_client::ClusterClient;
use pb::maintenance_client::MaintenanceClient;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Time allowed to dial a node's client port.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for an administrative call (status, member change, move leader).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

pub fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub struct Cluster {
    pub names: Vec<String>,
    pub client_urls: Vec<String>,
    metrics_ports: Vec<u16>,
    pub links: Arc<Links>,
    token: String,
    processes: Mutex<RunningCluster>,
    /// The proxy in front of each node (replaced when a member is re-added at a new URL).
    proxies: Mutex<Vec<Proxy>>,
    member_ids: Mutex<Vec<u64>>,
    /// Nodes down on purpose (killed, removed): an exit of any other node is an incident.
    expected_down: Mutex<HashSet<NodeIndex>>,
    /// One lazily connected channel per node, for status polls and admin calls.
    channels: Vec<Channel>,
}

impl Cluster {
    /// Starts `nodes` fresh nodes in `data_dir`, each behind a proxy, and waits for a leader.
    pub async fn start(exe: &Path, nodes: usize, data_dir: &Path) -> Result<Cluster, String> {
        let mut running = RunningCluster::plan_fresh(exe, nodes, data_dir)?;
        let links = Arc::new(Links::default());
        let token = running.plan.token.clone();
        let mut proxies = Vec::new();
        let mut member_ids = Vec::new();
        for (index, node) in running.plan.nodes.clone().iter().enumerate() {
            let proxy = proxy::start(index, node.peer_port, links.clone())
                .await
                .map_err(|e| format!("cannot start the peer proxy of {}: {e}", node.name))?;
            let id = member_id(&token, &loopback_url(proxy.port));
            links.register_member(id, index);
            running.set_node_options(
                &node.name,
                NodeOptions {
                    advertised_peer_port: Some(proxy.port),
                    joins_existing: false,
                },
            );
            proxies.push(proxy);
            member_ids.push(id);
        }
        let plan = running.plan.clone();
        let running = tokio::task::spawn_blocking(move || running.launch().map(|()| running))
            .await
            .map_err(|e| format!("cluster start: {e}"))??;
        let client_urls: Vec<String> = plan.client_urls();
        let channels = client_urls
            .iter()
            .map(|url| lazy_channel(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cluster {
            names: plan.nodes.iter().map(|n| n.name.clone()).collect(),
            client_urls,
            metrics_ports: plan.nodes.iter().map(|n| n.metrics_port).collect(),
            links,
            token,
            processes: Mutex::new(running),
            proxies: Mutex::new(proxies),
            member_ids: Mutex::new(member_ids),
            expected_down: Mutex::new(HashSet::new()),
            channels,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn name(&self, node: NodeIndex) -> &str {
        &self.names[node]
    }

    pub fn names_of(&self, nodes: &[NodeIndex]) -> Vec<String> {
        nodes.iter().map(|&n| self.names[n].clone()).collect()
    }

    pub fn member_id(&self, node: NodeIndex) -> u64 {
        self.member_ids.lock().expect("member ids lock")[node]
    }

    pub fn peer_url(&self, node: NodeIndex) -> String {
        loopback_url(self.proxies.lock().expect("proxies lock")[node].port)
    }

    pub fn is_running(&self, node: NodeIndex) -> bool {
        self.processes
            .lock()
            .expect("processes lock")
            .is_running(&self.names[node])
    }

    pub fn log_tail(&self, node: NodeIndex) -> String {
        self.processes
            .lock()
            .expect("processes lock")
            .log_tail(&self.names[node])
    }

    /// SIGKILL; the node stays down until [`Cluster::restart`].
    pub fn kill(&self, node: NodeIndex) {
        self.expected_down
            .lock()
            .expect("expected down lock")
            .insert(node);
        self.processes
            .lock()
            .expect("processes lock")
            .kill(&self.names[node]);
    }

    pub fn restart(&self, node: NodeIndex) -> Result<(), String> {
        self.processes
            .lock()
            .expect("processes lock")
            .restart(&self.names[node])?;
        self.expected_down
            .lock()
            .expect("expected down lock")
            .remove(&node);
        Ok(())
    }

    pub fn pause(&self, node: NodeIndex) -> Result<(), String> {
        self.processes
            .lock()
            .expect("processes lock")
            .pause(&self.names[node])
    }

    pub fn resume(&self, node: NodeIndex) -> Result<(), String> {
        self.processes
            .lock()
            .expect("processes lock")
            .resume(&self.names[node])
    }

    /// Marks `node` as about to go away on purpose (a member remove stops its process).
    pub fn expect_down(&self, node: NodeIndex, down: bool) {
        let mut expected = self.expected_down.lock().expect("expected down lock");
        if down {
            expected.insert(node);
        } else {
            expected.remove(&node);
        }
    }

    pub fn wipe_data(&self, node: NodeIndex) -> Result<(), String> {
        self.processes
            .lock()
            .expect("processes lock")
            .wipe_data(&self.names[node])
    }

    /// Nodes that exited although nobody stopped them, with their exit status.
    pub fn reap_unexpected_exits(&self) -> Vec<(NodeIndex, String)> {
        let exited = self.processes.lock().expect("processes lock").reap_exited();
        let expected = self
            .expected_down
            .lock()
            .expect("expected down lock")
            .clone();
        exited
            .into_iter()
            .filter_map(|(name, status)| {
                let node = self.names.iter().position(|n| *n == name)?;
                (!expected.contains(&node)).then(|| (node, status.to_string()))
            })
            .collect()
    }

    /// Gives `node` a new proxy on a new port (its old one stops accepting): the peer URL of
    /// a member re-added as a new incarnation. Returns the new URL.
    pub async fn new_peer_url(&self, node: NodeIndex) -> Result<String, String> {
        let upstream_port =
            self.processes.lock().expect("processes lock").plan.nodes[node].peer_port;
        let proxy = proxy::start(node, upstream_port, self.links.clone())
            .await
            .map_err(|e| format!("cannot start a proxy: {e}"))?;
        let url = loopback_url(proxy.port);
        self.proxies.lock().expect("proxies lock")[node] = proxy;
        Ok(url)
    }

    /// Starts `node` again as a member joining a running cluster (`--initial-cluster-state
    /// existing`), advertising its current proxy, with the member id `member_id`.
    pub fn start_joining(&self, node: NodeIndex, member_id: u64) -> Result<(), String> {
        let port = self.proxies.lock().expect("proxies lock")[node].port;
        self.links.register_member(member_id, node);
        self.member_ids.lock().expect("member ids lock")[node] = member_id;
        let mut processes = self.processes.lock().expect("processes lock");
        processes.set_node_options(
            &self.names[node],
            NodeOptions {
                advertised_peer_port: Some(port),
                joins_existing: true,
            },
        );
        processes.restart(&self.names[node])?;
        drop(processes);
        self.expect_down(node, false);
        Ok(())
    }

    /// The id a member added at `peer_url` gets (derived as the server derives it).
    pub fn member_id_for(&self, peer_url: &str) -> u64 {
        member_id(&self.token, peer_url)
    }

    /// GET /health on the node's metrics port: up and knowing a leader.
    pub async fn healthy(&self, node: NodeIndex) -> bool {
        let port = self.metrics_ports[node];
        tokio::task::spawn_blocking(move || health(port))
            .await
            .unwrap_or(false)
    }

    pub async fn status(&self, node: NodeIndex) -> Result<pb::StatusResponse, String> {
        let mut client = MaintenanceClient::new(self.channels[node].clone());
        match tokio::time::timeout(STATUS_TIMEOUT, client.status(pb::StatusRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    /// Asks `via` (the leader, or any node, which forwards) to hand leadership to `target`.
    pub async fn move_leader(&self, via: NodeIndex, target: NodeIndex) -> Result<(), String> {
        let request = pb::MoveLeaderRequest {
            target_id: self.member_id(target),
        };
        let mut client = MaintenanceClient::new(self.channels[via].clone());
        admin(client.move_leader(request)).await.map(|_| ())
    }

    /// Removes `node` from the membership, asking each other running node in turn.
    pub async fn remove_member(&self, node: NodeIndex) -> Result<(), String> {
        let id = self.member_id(node);
        self.admin_anywhere(&[node], |channel| async move {
            ClusterClient::new(channel)
                .member_remove(pb::MemberRemoveRequest { id })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Adds a learner at `peer_url`; returns its member id as the cluster reports it.
    pub async fn add_learner(&self, node: NodeIndex, peer_url: &str) -> Result<u64, String> {
        let url = peer_url.to_string();
        self.admin_anywhere(&[node], |channel| {
            let url = url.clone();
            async move {
                ClusterClient::new(channel)
                    .member_add(pb::MemberAddRequest {
                        peer_ur_ls: vec![url],
                        is_learner: true,
                    })
                    .await
                    .map(|response| response.into_inner().member.map_or(0, |m| m.id))
            }
        })
        .await
    }

    /// The member ids `node` itself believes in (its local, non-linearizable member list).
    pub async fn members_seen_by(&self, node: NodeIndex) -> Result<Vec<u64>, String> {
        let mut client = ClusterClient::new(self.channels[node].clone());
        let response = admin(client.member_list(pb::MemberListRequest {
            linearizable: false,
        }))
        .await?;
        let mut ids: Vec<u64> = response.into_inner().members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The member ids of the running cluster, as a linearizable member list says.
    pub async fn members(&self, not_via: NodeIndex) -> Result<Vec<u64>, String> {
        let mut ids = self
            .admin_anywhere(&[not_via], |channel| async move {
                ClusterClient::new(channel)
                    .member_list(pb::MemberListRequest { linearizable: true })
                    .await
                    .map(|response| {
                        response
                            .into_inner()
                            .members
                            .iter()
                            .map(|m| m.id)
                            .collect::<Vec<u64>>()
                    })
            })
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Names for member ids (`?` for an id no node of this run has had).
    pub fn names_of_members(&self, ids: &[u64]) -> String {
        let names: Vec<String> = ids
            .iter()
            .map(|&id| {
                self.links
                    .node_of(id)
                    .map_or(format!("?{id:x}"), |n| self.names[n].clone())
            })
            .collect();
        format!("[{}]", names.join(", "))
    }

    /// `thread '...' panicked at FILE:LINE:` and the message line after it, for every panic in
    /// the node's log (a panicking raft thread leaves the process up, answering "server stopped").
    pub fn panics_logged(&self, node: NodeIndex) -> Vec<String> {
        let dir = self
            .processes
            .lock()
            .expect("processes lock")
            .data_dir
            .clone();
        let log = std::fs::read_to_string(dir.join(&self.names[node]).join("server.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains(" panicked at "))
            .map(|(index, line)| {
                let message = lines.get(index + 1).copied().unwrap_or_default();
                format!("{} {}", line.trim(), message.trim())
            })
            .collect()
    }

    pub async fn promote(&self, member_id: u64, not_via: NodeIndex) -> Result<(), String> {
        self.admin_anywhere(&[not_via], |channel| async move {
            ClusterClient::new(channel)
                .member_promote(pb::MemberPromoteRequest { id: member_id })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Sends an admin call to each running node except `avoid` until one answers; the last
    /// error otherwise. A node that is not the leader forwards the call to it.
    async fn admin_anywhere<T, F, Fut>(&self, avoid: &[NodeIndex], call: F) -> Result<T, String>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last_error = String::from("no running node to ask");
        for node in 0..self.len() {
            if avoid.contains(&node) || !self.is_running(node) {
                continue;
            }
            match admin(call(self.channels[node].clone())).await {
                Ok(value) => return Ok(value),
                Err(error) => last_error = format!("{}: {error}", self.names[node]),
            }
        }
        Err(last_error)
    }

    /// SIGCONT to every node (a paused node ignores SIGTERM), then SIGTERM and wait.
    pub fn stop(&self) {
        let mut processes = self.processes.lock().expect("processes lock");
        for name in &self.names {
            let _ = processes.resume(name);
        }
        processes.stop();
    }

    /// Deletes every node's data directory, keeping the logs.
    pub fn remove_data(&self) {
        let mut processes = self.processes.lock().expect("processes lock");
        for name in &self.names {
            let _ = processes.wipe_data(name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn admin<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_string()
        }),
        Err(_) => Err(format!("no answer within {ADMIN_TIMEOUT:?}")),
    }
}

fn lazy_channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(DIAL_TIMEOUT)
        .connect_lazy())
}

/// Dials `url` now (so a refused connection is known before any operation is sent).
pub async fn dial(url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(DIAL_TIMEOUT);
    match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("dial timed out".into()),
    }
}

/// Creates `count` groups of `replicas` replicas (`ballot group create`, through the first node
/// that answers) before the clients start. The cluster has just started: a refusal is retried
/// until [`GROUPS_CREATED_WITHIN`] (group 0 may have no leader yet, or its members may not have
/// published their client URLs).
pub async fn create_groups(cluster: &Cluster, count: u32, replicas: usize) -> Result<(), String> {
    use ballot_proto::ballotpb as bpb;
    use ballot_proto::ballotpb::groups_client::GroupsClient;
    let deadline = tokio::time::Instant::now() + GROUPS_CREATED_WITHIN;
    let mut created = 0;
    let mut attempt = 0;
    while created < count {
        let url = &cluster.client_urls[attempt % cluster.len()];
        attempt += 1;
        let answer = match dial(url).await {
            Ok(channel) => GroupsClient::new(channel)
                .group_create(bpb::GroupCreateRequest {
                    id: 0,
                    replicas: replicas as u32,
                })
                .await
                .map(|_| ())
                .map_err(|status| status.message().to_string()),
            Err(error) => Err(error),
        };
        match answer {
            Ok(()) => created += 1,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "{created} of {count} groups created within {GROUPS_CREATED_WITHIN:?}; the \
                     last attempt through {url}: {error}"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(())
}

/// How long the cluster has to create the groups of a `--groups` run.
const GROUPS_CREATED_WITHIN: Duration = Duration::from_secs(30);
