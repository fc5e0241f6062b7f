//! `ballot dev`: a local cluster of real `ballot server` processes (see `ballot::dev_cluster`).
//! Prints the endpoints and the etcdctl line to use, and stops every node on Ctrl-C or SIGTERM
//! (SIGTERM to each node, so each syncs and exits cleanly).

use ballot::dev_cluster::RunningCluster;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1 to 7)
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Data directory: one subdirectory per node, reused by the next `ballot dev`
    #[arg(long, default_value = "ballot-data")]
    pub data_dir: PathBuf,
    /// Delete the data directory first and start an empty cluster
    #[arg(long)]
    pub fresh: bool,
}

pub fn run(args: DevArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("error: cannot find the ballot binary: {error}");
            return ExitCode::from(1);
        }
    };
    let mut cluster = match RunningCluster::start(&exe, args.nodes, &args.data_dir, args.fresh) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    print_endpoints(&cluster);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let exited = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return None,
                _ = terminate.recv() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Some(exited) = cluster.exited() {
                        return Some(exited);
                    }
                }
            }
        }
    });
    if let Some((name, status)) = exited {
        eprintln!(
            "{name} exited ({status}); stopping the cluster. Its log ends with:\n{}",
            cluster.log_tail(&name)
        );
    }
    println!("stopping {} nodes", cluster.plan.nodes.len());
    cluster.stop();
    ExitCode::SUCCESS
}

fn print_endpoints(cluster: &RunningCluster) {
    let dir = cluster.data_dir.display();
    println!(
        "ballot dev: {} nodes up, data in {dir}",
        cluster.plan.nodes.len()
    );
    for node in &cluster.plan.nodes {
        println!(
            "  {:<3} client http://127.0.0.1:{:<5}  peer http://127.0.0.1:{:<5}  metrics http://127.0.0.1:{}/metrics  log {dir}/{}/server.log",
            node.name, node.client_port, node.peer_port, node.metrics_port, node.name
        );
    }
    // etcdctl 3.4 sends an http:// endpoint as the HTTP/2 authority on some calls, which strict
    // HTTP/2 servers refuse; host:port works for every etcdctl version.
    let endpoints: Vec<String> = cluster
        .plan
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.client_port))
        .collect();
    let endpoints = endpoints.join(",");
    println!("\nTry it with etcdctl (Debian package etcd-client):");
    println!("  etcdctl --endpoints={endpoints} put greeting hello");
    println!("  etcdctl --endpoints={endpoints} get greeting");
    println!("  etcdctl --endpoints={endpoints} endpoint status -w table");
    println!("or with ballot's own client:");
    println!(
        "  ballot get greeting --endpoints={}",
        cluster.plan.client_urls().join(",")
    );
    println!("\nCtrl-C stops the cluster; `ballot dev` again restarts it with the same data.");
}
