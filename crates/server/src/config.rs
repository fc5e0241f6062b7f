//! Node configuration with etcd's names and meanings, so scripts written for etcd start ballot by
//! changing the binary name. Parsing of flags, `BALLOT_*` variables and the TOML file happens in
//! the binary; this module owns the values, their validation and what is derived from them.

use crate::auto_compaction::AutoCompaction;
use ballot_core::{Membership, NodeId, ReplicaSettings};
use ballot_storage::identity::{Identity, InitialMember};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Milliseconds per tick of the node's replicas: every timeout an engine counts in ticks is a
/// multiple of it.
pub const TICK_MILLIS: u64 = 10;

/// How a member with an empty data directory starts. Read only then: a directory that holds
/// state restarts from it, whatever this says (as etcd does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `initial_cluster`.
    New,
    /// Join a cluster that already runs (after `member add`).
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name=peer-url` pairs, as etcd's `--initial-cluster`. This and the next two are read only
    /// when the data directory is empty (see `ballot_storage::identity`).
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Which of the bootstrap flags (`initial-cluster`, `initial-cluster-state`,
    /// `initial-cluster-token`, `initial-advertise-peer-urls`) were given rather than defaulted:
    /// a restart names the ones it ignores, and warns about a token only if one was given.
    pub bootstrap_flags_given: Vec<&'static str>,
    /// Start a one-member cluster from this member's data, forgetting every other member: the
    /// last resort after a quorum is lost for good (etcd's `--force-new-cluster`).
    pub force_new_cluster: bool,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between two log compactions (named as etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Where `/metrics` and `/health` are served (empty: on the first client URL's port + 1).
    pub listen_metrics_urls: Vec<String>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`: off by default, as in etcd.
    pub auto_compaction: AutoCompaction,
    /// Size of a segment of the groups' shared WAL (64 MiB; no flag: small ones are for tests
    /// that need many segments).
    pub shared_wal_segment_bytes: u64,
}

impl Default for ServerConfig {
    /// etcd's defaults.
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.ballot"),
            listen_client_urls: vec!["http://localhost:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: vec![("default".into(), "http://localhost:2380".into())],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "ballot-cluster".into(),
            bootstrap_flags_given: Vec::new(),
            force_new_cluster: false,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: ballot_storage::mvcc::limits::TXN_OPS_DEFAULT,
            listen_metrics_urls: Vec::new(),
            auto_compaction: AutoCompaction::Disabled,
            shared_wal_segment_bytes: ballot_storage::wal::SEGMENT_SIZE_BYTES_DEFAULT,
        }
    }
}

/// A configuration that cannot run, with the flag at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn config_error(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

