//! `ballot server`: one node, configured with etcd's flag names so etcd scripts work by changing
//! the binary name. Each flag has a `BALLOT_*` environment variable; `--config-file` names a TOML
//! file with the same keys (without the dashes' leading `--`). Precedence: flag, variable, file,
//! default.

use ballot::logging::{LogFormat, LogLevel};
use ballot_server::auto_compaction::AutoCompaction;
use ballot_server::config::{parse_initial_cluster, parse_url, ClusterState, ServerConfig};
use ballot_server::node::Node;
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// Human-readable name of this member [default: default]
    #[arg(long, env = "BALLOT_NAME")]
    name: Option<String>,
    /// Where the WAL, snapshots and the state machine live [default: <name>.ballot]
    #[arg(long, env = "BALLOT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// URLs to serve clients on, comma separated [default: http://localhost:2379]
    #[arg(long, env = "BALLOT_LISTEN_CLIENT_URLS")]
    listen_client_urls: Option<String>,
    /// Client URLs to tell other members and clients about [default: http://localhost:2379]
    #[arg(long, env = "BALLOT_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Option<String>,
    /// URLs to serve peers on [default: http://localhost:2380]
    #[arg(long, env = "BALLOT_LISTEN_PEER_URLS")]
    listen_peer_urls: Option<String>,
    /// This member's peer URLs, as the others reach it [default: http://localhost:2380]
    #[arg(long, env = "BALLOT_INITIAL_ADVERTISE_PEER_URLS")]
    initial_advertise_peer_urls: Option<String>,
    /// Every initial member as name=peer-url, comma separated. Read only when the data directory
    /// is empty; a member with data restarts from it [default: default=http://localhost:2380]
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one after `member add`. Read only when the
    /// data directory is empty [default: new]
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER_STATE")]
    initial_cluster_state: Option<ClusterState>,
    /// Equal on every member; keeps clusters apart. Read only when the data directory is empty
    /// [default: ballot-cluster]
    #[arg(long, env = "BALLOT_INITIAL_CLUSTER_TOKEN")]
    initial_cluster_token: Option<String>,
    /// Last resort after losing a quorum for good: start a one-member cluster from this member's
    /// data, dropping uncommitted entries and every other member. Never start the other old
    /// members again; add new ones with `member add`. See docs/operations.md
    #[arg(long, env = "BALLOT_FORCE_NEW_CLUSTER")]
    force_new_cluster: bool,
    /// Milliseconds between leader heartbeats [default: 100]
    #[arg(long, env = "BALLOT_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// Milliseconds without a leader before an election; at least 5 heartbeats [default: 1000]
    #[arg(long, env = "BALLOT_ELECTION_TIMEOUT")]
    election_timeout: Option<u64>,
    /// Applied entries between two log compactions (as etcd's flag; the compaction needs no
    /// snapshot image: one is built only for a follower that needs it) [default: 100000]
    #[arg(long, env = "BALLOT_SNAPSHOT_COUNT")]
    snapshot_count: Option<u64>,
    /// Largest client request accepted, in bytes [default: 1572864]
    #[arg(long, env = "BALLOT_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Most operations in one transaction [default: 128]
    #[arg(long, env = "BALLOT_MAX_TXN_OPS")]
    max_txn_ops: Option<usize>,
    /// Where /metrics and /health are served [default: the first client URL's port + 10000]
    #[arg(long, env = "BALLOT_LISTEN_METRICS_URLS")]
    listen_metrics_urls: Option<String>,
    /// How --auto-compaction-retention is read: `periodic` (a duration) or `revision` (a number
    /// of revisions), as etcd's flag [default: periodic]
    #[arg(long, env = "BALLOT_AUTO_COMPACTION_MODE")]
    auto_compaction_mode: Option<String>,
    /// History the leader keeps when it compacts by itself; 0 turns that off. periodic: a
    /// duration (`30m`, `1h30m`, `500ms`) or a bare number of hours, from 100ms to 8760h; it
    /// compacts to the revision current one retention ago, a retention after the start and then
    /// every retention (hourly for longer ones). revision: a number of revisions; every 5 minutes
    /// it compacts to the current revision minus it. See docs/operations.md [default: 0]
    #[arg(long, env = "BALLOT_AUTO_COMPACTION_RETENTION")]
    auto_compaction_retention: Option<String>,
    /// Threads that serve client connections and the peer transport; the raft loop and the
    /// store flusher have their own. `ballot dev` gives each of its N nodes CPUs / N, since its
    /// nodes share one machine [default: the number of CPUs]
    #[arg(long, env = "BALLOT_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Log level of ballot's own events (etcd's names; panic and fatal log errors) [default: info]
    #[arg(long, env = "BALLOT_LOG_LEVEL")]
    log_level: Option<LogLevel>,
    /// Log lines as text or as one JSON object per line, to standard error [default: text]
    #[arg(long, env = "BALLOT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// A TOML file with any of the settings above (keys as the flags, e.g. `data-dir = "..."`)
    #[arg(long, env = "BALLOT_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    /// Shut down when standard input reaches end-of-file. `ballot dev` gives its servers a pipe
    /// only it holds open, so they stop when it ends, even when it is SIGKILLed.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Most `--worker-threads` accepted.