impl ServerConfig {
    /// Checks every setting that applies at every start. The bootstrap settings are checked by
    /// [`ServerConfig::validate_bootstrap`], and only when they are used.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(config_error("name", "must not be empty"));
        }
        for (flag, urls) in [
            ("listen-client-urls", &self.listen_client_urls),
            ("advertise-client-urls", &self.advertise_client_urls),
            ("listen-peer-urls", &self.listen_peer_urls),
            (
                "initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
        ] {
            if urls.is_empty() {
                return Err(config_error(flag, "needs at least one URL"));
            }
            for url in urls {
                parse_url(url).map_err(|reason| config_error(flag, reason))?;
            }
        }
        for url in &self.listen_metrics_urls {
            parse_url(url).map_err(|reason| config_error("listen-metrics-urls", reason))?;
        }
        if self.heartbeat_interval_ms < TICK_MILLIS {
            return Err(config_error(
                "heartbeat-interval",
                format!(
                    "{} ms is below the {TICK_MILLIS} ms tick",
                    self.heartbeat_interval_ms
                ),
            ));
        }
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms {
            return Err(config_error(
                "election-timeout",
                format!(
                    "{} ms must be at least 5 times --heartbeat-interval ({} ms)",
                    self.election_timeout_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        if self.snapshot_count == 0 {
            return Err(config_error("snapshot-count", "must be at least 1"));
        }
        use ballot_storage::mvcc::limits::{TXN_OPS_MAX, VALUE_BYTES_MAX};
        if self.max_txn_ops == 0 || self.max_txn_ops > TXN_OPS_MAX {
            return Err(config_error(
                "max-txn-ops",
                format!(
                    "must be between 1 and {TXN_OPS_MAX}, got {}",
                    self.max_txn_ops
                ),
            ));
        }
        if self.max_request_bytes < 1024 || self.max_request_bytes > VALUE_BYTES_MAX {
            return Err(config_error(
                "max-request-bytes",
                format!(
                    "must be between 1024 and {VALUE_BYTES_MAX} (32 MiB), got {}",
                    self.max_request_bytes
                ),
            ));
        }
        self.auto_compaction.validate()?;
        Ok(())
    }

    /// Checks `--initial-cluster` and its relation to this member: what an empty data directory
    /// is created from.
    pub fn validate_bootstrap(&self) -> Result<(), ConfigError> {
        let flag = "initial-cluster";
        if self.initial_cluster.is_empty() {
            return Err(config_error(flag, "names no member"));
        }
        let mut names: Vec<&str> = self
            .initial_cluster
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(config_error(
                flag,
                format!("member '{}' appears twice", pair[0]),
            ));
        }
        for (_, url) in &self.initial_cluster {
            parse_url(url).map_err(|reason| config_error(flag, reason))?;
        }
        let Some((_, own_url)) = self
            .initial_cluster
            .iter()
            .find(|(name, _)| name == &self.name)
        else {
            return Err(config_error(
                flag,
                format!("does not name this member '{}'", self.name),
            ));
        };
        // The member id derives from this URL on every member (and from `member add`'s URL on a
        // joining one), so this member must advertise exactly it.
        if self.initial_advertise_peer_urls != [own_url.clone()] {
            return Err(config_error(
                flag,
                format!(
                    "gives '{}' the peer URL {own_url}, but --initial-advertise-peer-urls says {} \
                     (they must be the same one URL)",
                    self.name,
                    self.initial_advertise_peer_urls.join(",")
                ),
            ));
        }
        Ok(())
    }

    /// What the node's replicas are built with: the heartbeat interval and the election
    /// timeout range `[min, 2 * min)` in ticks, the snapshot count, and room for the largest
    /// request with its envelope.
    pub fn replica_settings(&self) -> ReplicaSettings {
        let heartbeat = (self.heartbeat_interval_ms / TICK_MILLIS).max(1) as u32;
        let election_min =
            (self.election_timeout_ms / TICK_MILLIS).max(heartbeat as u64 + 1) as u32;
        ReplicaSettings {
            probe_interval_ticks: heartbeat,
            leader_timeout_min_ticks: election_min,
            leader_timeout_max_ticks: 2 * election_min,
            compaction_threshold_entries: self.snapshot_count,
            command_bytes_max: self.max_request_bytes + 4096,
            // Group 0 never sleeps; the node loop turns it on for the others.
            hibernate: false,
        }
    }

    /// This node's id, derived like every other member's from the cluster token and its peer
    /// URL (as `member add`, which knows only peer URLs, derives it too).
    pub fn node_id(&self) -> NodeId {
        member_id(
            &self.initial_cluster_token,
            &self.initial_advertise_peer_urls[0],
        )
    }

    /// Ids of the members named in `--initial-cluster`.
    pub fn initial_member_ids(&self) -> Vec<NodeId> {
        self.initial_cluster
            .iter()
            .map(|(_, url)| member_id(&self.initial_cluster_token, url))
            .collect()
    }

    /// The cluster id: derived, like member ids, from what every initial member agrees on (the
    /// cluster token and the initial members' ids, sorted), so every member reports the same id
    /// and two clusters with different tokens differ. (etcd hashes the sorted initial member ids
    /// with SHA-1; the value only has to agree within a cluster.)
    pub fn cluster_id(&self) -> u64 {
        let mut members = self.initial_member_ids();
        members.sort_unstable();
        let bytes = self
            .initial_cluster_token
            .bytes()
            .chain([b'/'])
            .chain(members.iter().flat_map(|id| id.to_be_bytes()));
        fnv1a(bytes).max(1)
    }

    /// What an empty data directory is created with: this member's identity and the membership
    /// its replica starts from (every initial member as a voter for a new cluster, nobody for a
    /// member joining one, which learns the membership from the leader).
    pub fn bootstrap_identity(&self) -> Identity {
        let bootstrap = match self.initial_cluster_state {
            ClusterState::New => Membership::with_voters(self.initial_member_ids()),
            ClusterState::Existing => Membership::default(),
        };
        Identity {
            member_id: self.node_id(),
            member_name: self.name.clone(),
            cluster_id: self.cluster_id(),
            cluster_token: self.initial_cluster_token.clone(),
            bootstrap,
            initial_members: self
                .initial_cluster
                .iter()
                .map(|(name, url)| InitialMember {
                    id: member_id(&self.initial_cluster_token, url),
                    name: name.clone(),
                    peer_urls: vec![url.clone()],
                })
                .collect(),
        }
    }
}

/// A member's id: a hash of the cluster token and the member's peer URL, so every node derives
/// the same ids from the same `--initial-cluster`, and two clusters with different tokens differ.
pub fn member_id(cluster_token: &str, peer_url: &str) -> NodeId {
    fnv1a(cluster_token.bytes().chain([b'/']).chain(peer_url.bytes())).max(1)
}

/// FNV-1a, 64 bit: stable across versions and platforms, unlike std's hasher, so ids derived
/// from it agree between nodes and releases.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `http://host:port` to a socket address. `https` is refused: TLS is not supported yet.
pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url}: TLS (https) is not supported yet; use http://"
        ));
    } else {
        return Err(format!("{url}: expected http://host:port"));
    };
    let host_port = rest.trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .map_err(|error| format!("{url}: {error}"))?
        .next()
        .ok_or_else(|| format!("{url}: the host resolves to no address"))
}

/// `name1=http://a:2380,name2=http://b:2380` into pairs.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (name, url) = part.trim().split_once('=').ok_or_else(|| {
                config_error("initial-cluster", format!("'{part}' is not name=url"))
            })?;
            Ok((name.to_string(), url.to_string()))
        })
        .collect()
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        })
    }
}

impl std::str::FromStr for ClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            other => Err(format!("'{other}' is neither 'new' nor 'existing'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes(name: &str) -> ServerConfig {
        let port = |n: u16| format!("http://127.0.0.1:{}", 2380 + 10 * n);
        ServerConfig {
            name: name.into(),
            initial_cluster: (1..=3).map(|n| (format!("n{n}"), port(n))).collect(),
            initial_advertise_peer_urls: vec![port(name[1..].parse().unwrap())],
            ..ServerConfig::default()
        }
    }

    #[test]
    fn etcd_defaults_are_valid_and_ids_are_stable() {
        ServerConfig::default().validate().unwrap();
        ServerConfig::default().validate_bootstrap().unwrap();
        three_nodes("n2").validate().unwrap();
        three_nodes("n2").validate_bootstrap().unwrap();
        assert_eq!(member_id("t", "n1"), member_id("t", "n1"));
        assert_ne!(member_id("t", "n1"), member_id("t", "n2"));
        assert_ne!(member_id("a", "n1"), member_id("b", "n1"));
        let settings = ServerConfig::default().replica_settings();
        assert_eq!(
            (
                settings.probe_interval_ticks,
                settings.leader_timeout_min_ticks,
                settings.leader_timeout_max_ticks
            ),
            (10, 100, 200),
            "etcd's 100 ms heartbeat and 1 s election timeout, in 10 ms ticks"
        );
    }

    #[test]
    fn a_new_member_starts_with_every_initial_voter_and_a_joining_one_with_none() {
        let new = three_nodes("n2").bootstrap_identity();
        assert_eq!(new.member_id, three_nodes("n2").node_id());
        assert_eq!(new.bootstrap.voters.len(), 3);
        assert_eq!(new.initial_members.len(), 3);
        assert_eq!(
            new.cluster_id,
            three_nodes("n1").bootstrap_identity().cluster_id
        );
        let joining = ServerConfig {
            initial_cluster_state: ClusterState::Existing,
            ..three_nodes("n2")
        };
        assert!(joining.bootstrap_identity().bootstrap.voters.is_empty());
    }

    #[test]
    fn bad_configurations_name_the_flag() {
        let mut config = three_nodes("n1");
        config.election_timeout_ms = 300;
        assert_eq!(config.validate().unwrap_err().flag, "election-timeout");
        let mut config = three_nodes("n4");
        config.initial_advertise_peer_urls = vec!["http://127.0.0.1:2420".into()];
        config
            .validate()
            .expect("the bootstrap flags are checked only when they are used");
        let error = config.validate_bootstrap().unwrap_err();
        assert!(
            error.to_string().contains("does not name this member 'n4'"),
            "{error}"
        );
        let mut config = three_nodes("n1");
        config.listen_client_urls = vec!["https://127.0.0.1:2379".into()];
        assert!(config.validate().unwrap_err().to_string().contains("TLS"));
        assert!(parse_initial_cluster("a=http://x:1,b").is_err());
        assert_eq!(
            parse_initial_cluster("a=http://x:1,b=http://y:2")
                .unwrap()
                .len(),
            2
        );
    }
}