const WORKER_THREADS_MAX: usize = 1024;

/// Settings of the process that runs the node, rather than of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSettings {
    pub worker_threads: usize,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
}

/// The TOML file: every key optional, named as the flags.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    listen_client_urls: Option<String>,
    advertise_client_urls: Option<String>,
    listen_peer_urls: Option<String>,
    initial_advertise_peer_urls: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<String>,
    initial_cluster_token: Option<String>,
    force_new_cluster: Option<bool>,
    heartbeat_interval: Option<u64>,
    election_timeout: Option<u64>,
    snapshot_count: Option<u64>,
    max_request_bytes: Option<usize>,
    max_txn_ops: Option<usize>,
    listen_metrics_urls: Option<String>,
    auto_compaction_mode: Option<String>,
    auto_compaction_retention: Option<Retention>,
    worker_threads: Option<usize>,
    log_level: Option<LogLevel>,
    log_format: Option<LogFormat>,
}

/// `auto-compaction-retention` in the file: a string as the flag takes it (`"1h"`), or a bare
/// number (`1`), which etcd's YAML file takes too.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Retention {
    Count(i64),
    Text(String),
}

impl Retention {
    fn into_text(self) -> String {
        match self {
            Retention::Count(count) => count.to_string(),
            Retention::Text(text) => text,
        }
    }
}

fn urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(String::from)
        .collect()
}

/// Flags and variables (already merged by clap), then the file, then etcd's defaults.
pub fn resolve(args: &ServerArgs) -> Result<(ServerConfig, ProcessSettings), String> {
    let file: FileConfig = match &args.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("--config-file {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let defaults = ServerConfig::default();
    let name = args.name.clone().or(file.name).unwrap_or(defaults.name);
    let pick = |flag: &Option<String>, from_file: &Option<String>| {
        flag.clone().or_else(|| from_file.clone())
    };
    let cluster_state = match (&args.initial_cluster_state, &file.initial_cluster_state) {
        (Some(state), _) => *state,
        (None, Some(text)) => text
            .parse()
            .map_err(|e| format!("--initial-cluster-state: {e}"))?,
        (None, None) => ClusterState::New,
    };
    let initial_cluster = match pick(&args.initial_cluster, &file.initial_cluster) {
        Some(text) => parse_initial_cluster(&text).map_err(|e| e.to_string())?,
        None => defaults.initial_cluster,
    };
    let bootstrap_flags_given = [
        (
            "initial-cluster",
            args.initial_cluster.is_some() || file.initial_cluster.is_some(),
        ),
        (
            "initial-cluster-state",
            args.initial_cluster_state.is_some() || file.initial_cluster_state.is_some(),
        ),
        (
            "initial-cluster-token",
            args.initial_cluster_token.is_some() || file.initial_cluster_token.is_some(),
        ),
        (
            "initial-advertise-peer-urls",
            args.initial_advertise_peer_urls.is_some()
                || file.initial_advertise_peer_urls.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    let auto_compaction = AutoCompaction::from_flags(
        &pick(&args.auto_compaction_mode, &file.auto_compaction_mode).unwrap_or_default(),
        &args
            .auto_compaction_retention
            .clone()
            .or_else(|| file.auto_compaction_retention.map(Retention::into_text))
            .unwrap_or_default(),
    )
    .map_err(|error| error.to_string())?;
    let worker_threads = match args.worker_threads.or(file.worker_threads) {
        Some(threads) if (1..=WORKER_THREADS_MAX).contains(&threads) => threads,
        Some(threads) => {
            return Err(format!(
                "--worker-threads must be between 1 and {WORKER_THREADS_MAX}, got {threads}"
            ))
        }
        None => ballot::cpus(),
    };
    let config = ServerConfig {
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("{name}.ballot"))),
        listen_client_urls: pick(&args.listen_client_urls, &file.listen_client_urls)
            .map_or(defaults.listen_client_urls, |l| urls(&l)),
        advertise_client_urls: pick(&args.advertise_client_urls, &file.advertise_client_urls)
            .map_or(defaults.advertise_client_urls, |l| urls(&l)),
        listen_peer_urls: pick(&args.listen_peer_urls, &file.listen_peer_urls)
            .map_or(defaults.listen_peer_urls, |l| urls(&l)),
        initial_advertise_peer_urls: pick(
            &args.initial_advertise_peer_urls,
            &file.initial_advertise_peer_urls,
        )
        .map_or(defaults.initial_advertise_peer_urls, |l| urls(&l)),
        initial_cluster,
        initial_cluster_state: cluster_state,
        initial_cluster_token: pick(&args.initial_cluster_token, &file.initial_cluster_token)
            .unwrap_or(defaults.initial_cluster_token),
        bootstrap_flags_given,
        force_new_cluster: args.force_new_cluster || file.force_new_cluster.unwrap_or(false),
        heartbeat_interval_ms: args
            .heartbeat_interval
            .or(file.heartbeat_interval)
            .unwrap_or(defaults.heartbeat_interval_ms),
        election_timeout_ms: args
            .election_timeout
            .or(file.election_timeout)
            .unwrap_or(defaults.election_timeout_ms),
        snapshot_count: args
            .snapshot_count
            .or(file.snapshot_count)
            .unwrap_or(defaults.snapshot_count),
        max_request_bytes: args
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(defaults.max_request_bytes),
        max_txn_ops: args
            .max_txn_ops
            .or(file.max_txn_ops)
            .unwrap_or(defaults.max_txn_ops),
        listen_metrics_urls: pick(&args.listen_metrics_urls, &file.listen_metrics_urls)
            .map_or(Vec::new(), |l| urls(&l)),
        auto_compaction,
        shared_wal_segment_bytes: defaults.shared_wal_segment_bytes,
        name,
    };
    let process = ProcessSettings {
        worker_threads,
        log_level: args.log_level.or(file.log_level).unwrap_or(LogLevel::Info),
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    };
    Ok((config, process))
}

pub fn run(args: ServerArgs) -> ExitCode {
    let (config, process) = match resolve(&args).and_then(|(config, process)| {
        config
            .validate()
            .map(|_| (config, process))
            .map_err(|e| e.to_string())
    }) {
        Ok(resolved) => resolved,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    ballot::logging::init(process.log_level, process.log_format);
    let starter_gone = args.stop_on_stdin_eof.then(watch_stdin);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(process.worker_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve(config, starter_gone))
}

/// How long a server whose starter is gone may take to shut down before it exits regardless:
/// nobody is left to SIGKILL it.
const STARTER_GONE_EXIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// A thread that reads standard input to its end, then signals the returned receiver, and ends
/// the process if shutdown has not done so within [`STARTER_GONE_EXIT_DEADLINE`]. A plain thread,
/// not a runtime task: a blocking read would keep the runtime from shutting down.
fn watch_stdin() -> tokio::sync::oneshot::Receiver<()> {
    let (gone, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = gone.send(());
            std::thread::sleep(STARTER_GONE_EXIT_DEADLINE);
            eprintln!("error: still shutting down {STARTER_GONE_EXIT_DEADLINE:?} after standard input closed; exiting");
            std::process::exit(1);
        })
        .expect("stdin watcher thread");
    receiver
}

async fn serve(
    config: ServerConfig,
    starter_gone: Option<tokio::sync::oneshot::Receiver<()>>,
) -> ExitCode {
    let metrics_url = config.listen_metrics_urls.first().cloned();
    let node = match Node::start(config.clone(), ballot::raft_replica::for_server).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    let metrics_addr = match metrics_url {
        Some(url) => parse_url(&url),
        None => parse_url(&config.listen_client_urls[0]).map(|mut addr| {
            addr.set_port(addr.port().wrapping_add(10_000));
            addr
        }),
    };
    // One context for the etcd services and the native API: the same limits, and one cache of
    // channels to the leader.
    let context = {
        use ballot_server::etcd;
        etcd::Context {
            node: node.handle.clone(),
            limits: etcd::RequestLimits::from_config(&config),
            // Followers forward what only the leader serves to the client URL it published.
            leaders: std::sync::Arc::new(etcd::cluster::RegistryLeaderChannel::new(
                node.handle.clone(),
            )),
        }
    };
    match metrics_addr {
        Ok(addr) => {
            let native =
                std::sync::Arc::new(ballot_server::native::NativeApi::new(context.clone()));
            match ballot_server::http::serve(
                addr,
                node.handle.clone(),
                node.transport.clone(),
                Some((native, config.max_request_bytes)),
            )
            .await
            {
                Ok(bound) => tracing::info!(
                    "metrics, health and the native key API (/v1/kv/) on http://{bound}"
                ),
                Err(error) => tracing::warn!(%error, "cannot serve /metrics on {addr}"),
            }
        }
        Err(error) => tracing::warn!(%error, "no metrics endpoint"),
    }
    let (stop_clients, clients_stopped) = tokio::sync::watch::channel(false);
    let client_servers = match serve_clients(&config, &context, clients_stopped).await {
        Ok(servers) => servers,
        Err(error) => {
            eprintln!("error: {error}");
            node.stop();
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        name = %config.name,
        id = format!("{:x}", node.handle.status().id),
        peer = %node.addresses.peer,
        data_dir = %config.data_dir.display(),
        "ballot server started"
    );
    wait_for_shutdown(starter_gone).await;
    tracing::info!("shutting down");
    let _ = stop_clients.send(true);
    // Watch and keep-alive streams stay open until their clients leave; do not wait for them.
    let drained = join_all(client_servers);
    if tokio::time::timeout(CLIENT_DRAIN_WAIT, drained)
        .await
        .is_err()
    {
        tracing::info!("closing client streams still open");
    }
    node.stop();
    ExitCode::SUCCESS
}

/// How long shutdown waits for client calls in flight.
const CLIENT_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts the etcd v3 gRPC services on every `--listen-client-urls` address. Every listener is
/// bound before any serves, so a taken port fails the start instead of a later call.
async fn serve_clients(
    config: &ServerConfig,
    context: &ballot_server::etcd::Context,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let routes = ballot_server::etcd::services(
        context.node.clone(),
        context.limits,
        context.leaders.clone(),
    );
    let mut listeners = Vec::new();
    for url in &config.listen_client_urls {
        let addr = parse_url(url)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| format!("cannot listen for clients on {url}: {error}"))?;
        listeners.push((url.clone(), listener));
    }
    let mut servers = Vec::new();
    for (url, listener) in listeners {
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let routes = routes.clone();
        tracing::info!(%url, "serving the etcd v3 API");
        servers.push(tokio::spawn(async move {
            if let Err(error) = ballot_server::etcd::serve(listener, routes, shutdown).await {
                tracing::error!(%error, %url, "etcd v3 gRPC server failed");
            }
        }));
    }
    Ok(servers)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

async fn wait_for_shutdown(starter_gone: Option<tokio::sync::oneshot::Receiver<()>>) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let starter_gone = async {
        match starter_gone {
            Some(gone) => {
                let _ = gone.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = starter_gone => tracing::info!("standard input closed: the process that started this server is gone"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = std::env::temp_dir().join(format!("ballot-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nsnapshot-count = 7\nheartbeat-interval = 50\nworker-threads = 3\n",
        )
        .unwrap();
        let args = ServerArgs {
            config_file: Some(file.clone()),
            heartbeat_interval: Some(20),
            ..ServerArgs::default()
        };
        let (config, process) = resolve(&args).unwrap();
        assert_eq!(process.worker_threads, 3);
        assert_eq!(config.name, "from-file");
        assert_eq!(config.data_dir, PathBuf::from("from-file.ballot"));
        assert_eq!(config.snapshot_count, 7);
        assert_eq!(
            config.heartbeat_interval_ms, 20,
            "the flag wins over the file"
        );
        assert_eq!(config.max_txn_ops, 128, "etcd's default");
        std::fs::write(&file, "nmae = \"typo\"\n").unwrap();
        let error = resolve(&args).unwrap_err();
        assert!(error.contains("unknown field `nmae`"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auto_compaction_comes_from_the_flags_or_the_file_and_bad_values_name_the_flag() {
        use std::time::Duration;
        let (config, _) = resolve(&ServerArgs::default()).unwrap();
        assert_eq!(
            config.auto_compaction,
            AutoCompaction::Disabled,
            "etcd's default"
        );
        let dir = std::env::temp_dir().join(format!(
            "ballot-auto-compaction-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        let from_file = |text: &str, args: ServerArgs| {
            std::fs::write(&file, text).unwrap();
            resolve(&ServerArgs {
                config_file: Some(file.clone()),
                ..args
            })
        };
        let (config, _) = from_file(
            "auto-compaction-mode = \"revision\"\nauto-compaction-retention = 1000\n",
            ServerArgs::default(),
        )
        .unwrap();
        assert_eq!(
            config.auto_compaction,
            AutoCompaction::Revision {
                retention_revisions: 1000
            }
        );
        let (config, _) = from_file(
            "auto-compaction-retention = \"30m\"\n",
            ServerArgs::default(),
        )
        .unwrap();
        assert_eq!(
            config.auto_compaction,
            AutoCompaction::Periodic {
                retention: Duration::from_secs(1800)
            },
            "periodic unless the mode says otherwise"
        );
        let flags = ServerArgs {
            auto_compaction_mode: Some("periodic".into()),
            auto_compaction_retention: Some("2".into()),
            ..ServerArgs::default()
        };
        let (config, _) = from_file(
            "auto-compaction-mode = \"revision\"\nauto-compaction-retention = 1000\n",
            flags,
        )
        .unwrap();
        assert_eq!(
            config.auto_compaction,
            AutoCompaction::Periodic {
                retention: Duration::from_secs(2 * 3600)
            },
            "flags win over the file; a bare number is hours in periodic mode"
        );
        let error =
            from_file("auto-compaction-mode = \"hourly\"\n", ServerArgs::default()).unwrap_err();
        assert_eq!(
            error,
            "--auto-compaction-mode: 'hourly' is neither 'periodic' nor 'revision'"
        );
        let error =
            from_file("auto-compaction-retention = -1\n", ServerArgs::default()).unwrap_err();
        assert!(
            error.starts_with("--auto-compaction-retention: '-1' is neither"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn worker_threads_default_to_the_cpus_and_zero_is_refused_by_name() {
        let (_, process) = resolve(&ServerArgs::default()).unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(process.worker_threads, cpus);
        let zero = ServerArgs {
            worker_threads: Some(0),
            ..ServerArgs::default()
        };
        let error = resolve(&zero).unwrap_err();
        assert_eq!(error, "--worker-threads must be between 1 and 1024, got 0");
    }
}
